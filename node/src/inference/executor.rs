//! The executing side of inference streams: accepts `/pyagent/infer/1` streams, runs each
//! request on the model's worker, and writes its pieces as they come. A requester that
//! closes the stream (or stops reading for longer than the piece deadline) cancels the
//! generation. At most [`MAX_STREAMS`] streams run at once; more are answered
//! `Overloaded` at once. Only members of this node's swarm (peers in its membership view)
//! are served: a connection alone does not buy time on the model.

use std::sync::Arc;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::PeerId;
use pyagent_protocol::inference::{INFER_PROTOCOL, InferErrorKind, InferFrame, InferRequest, MAX_REQUEST_BYTES, QUEUED_EVERY_SECS};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::{OPEN_DEADLINE, PIECE_DEADLINE, frames, wire};
use crate::p2p::NodeClient;
use crate::serving::{Models, ServeError};

const QUEUED_EVERY: std::time::Duration = std::time::Duration::from_secs(QUEUED_EVERY_SECS);

/// Inference streams served at once (each waits in its model's bounded queue).
pub const MAX_STREAMS: usize = 128;

/// Starts accepting inference streams; abort the handle to stop.
pub fn start(mut control: libp2p_stream::Control, models: Models, client: NodeClient) -> Option<JoinHandle<()>> {
    let mut incoming = match control.accept(libp2p::StreamProtocol::new(INFER_PROTOCOL)) {
        Ok(incoming) => incoming,
        Err(e) => {
            tracing::error!("cannot serve inference streams: {e}");
            return None;
        }
    };
    let permits = Arc::new(Semaphore::new(MAX_STREAMS));
    Some(tokio::spawn(async move {
        while let Some((peer, stream)) = incoming.next().await {
            let models = models.clone();
            let client = client.clone();
            match permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    tokio::spawn(async move {
                        let member = client.peers().await.is_ok_and(|peers| peers.iter().any(|p| p.peer_id == peer.to_string()));
                        if member {
                            serve(peer, stream, &models).await;
                        } else {
                            tracing::debug!(%peer, "inference stream from a peer outside the swarm refused");
                            refuse(stream, InferErrorKind::NotServed, "only members of this swarm are served".into()).await;
                        }
                        drop(permit);
                    });
                }
                Err(_) => {
                    tokio::spawn(refuse(stream, InferErrorKind::Overloaded, format!("{MAX_STREAMS} inference streams are running here")));
                }
            }
        }
    }))
}

async fn refuse(mut stream: libp2p::Stream, kind: InferErrorKind, message: String) {
    let _ = tokio::time::timeout(OPEN_DEADLINE, frames::write(&mut stream, &InferFrame::Error { kind, message })).await;
    let _ = stream.close().await;
}

async fn serve(peer: PeerId, mut stream: libp2p::Stream, models: &Models) {
    let request = match tokio::time::timeout(OPEN_DEADLINE, frames::read::<_, InferRequest>(&mut stream, MAX_REQUEST_BYTES)).await {
        Ok(Ok(Some(request))) => request,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::debug!(%peer, "bad inference request: {e}");
            return refuse(stream, InferErrorKind::BadRequest, format!("unreadable request: {e}")).await;
        }
        Err(_) => return refuse(stream, InferErrorKind::BadRequest, "no request within the deadline".into()).await,
    };
    if let Err(e) = request.validate() {
        return refuse(stream, InferErrorKind::BadRequest, e.to_string()).await;
    }
    let (model, prompt, options) = wire::from_request(request);
    let Some(worker) = models.get(&model) else {
        return refuse(stream, InferErrorKind::NotServed, format!("this node does not serve {model:?}")).await;
    };
    let ahead = u32::try_from(worker.load().requests.load(std::sync::atomic::Ordering::Relaxed)).unwrap_or(u32::MAX);
    let mut generation = match worker.generate_stream(prompt, options) {
        Ok(g) => g,
        Err(e) => return write_error(stream, &e).await,
    };
    if tokio::time::timeout(OPEN_DEADLINE, frames::write(&mut stream, &InferFrame::Queued { ahead: ahead.saturating_sub(1) })).await.map_or(true, |r| r.is_err()) {
        return; // the requester is gone; dropping the generation cancels it
    }
    tracing::debug!(%peer, %model, "serving an inference stream");
    let (mut reader, mut writer) = stream.split();
    // The requester sends nothing more: a read that ends means it went away.
    let mut gone = Box::pin(async move {
        let mut byte = [0u8; 1];
        let _ = reader.read(&mut byte).await;
    });
    let mut first = true;
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + QUEUED_EVERY, QUEUED_EVERY);
    loop {
        tokio::select! {
            // Until the first piece: still queued (a requester can tell busy from gone).
            _ = heartbeat.tick(), if first => {
                let ahead = u32::try_from(worker.load().requests.load(std::sync::atomic::Ordering::Relaxed)).unwrap_or(u32::MAX);
                match tokio::time::timeout(OPEN_DEADLINE, frames::write(&mut writer, &InferFrame::Queued { ahead: ahead.saturating_sub(1) })).await {
                    Ok(Ok(())) => {}
                    _ => return,
                }
            }
            piece = generation.pieces.recv() => match piece {
                Some(piece) => match tokio::time::timeout(PIECE_DEADLINE, frames::write(&mut writer, &wire::piece(&piece))).await {
                    Ok(Ok(())) => first = false,
                    // Dropping the generation cancels it on the worker.
                    _ => return,
                },
                None => break,
            },
            () = &mut gone => {
                tracing::debug!(%peer, "requester went away; generation cancelled");
                return;
            }
        }
    }
    let last = match generation.done.await {
        Ok(Ok(out)) => wire::done(&out),
        Ok(Err(e)) => wire::error_frame(&e),
        Err(_) => wire::error_frame(&ServeError::Stopped),
    };
    let _ = tokio::time::timeout(PIECE_DEADLINE, frames::write(&mut writer, &last)).await;
    let _ = writer.close().await;
}

async fn write_error(stream: libp2p::Stream, e: &ServeError) {
    let InferFrame::Error { kind, message } = wire::error_frame(e) else { return };
    refuse(stream, kind, message).await;
}
