//! The requesting side of an inference stream: open it, send the request, and turn the
//! frames that come back into a [`Stream`] like a local worker's, so the HTTP API serves
//! a remote generation exactly as a local one. Dropping the stream's pieces closes the
//! libp2p stream, which cancels the generation on the executor.

use futures::AsyncWriteExt;
use libp2p::PeerId;
use pyagent_protocol::inference::{INFER_PROTOCOL, InferFrame, InferRequest, MAX_FRAME_BYTES};
use tokio::sync::{mpsc, oneshot};

use super::{FIRST_TOKEN_DEADLINE, OPEN_DEADLINE, PIECE_DEADLINE, frames, wire};

/// Longest silence from a peer that said the request is queued (3 of its heartbeats).
const QUEUED_SILENCE: std::time::Duration = std::time::Duration::from_secs(3 * pyagent_protocol::inference::QUEUED_EVERY_SECS);
use crate::serving::{Chunk, STREAM_PIECES, ServeError, Stream};

/// Opens a stream to `peer` and sends `request`; the answer comes as a [`Stream`].
/// `on_end` runs when the stream is over, however it ends.
pub async fn open(control: &mut libp2p_stream::Control, peer: PeerId, request: &InferRequest, on_end: impl FnOnce() + Send + 'static) -> Result<Stream, ServeError> {
    let protocol = libp2p::StreamProtocol::new(INFER_PROTOCOL);
    let mut stream = match tokio::time::timeout(OPEN_DEADLINE, control.open_stream(peer, protocol)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(ServeError::PeerGone(format!("cannot open an inference stream to {peer}: {e}"))),
        Err(_) => return Err(ServeError::PeerGone(format!("no inference stream to {peer} within {} s", OPEN_DEADLINE.as_secs()))),
    };
    match tokio::time::timeout(OPEN_DEADLINE, frames::write(&mut stream, request)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(ServeError::PeerGone(format!("cannot send the request to {peer}: {e}"))),
        Err(_) => return Err(ServeError::PeerGone(format!("{peer} took the request too slowly"))),
    }
    let (pieces_tx, pieces) = mpsc::channel(STREAM_PIECES);
    let (done_tx, done) = oneshot::channel();
    tokio::spawn(async move {
        let result = follow(peer, &mut stream, pieces_tx).await;
        let _ = stream.close().await;
        on_end();
        let _ = done_tx.send(result);
    });
    Ok(Stream { pieces, done })
}

/// Reads frames until the end: pieces go to `pieces`; the result is the output.
async fn follow(peer: PeerId, stream: &mut libp2p::Stream, pieces: mpsc::Sender<Chunk>) -> Result<pyagent_engine::infer::Output, ServeError> {
    let mut text = String::new();
    let mut logprobs = Vec::new();
    // The first frame (queued, or a refusal) comes at once; then one at least every
    // QUEUED_EVERY_SECS until the first piece, within the first-token deadline.
    let mut deadline = OPEN_DEADLINE;
    let first_token_by = tokio::time::Instant::now() + FIRST_TOKEN_DEADLINE;
    let mut started = false;
    loop {
        let frame = tokio::select! {
            frame = tokio::time::timeout(deadline, frames::read::<_, InferFrame>(stream, MAX_FRAME_BYTES)) => frame,
            // The caller went away: closing the stream cancels the generation there.
            () = pieces.closed() => return Err(ServeError::PeerGone("the requester went away".into())),
        };
        let frame = match frame {
            Err(_) => return Err(ServeError::PeerGone(format!("{peer} sent nothing for {} s", deadline.as_secs()))),
            Ok(Err(e)) => return Err(ServeError::PeerGone(format!("{peer}: {e}"))),
            Ok(Ok(None)) => return Err(ServeError::PeerGone(format!("{peer} closed the stream before the end"))),
            Ok(Ok(Some(frame))) => frame,
        };
        match frame {
            InferFrame::Queued { .. } if !started => {
                if tokio::time::Instant::now() > first_token_by {
                    return Err(ServeError::PeerGone(format!("{peer} started nothing within {} s", FIRST_TOKEN_DEADLINE.as_secs())));
                }
                deadline = QUEUED_SILENCE;
                continue;
            }
            _ => {}
        }
        started = true;
        deadline = PIECE_DEADLINE;
        match frame {
            InferFrame::Queued { .. } => return Err(ServeError::Generate(format!("{peer} sent an out-of-order frame"))),
            InferFrame::Piece { text: piece, logprobs: lps } => {
                let chunk = wire::chunk(piece, lps);
                text.push_str(&chunk.text);
                logprobs.extend(chunk.logprobs.iter().cloned());
                if pieces.send(chunk).await.is_err() {
                    return Err(ServeError::PeerGone("the requester went away".into()));
                }
            }
            InferFrame::Error { kind, message } => return Err(wire::error_of(kind, message)),
            done @ InferFrame::Done { .. } => {
                return wire::output(done, text, logprobs).ok_or_else(|| ServeError::Generate("unreadable end of stream".into()));
            }
        }
    }
}
