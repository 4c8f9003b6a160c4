//! The block transfer stream protocol (`/pyagent/kv/1`, framing in
//! `pyagent_protocol::kv`): serving this node's blocks to swarm members (and, on a
//! prefill node, computing a decode peer's prompt first), and fetching a run of blocks
//! from one peer with every block checked before it is used — over the stream, or over
//! the bulk path ([`super::bulk`]) that the stream agrees.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::PeerId;
use pyagent_engine::kv::{BlockHash, Integrity, KvBlock, KvLayout, ModelId, block_hashes};
use pyagent_protocol::kv::{BULK_TAG_BYTES, BulkOffer, KV_FRAME_HEADER, KV_PROTOCOL, KvFrameKind, KvRequest, MAX_KV_REQUEST_BYTES, frame_header, parse_header};
use tokio::io::AsyncReadExt as _;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::Counters;
use super::bulk::{self, BulkError, BulkListener, RecordOpener, RecordSealer};
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
    #[error("bulk path: {0}")]
    Bulk(#[from] BulkError),
}

impl From<std::io::Error> for FetchError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof { Self::Closed } else { Self::Io(e) }
    }
}

impl FetchError {
    /// The peer misbehaved (as opposed to merely being slow or gone).
    pub fn is_bad_peer(&self) -> bool {
        matches!(self, Self::Frame(_) | Self::BadBlock { .. } | Self::Bulk(BulkError::Sealed(_) | BulkError::Short(_)))
    }
}

