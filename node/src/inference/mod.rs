//! Inference across the swarm: any node, one that hosts no model included, places a
//! request on the peer where it will be answered soonest and streams the tokens back.
//!
//! ```text
//! HTTP handler ──start()──▶ candidates: this node's workers (live load)
//!                                     + peers' adverts (load as advertised, plus what this
//!                                       node has sent them since)
//!                           ──placement::place()──▶ ranked peers (or the pinned one)
//!                           ──try each in order──▶ local worker │ /pyagent/infer/1 stream
//!                           ◀── first piece (or the whole answer) ── else the next peer
//! ```
//!
//! A candidate that fails before its first token (unreachable, gone, overloaded, no
//! longer serving the model) is skipped for the next one: that is the failover. A request
//! error (a prompt too long, a bad message) is not retried. After the first token the
//! request stays where it is; a failure then ends the stream with an error.
//!
//! - [`executor`]: serves other nodes' streams on this node's workers.
//! - [`requester`]: a remote generation as a [`Stream`].
//! - [`frames`], [`wire`]: framing and the wire types of the stream protocol.

pub mod executor;
pub(crate) mod frames;
pub mod requester;
pub mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use pyagent_engine::infer::{GenerateOptions, Output};
use pyagent_protocol::InferenceCapacity;

use crate::p2p::NodeClient;
use crate::serving::placement::{self, Candidate, PlacementError};
use crate::serving::{Chunk, Models, Prompt, REST_OF_CONTEXT, ServeError, Stream};

/// Longest wait for a generation's first token (queue and prefill included).
pub const FIRST_TOKEN_DEADLINE: Duration = Duration::from_secs(300);
/// Longest wait between two pieces of a running generation.
pub const PIECE_DEADLINE: Duration = Duration::from_secs(60);
/// Longest wait to open a stream to a peer and hand it the request.
pub const OPEN_DEADLINE: Duration = Duration::from_secs(5);

/// Where a request runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Local,
    Peer(PeerId),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local => f.write_str("local"),
            Self::Peer(p) => write!(f, "{p}"),
        }
    }
}

/// A request to place.
#[derive(Debug, Clone)]
pub struct InferRequest {
    pub model: String,
    pub prompt: Prompt,
    pub options: GenerateOptions,
    /// `X-Pyagent-Peer` / `--peer`: run here and nowhere else.
    pub pinned: Option<Target>,
}

/// A generation that has produced its first event.
#[derive(Debug)]
pub struct Started {
    pub ran_on: Target,
    /// The first piece, or the whole output when it ended before any text.
    pub first: First,
    pub stream: Stream,
    /// From the request to the first event (placement and failover included).
    pub time_to_first: Duration,
    /// From the request to the choice of peers (adverts read, costs ranked).
    pub placement: Duration,
    /// Candidates that failed before this one, and why.
    pub skipped: Vec<(Target, String)>,
}

#[derive(Debug)]
pub enum First {
    Piece(Chunk),
    Done(Output),
}

/// Why no generation started.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("no node of the swarm serves the model {model:?}; {}", models_served(.served))]
    UnknownModel { model: String, served: Vec<String> },
    #[error("{0}")]
    Placement(PlacementError),
    /// The request itself was refused (not retried elsewhere).
    #[error(transparent)]
    Serve(ServeError),
    #[error("every peer that serves {model:?} failed before answering: {}", .tried.join("; "))]
    AllFailed { model: String, tried: Vec<String>, last: ServeError },
    #[error("the network task has stopped")]
    Stopped,
}

fn models_served(served: &[String]) -> String {
    if served.is_empty() { "the swarm serves no model yet (start a node with --model DIR)".into() } else { format!("models served: {}", served.join(", ")) }
}

/// Requests this node has sent to a peer and not seen finish: added to the peer's
/// advertised load, which is up to an advert interval old.
#[derive(Debug, Default, Clone, Copy)]
struct Outstanding {
    requests: u64,
    prefill_tokens: u64,
    decode_tokens: u64,
}

/// Places and starts inference requests (see the module docs).
#[derive(Clone)]
pub struct Inference {
    me: PeerId,
    models: Models,
    client: NodeClient,
    control: libp2p_stream::Control,
    outstanding: Arc<Mutex<HashMap<PeerId, Outstanding>>>,
    /// The KV exchange, for its measured transfer rate.
    kv: Option<crate::kv::KvExchange>,
    /// Prompts this node has just placed, by block (see [`crate::kv::plan::Recent`]).
    recent: Arc<Mutex<crate::kv::plan::Recent>>,
}

