//! The block transfer stream protocol (`/pyagent/kv/1`, framing in
//! `pyagent_protocol::kv`): serving this node's blocks to swarm members (and, on a
//! prefill node, computing a decode peer's prompt first), and fetching a run of blocks
//! from one peer with every block checked before it is used.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::PeerId;
use pyagent_engine::kv::{BlockHash, KvBlock, KvLayout, ModelId, block_hashes};
use pyagent_protocol::kv::{KV_FRAME_HEADER, KV_PROTOCOL, KvFrameKind, KvRequest, MAX_KV_REQUEST_BYTES, frame_header, parse_header};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::Counters;
use crate::inference::frames;
use crate::p2p::NodeClient;
use crate::serving::{ModelWorker, Models};

/// Longest wait to open a stream and hand it the request.
pub const OPEN_DEADLINE: Duration = Duration::from_secs(5);
/// Longest wait for one block (or for a reader to take one).
pub const FRAME_DEADLINE: Duration = Duration::from_secs(5);
/// Block streams served at once; more are refused.
pub const MAX_SERVED_STREAMS: usize = 32;
/// Longest a prefill peer may take to compute a prompt before its first block.
pub const MAX_PREFILL_DEADLINE: Duration = Duration::from_secs(60);
/// Longest reason a refusal carries.
const MAX_REASON: usize = 1024;

/// Why a fetch from one peer stopped before its run's end.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot open a block stream: {0}")]
    Open(String),
    #[error("the peer closed the stream before the run's end")]
    Closed,
    #[error("stream: {0}")]
    Io(std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("bad frame: {0}")]
    Frame(String),
    #[error("bad block {index}: {reason}")]
    BadBlock { index: usize, reason: String },
    #[error("refused: {0}")]
    Refused(String),
}

impl From<std::io::Error> for FetchError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof { Self::Closed } else { Self::Io(e) }
    }
}

impl FetchError {
    /// The peer misbehaved (as opposed to merely being slow or gone).
    pub fn is_bad_peer(&self) -> bool {
        matches!(self, Self::Frame(_) | Self::BadBlock { .. })
    }
}

/// Starts serving block streams (and prompts to prefill, unless `prefill` is off: a
/// decode node); abort the handle to stop.
pub(super) fn serve(mut control: libp2p_stream::Control, models: Models, client: NodeClient, counters: Arc<Counters>, prefill: bool) -> Option<JoinHandle<()>> {
    let mut incoming = match control.accept(libp2p::StreamProtocol::new(KV_PROTOCOL)) {
        Ok(incoming) => incoming,
        Err(e) => {
            tracing::error!("cannot serve KV block streams: {e}");
            return None;
        }
    };
    let permits = Arc::new(Semaphore::new(MAX_SERVED_STREAMS));
    Some(tokio::spawn(async move {
        while let Some((peer, mut stream)) = incoming.next().await {
            let (models, client, counters) = (models.clone(), client.clone(), counters.clone());
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                tokio::spawn(async move { refuse(&mut stream, &format!("{MAX_SERVED_STREAMS} block streams are being served here")).await });
                continue;
            };
            tokio::spawn(async move {
                let member = client.peers().await.is_ok_and(|peers| peers.iter().any(|p| p.peer_id == peer.to_string()));
                if member {
                    if let Err(e) = serve_one(&mut stream, &models, &counters, prefill).await {
                        tracing::debug!(%peer, "KV block stream ended: {e}");
                    }
                } else {
                    tracing::debug!(%peer, "KV block stream from a peer outside the swarm refused");
                    refuse(&mut stream, "only members of this swarm are served").await;
                }
                let _ = stream.close().await;
                drop(permit);
            });
        }
    }))
}

async fn refuse(stream: &mut libp2p::Stream, reason: &str) {
    let reason = &reason.as_bytes()[..reason.len().min(MAX_REASON)];
    let mut frame = frame_header(KvFrameKind::Refused, reason.len()).to_vec();
    frame.extend_from_slice(reason);
    let _ = tokio::time::timeout(OPEN_DEADLINE, async {
        stream.write_all(&frame).await?;
        stream.close().await
    })
    .await;
}