/// Starts serving block streams (and prompts to prefill, unless `prefill` is off: a
/// decode node), answering `FetchBulk` over `bulk` when there is one; abort the handle
/// to stop (the bulk listener's task, `bulk_task`, stops with it).
pub(super) fn serve(
    mut control: libp2p_stream::Control,
    models: Models,
    client: NodeClient,
    counters: Arc<Counters>,
    prefill: bool,
    (bulk, bulk_task): (Option<BulkListener>, Option<JoinHandle<()>>),
) -> Option<JoinHandle<()>> {
    let mut incoming = match control.accept(libp2p::StreamProtocol::new(KV_PROTOCOL)) {
        Ok(incoming) => incoming,
        Err(e) => {
            tracing::error!("cannot serve KV block streams: {e}");
            return None;
        }
    };
    let permits = Arc::new(Semaphore::new(MAX_SERVED_STREAMS));
    Some(tokio::spawn(async move {
        let _bulk_task = bulk_task.map(AbortOnDrop);
        while let Some((peer, mut stream)) = incoming.next().await {
            let (models, client, counters, bulk) = (models.clone(), client.clone(), counters.clone(), bulk.clone());
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                tokio::spawn(async move { refuse(&mut stream, &format!("{MAX_SERVED_STREAMS} block streams are being served here")).await });
                continue;
            };
            tokio::spawn(async move {
                let member = client.peers().await.is_ok_and(|peers| peers.iter().any(|p| p.peer_id == peer.to_string()));
                if member {
                    if let Err(e) = serve_one(&mut stream, &models, &counters, prefill, bulk.as_ref()).await {
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

/// Aborts a task when dropped (with the task that holds it).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
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

async fn serve_one(stream: &mut libp2p::Stream, models: &Models, counters: &Counters, prefill: bool, bulk: Option<&BulkListener>) -> Result<(), FetchError> {
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
    let (model_id, hashes, bulk) = match request {
        KvRequest::Fetch { model_id, hashes } => (model_id, hashes.into_iter().map(BlockHash).collect(), None),
        KvRequest::FetchBulk { model_id, hashes } => (model_id, hashes.into_iter().map(BlockHash).collect(), bulk),
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
    match bulk {
        Some(bulk) => serve_bulk(stream, bulk, worker, hashes, counters).await,
        None => send_blocks(stream, worker, hashes, counters).await,
    }
}

/// Answers a `FetchBulk`: offers the bulk path on the stream, then sends the blocks over
/// the connection that shows the offer's token (over the stream when no offer can be
/// made). The stream stays open until the answer ends.
async fn serve_bulk(stream: &mut libp2p::Stream, bulk: &BulkListener, worker: &ModelWorker, hashes: Vec<BlockHash>, counters: &Counters) -> Result<(), FetchError> {
    let (offer, handoff) = match bulk.offer(OPEN_DEADLINE) {
        Ok(offer) => offer,
        Err(e) => {
            tracing::debug!("{e}: answering over the block stream");
            return send_blocks(stream, worker, hashes, counters).await;
        }
    };
    write_frame(stream, KvFrameKind::Bulk, &offer.to_bytes()).await?;
    let Some(mut tcp) = handoff.connection(OPEN_DEADLINE).await else {
        return Err(FetchError::Open("the requester did not reach the bulk port in time".into()));
    };
    let sent = send_records(&mut tcp, RecordSealer::new(&offer.key)?, worker, hashes, counters).await;
    let _ = tokio::time::timeout(FRAME_DEADLINE, tcp.shutdown()).await;
    sent
}

/// Sealed records made ahead of the connection, at most.
const RECORDS_AHEAD: usize = 4;

/// Answers with the blocks `hashes` as [`send_blocks`] does, as records sealed by
/// `sealer` on `tcp`. The records are made (block taken from the pool, its byte form
/// written straight into the record, sealed) on a blocking thread while the ones before
/// them are written.
async fn send_records(tcp: &mut TcpStream, mut sealer: RecordSealer, worker: &ModelWorker, hashes: Vec<BlockHash>, counters: &Counters) -> Result<(), FetchError> {
    let started = Instant::now();
    let pool = worker.pool().clone();
    let (records, mut sealed) = tokio::sync::mpsc::channel::<Vec<u8>>(RECORDS_AHEAD);
    // Written records go back to be filled again (their pages already mapped).
    let (spent, mut reuse) = tokio::sync::mpsc::channel::<Vec<u8>>(RECORDS_AHEAD + 2);
    let maker = tokio::task::spawn_blocking(move || {
        for hash in hashes {
            let block = pool.lock().peek(&hash).map_err(|e| FetchError::Frame(format!("this node's pool: {e}")))?;
            let mut record = reuse.try_recv().unwrap_or_default();
            // Room for the whole record up front: no reallocation (and copy) for its tag.
            record.clear();
            record.reserve(KV_FRAME_HEADER + block.as_ref().map_or(0, |b| KvBlock::export_len(&b.layout)) + BULK_TAG_BYTES);
            match &block {
                Some(block) => sealer.seal_with(KvFrameKind::Block, &mut record, |out| block.export_into(out, Integrity::Authenticated))?,
                None => sealer.seal(KvFrameKind::Missing, &[], &mut record)?,
            }
            // The writer stopped (its error is the one to report).
            if records.blocking_send(record).is_err() || block.is_none() {
                break;
            }
        }
        Ok::<_, FetchError>(())
    });
    let (mut writing, mut sent) = (Duration::ZERO, 0);
    let written = async {
        while let Some(record) = sealed.recv().await {
            let write = Instant::now();
            tokio::time::timeout(FRAME_DEADLINE, tcp.write_all(&record)).await.map_err(|_| FetchError::Timeout(FRAME_DEADLINE))??;
            writing += write.elapsed();
            if record.first() == Some(&KvFrameKind::Block.byte()) {
                counters.add_served(record.len() - KV_FRAME_HEADER - BULK_TAG_BYTES);
                sent += 1;
            }
            let _ = spent.try_send(record);
        }
        Ok::<_, FetchError>(())
    }
    .await;
    drop(sealed);
    let made = maker.await.map_err(|e| FetchError::Frame(format!("making the records: {e}")))?;
    tracing::debug!(blocks = sent, bulk = true, writing_ms = writing.as_secs_f64() * 1e3, total_ms = started.elapsed().as_secs_f64() * 1e3, "KV blocks served");
    written.and(made)
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
    tracing::debug!(blocks = sent, bulk = false, reading_ms = reading.as_secs_f64() * 1e3, writing_ms = writing.as_secs_f64() * 1e3, total_ms = started.elapsed().as_secs_f64() * 1e3, "KV blocks served");
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

/// How a fetch's blocks came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Over the block stream.
    Stream,
    /// Over the bulk path the stream agreed.
    Bulk,
    /// The bulk path was offered but its port could not be reached: over a second
    /// stream instead.
    BulkUnreachable,
}

/// What a fetch from one peer brought: the blocks got (those before a failure too), the
/// failure, and how they came.
#[derive(Debug)]
pub struct Fetched {
    pub blocks: Vec<KvBlock>,
    pub error: Option<FetchError>,
    pub path: Path,
}

/// The blocks `hashes` (a run chained from `parent`) from `peer`, as far as it holds them
/// and each one checks: its checksum (on the stream; the record's AEAD tag on the bulk
/// path), the model, `layout`, its size, the hash asked for, the parent before it. The
/// blocks got before a failure come back with it. With `bulk` (the address this node reached the peer at), the
/// peer may move them over its bulk path; if that cannot be reached, they come over the
/// stream.
pub async fn fetch_run(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    bulk: Option<IpAddr>,
    model: ModelId,
    layout: KvLayout,
    hashes: &[BlockHash],
    parent: BlockHash,
) -> Fetched {
    let raw = || hashes.iter().map(|h| h.0).collect();
    let run = Run { model, layout, hashes, parent, first_frame: FRAME_DEADLINE };
    let mut blocks = Vec::with_capacity(hashes.len());
    let request = match bulk {
        Some(_) => KvRequest::FetchBulk { model_id: model.0, hashes: raw() },
        None => KvRequest::Fetch { model_id: model.0, hashes: raw() },
    };
    let mut path = Path::Stream;
    let mut error = fetch_into(control, peer, &request, bulk, &run, &mut blocks, &mut path).await.err();
    if let Some(e @ FetchError::Bulk(BulkError::Unreachable { .. })) = &error {
        tracing::info!(%peer, "{e}; fetching over the block stream instead");
        path = Path::BulkUnreachable;
        let request = KvRequest::Fetch { model_id: model.0, hashes: raw() };
        error = fetch_into(control, peer, &request, None, &run, &mut blocks, &mut Path::Stream).await.err();
    }
    Fetched { blocks, error, path }
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
    let error = fetch_into(control, peer, &request, None, &run, &mut got, &mut Path::Stream).await.err();
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

/// Reads the answer to `request` into `got`; a `Bulk` offer first moves it to the bulk
/// path (only when `bulk` is the peer's address: an unasked offer is a bad frame), and
/// `path` says so.
async fn fetch_into(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    request: &KvRequest,
    bulk: Option<IpAddr>,
    run: &Run<'_>,
    got: &mut Vec<KvBlock>,
    path: &mut Path,
) -> Result<(), FetchError> {
    let started = Instant::now();
    let mut answer = Answer { stream: open(control, peer, request).await?, bulk: None, records: 0 };
    let opened = started.elapsed();
    let mut first = Duration::ZERO;
    let mut checks = Checks { run, pending: VecDeque::new(), parent: run.parent, waited: Duration::ZERO, failed: false };
    let expected = KvBlock::export_len(&run.layout);
    let max = expected.max(MAX_REASON);
    let answer_ref = &mut answer;
    let mut read = async {
        let answer = answer_ref;
        let mut index = 0;
        while index < run.hashes.len() {
            let deadline = if index == 0 { run.first_frame } else { FRAME_DEADLINE };
            let (kind, payload) = answer.next(max, deadline).await?;
            if index == 0 {
                first = started.elapsed();
            }
            let len = payload.len();
            match kind {
                KvFrameKind::Missing => break,
                KvFrameKind::Refused => return Err(FetchError::Refused(String::from_utf8_lossy(&payload.open()?).into_owned())),
                KvFrameKind::Bulk => match bulk {
                    Some(ip) if index == 0 && answer.bulk.is_none() => {
                        let offer = BulkOffer::from_bytes(&payload.open()?).map_err(|e| FetchError::Frame(e.to_string()))?;
                        answer.bulk = Some(bulk::connect(ip, &offer).await?);
                        *path = Path::Bulk;
                        continue;
                    }
                    _ => return Err(FetchError::Frame("a bulk offer that was not asked for".into())),
                },
                KvFrameKind::Block if len != expected => {
                    return Err(FetchError::BadBlock { index, reason: format!("{len} bytes; a block of this model is {expected}") });
                }
                KvFrameKind::Block => checks.start(index, payload, got).await?,
            }
            index += 1;
        }
        Ok(())
    }
    .await;
    // Blocks read before a failure are still checked and kept; a bad one among them is
    // the error to report (it came first).
    let drained = checks.finish(got).await;
    read = drained.and(read);
    answer.close().await;
    tracing::debug!(%peer, blocks = got.len(), ?path, open_ms = opened.as_secs_f64() * 1e3, first_block_ms = first.as_secs_f64() * 1e3, waiting_for_checks_ms = checks.waited.as_secs_f64() * 1e3, total_ms = started.elapsed().as_secs_f64() * 1e3, "KV blocks fetched");
    read
}

/// Where an answer's frames come from: the block stream, or (after a `Bulk` offer) the
/// bulk connection, with the stream kept open until the end.
struct Answer {
    stream: libp2p::Stream,
    bulk: Option<(TcpStream, RecordOpener)>,
    /// Records read from the bulk connection.
    records: u64,
}

/// A frame's payload as it arrived: plain (the stream), or sealed (a bulk record, opened
/// where it is used: a block's on the thread that checks it).
enum Payload {
    Plain(Vec<u8>),
    Sealed { opener: RecordOpener, number: u64, header: [u8; KV_FRAME_HEADER], sealed: Vec<u8> },
}

impl Payload {
    /// The payload's length (as its header says).
    fn len(&self) -> usize {
        match self {
            Self::Plain(bytes) => bytes.len(),
            Self::Sealed { sealed, .. } => sealed.len() - BULK_TAG_BYTES,
        }
    }

    /// How the payload's bytes were guarded on their way.
    fn integrity(&self) -> Integrity {
        match self {
            Self::Plain(_) => Integrity::Checksum,
            Self::Sealed { .. } => Integrity::Authenticated,
        }
    }

    /// The payload's bytes; a sealed one must open.
    fn open(self) -> Result<Vec<u8>, BulkError> {
        match self {
            Self::Plain(bytes) => Ok(bytes),
            Self::Sealed { opener, number, header, mut sealed } => {
                let len = opener.open(number, header, &mut sealed)?;
                sealed.truncate(len);
                Ok(sealed)
            }
        }
    }
}

impl Answer {
    /// The next frame, its payload at most `max` bytes. `deadline` bounds the wait for it
    /// to start.
    async fn next(&mut self, max: usize, deadline: Duration) -> Result<(KvFrameKind, Payload), FetchError> {
        let mut header = [0u8; KV_FRAME_HEADER];
        let Some((tcp, opener)) = &mut self.bulk else {
            read_exact_within(&mut self.stream, &mut header, deadline).await?;
            let (kind, len) = parse_header(header, max).map_err(|e| FetchError::Frame(e.to_string()))?;
            let mut buf = vec![0u8; len];
            read_exact(&mut self.stream, &mut buf).await?;
            return Ok((kind, Payload::Plain(buf)));
        };
        read_tcp(tcp, &mut header, deadline).await?;
        let (kind, len) = parse_header(header, max).map_err(|e| FetchError::Frame(e.to_string()))?;
        // Read into spare capacity: no pass to zero 720 KB first.
        let mut sealed = Vec::with_capacity(len + BULK_TAG_BYTES);
        tokio::time::timeout(FRAME_DEADLINE, async {
            while sealed.len() < len + BULK_TAG_BYTES {
                let want = (len + BULK_TAG_BYTES - sealed.len()) as u64;
                if (&mut *tcp).take(want).read_buf(&mut sealed).await? == 0 {
                    return Err(FetchError::Closed);
                }
            }
            Ok(())
        })
        .await
        .map_err(|_| FetchError::Timeout(FRAME_DEADLINE))??;
        let number = self.records;
        self.records += 1;
        Ok((kind, Payload::Sealed { opener: opener.clone(), number, header, sealed }))
    }

    async fn close(mut self) {
        let _ = self.stream.close().await;
    }
}

async fn read_tcp(tcp: &mut TcpStream, buf: &mut [u8], deadline: Duration) -> Result<(), FetchError> {
    tokio::time::timeout(deadline, tcp.read_exact(buf)).await.map_err(|_| FetchError::Timeout(deadline))??;
    Ok(())
}

/// Blocks checked on blocking threads while the next ones are read (checking a block —
/// its BLAKE3 sum on the stream or its record's AEAD tag on the bulk path, its fields, a
/// copy — takes about as long as receiving it); taken in order, each against the hash
/// asked for and the block before it.
struct Checks<'a> {
    run: &'a Run<'a>,
    pending: VecDeque<(usize, tokio::task::JoinHandle<Result<KvBlock, String>>)>,
    parent: BlockHash,
    /// Time the reader spent waiting for checks (a full queue, the end).
    waited: Duration,
    /// A block failed its check: none after it is taken.
    failed: bool,
}

/// Blocks in flight between the reader and the checks.
const CHECKS_AHEAD: usize = 4;

impl Checks<'_> {
    /// Starts checking the block whose byte form is `payload` (opening it first if sealed).
    async fn start(&mut self, index: usize, payload: Payload, got: &mut Vec<KvBlock>) -> Result<(), FetchError> {
        let model = self.run.model;
        let check = move || {
            let integrity = payload.integrity();
            let bytes = payload.open().map_err(|e| e.to_string())?;
            KvBlock::import_with(&bytes, &model, integrity).map_err(|e| e.to_string())
        };
        self.pending.push_back((index, tokio::task::spawn_blocking(check)));
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

    fn accept(&mut self, index: usize, imported: Result<Result<KvBlock, String>, tokio::task::JoinError>) -> Result<KvBlock, FetchError> {
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
