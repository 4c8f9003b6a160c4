//! The KV-block exchange: a prompt prefix computed anywhere in the swarm is fetched, not
//! recomputed.
//!
//! ```text
//! every advert ── per model: Bloom filter of the block hashes its pool holds ──▶ peers
//!
//! worker, before prefill:  prompt block hashes ── local pool run ──▶ missing from block i
//!     ──▶ KvExchange::fetch (plan: who holds the longest runs, split between holders)
//!     ──▶ /pyagent/kv/1 streams (or the bulk path), in parallel ──▶ each block checked
//!     ──▶ in order, as they come ──▶ the prompt's cache (allocated meanwhile) ──▶ prefill
//!         only the rest ──▶ the blocks join the pool, cut from the cache, after the run
//! ```
//!
//! Who holds what is the filters in the adverts (`pyagent_protocol::kv::KvSummary`): at
//! most 8 KiB per advert. A worker whose pool changed asks for the advert to go out
//! soon (`BlockSource::pool_changed`: within the membership's 300 ms gap), so a summary
//! is about 300 ms stale after a request, and at most ~27 KiB/s per node while pools
//! change (4 KiB/s at the 2 s interval otherwise). A stale entry or a false positive costs one short
//! answer. Any failure — a peer that is gone, slow, refuses, or sends a block that does
//! not check — ends that part of the fetch; the prefix is used up to the last good block
//! and the rest is computed, so the output is the same as without the exchange. A peer
//! that sent a bad block, or failed, is not asked again for [`plan::COOLDOWN`].
//!
//! **Offload**: blocks a pool has to drop (its last tier is full) go, in batches after
//! each request, to the member advertising the most free KV memory for that model; it
//! checks and keeps them, its advert's summary then lists them, and a later prompt
//! fetches them back like any other block. With no member with room they are let go, as
//! without peers. Peers rank after the disk tier (a node with a disk budget drops, and so
//! offloads, only what its disk cannot hold).
//!
//! **Roles** (`--role`, advertised with each model): a `prefill` node ranks after every
//! other candidate in placement, so requests go to the others; a `decode` node answers no
//! prefill requests, and when its peers hold only part of a prompt's prefix it asks the
//! prefill peer expected to be done soonest, counting the blocks it already holds
//! (`credit::prefill_peer`), to compute the
//! prompt's blocks (a `Prefill` request on the same stream protocol), fetches them as it
//! would held ones and decodes. If that fails or runs past three times the peer's
//! advertised rate (at most [`transfer::MAX_PREFILL_DEADLINE`]) it computes the rest
//! itself. `both` (the default) does each part itself.
//!
//! **Bulk path** (on unless `--no-kv-bulk`): a fetch asks for it (`FetchBulk`); a holder
//! with a bulk listener (a TCP port on the p2p listen address, `--kv-bulk-port`) answers with a
//! one-time token and AES-256-GCM key inside the stream, and the blocks come over a
//! plain TCP connection to that port, sealed in one record per block — about as fast as
//! the machines' TCP and AES, where the stream's Noise ChaCha20-Poly1305 and Yamux frames
//! cost several times more CPU per byte. Blocks are checked the same way either path. A
//! holder whose bulk port cannot be reached (a firewall) is fetched from over the stream,
//! and not offered the bulk path again for [`BULK_UNREACHABLE_FOR`].
//!
//! - [`credit`]: what placement credits a candidate with; which prefill peer (pure).
//! - [`plan`]: which peer serves which blocks (pure).
//! - [`transfer`]: the stream protocol, the asking side (fetch, prefill by a peer, push).
//! - [`serve`]: the stream protocol, the serving side.
//! - [`bulk`]: the bulk path's listener, connection and sealed records.

pub mod bulk;
pub mod credit;
pub mod plan;
pub mod serve;
pub mod transfer;