async fn serve_one(stream: &mut libp2p::Stream, models: &Models, counters: &Counters, prefill: bool) -> Result<(), FetchError> {
    let request = match tokio::time::timeout(OPEN_DEADLINE, frames::read::<_, KvRequest>(stream, MAX_KV_REQUEST_BYTES)).await {
        Ok(Ok(Some(request))) => request,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => {
            refuse(stream, &format!("unreadable request: {e}")).await;
            return Err(FetchError::Frame(e.to_string()));
        }
        Err(_) => {
            refuse(stream, "no request within the deadline").await;
            return Err(FetchError::Timeout(OPEN_DEADLINE));
        }
    };
    if let Err(e) = request.validate() {
        refuse(stream, &e.to_string()).await;
        return Err(FetchError::Frame(e.to_string()));
    }
    let (model_id, hashes) = match request {
        KvRequest::Fetch { model_id, hashes } => (model_id, hashes.into_iter().map(BlockHash).collect()),
        KvRequest::Push { model_id, blocks } => return keep_pushed(stream, models, ModelId(model_id), blocks as usize, counters).await,
        KvRequest::Prefill { .. } if !prefill => {
            refuse(stream, "this node decodes only (--role decode); ask a prefill node").await;
            return Ok(());
        }
        KvRequest::Prefill { model_id, tokens, from } => return serve_prefill(stream, models, ModelId(model_id), tokens, from as usize, counters).await,
    };
    let Some(worker) = models.by_id(&ModelId(model_id)) else {
        refuse(stream, &format!("this node does not host model {}", ModelId(model_id))).await;
        return Ok(());
    };
    send_blocks(stream, worker, hashes, counters).await
}

/// Computes the blocks of a decode peer's prompt `tokens` (in turn with this node's own
/// requests), then answers with blocks `from..` of them as for a fetch.
async fn serve_prefill(stream: &mut libp2p::Stream, models: &Models, model: ModelId, tokens: Vec<u32>, from: usize, counters: &Counters) -> Result<(), FetchError> {
    let Some(worker) = models.by_id(&model) else {
        refuse(stream, &format!("this node does not host model {model}")).await;
        return Ok(());
    };
    let hashes = block_hashes(&model, &tokens).split_off(from);
    match tokio::time::timeout(MAX_PREFILL_DEADLINE, worker.prefill(tokens)).await {
        Ok(Ok(computed)) => tracing::debug!(computed, "prompt prefilled for a decode peer"),
        Ok(Err(e)) => {
            refuse(stream, &format!("cannot prefill: {e}")).await;
            return Ok(());
        }
        Err(_) => {
            refuse(stream, "the prefill ran past its deadline").await;
            return Err(FetchError::Timeout(MAX_PREFILL_DEADLINE));
        }
    }
    counters.prefills_served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    send_blocks(stream, worker, hashes, counters).await
}

/// Answers with the blocks `hashes` from `worker`'s pool, in order, up to the first it
/// lacks (answered `Missing`).
async fn send_blocks(stream: &mut libp2p::Stream, worker: &ModelWorker, hashes: Vec<BlockHash>, counters: &Counters) -> Result<(), FetchError> {
    let started = Instant::now();
    let (mut reading, mut writing, mut sent) = (Duration::ZERO, Duration::ZERO, 0);
    for hash in hashes {
        let read = Instant::now();
        // Read under the lock, exported outside it.
        let block = worker.pool().lock().peek(&hash).map_err(|e| FetchError::Frame(format!("this node's pool: {e}")))?;
        let Some(block) = block else {
            write_frame(stream, KvFrameKind::Missing, &[]).await?;
            break;
        };
        let bytes = block.export();
        reading += read.elapsed();
        let write = Instant::now();
        write_frame(stream, KvFrameKind::Block, &bytes).await?;
        writing += write.elapsed();
        counters.add_served(bytes.len());
        sent += 1;
    }
    // Where a fetch's time goes, on both ends (RUST_LOG=pyagent_node::kv=debug).
    tracing::debug!(blocks = sent, reading_ms = reading.as_secs_f64() * 1e3, writing_ms = writing.as_secs_f64() * 1e3, total_ms = started.elapsed().as_secs_f64() * 1e3, "KV blocks served");
    Ok(())
}

