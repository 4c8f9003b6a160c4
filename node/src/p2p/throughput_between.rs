//! One stream's rate between two hosts (`pyagent bench-transport --send-from` on one,
//! `--receive-from` on the other): raw TCP, or the KV bulk path as a block fetch runs it
//! (the sending host seals, the receiving host opens). The sender listens and prints a
//! [`Ticket`]; the receiver connects with it and measures from its connection to the
//! stream's end. What [`super::throughput`] measures in one process on loopback, with the
//! two ends on two machines (or two network namespaces: `scripts/bench-kv.sh`).
//!
//! A bench tool: the ticket carries the bulk offer's token and key in the clear, for the
//! operator to hand to the receiver.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use pyagent_protocol::kv::BulkOffer;

use super::throughput::{AbortOnDrop, DEADLINE, Measured, Stack, ThroughputError, read_records, read_to_end, write_frames, write_records};
use crate::kv::bulk::{self, BulkListener, Handoff};

/// What the receiver needs to reach the sender: the stack, the port, and for the bulk
/// path the offer's token and key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ticket {
    pub stack: TicketStack,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<[u8; 32]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<[u8; 32]>,
}

/// The stacks that can be measured between hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TicketStack {
    RawTcp,
    Bulk,
}

impl TicketStack {
    pub fn of(stack: Stack) -> Option<Self> {
        match stack {
            Stack::RawTcp => Some(Self::RawTcp),
            Stack::Bulk => Some(Self::Bulk),
            _ => None,
        }
    }

    fn stack(self) -> Stack {
        match self {
            Self::RawTcp => Stack::RawTcp,
            Self::Bulk => Stack::Bulk,
        }
    }
}

/// The sending half, listening: [`Self::send`] waits for the receiver and sends.
pub struct Sending {
    ticket: Ticket,
    how: How,
}

impl std::fmt::Debug for Sending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sending").field("stack", &self.ticket.stack).field("port", &self.ticket.port).finish_non_exhaustive()
    }
}

enum How {
    Raw(tokio::net::TcpListener),
    /// The listener's accepting task stops with this.
    Bulk { accepting: AbortOnDrop<()>, handoff: Handoff },
}

/// Listens on `ip` (any free port) for one receiver of `stack` (raw TCP or the bulk path).
pub async fn listen(stack: TicketStack, ip: IpAddr) -> Result<Sending, ThroughputError> {
    match stack {
        TicketStack::RawTcp => {
            let listener = tokio::net::TcpListener::bind((ip, 0)).await.map_err(|e| ThroughputError::Listen(format!("{ip}: {e}")))?;
            let port = listener.local_addr()?.port();
            Ok(Sending { ticket: Ticket { stack, port, token: None, key: None }, how: How::Raw(listener) })
        }
        TicketStack::Bulk => {
            let (listener, accepting) = BulkListener::start(ip).map_err(|e| ThroughputError::Listen(format!("{ip}: {e}")))?;
            let (offer, handoff) = listener.offer(DEADLINE).map_err(|e| ThroughputError::Stream(e.to_string()))?;
            let ticket = Ticket { stack, port: offer.port, token: Some(offer.token), key: Some(offer.key) };
            Ok(Sending { ticket, how: How::Bulk { accepting: AbortOnDrop(vec![accepting]), handoff } })
        }
    }
}

impl Sending {
    /// What to hand the receiver.
    pub fn ticket(&self) -> &Ticket {
        &self.ticket
    }

    /// Waits (at most the measurement deadline, 120 s) for the receiver, then sends it
    /// `bytes` in whole frames of `frame` bytes and ends the stream.
    pub async fn send(self, bytes: u64, frame: usize) -> Result<(), ThroughputError> {
        let frame = frame.max(1);
        let frames = bytes.div_ceil(frame as u64);
        let key = self.ticket.key;
        tokio::time::timeout(DEADLINE, async move {
            match self.how {
                How::Raw(listener) => {
                    let (mut socket, _) = listener.accept().await?;
                    socket.set_nodelay(true)?;
                    write_frames(&mut socket, frames, frame).await
                }
                How::Bulk { handoff, accepting } => {
                    let mut socket = handoff.connection(DEADLINE).await.ok_or_else(|| ThroughputError::Stream("no receiver showed the ticket's token".into()))?;
                    drop(accepting); // one receiver: the listener stops
                    let key = key.ok_or_else(|| ThroughputError::Stream("a bulk ticket without a key".into()))?;
                    write_records(&mut socket, &key, frames, frame).await
                }
            }
        })
        .await
        .map_err(|_| ThroughputError::Timeout)?
    }
}