pub use credit::{Credit, credits};

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use pyagent_engine::kv::{BLOCK_TOKENS, BlockHash, KvBlock, KvLayout, ModelId, hash::ROOT};
use pyagent_protocol::{InferenceCapacity, InferenceRole};
use pyagent_protocol::api::PeerInfo;
use pyagent_protocol::kv::KvSummary;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::p2p::NodeClient;
use crate::serving::{BlockSource, Models};
use transfer::FetchError;

// Blocks are named the same on the wire as in the engine.
const _: () = assert!(pyagent_protocol::kv::BLOCK_TOKENS == BLOCK_TOKENS);

/// Longest a whole prefix fetch may take before prefill goes on without what is missing.
pub const FETCH_DEADLINE: Duration = Duration::from_secs(10);
/// Transfer rate assumed before any fetch was measured (bytes/s): a conservative LAN.
pub const DEFAULT_FETCH_RATE: f64 = 100e6;
/// How long a peer whose bulk port could not be reached is fetched from over the stream
/// without asking for the bulk path.
pub const BULK_UNREACHABLE_FOR: Duration = Duration::from_secs(300);
/// Fetched blocks on their way to the worker's thread, at most: the fetch waits (and the
/// peer with it) while the worker copies.
const HANDED_AHEAD: usize = 8;

/// What the exchange has done, for `/metrics` and `pyagent status`.
#[derive(Debug, Default)]
pub struct Counters {
    pub blocks_fetched: AtomicU64,
    pub bytes_fetched: AtomicU64,
    /// Of the blocks fetched, those that came over the bulk path.
    pub blocks_fetched_bulk: AtomicU64,
    pub blocks_served: AtomicU64,
    pub bytes_served: AtomicU64,
    /// Parts of fetches that ended in an error (peer gone, slow, refused, bad block).
    pub fetch_failures: AtomicU64,
    /// Bad blocks among those (each recomputed instead).
    pub bad_blocks: AtomicU64,
    /// Prefix fetches that got fewer blocks than planned: the rest was computed.
    pub fallbacks: AtomicU64,
    /// Dropped blocks pushed to a peer, and blocks peers pushed here.
    pub blocks_offloaded: AtomicU64,
    pub blocks_kept_for_peers: AtomicU64,
    /// Prompts prefilled here for decode peers, and blocks prefill peers computed for
    /// this node.
    pub prefills_served: AtomicU64,
    pub blocks_prefilled_by_peers: AtomicU64,
    /// Fetch rate measured (bytes/s, an f64's bits; 0 until the first fetch).
    rate_bits: AtomicU64,
}

impl Counters {
    fn add_served(&self, bytes: usize) {
        self.blocks_served.fetch_add(1, Ordering::Relaxed);
        self.bytes_served.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Bytes/s of the fetches so far (a moving average), or [`DEFAULT_FETCH_RATE`].
    pub fn fetch_rate(&self) -> f64 {
        let r = f64::from_bits(self.rate_bits.load(Ordering::Relaxed));
        if r > 0.0 { r } else { DEFAULT_FETCH_RATE }
    }

    fn measured(&self, bytes: u64, secs: f64) {
        if bytes < (1 << 20) || secs <= 0.0 {
            return; // too small to say anything about the rate
        }
        let now = bytes as f64 / secs;
        let old = f64::from_bits(self.rate_bits.load(Ordering::Relaxed));
        let new = if old > 0.0 { 0.7 * old + 0.3 * now } else { now };
        self.rate_bits.store(new.to_bits(), Ordering::Relaxed);
    }

    /// The counters as plain numbers.
    pub fn snapshot(&self) -> KvStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        KvStats {
            blocks_fetched: get(&self.blocks_fetched),
            bytes_fetched: get(&self.bytes_fetched),
            blocks_fetched_bulk: get(&self.blocks_fetched_bulk),
            blocks_served: get(&self.blocks_served),
            bytes_served: get(&self.bytes_served),
            fetch_failures: get(&self.fetch_failures),
            bad_blocks: get(&self.bad_blocks),
            fallbacks: get(&self.fallbacks),
            blocks_offloaded: get(&self.blocks_offloaded),
            blocks_kept_for_peers: get(&self.blocks_kept_for_peers),
            prefills_served: get(&self.prefills_served),
            blocks_prefilled_by_peers: get(&self.blocks_prefilled_by_peers),
            fetch_bytes_per_s: f64::from_bits(get(&self.rate_bits)),
        }
    }
}