/// Keeps `count` blocks a peer pushes, each checked like a fetched one, in the pool of
/// the model (which this node must host); stops at the first bad one.
async fn keep_pushed(stream: &mut libp2p::Stream, models: &Models, model: ModelId, count: usize, counters: &Counters) -> Result<(), FetchError> {
    let Some(worker) = models.by_id(&model) else {
        refuse(stream, &format!("this node does not host model {model}")).await;
        return Ok(());
    };
    let layout = worker.pool().lock().layout();
    let expected = KvBlock::export_len(&layout);
    let mut buf = Vec::with_capacity(expected);
    for index in 0..count {
        let mut header = [0u8; KV_FRAME_HEADER];
        read_exact(stream, &mut header).await?;
        let (kind, len) = parse_header(header, expected).map_err(|e| FetchError::Frame(e.to_string()))?;
        if kind != KvFrameKind::Block || len != expected {
            return Err(FetchError::BadBlock { index, reason: format!("a {kind:?} frame of {len} bytes; a block of this model is {expected}") });
        }
        buf.resize(len, 0);
        read_exact(stream, &mut buf).await?;
        let block = KvBlock::import(&buf, &model).map_err(|e| FetchError::BadBlock { index, reason: e.to_string() })?;
        worker.pool().lock().insert(block).map_err(|e| FetchError::BadBlock { index, reason: e.to_string() })?;
        counters.blocks_kept_for_peers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(())
}

/// Pushes `blocks` (of `model`) to `peer` to keep.
pub async fn push(control: &mut libp2p_stream::Control, peer: PeerId, model: ModelId, blocks: &[Arc<KvBlock>]) -> Result<(), FetchError> {
    let request = KvRequest::Push { model_id: model.0, blocks: u32::try_from(blocks.len()).unwrap_or(u32::MAX) };
    let mut stream = open(control, peer, &request).await?;
    for block in blocks {
        write_frame(&mut stream, KvFrameKind::Block, &block.export()).await?;
    }
    // The peer closes once it has kept them all (or says why not).
    let mut answer = Vec::new();
    tokio::time::timeout(FRAME_DEADLINE, stream.read_to_end(&mut answer)).await.map_err(|_| FetchError::Timeout(FRAME_DEADLINE))??;
    if let Some(reason) = answer.get(KV_FRAME_HEADER..).filter(|_| answer.first() == Some(&KvFrameKind::Refused.byte())) {
        return Err(FetchError::Refused(String::from_utf8_lossy(reason).into_owned()));
    }
    Ok(())
}

async fn write_frame(stream: &mut libp2p::Stream, kind: KvFrameKind, payload: &[u8]) -> Result<(), FetchError> {
    tokio::time::timeout(FRAME_DEADLINE, async {
        stream.write_all(&frame_header(kind, payload.len())).await?;
        stream.write_all(payload).await?;
        stream.flush().await
    })
    .await
    .map_err(|_| FetchError::Timeout(FRAME_DEADLINE))??;
    Ok(())
}

/// The blocks `hashes` (a run chained from `parent`) from `peer`, as far as it holds them
/// and each one checks: its checksum, the model, `layout`, its size, the hash asked for,
/// the parent before it. The blocks got before a failure come back with it.
pub async fn fetch_run(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    model: ModelId,
    layout: KvLayout,
    hashes: &[BlockHash],
    parent: BlockHash,
) -> (Vec<KvBlock>, Option<FetchError>) {
    let request = KvRequest::Fetch { model_id: model.0, hashes: hashes.iter().map(|h| h.0).collect() };
    let run = Run { model, layout, hashes, parent, first_frame: FRAME_DEADLINE };
    let mut got = Vec::with_capacity(hashes.len());
    let error = fetch_into(control, peer, &request, &run, &mut got).await.err();
    (got, error)
}

/// A prompt a decode node hands to a prefill peer: whole blocks of `tokens`, whose block
/// hashes are `hashes`.
#[derive(Debug, Clone, Copy)]
pub struct PrefillAsk<'a> {
    pub model: ModelId,
    pub layout: KvLayout,
    pub tokens: &'a [u32],
    pub hashes: &'a [BlockHash],
}

