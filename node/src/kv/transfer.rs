//! The block transfer stream protocol (`/pyagent/kv/1`, framing in
//! `pyagent_protocol::kv`), the asking side: fetching a run of blocks from one peer with
//! every block checked before it is used — over the stream, or over the bulk path
//! ([`super::bulk`]) that the stream agrees — having a prefill peer compute them, and
//! pushing blocks to a peer to keep. The limits and errors both sides share are here;
//! the serving side is [`super::serve`].

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::PeerId;
use pyagent_engine::kv::{BlockHash, Integrity, KvBlock, KvLayout, ModelId};
use pyagent_protocol::kv::{BULK_TAG_BYTES, BulkOffer, KV_FRAME_HEADER, KV_PROTOCOL, KvFrameKind, KvRequest, frame_header, parse_header};
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;

use super::bulk::{self, BulkError, RecordOpener};
use crate::inference::frames;

/// Longest wait to open a stream and hand it the request.
pub const OPEN_DEADLINE: Duration = Duration::from_secs(5);
/// Longest wait for one block (or for a reader to take one).
pub const FRAME_DEADLINE: Duration = Duration::from_secs(5);
/// Block streams served at once; more are refused.
pub const MAX_SERVED_STREAMS: usize = 32;
/// Longest a prefill peer may take to compute a prompt before its first block.
pub const MAX_PREFILL_DEADLINE: Duration = Duration::from_secs(60);
/// Longest reason a refusal carries.
pub(super) const MAX_REASON: usize = 1024;

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
    /// Not the peer's doing: this node stopped taking the blocks (a later part of the
    /// prefix failed, or the run could not use one).
    #[error("the blocks were no longer wanted")]
    Unwanted,
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

pub(super) async fn write_frame(stream: &mut libp2p::Stream, kind: KvFrameKind, payload: &[u8]) -> Result<(), FetchError> {
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

/// What a fetch from one peer brought: how many blocks were kept (those before a failure
/// too), the failure, and how they came.
#[derive(Debug)]
pub struct Fetched {
    pub got: usize,
    pub error: Option<FetchError>,
    pub path: Path,
}

/// Where a fetch's checked blocks go, in the run's order, as they come; `false`: no more
/// are wanted (the fetch stops with [`FetchError::Unwanted`]).
pub trait Keep: Send {
    fn keep(&mut self, block: KvBlock) -> bool;
}

impl Keep for Vec<KvBlock> {
    fn keep(&mut self, block: KvBlock) -> bool {
        self.push(block);
        true
    }
}

/// A channel with room for the whole run (it never waits).
impl Keep for tokio::sync::mpsc::Sender<KvBlock> {
    fn keep(&mut self, block: KvBlock) -> bool {
        self.try_send(block).is_ok()
    }
}

/// The blocks a fetch kept so far, and where they went.
struct Got<'a> {
    keep: &'a mut dyn Keep,
    count: usize,
}

/// The blocks `hashes` (a run chained from `parent`) from `peer`, as far as it holds them
/// and each one checks: its checksum (on the stream; the record's AEAD tag on the bulk
/// path), the model, `layout`, its size, the hash asked for, the parent before it. Each
/// goes to `keep` as soon as it checks (and those before it did), those before a failure
/// too. With `bulk` (the address this node reached the peer at), the peer may move them
/// over its bulk path; if that cannot be reached, they come over the stream.
#[allow(clippy::too_many_arguments)] // one run's coordinates, each needed
pub async fn fetch_run(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    bulk: Option<IpAddr>,
    model: ModelId,
    layout: KvLayout,
    hashes: &[BlockHash],
    parent: BlockHash,
    keep: &mut dyn Keep,
) -> Fetched {
    let raw = || hashes.iter().map(|h| h.0).collect();
    let run = Run { model, layout, hashes, parent, first_frame: FRAME_DEADLINE };
    let mut blocks = Got { keep, count: 0 };
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
    Fetched { got: blocks.count, error, path }
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
    let error = fetch_into(control, peer, &request, None, &run, &mut Got { keep: &mut got, count: 0 }, &mut Path::Stream).await.err();
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
    got: &mut Got<'_>,
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
    tracing::debug!(%peer, blocks = got.count, ?path, open_ms = opened.as_secs_f64() * 1e3, first_block_ms = first.as_secs_f64() * 1e3, waiting_for_checks_ms = checks.waited.as_secs_f64() * 1e3, total_ms = started.elapsed().as_secs_f64() * 1e3, "KV blocks fetched");
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
    async fn start(&mut self, index: usize, payload: Payload, got: &mut Got<'_>) -> Result<(), FetchError> {
        let model = self.run.model;
        let check = move || {
            let integrity = payload.integrity();
            let bytes = payload.open().map_err(|e| e.to_string())?;
            KvBlock::import_owned(bytes, &model, integrity).map_err(|e| e.to_string())
        };
        self.pending.push_back((index, tokio::task::spawn_blocking(check)));
        if self.pending.len() >= CHECKS_AHEAD {
            self.take_one(got).await?;
        }
        Ok(())
    }

    async fn finish(&mut self, got: &mut Got<'_>) -> Result<(), FetchError> {
        while !self.pending.is_empty() && !self.failed {
            self.take_one(got).await?;
        }
        Ok(())
    }

    async fn take_one(&mut self, got: &mut Got<'_>) -> Result<(), FetchError> {
        let Some((index, check)) = self.pending.pop_front() else { return Ok(()) };
        let waiting = Instant::now();
        let imported = check.await;
        self.waited += waiting.elapsed();
        let block = self.accept(index, imported);
        self.failed = block.is_err();
        if !got.keep.keep(block?) {
            self.failed = true;
            return Err(FetchError::Unwanted);
        }
        got.count += 1;
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

pub(super) async fn read_exact(stream: &mut libp2p::Stream, buf: &mut [u8]) -> Result<(), FetchError> {
    read_exact_within(stream, buf, FRAME_DEADLINE).await
}

async fn read_exact_within(stream: &mut libp2p::Stream, buf: &mut [u8], deadline: Duration) -> Result<(), FetchError> {
    tokio::time::timeout(deadline, stream.read_exact(buf)).await.map_err(|_| FetchError::Timeout(deadline))??;
    Ok(())
}