/// A snapshot of [`Counters`].
pub type KvStats = pyagent_protocol::api::KvExchangeCounters;

/// The node's side of the exchange (cheap to clone).
#[derive(Clone)]
pub struct KvExchange {
    inner: Arc<Inner>,
}

struct Inner {
    me: PeerId,
    control: libp2p_stream::Control,
    client: NodeClient,
    counters: Arc<Counters>,
    cooldowns: Mutex<plan::Cooldowns>,
    runtime: tokio::runtime::Handle,
    /// Batches of dropped blocks on their way to a peer (full: the batch is let go).
    offload: tokio::sync::mpsc::Sender<Vec<Arc<KvBlock>>>,
    /// Workers fetch missing prefixes (off: `--no-kv-fetch`; blocks are still served and
    /// offloaded).
    fetch: bool,
    /// This node's part (`--role`): a decode node has prefill peers compute the blocks
    /// of a prompt that no peer holds.
    role: InferenceRole,
    /// Fetches ask for the bulk path (`--no-kv-bulk`: never).
    bulk: bool,
    /// Peers whose bulk port could not be reached, and since when.
    bulk_unreachable: Mutex<HashMap<PeerId, Instant>>,
}

/// How a node takes part in the exchange.
#[derive(Debug)]
pub struct KvSettings {
    /// Workers fetch missing prefixes (`--no-kv-fetch`: off).
    pub fetch: bool,
    pub role: InferenceRole,
    /// Fetches ask peers for their bulk path (`--no-kv-bulk`: off).
    pub bulk_asked: bool,
    /// This node's bulk path: the listener it serves it on (bound on the p2p listen
    /// address); `None`: blocks are served over streams only.
    pub bulk: Option<std::net::TcpListener>,
}

/// Batches of dropped blocks waiting to be pushed to a peer.
const OFFLOAD_QUEUE: usize = 8;

impl std::fmt::Debug for KvExchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvExchange").field("me", &self.inner.me).field("counters", &self.inner.counters.snapshot()).finish_non_exhaustive()
    }
}

impl KvExchange {
    /// Serves this node's blocks to members, offloads the blocks its pools drop, and,
    /// when `fetch` is on, makes every worker fetch missing prefixes before prefill. Must run inside the tokio runtime.
    /// `counters` are shared with whoever reports them (`pyagent status`).
    pub fn start(me: PeerId, control: libp2p_stream::Control, models: &Models, client: NodeClient, settings: KvSettings, counters: Arc<Counters>) -> (Self, Option<JoinHandle<()>>) {
        let KvSettings { fetch, role, bulk_asked, bulk } = settings;
        let prefill = role != InferenceRole::Decode;
        let server = if models.is_empty() {
            None
        } else {
            let listener = bulk.and_then(|listener| match bulk::BulkListener::from_std(listener) {
                Ok((listener, task)) => {
                    tracing::debug!(port = listener.port(), "KV bulk path listening");
                    Some((listener, task))
                }
                Err(e) => {
                    tracing::warn!("KV blocks are served over streams only: cannot listen for the bulk path: {e}");
                    None
                }
            });
            serve::serve(control.clone(), models.clone(), client.clone(), counters.clone(), prefill, listener)
        };
        let (offload, batches) = tokio::sync::mpsc::channel(OFFLOAD_QUEUE);
        let inner = Inner {
            me,
            control,
            client,
            counters,
            cooldowns: Mutex::default(),
            runtime: tokio::runtime::Handle::current(),
            offload,
            fetch,
            role,
            bulk: bulk_asked,
            bulk_unreachable: Mutex::default(),
        };
        let exchange = Self { inner: Arc::new(inner) };
        // Ends when the last handle (and with it the sender) is gone.
        tokio::spawn(exchange.clone().offloader(batches));
        models.set_block_source(Arc::new(exchange.clone()));
        (exchange, server)
    }