/// The blocks of `ask` from block `from` on, computed by the prefill peer `peer` within
/// `deadline` (for its first block), each checked as in [`fetch_run`].
pub async fn prefill_run(control: &mut libp2p_stream::Control, peer: PeerId, ask: PrefillAsk<'_>, from: usize, deadline: Duration) -> (Vec<KvBlock>, Option<FetchError>) {
    let Some(run) = ask.hashes.get(from..).filter(|run| !run.is_empty()) else { return (Vec::new(), None) };
    let request = KvRequest::Prefill { model_id: ask.model.0, tokens: ask.tokens.to_vec(), from: u32::try_from(from).unwrap_or(u32::MAX) };
    let parent = from.checked_sub(1).and_then(|i| ask.hashes.get(i)).copied().unwrap_or(pyagent_engine::kv::hash::ROOT);
    let run = Run { model: ask.model, layout: ask.layout, hashes: run, parent, first_frame: deadline.min(MAX_PREFILL_DEADLINE) };
    let mut got = Vec::with_capacity(run.hashes.len());
    let error = fetch_into(control, peer, &request, &run, &mut got).await.err();
    (got, error)
}

/// The run of blocks an answer must be, and how long its first block may take.
struct Run<'a> {
    model: ModelId,
    layout: KvLayout,
    hashes: &'a [BlockHash],
    parent: BlockHash,
    first_frame: Duration,
}

async fn fetch_into(control: &mut libp2p_stream::Control, peer: PeerId, request: &KvRequest, run: &Run<'_>, got: &mut Vec<KvBlock>) -> Result<(), FetchError> {
    let started = Instant::now();
    let mut stream = open(control, peer, request).await?;
    let opened = started.elapsed();
    let mut first = Duration::ZERO;
    let mut checks = Checks { run, pending: VecDeque::new(), parent: run.parent, waited: Duration::ZERO, failed: false };
    let expected = KvBlock::export_len(&run.layout);
    let mut read = async {
        for index in 0..run.hashes.len() {
            let mut header = [0u8; KV_FRAME_HEADER];
            let deadline = if index == 0 { run.first_frame } else { FRAME_DEADLINE };
            read_exact_within(&mut stream, &mut header, deadline).await?;
            if index == 0 {
                first = started.elapsed();
            }
            let (kind, len) = parse_header(header, expected.max(MAX_REASON)).map_err(|e| FetchError::Frame(e.to_string()))?;
            let mut buf = vec![0u8; len];
            read_exact(&mut stream, &mut buf).await?;
            match kind {
                KvFrameKind::Missing => break,
                KvFrameKind::Refused => return Err(FetchError::Refused(String::from_utf8_lossy(&buf).into_owned())),
                KvFrameKind::Block if len != expected => {
                    return Err(FetchError::BadBlock { index, reason: format!("{len} bytes; a block of this model is {expected}") });
                }
                KvFrameKind::Block => checks.start(index, buf, got).await?,
            }
        }
        Ok(())
    }
    .await;
    // Blocks read before a failure are still checked and kept; a bad one among them is
    // the error to report (it came first).
    let drained = checks.finish(got).await;
    read = drained.and(read);
    let _ = stream.close().await;
    tracing::debug!(%peer, blocks = got.len(), open_ms = opened.as_secs_f64() * 1e3, first_block_ms = first.as_secs_f64() * 1e3, waiting_for_checks_ms = checks.waited.as_secs_f64() * 1e3, total_ms = started.elapsed().as_secs_f64() * 1e3, "KV blocks fetched");
    read
}