impl std::fmt::Debug for Inference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inference").field("me", &self.me).field("models", &self.models).finish_non_exhaustive()
    }
}

/// A model some node serves, as `/v1/models` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct SwarmModel {
    pub name: String,
    pub context_length: u32,
    pub peers: Vec<Target>,
}

impl Inference {
    pub fn new(me: PeerId, models: Models, client: NodeClient, control: libp2p_stream::Control) -> Self {
        Self { me, models, client, control, outstanding: Arc::default(), kv: None, recent: Arc::default() }
    }

    /// Credits peers with the prefixes they could fetch at the exchange's measured rate.
    pub fn with_kv(mut self, kv: crate::kv::KvExchange) -> Self {
        self.kv = Some(kv);
        self
    }

    /// The KV exchange, when the node runs one.
    pub fn kv(&self) -> Option<&crate::kv::KvExchange> {
        self.kv.as_ref()
    }

    /// The prompt's full blocks (those prefill could skip), this node's own run of them,
    /// and the rate in tokens/s at which a fetch moves them — when this node can tokenize
    /// the prompt (it hosts the model, or the prompt is tokens).
    fn prompt_blocks(&self, request: &InferRequest, peers: &[(PeerId, InferenceCapacity)]) -> Option<PromptBlocks> {
        let (tokens, id, local_run, block_bytes) = match self.models.get(&request.model) {
            Some(worker) => {
                let tokens = worker.tokenizer().tokens(&request.prompt).ok()?;
                let pool = worker.pool().lock();
                (tokens, pool.model(), None, Some(pyagent_engine::kv::KvBlock::export_len(&pool.layout())))
            }
            None => {
                let Prompt::Tokens(tokens) = &request.prompt else { return None };
                let hex = &peers.iter().find(|(_, c)| c.name == request.model)?.1.model_id;
                (tokens.clone(), parse_model_id(hex)?, Some(0), None)
            }
        };
        // Every whole block counts: the engine reuses them all (a full hit runs the last token again).
        let usable = tokens.len() / pyagent_engine::kv::BLOCK_TOKENS * pyagent_engine::kv::BLOCK_TOKENS;
        let hashes = pyagent_engine::kv::block_hashes(&id, &tokens[..usable]);
        let local_run = local_run.unwrap_or_else(|| self.models.get(&request.model).map_or(0, |w| w.pool().lock().held_run(&hashes)));
        let fetch_rate = match (&self.kv, block_bytes) {
            (Some(kv), Some(bytes)) => kv.fetch_rate() / (bytes as f64 / pyagent_engine::kv::BLOCK_TOKENS as f64),
            _ => 0.0,
        };
        Some(PromptBlocks { tokens: tokens.len() as u64, hashes: hashes.into_iter().map(|h| h.0).collect(), local_run, fetch_rate })
    }

    pub fn local(&self) -> &Models {
        &self.models
    }

    /// Opens inference streams (for tools and tests that speak `/pyagent/infer/1` directly).
    pub fn control(&self) -> libp2p_stream::Control {
        self.control.clone()
    }

    /// Every model of the swarm and where it runs (this node first).
    pub async fn swarm_models(&self) -> Result<Vec<SwarmModel>, InferError> {
        let mut out: Vec<SwarmModel> = Vec::new();
        let mut add = |c: &InferenceCapacity, at: Target| match out.iter_mut().find(|m| m.name == c.name) {
            Some(m) => m.peers.push(at),
            None => out.push(SwarmModel { name: c.name.clone(), context_length: c.context_length, peers: vec![at] }),
        };
        for c in self.models.all().iter().map(crate::serving::ModelWorker::advert) {
            add(&c, Target::Local);
        }
        for (peer, c) in self.peer_models().await? {
            add(&c, Target::Peer(peer));
        }
        Ok(out)
    }

    /// The models in the peers' adverts.
    async fn peer_models(&self) -> Result<Vec<(PeerId, InferenceCapacity)>, InferError> {
        let peers = self.client.peers().await.map_err(|_| InferError::Stopped)?;
        Ok(peers
            .into_iter()
            .filter(|p| p.connected)
            .filter_map(|p| p.peer_id.parse::<PeerId>().ok().map(|id| (id, p.capacity.models)))
            .filter(|(id, _)| *id != self.me)
            .flat_map(|(id, models)| models.into_iter().map(move |m| (id, m)))
            .collect())
    }