    pub fn stats(&self) -> KvStats {
        self.inner.counters.snapshot()
    }

    /// Bytes/s that fetches have measured (or the default before any).
    pub fn fetch_rate(&self) -> f64 {
        self.inner.counters.fetch_rate()
    }

    /// Which connected members advertise blocks of `model`, and their summaries.
    async fn holders(&self, model: &ModelId) -> Vec<(PeerId, KvSummary)> {
        let Ok(peers) = self.inner.client.peers().await else { return Vec::new() };
        self.members_serving(&peers, model).into_iter().filter(|(_, c)| !c.kv_blocks.bits.is_empty()).map(|(peer, c)| (peer, c.kv_blocks.clone())).collect()
    }

    /// The connected members among `peers` (this node and cooling peers left out) that
    /// serve `model`, with their adverts for it.
    fn members_serving<'a>(&self, peers: &'a [PeerInfo], model: &ModelId) -> Vec<(PeerId, &'a InferenceCapacity)> {
        let id = model.to_string();
        let now = Instant::now();
        let mut cooldowns = self.inner.cooldowns.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        peers
            .iter()
            .filter(|p| p.connected)
            .filter_map(|p| Some((p.peer_id.parse::<PeerId>().ok()?, p.capacity.models.iter().find(|m| m.model_id == id)?)))
            .filter(|(peer, _)| *peer != self.inner.me && !cooldowns.is_cooling(peer, now))
            .collect()
    }

    /// Blocks `hashes[from..]` (those of `tokens`) from the peers that hold them, and on
    /// a decode node the rest from a prefill peer (see the module docs), into `out` in
    /// order as they come (it stops when `out` is closed).
    pub async fn fetch(&self, model: ModelId, layout: KvLayout, tokens: &[u32], hashes: &[BlockHash], from: usize, out: &mpsc::Sender<KvBlock>) {
        let at = from + self.fetch_held(model, layout, hashes, from, out).await;
        if self.inner.role == InferenceRole::Decode && at < hashes.len() {
            for block in self.prefill_elsewhere(model, layout, tokens, hashes, at).await {
                if out.send(block).await.is_err() {
                    break;
                }
            }
        }
    }

    /// The blocks of `tokens` from block `from` on, computed by the prefill peer expected
    /// to be done soonest; none when there is no such peer or it fails (the worker then
    /// computes them).
    async fn prefill_elsewhere(&self, model: ModelId, layout: KvLayout, tokens: &[u32], hashes: &[BlockHash], from: usize) -> Vec<KvBlock> {
        let blocks = hashes.len().min(pyagent_protocol::kv::MAX_FETCH_BLOCKS).min(tokens.len() / BLOCK_TOKENS);
        if from >= blocks {
            return Vec::new();
        }
        let Ok(peers) = self.inner.client.peers().await else { return Vec::new() };
        let prompt: Vec<[u8; 32]> = hashes[..blocks].iter().map(|h| h.0).collect();
        let Some((peer, expected)) = credit::prefill_peer(&self.members_serving(&peers, &model), &prompt) else { return Vec::new() };
        // Three times what its advert promises, and a margin for the connection.
        let deadline = Duration::try_from_secs_f64(expected * 3.0 + 5.0).unwrap_or(transfer::MAX_PREFILL_DEADLINE);
        let started = Instant::now();
        let mut control = self.inner.control.clone();
        let (got, error) = {
            let ask = transfer::PrefillAsk { model, layout, tokens: &tokens[..blocks * BLOCK_TOKENS], hashes: &hashes[..blocks] };
            transfer::prefill_run(&mut control, peer, ask, from, deadline).await
        };
        if let Some(e) = &error {
            self.failed(peer, e);
        }
        let c = &self.inner.counters;
        c.blocks_prefilled_by_peers.fetch_add(got.len() as u64, Ordering::Relaxed);
        if got.len() < blocks - from {
            c.fallbacks.fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(%peer, prefilled = got.len(), asked = blocks - from, ms = started.elapsed().as_millis() as u64, "prompt prefilled by a peer");
        got
    }

    /// Blocks `hashes[from..]` from the peers that hold them, into `out` as they come:
    /// the parts (one per holder) are fetched at once, each into a channel with room for
    /// all of it, and handed on in order, a part only after the whole one before it.
    /// Returns how many were handed on: the usable prefix.
    async fn fetch_held(&self, model: ModelId, layout: KvLayout, hashes: &[BlockHash], from: usize, out: &mpsc::Sender<KvBlock>) -> usize {
        let holders = self.holders(&model).await;
        let raw: Vec<[u8; 32]> = hashes.iter().map(|h| h.0).collect();
        let parts = plan::plan(&holders.iter().map(|(p, s)| (*p, s)).collect::<Vec<_>>(), &raw, from);
        if parts.is_empty() {
            return 0;
        }
        let planned: usize = parts.iter().map(|p| p.range.len()).sum();
        let started = Instant::now();
        let (senders, receivers): (Vec<_>, Vec<_>) = parts.iter().map(|p| mpsc::channel::<KvBlock>(p.range.len().max(1))).unzip();
        let runs = parts.iter().zip(senders).map(|(part, mut keep)| {
            let mut control = self.inner.control.clone();
            let parent = part.range.start.checked_sub(1).map_or(ROOT, |i| hashes[i]);
            let run = &hashes[part.range.clone()];
            async move {
                let bulk = self.bulk_address(part.peer).await;
                transfer::fetch_run(&mut control, part.peer, bulk, model, layout, run, parent, &mut keep).await
            }
        });
        let forwarded = AtomicUsize::new(0);
        let forward = async {
            for (part, mut blocks) in parts.iter().zip(receivers) {
                let mut n = 0;
                while let Some(block) = blocks.recv().await {
                    if out.send(block).await.is_err() {
                        return;
                    }
                    n += 1;
                    forwarded.fetch_add(1, Ordering::Relaxed);
                }
                if n < part.range.len() {
                    return; // the parts after a short one are of no use
                }
            }
        };
        let c = &self.inner.counters;
        let results = match tokio::time::timeout(FETCH_DEADLINE, futures::future::join(futures::future::join_all(runs), forward)).await {
            Ok((results, ())) => Some(results),
            Err(_) => {
                tracing::info!(blocks = planned, "KV prefix fetch ran past its deadline; computing the rest of the prefix instead");
                c.fetch_failures.fetch_add(1, Ordering::Relaxed);
                None
            }
        };
        let secs = started.elapsed().as_secs_f64();
        let fetched = forwarded.load(Ordering::Relaxed);
        let mut whole = true;
        for (part, result) in parts.iter().zip(results.iter().flatten()) {
            match &result.error {
                Some(FetchError::Unwanted) | None => {}
                Some(e) => self.failed(part.peer, e),
            }
            if result.path == transfer::Path::BulkUnreachable {
                self.inner.bulk_unreachable.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(part.peer, Instant::now());
            }
            if whole {
                whole = result.got == part.range.len();
                if result.path == transfer::Path::Bulk {
                    c.blocks_fetched_bulk.fetch_add(result.got as u64, Ordering::Relaxed);
                }
            }
        }
        let bytes = (fetched * KvBlock::export_len(&layout)) as u64;
        c.blocks_fetched.fetch_add(fetched as u64, Ordering::Relaxed);
        c.bytes_fetched.fetch_add(bytes, Ordering::Relaxed);
        c.measured(bytes, secs);
        if fetched < planned {
            c.fallbacks.fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(fetched, planned, ms = (secs * 1e3) as u64, "KV prefix fetched");
        fetched
    }

    /// Where to reach `peer`'s bulk path (the address of this node's connection to it),
    /// unless the bulk path is off here or the peer's port was unreachable lately.
    async fn bulk_address(&self, peer: PeerId) -> Option<IpAddr> {
        if !self.inner.bulk {
            return None;
        }
        {
            let mut unreachable = self.inner.bulk_unreachable.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = Instant::now();
            unreachable.retain(|_, since| now.duration_since(*since) < BULK_UNREACHABLE_FOR);
            if unreachable.contains_key(&peer) {
                return None;
            }
        }
        self.inner.client.peer_ip(peer).await.ok().flatten()
    }

    /// Pushes batches of dropped blocks to the member with the most free KV memory for
    /// their model (which must hold the batch); with no such member they are let go.
    async fn offloader(self, mut batches: tokio::sync::mpsc::Receiver<Vec<Arc<KvBlock>>>) {
        // Holds only a weak share: the exchange's last handle going ends the loop.
        let weak = Arc::downgrade(&self.inner);
        drop(self);
        while let Some(batch) = batches.recv().await {
            let Some(inner) = weak.upgrade() else { break };
            let me = Self { inner };
            me.push(batch).await;
        }
    }

    async fn push(&self, batch: Vec<Arc<KvBlock>>) {
        let Some(first) = batch.first() else { return };
        let (model, bytes) = (first.model, batch.iter().map(|b| b.size() as u64).sum::<u64>());
        let Ok(peers) = self.inner.client.peers().await else { return };
        let target = self.members_serving(&peers, &model).into_iter().map(|(peer, c)| (peer, c.kv_free_bytes)).filter(|(_, free)| *free >= bytes).max_by_key(|(peer, free)| (*free, *peer));
        let Some((peer, _)) = target else {
            tracing::debug!(blocks = batch.len(), "dropped KV blocks let go: no peer has room for them");
            return;
        };
        for chunk in batch.chunks(pyagent_protocol::kv::MAX_FETCH_BLOCKS) {
            match transfer::push(&mut self.inner.control.clone(), peer, model, chunk).await {
                Ok(()) => {
                    self.inner.counters.blocks_offloaded.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    self.failed(peer, &e);
                    return;
                }
            }
        }
        tracing::debug!(%peer, blocks = batch.len(), "dropped KV blocks offloaded");
    }

    fn failed(&self, peer: PeerId, e: &transfer::FetchError) {
        tracing::info!(%peer, "KV block fetch failed, computing instead: {e}");
        let c = &self.inner.counters;
        c.fetch_failures.fetch_add(1, Ordering::Relaxed);
        if e.is_bad_peer() {
            c.bad_blocks.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.cooldowns.lock().unwrap_or_else(std::sync::PoisonError::into_inner).punish(peer, Instant::now());
    }
}

impl BlockSource for KvExchange {
    fn fetch(&self, model: ModelId, layout: KvLayout, tokens: &[u32], hashes: &[BlockHash], from: usize) -> Option<mpsc::Receiver<KvBlock>> {
        if !self.inner.fetch {
            return None;
        }
        let (tx, rx) = mpsc::channel(HANDED_AHEAD);
        let (me, tokens, hashes) = (self.clone(), tokens.to_vec(), hashes.to_vec());
        self.inner.runtime.spawn(async move { me.fetch(model, layout, &tokens, &hashes, from, &tx).await });
        Some(rx)
    }

    fn pool_changed(&self) {
        self.inner.client.advert_soon();
    }

    fn offload(&self, blocks: Vec<Arc<KvBlock>>) {
        if self.inner.offload.try_send(blocks).is_err() {
            tracing::debug!("KV offload queue full: dropped blocks let go");
        }
    }
}