/// Blocks checked on blocking threads while the next ones are read (checking a block —
/// its BLAKE3 sum, its fields, a copy — takes about as long as receiving it); taken in
/// order, each against the hash asked for and the block before it.
struct Checks<'a> {
    run: &'a Run<'a>,
    pending: VecDeque<(usize, tokio::task::JoinHandle<Result<KvBlock, pyagent_engine::kv::BlockError>>)>,
    parent: BlockHash,
    /// Time the reader spent waiting for checks (a full queue, the end).
    waited: Duration,
    /// A block failed its check: none after it is taken.
    failed: bool,
}

/// Blocks in flight between the reader and the checks.
const CHECKS_AHEAD: usize = 4;

impl Checks<'_> {
    async fn start(&mut self, index: usize, bytes: Vec<u8>, got: &mut Vec<KvBlock>) -> Result<(), FetchError> {
        let model = self.run.model;
        self.pending.push_back((index, tokio::task::spawn_blocking(move || KvBlock::import(&bytes, &model))));
        if self.pending.len() >= CHECKS_AHEAD {
            self.take_one(got).await?;
        }
        Ok(())
    }

    async fn finish(&mut self, got: &mut Vec<KvBlock>) -> Result<(), FetchError> {
        while !self.pending.is_empty() && !self.failed {
            self.take_one(got).await?;
        }
        Ok(())
    }

    async fn take_one(&mut self, got: &mut Vec<KvBlock>) -> Result<(), FetchError> {
        let Some((index, check)) = self.pending.pop_front() else { return Ok(()) };
        let waiting = Instant::now();
        let imported = check.await;
        self.waited += waiting.elapsed();
        let block = self.accept(index, imported);
        self.failed = block.is_err();
        got.push(block?);
        Ok(())
    }

    fn accept(&mut self, index: usize, imported: Result<Result<KvBlock, pyagent_engine::kv::BlockError>, tokio::task::JoinError>) -> Result<KvBlock, FetchError> {
        let bad = |reason: String| FetchError::BadBlock { index, reason };
        let block = imported.map_err(|e| bad(format!("its check did not finish: {e}")))?.map_err(|e| bad(e.to_string()))?;
        let (layout, hash, parent) = (self.run.layout, self.run.hashes[index], self.parent);
        if block.layout != layout {
            return Err(bad(format!("layout {:?}; this model's is {layout:?}", block.layout)));
        }
        if block.hash != hash || block.parent != parent {
            return Err(bad(format!("it is block {} after {}; {hash} after {parent} was asked for", block.hash, block.parent)));
        }
        self.parent = block.hash;
        Ok(block)
    }
}

/// A block stream to `peer` with `request` written, within [`OPEN_DEADLINE`].
async fn open(control: &mut libp2p_stream::Control, peer: PeerId, request: &KvRequest) -> Result<libp2p::Stream, FetchError> {
    tokio::time::timeout(OPEN_DEADLINE, async {
        let mut stream = control.open_stream(peer, libp2p::StreamProtocol::new(KV_PROTOCOL)).await.map_err(|e| FetchError::Open(e.to_string()))?;
        frames::write(&mut stream, request).await.map_err(|e| FetchError::Open(e.to_string()))?;
        Ok(stream)
    })
    .await
    .map_err(|_| FetchError::Timeout(OPEN_DEADLINE))?
}

async fn read_exact(stream: &mut libp2p::Stream, buf: &mut [u8]) -> Result<(), FetchError> {
    read_exact_within(stream, buf, FRAME_DEADLINE).await
}

async fn read_exact_within(stream: &mut libp2p::Stream, buf: &mut [u8], deadline: Duration) -> Result<(), FetchError> {
    tokio::time::timeout(deadline, stream.read_exact(buf)).await.map_err(|_| FetchError::Timeout(deadline))??;
    Ok(())
}