    /// Places the request and starts it, trying the next candidate while one fails
    /// before its first token.
    pub async fn start(&self, request: InferRequest) -> Result<Started, InferError> {
        let began = Instant::now();
        let peers = self.peer_models().await?;
        let blocks = self.prompt_blocks(&request, &peers);
        let cost = placement::Request {
            id: request_id(&request),
            prompt_tokens: blocks.as_ref().map_or_else(|| prompt_estimate(&request.prompt), |b| b.tokens),
            max_tokens: if request.options.max_tokens == REST_OF_CONTEXT { 256 } else { request.options.max_tokens as u64 },
        };
        let share = Outstanding { requests: 1, prefill_tokens: cost.prompt_tokens, decode_tokens: cost.max_tokens };
        let pinned = request.pinned.map(|t| match t {
            Target::Local => self.me,
            Target::Peer(p) => p,
        });
        // Candidates, choice and reservation under one lock: concurrent requests each see
        // the ones placed before them.
        let order = {
            let mut book = self.outstanding.lock().map_err(|_| InferError::Stopped)?;
            let mut served: Vec<String> = self.models.all().iter().map(|m| m.info().name.clone()).collect();
            let local = self.models.get(&request.model).map(crate::serving::ModelWorker::advert);
            let mut able: Vec<(PeerId, &InferenceCapacity)> = local.iter().map(|c| (self.me, c)).collect();
            for (peer, c) in &peers {
                if !served.contains(&c.name) {
                    served.push(c.name.clone());
                }
                if c.name == request.model {
                    able.push((*peer, c));
                }
            }
            let now = Instant::now();
            let mut recent = self.recent.lock().map_err(|_| InferError::Stopped)?;
            let credits = blocks.as_ref().map(|b| {
                let with: Vec<(PeerId, Option<&InferenceCapacity>)> = able.iter().map(|(p, c)| (*p, (*p != self.me).then_some(*c))).collect();
                crate::kv::credits(&b.hashes, &with, Some((self.me, b.local_run)), |peer| recent.run(peer, &b.hashes, now))
            });
            let fetch_rate = blocks.as_ref().map_or(0.0, |b| b.fetch_rate);
            let caps: Vec<&InferenceCapacity> = able.iter().map(|(_, c)| *c).collect();
            let candidates: Vec<Candidate> = able
                .iter()
                .map(|(peer, c)| {
                    let credit = credits.as_ref().and_then(|m| m.get(peer).copied()).unwrap_or_default();
                    let mut candidate = candidate(*peer, c, book.get(peer).copied().unwrap_or_default(), credit, fetch_rate);
                    candidate.prefill_rate = f64::from(crate::kv::credit::prefill_rate(c, &caps));
                    candidate
                })
                .collect();
            if candidates.is_empty() {
                served.sort();
                return Err(InferError::UnknownModel { model: request.model, served });
            }
            let order = placement::place(&candidates, &cost, pinned).map_err(InferError::Placement)?;
            if let Some(first) = order.first() {
                reserve(&mut book, *first, share);
                if let Some(b) = &blocks {
                    recent.note(*first, &b.hashes, now);
                }
            }
            order
        };
        let placement = began.elapsed();
        let mut skipped = Vec::new();
        let mut last = ServeError::Stopped;
        for (i, peer) in order.into_iter().enumerate() {
            if i > 0 {
                self.add_outstanding(peer, share, true);
            }
            let target = if peer == self.me { Target::Local } else { Target::Peer(peer) };
            match self.try_one(target, &request, share).await {
                Ok((first, stream)) => return Ok(Started { ran_on: target, first, stream, time_to_first: began.elapsed(), placement, skipped }),
                Err(e) if e.try_elsewhere() => {
                    tracing::info!(%target, model = %request.model, "failing over to the next peer: {e}");
                    skipped.push((target, e.to_string()));
                    last = e;
                }
                Err(e) => return Err(InferError::Serve(e)),
            }
        }
        Err(InferError::AllFailed { model: request.model, tried: skipped.iter().map(|(t, e)| format!("{t}: {e}")).collect(), last })
    }