/// Receives from the sender at `ip` that printed `ticket`; the rate counts from the
/// connection to the stream's end (payload bytes: a record's header and tag are not
/// counted).
pub async fn receive(ip: IpAddr, ticket: &Ticket) -> Result<Measured, ThroughputError> {
    let addr = SocketAddr::new(ip, ticket.port);
    let stack = ticket.stack.stack();
    let (bytes, seconds) = tokio::time::timeout(DEADLINE, async {
        match ticket.stack {
            TicketStack::RawTcp => {
                let socket = tokio::net::TcpStream::connect(addr).await?;
                let start = Instant::now();
                let (bytes, end) = read_to_end(socket).await?;
                Ok::<_, ThroughputError>((bytes, (end - start).as_secs_f64()))
            }
            TicketStack::Bulk => {
                let (Some(token), Some(key)) = (ticket.token, ticket.key) else {
                    return Err(ThroughputError::Stream("a bulk ticket needs its token and key".into()));
                };
                let offer = BulkOffer { port: ticket.port, token, key };
                let (tcp, opener) = bulk::connect(ip, &offer).await.map_err(|e| ThroughputError::Stream(e.to_string()))?;
                let start = Instant::now();
                let (bytes, end) = read_records(tcp, opener).await?;
                Ok((bytes, (end - start).as_secs_f64()))
            }
        }
    })
    .await
    .map_err(|_| ThroughputError::Timeout)??;
    if bytes == 0 {
        return Err(ThroughputError::Stream(format!("{addr} closed the connection before sending anything (a ticket of another sender, or a used one?)")));
    }
    Ok(Measured { stack: stack.name(), bytes, seconds, gbytes_per_s: bytes as f64 / seconds.max(1e-9) / 1e9 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn both_stacks_move_every_byte_between_a_sender_and_a_receiver() {
        let ip = IpAddr::from([127, 0, 0, 1]);
        for stack in [TicketStack::RawTcp, TicketStack::Bulk] {
            let sending = listen(stack, ip).await.unwrap();
            // The ticket travels as a JSON line.
            let line = serde_json::to_string(sending.ticket()).unwrap();
            let ticket: Ticket = serde_json::from_str(&line).unwrap();
            assert_eq!(&ticket, sending.ticket());
            assert_eq!(ticket.key.is_some(), stack == TicketStack::Bulk, "{line}");
            let sender = tokio::spawn(sending.send(3 * 100_000 + 5, 100_000));
            let m = receive(ip, &ticket).await.unwrap();
            sender.await.unwrap().unwrap();
            assert_eq!(m.bytes, 4 * 100_000, "{stack:?}");
            assert!(m.gbytes_per_s > 0.0);
        }
    }

    #[tokio::test]
    async fn a_wrong_key_or_token_moves_nothing() {
        let ip = IpAddr::from([127, 0, 0, 1]);
        // Another key: the first record does not open.
        let sending = listen(TicketStack::Bulk, ip).await.unwrap();
        let forged = Ticket { key: Some([9; 32]), ..sending.ticket().clone() };
        let sender = tokio::spawn(sending.send(1 << 20, 1 << 16));
        assert!(matches!(receive(ip, &forged).await, Err(ThroughputError::Stream(e)) if e.contains("does not open")));
        drop(sender);
        // Another token: the sender closes the connection, the receiver reads no record
        // (an error that says so), and the sender is still waiting for its receiver.
        let sending = listen(TicketStack::Bulk, ip).await.unwrap();
        let forged = Ticket { token: Some([9; 32]), ..sending.ticket().clone() };
        let sender = tokio::spawn(sending.send(1 << 20, 1 << 16));
        assert!(matches!(receive(ip, &forged).await, Err(ThroughputError::Stream(e)) if e.contains("before sending anything")));
        assert!(!sender.is_finished());
        sender.abort();
        // A sender that claims a record larger than any measurement writes: refused
        // before anything is allocated for it.
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let liar = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut token = [0u8; 32];
            tokio::io::AsyncReadExt::read_exact(&mut socket, &mut token).await.unwrap();
            let header = pyagent_protocol::kv::frame_header(pyagent_protocol::kv::KvFrameKind::Block, usize::MAX >> 1);
            tokio::io::AsyncWriteExt::write_all(&mut socket, &header).await.unwrap();
            socket
        });
        let ticket = Ticket { stack: TicketStack::Bulk, port, token: Some([1; 32]), key: Some([2; 32]) };
        assert!(matches!(receive(ip, &ticket).await, Err(ThroughputError::Stream(_))));
        drop(liar.await.unwrap());
        // A bulk ticket without its secrets is refused before connecting.
        let bare = Ticket { stack: TicketStack::Bulk, port: 1, token: None, key: None };
        assert!(matches!(receive(ip, &bare).await, Err(ThroughputError::Stream(_))));
    }
}
