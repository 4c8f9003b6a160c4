//! The bulk path of block fetches (`pyagent_protocol::kv`, "Bulk path"): a plain TCP
//! listener beside libp2p whose connections carry one fetch's answer each, sealed with
//! AES-256-GCM under a key agreed inside the authenticated block stream.
//!
//! - [`BulkListener`]: the server's side — hands out one-time [`BulkOffer`]s and gives the
//!   connection that shows an offer's token to whoever made the offer ([`Handoff`]).
//! - [`connect`]: the requester's side — reaches the offer's port, shows the token.
//! - [`RecordSealer`] / [`RecordOpener`]: the record form of answer frames (pure): the
//!   frame header in the clear (authenticated), the payload sealed, the tag.
//!
//! Hostile connections cost little: one that has not shown a token within
//! [`TOKEN_DEADLINE`] is closed, at most [`MAX_WAITING`] wait at once (more are closed at
//! once), an unknown, used or expired token closes the connection, and a token is only
//! handed out inside the encrypted stream of a swarm member. It then crosses the bulk
//! connection in the clear: an on-path observer could race the requester with it, and get
//! records it cannot open (the key never leaves the stream) while the requester is closed
//! out and computes the prefix itself — no worse than that observer cutting the
//! connection.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use pyagent_protocol::kv::{BULK_TAG_BYTES, BulkOffer, KV_FRAME_HEADER, KvFrameKind, bulk_nonce, frame_header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;

/// Longest a connection may take to show its token.
pub const TOKEN_DEADLINE: Duration = Duration::from_secs(2);
/// Longest a requester waits to reach an offer's port (then it fetches over the stream).
pub const CONNECT_DEADLINE: Duration = Duration::from_secs(1);
/// Connections that have not shown a token yet, at most; more are closed at once.
pub const MAX_WAITING: usize = 64;
/// Offers not yet taken up, at most (one per block stream being served).
pub const MAX_OFFERS: usize = super::transfer::MAX_SERVED_STREAMS;

/// Why the bulk path failed.
#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    #[error("cannot reach the bulk port {addr}: {reason}")]
    Unreachable { addr: SocketAddr, reason: String },
    #[error("{0} bulk offers are waiting to be taken up")]
    Busy(usize),
    #[error("a bulk record sealing {0} bytes: shorter than its tag")]
    Short(usize),
    #[error("bulk record {0} does not open with the offer's key (forged, corrupt or out of order)")]
    Sealed(u64),
    #[error("cannot seal a bulk record")]
    Seal,
    #[error("AES-256-GCM refused a 32-byte key")]
    Key,
    #[error("no randomness for a bulk offer: {0}")]
    Random(String),
}

/// One offer's secrets, and where the connection that shows its token goes.
struct Waiting {
    handoff: oneshot::Sender<TcpStream>,
    expires: Instant,
}

type Offers = Mutex<HashMap<[u8; 32], Waiting>>;

/// The server's bulk listener (cheap to clone).
#[derive(Clone)]
pub struct BulkListener {
    port: u16,
    offers: Arc<Offers>,
}

impl std::fmt::Debug for BulkListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BulkListener").field("port", &self.port).finish_non_exhaustive()
    }
}

impl BulkListener {
    /// Listens on `ip` (any free port); abort the handle to stop. Must run inside the
    /// tokio runtime.
    pub fn start(ip: IpAddr) -> std::io::Result<(Self, JoinHandle<()>)> {
        Self::from_std(std::net::TcpListener::bind((ip, 0))?)
    }

    /// Serves the bulk path on `listener` (already bound); as [`Self::start`].
    pub fn from_std(listener: std::net::TcpListener) -> std::io::Result<(Self, JoinHandle<()>)> {
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let listener = TcpListener::from_std(listener)?;
        let offers = Arc::new(Offers::default());
        let task = tokio::spawn(accept(listener, offers.clone()));
        Ok((Self { port, offers }, task))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A fresh offer, valid for `deadline`, and the handle its connection arrives on.
    pub fn offer(&self, deadline: Duration) -> Result<(BulkOffer, Handoff), BulkError> {
        let (mut token, mut key) = ([0u8; 32], [0u8; 32]);
        getrandom::fill(&mut token).and_then(|()| getrandom::fill(&mut key)).map_err(|e| BulkError::Random(e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        let now = Instant::now();
        let mut offers = self.offers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        offers.retain(|_, w| w.expires > now && !w.handoff.is_closed());
        if offers.len() >= MAX_OFFERS {
            return Err(BulkError::Busy(offers.len()));
        }
        offers.insert(token, Waiting { handoff: tx, expires: now + deadline });
        let offer = BulkOffer { port: self.port, token, key };
        Ok((offer, Handoff { token, connection: rx, offers: self.offers.clone() }))
    }
}

/// Where the connection of one offer arrives; dropping it withdraws the offer.
pub struct Handoff {
    token: [u8; 32],
    connection: oneshot::Receiver<TcpStream>,
    offers: Arc<Offers>,
}

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handoff").finish_non_exhaustive() // the token is a secret
    }
}

impl Handoff {
    /// The connection that showed the token, if one does within `deadline`.
    pub async fn connection(mut self, deadline: Duration) -> Option<TcpStream> {
        tokio::time::timeout(deadline, &mut self.connection).await.ok()?.ok()
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        self.offers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.token);
    }
}