    /// Starts on `target` (whose share of the book is reserved: given back when the
    /// worker holds the request, or when a remote stream ends) and waits for the first
    /// event.
    async fn try_one(&self, target: Target, request: &InferRequest, share: Outstanding) -> Result<(First, Stream), ServeError> {
        let mut stream = match target {
            Target::Local => {
                // From here on the worker's own load counts it.
                self.add_outstanding(self.me, share, false);
                let worker = self.models.get(&request.model).ok_or_else(|| ServeError::NotServed(format!("this node does not serve {:?}", request.model)))?;
                worker.generate_stream(request.prompt.clone(), request.options.clone())?
            }
            Target::Peer(peer) => {
                let book = self.outstanding.clone();
                let on_end = move || {
                    if let Ok(mut o) = book.lock() {
                        release(&mut o, peer, share);
                    }
                };
                let wire = wire::request(&request.model, &request.prompt, &request.options);
                match requester::open(&mut self.control.clone(), peer, &wire, on_end).await {
                    Ok(stream) => stream,
                    Err(e) => {
                        self.add_outstanding(peer, share, false);
                        return Err(e);
                    }
                }
            }
        };
        let first = tokio::time::timeout(FIRST_TOKEN_DEADLINE, async {
            match stream.pieces.recv().await {
                Some(piece) => Ok(First::Piece(piece)),
                None => match (&mut stream.done).await {
                    Ok(Ok(out)) => Ok(First::Done(out)),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(ServeError::Stopped),
                },
            }
        })
        .await
        .map_err(|_| ServeError::PeerGone(format!("no first token within {} s", FIRST_TOKEN_DEADLINE.as_secs())))??;
        Ok((first, stream))
    }

    fn add_outstanding(&self, peer: PeerId, share: Outstanding, add: bool) {
        if let Ok(mut o) = self.outstanding.lock() {
            if add {
                reserve(&mut o, peer, share);
            } else {
                release(&mut o, peer, share);
            }
        }
    }
}

fn reserve(o: &mut HashMap<PeerId, Outstanding>, peer: PeerId, share: Outstanding) {
    let e = o.entry(peer).or_default();
    e.requests += share.requests;
    e.prefill_tokens += share.prefill_tokens;
    e.decode_tokens += share.decode_tokens;
}

fn release(o: &mut HashMap<PeerId, Outstanding>, peer: PeerId, share: Outstanding) {
    if let Some(e) = o.get_mut(&peer) {
        e.requests = e.requests.saturating_sub(share.requests);
        e.prefill_tokens = e.prefill_tokens.saturating_sub(share.prefill_tokens);
        e.decode_tokens = e.decode_tokens.saturating_sub(share.decode_tokens);
        if e.requests == 0 {
            o.remove(&peer);
        }
    }
}

/// A prompt's blocks as the placing node sees them.
#[derive(Debug)]
struct PromptBlocks {
    tokens: u64,
    hashes: Vec<[u8; 32]>,
    /// Of those, the run this node's own pool holds.
    local_run: usize,
    /// Prefix tokens/s a fetch moves (0: unknown).
    fetch_rate: f64,
}

/// A model id from its advertised hex form.
fn parse_model_id(hex: &str) -> Option<pyagent_engine::kv::ModelId> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut id = [0u8; 32];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(pyagent_engine::kv::ModelId(id))
}

fn candidate(peer: PeerId, c: &InferenceCapacity, extra: Outstanding, credit: crate::kv::Credit, fetch_rate: f64) -> Candidate {
    Candidate {
        peer,
        fits: c.fits,
        prefill_rate: f64::from(c.prefill_tokens_per_s),
        decode_rate: f64::from(c.decode_tokens_per_s),
        queued_prefill_tokens: c.queued_prefill_tokens + extra.prefill_tokens,
        queued_decode_tokens: c.queued_decode_tokens + extra.decode_tokens,
        cached_tokens: credit.held_tokens,
        fetchable_tokens: credit.fetchable_tokens,
        fetch_rate,
        prefill_only: c.role == pyagent_protocol::InferenceRole::Prefill,
    }
}

/// Prompt tokens as a requester without the tokenizer can guess them (4 bytes a token).
fn prompt_estimate(prompt: &Prompt) -> u64 {
    match prompt {
        Prompt::Tokens(t) => t.len() as u64,
        Prompt::Text(s) => s.len() as u64 / 4 + 1,
        Prompt::Chat(m) => m.iter().map(|m| m.content.len() as u64 / 4 + 4).sum(),
    }
}

/// A random id per request: equal costs are broken by it, so identical concurrent
/// requests do not all go to the same peer.
fn request_id(_request: &InferRequest) -> [u8; 32] {
    let mut id = [0u8; 32];
    if getrandom::fill(&mut id).is_err() {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        id[..16].copy_from_slice(&nanos.to_le_bytes());
    }
    id
}
