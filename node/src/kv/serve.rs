//! The serving side of the block transfer protocol (`/pyagent/kv/1`, framing in
//! `pyagent_protocol::kv`; the asking side is [`super::transfer`]): this node's blocks
//! to swarm members over the stream or the bulk path ([`super::bulk`]), blocks peers
//! push here to keep, and, on a prefill node, a decode peer's prompt computed first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{AsyncWriteExt, StreamExt};
use pyagent_engine::kv::{BlockHash, Integrity, KvBlock, ModelId, block_hashes};
use pyagent_protocol::kv::{BULK_TAG_BYTES, KV_FRAME_HEADER, KV_PROTOCOL, KvFrameKind, KvRequest, MAX_KV_REQUEST_BYTES, frame_header, parse_header};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::Counters;
use super::bulk::{BulkListener, RecordSealer};
use super::transfer::{FRAME_DEADLINE, FetchError, MAX_PREFILL_DEADLINE, MAX_REASON, MAX_SERVED_STREAMS, OPEN_DEADLINE, read_exact, write_frame};
use crate::inference::frames;
use crate::p2p::NodeClient;
use crate::serving::{ModelWorker, Models};

/// Starts serving block streams (and prompts to prefill, unless `prefill` is off: a
/// decode node), answering `FetchBulk` over `bulk` (a listener and its task) when there
/// is one; abort the handle to stop (the listener's task stops with it).
pub(super) fn serve(
    mut control: libp2p_stream::Control,
    models: Models,
    client: NodeClient,
    counters: Arc<Counters>,
    prefill: bool,
    bulk: Option<(BulkListener, JoinHandle<()>)>,
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
        let (bulk, _bulk_task) = bulk.map_or((None, None), |(listener, task)| (Some(listener), Some(AbortOnDrop(task))));
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