async fn accept(listener: TcpListener, offers: Arc<Offers>) {
    let waiting = Arc::new(Semaphore::new(MAX_WAITING));
    loop {
        let (tcp, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: wait instead of spinning.
                tracing::warn!("bulk listener: cannot accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = waiting.clone().try_acquire_owned() else {
            tracing::debug!(%from, "bulk connection closed: {MAX_WAITING} are already waiting to show a token");
            continue;
        };
        let offers = offers.clone();
        tokio::spawn(async move {
            let taken = show_token(tcp, &offers).await;
            drop(permit);
            if let Err(why) = taken {
                tracing::debug!(%from, "bulk connection closed: {why}");
            }
        });
    }
}

/// Reads the token and hands the connection to its offer.
async fn show_token(mut tcp: TcpStream, offers: &Offers) -> Result<(), &'static str> {
    let mut token = [0u8; 32];
    match tokio::time::timeout(TOKEN_DEADLINE, tcp.read_exact(&mut token)).await {
        Ok(Ok(_)) => {}
        Ok(Err(_)) => return Err("it ended before its token"),
        Err(_) => return Err("no token within the deadline"),
    }
    let waiting = offers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&token);
    let Some(waiting) = waiting.filter(|w| w.expires > Instant::now()) else { return Err("unknown, used or expired token") };
    tune(&tcp);
    waiting.handoff.send(tcp).map_err(|_| "the offer was withdrawn")
}

/// No delay for the small last record. (Socket buffers are left to the kernel's
/// autotuning: setting them caps them at `rmem_max`/`wmem_max`, smaller by default.)
fn tune(tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
}

/// Reaches the offer's port at `ip` and shows its token; the records then arrive there.
pub async fn connect(ip: IpAddr, offer: &BulkOffer) -> Result<(TcpStream, RecordOpener), BulkError> {
    let addr = SocketAddr::new(ip, offer.port);
    let unreachable = |reason: String| BulkError::Unreachable { addr, reason };
    let tcp = tokio::time::timeout(CONNECT_DEADLINE, async {
        let mut tcp = TcpStream::connect(addr).await?;
        tune(&tcp);
        tcp.write_all(&offer.token).await?;
        Ok::<_, std::io::Error>(tcp)
    })
    .await
    .map_err(|_| unreachable(format!("no connection within {CONNECT_DEADLINE:?}")))?
    .map_err(|e| unreachable(e.to_string()))?;
    Ok((tcp, RecordOpener::new(&offer.key)?))
}

fn key(bytes: &[u8; 32]) -> Result<LessSafeKey, BulkError> {
    // 32 bytes is AES-256's key length: refused only if the library is broken.
    Ok(LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| BulkError::Key)?))
}

/// Seals answer frames into records, numbered from 0.
pub struct RecordSealer {
    key: LessSafeKey,
    next: u64,
}

impl std::fmt::Debug for RecordSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordSealer").field("next", &self.next).finish_non_exhaustive()
    }
}

impl RecordSealer {
    pub fn new(key_bytes: &[u8; 32]) -> Result<Self, BulkError> {
        Ok(Self { key: key(key_bytes)?, next: 0 })
    }

    /// The record of the frame `kind`, `payload` in `out` (replacing what it held).
    pub fn seal(&mut self, kind: KvFrameKind, payload: &[u8], out: &mut Vec<u8>) -> Result<(), BulkError> {
        self.seal_with(kind, out, |out| out.extend_from_slice(payload))
    }

    /// The record of the frame `kind` whose payload `write` appends, in `out` (replacing
    /// what it held): the payload is written once, straight into the record.
    pub fn seal_with(&mut self, kind: KvFrameKind, out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) -> Result<(), BulkError> {
        out.clear();
        out.extend_from_slice(&[0; KV_FRAME_HEADER]);
        write(out);
        let header = frame_header(kind, out.len() - KV_FRAME_HEADER);
        out[..KV_FRAME_HEADER].copy_from_slice(&header);
        let nonce = Nonce::assume_unique_for_key(bulk_nonce(self.next));
        let tag = self.key.seal_in_place_separate_tag(nonce, Aad::from(header), &mut out[KV_FRAME_HEADER..]).map_err(|_| BulkError::Seal)?;
        out.extend_from_slice(tag.as_ref());
        self.next += 1;
        Ok(())
    }
}

/// Opens records by their number (cheap to clone: records can be opened on several
/// threads, each once).
#[derive(Clone)]
pub struct RecordOpener {
    key: Arc<LessSafeKey>,
}

impl std::fmt::Debug for RecordOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordOpener").finish_non_exhaustive()
    }
}

impl RecordOpener {
    pub fn new(key_bytes: &[u8; 32]) -> Result<Self, BulkError> {
        Ok(Self { key: Arc::new(key(key_bytes)?) })
    }

    /// Opens record `number` — its `header` and its sealed payload and tag, `sealed` — in
    /// place; returns the payload's length (at the start of `sealed`).
    pub fn open(&self, number: u64, header: [u8; KV_FRAME_HEADER], sealed: &mut [u8]) -> Result<usize, BulkError> {
        if sealed.len() < BULK_TAG_BYTES {
            return Err(BulkError::Short(sealed.len()));
        }
        let nonce = Nonce::assume_unique_for_key(bulk_nonce(number));
        Ok(self.key.open_in_place(nonce, Aad::from(header), sealed).map_err(|_| BulkError::Sealed(number))?.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pyagent_protocol::kv::parse_header;

    /// Opens a whole record (header, sealed payload, tag) as record `number`.
    fn opened(opener: &RecordOpener, number: u64, record: &[u8]) -> Result<(KvFrameKind, Vec<u8>), BulkError> {
        let header: [u8; KV_FRAME_HEADER] = record[..KV_FRAME_HEADER].try_into().unwrap();
        let (kind, payload) = parse_header(header, 1 << 20).unwrap();
        assert_eq!(record.len(), KV_FRAME_HEADER + payload + BULK_TAG_BYTES);
        let mut sealed = record[KV_FRAME_HEADER..].to_vec();
        assert_eq!(opener.open(number, header, &mut sealed)?, payload);
        sealed.truncate(payload);
        Ok((kind, sealed))
    }

    #[test]
    fn records_open_by_their_number_with_their_key_and_nothing_else_opens() {
        let (k, other) = ([7u8; 32], [8u8; 32]);
        let mut sealer = RecordSealer::new(&k).unwrap();
        let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
        sealer.seal(KvFrameKind::Block, &[1, 2, 3], &mut a).unwrap();
        sealer.seal_with(KvFrameKind::Block, &mut b, |out| out.resize(out.len() + 100_000, 9)).unwrap();
        sealer.seal(KvFrameKind::Missing, &[], &mut c).unwrap();
        assert_eq!(a.len(), KV_FRAME_HEADER + 3 + BULK_TAG_BYTES);
        assert!(!a.windows(3).any(|w| w == [1, 2, 3]), "the payload is sealed, not sent as is");
        let opener = RecordOpener::new(&k).unwrap();
        // Each by its number, in any order (several threads open them).
        assert_eq!(opened(&opener, 2, &c).unwrap(), (KvFrameKind::Missing, vec![]));
        assert_eq!(opened(&opener, 0, &a).unwrap(), (KvFrameKind::Block, vec![1, 2, 3]));
        assert_eq!(opened(&opener, 1, &b).unwrap(), (KvFrameKind::Block, vec![9; 100_000]));
        // Another key, another number (a replayed or reordered record), a flipped bit in
        // the payload or in the header (which travels in the clear), a cut tag: refused.
        assert!(matches!(opened(&RecordOpener::new(&other).unwrap(), 0, &a), Err(BulkError::Sealed(0))));
        assert!(matches!(opened(&opener, 0, &b), Err(BulkError::Sealed(0))), "record 1 is not record 0");
        let mut flipped = b.clone();
        flipped[50_000] ^= 1;
        assert!(matches!(opened(&opener, 1, &flipped), Err(BulkError::Sealed(1))));
        let mut relabeled = c.clone();
        relabeled[0] = KvFrameKind::Refused.byte();
        assert!(matches!(opened(&opener, 2, &relabeled), Err(BulkError::Sealed(2))), "the header is authenticated");
        let header: [u8; KV_FRAME_HEADER] = a[..KV_FRAME_HEADER].try_into().unwrap();
        assert!(matches!(opener.open(0, header, &mut a.clone()[KV_FRAME_HEADER..a.len() - 1]), Err(BulkError::Sealed(0))));
        assert!(matches!(opener.open(0, header, &mut [0u8; 15]), Err(BulkError::Short(15))));
    }

    #[tokio::test]
    async fn a_connection_reaches_its_offer_only_with_its_token_once_and_in_time() {
        let (listener, task) = BulkListener::start(IpAddr::from([127, 0, 0, 1])).unwrap();
        let ip = IpAddr::from([127, 0, 0, 1]);
        // The right token: the offer's maker gets the connection, and what it sends opens.
        let (offer, handoff) = listener.offer(Duration::from_secs(5)).unwrap();
        let (mut tcp, opener) = connect(ip, &offer).await.unwrap();
        let mut server = handoff.connection(Duration::from_secs(5)).await.expect("the connection with the token");
        let mut record = Vec::new();
        RecordSealer::new(&offer.key).unwrap().seal(KvFrameKind::Block, b"block", &mut record).unwrap();
        server.write_all(&record).await.unwrap();
        let mut got = vec![0u8; record.len()];
        tcp.read_exact(&mut got).await.unwrap();
        assert_eq!(opened(&opener, 0, &got).unwrap(), (KvFrameKind::Block, b"block".to_vec()));
        // The same token again: closed, and nobody gets the connection.
        let (mut again, _) = connect(ip, &offer).await.unwrap();
        assert_eq!(again.read(&mut [0u8; 1]).await.unwrap(), 0, "a used token gets the connection closed");
        // A forged token: closed; the real offer is still there for its connection.
        let (offer, handoff) = listener.offer(Duration::from_secs(5)).unwrap();
        let forged = BulkOffer { token: [0xAA; 32], ..offer.clone() };
        let (mut wrong, _) = connect(ip, &forged).await.unwrap();
        assert_eq!(wrong.read(&mut [0u8; 1]).await.unwrap(), 0);
        let _right = connect(ip, &offer).await.unwrap();
        assert!(handoff.connection(Duration::from_secs(5)).await.is_some());
        // A withdrawn offer (its handoff dropped) and an expired one: closed.
        let (offer, handoff) = listener.offer(Duration::from_secs(5)).unwrap();
        drop(handoff);
        let (mut late, _) = connect(ip, &offer).await.unwrap();
        assert_eq!(late.read(&mut [0u8; 1]).await.unwrap(), 0);
        let (offer, handoff) = listener.offer(Duration::from_millis(1)).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (mut expired, _) = connect(ip, &offer).await.unwrap();
        assert_eq!(expired.read(&mut [0u8; 1]).await.unwrap(), 0);
        assert!(handoff.connection(Duration::from_millis(200)).await.is_none());
        // A connection that never shows a token is closed after the deadline; one that
        // shows half a token and hangs up costs nothing.
        let mut silent = TcpStream::connect((ip, listener.port())).await.unwrap();
        let started = Instant::now();
        assert_eq!(silent.read(&mut [0u8; 1]).await.unwrap(), 0);
        assert!(started.elapsed() >= TOKEN_DEADLINE - Duration::from_millis(100), "{:?}", started.elapsed());
        let mut half = TcpStream::connect((ip, listener.port())).await.unwrap();
        half.write_all(&[1; 10]).await.unwrap();
        drop(half);
        // Offers are bounded; the listener still serves after all that.
        let held: Vec<_> = (0..MAX_OFFERS).map(|_| listener.offer(Duration::from_secs(5)).unwrap()).collect();
        assert!(matches!(listener.offer(Duration::from_secs(5)), Err(BulkError::Busy(n)) if n == MAX_OFFERS));
        drop(held);
        let (offer, handoff) = listener.offer(Duration::from_secs(5)).unwrap();
        let _ok = connect(ip, &offer).await.unwrap();
        assert!(handoff.connection(Duration::from_secs(5)).await.is_some());
        // No listener on a port: unreachable, quickly.
        let closed = BulkOffer { port: 1, ..offer };
        assert!(matches!(connect(ip, &closed).await, Err(BulkError::Unreachable { .. })));
        task.abort();
    }
}
