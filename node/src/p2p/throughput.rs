//! How fast one stream moves bytes over each of the node's transport stacks, next to a
//! raw TCP stream in the same process (`pyagent bench-transport`): two swarms on
//! loopback, built with [`super::transport::build`] as a node builds its own, one
//! `libp2p_stream` stream from one to the other, written in frames the size of a KV block.
//! The ceiling for a KV-block fetch on one machine, and a way to see what the security and
//! multiplexing layers cost.

use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::pnet::PreSharedKey;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::transport;

const BENCH_PROTOCOL: StreamProtocol = StreamProtocol::new("/pyagent/bench-transport/1");
/// Longest any one measurement may take (listening, dialing and moving the bytes).
pub(super) const DEADLINE: Duration = Duration::from_secs(120);
/// The largest frame a measurement writes (and a bulk record a receiver accepts).
pub const MAX_FRAME_BYTES: usize = 64 << 20;

/// A transport stack a node can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stack {
    /// TCP + Noise + Yamux (the default for TCP).
    Tcp,
    /// TCP + pnet (a swarm key) + Noise + Yamux.
    TcpPrivate,
    /// TCP + TLS 1.3 + Yamux.
    TcpTls,
    /// QUIC (TLS 1.3 inside).
    Quic,
    /// One plain TCP stream, no libp2p: the reference.
    RawTcp,
    /// The KV bulk path: one TCP connection reached with a bulk offer, each frame sealed
    /// as an AES-256-GCM record and opened on arrival (`crate::kv::bulk`).
    Bulk,
}

impl Stack {
    pub const ALL: [Stack; 6] = [Stack::RawTcp, Stack::Bulk, Stack::Tcp, Stack::TcpPrivate, Stack::TcpTls, Stack::Quic];

    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp+noise+yamux",
            Self::TcpPrivate => "tcp+pnet+noise+yamux",
            Self::TcpTls => "tcp+tls+yamux",
            Self::Quic => "quic",
            Self::RawTcp => "raw tcp",
            Self::Bulk => "kv bulk (tcp+aes-256-gcm)",
        }
    }
}

/// Why a measurement could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ThroughputError {
    #[error("building the transport: {0}")]
    Transport(#[from] transport::TransportError),
    #[error("listening on loopback: {0}")]
    Listen(String),
    #[error("the stream: {0}")]
    Stream(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("not done within {DEADLINE:?}")]
    Timeout,
}

/// One measurement: `bytes` moved in `seconds`, from the first byte written to the
/// last one read.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Measured {
    pub stack: &'static str,
    pub bytes: u64,
    pub seconds: f64,
    pub gbytes_per_s: f64,
}

/// Moves `bytes` (whole frames of `frame` bytes) over `streams` streams of one connection
/// of `stack` on loopback (raw TCP: one stream).
pub async fn measure(stack: Stack, bytes: u64, frame: usize, streams: usize) -> Result<Measured, ThroughputError> {
    let frame = frame.max(1);
    let frames = bytes.div_ceil(frame as u64);
    let started = tokio::time::timeout(DEADLINE, async {
        match stack {
            Stack::RawTcp => raw_tcp(frames, frame).await,
            Stack::Bulk => bulk(frames, frame).await,
            _ => over_libp2p(stack, frames, frame, streams.max(1)).await,
        }
    })
    .await
    .map_err(|_| ThroughputError::Timeout)??;
    let (moved, seconds) = started;
    Ok(Measured { stack: stack.name(), bytes: moved, seconds, gbytes_per_s: moved as f64 / seconds.max(1e-9) / 1e9 })
}

async fn raw_tcp(frames: u64, frame: usize) -> Result<(u64, f64), ThroughputError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // Stopped with this measurement, also when it fails or times out.
    let mut reader = AbortOnDrop(vec![tokio::spawn(async move {
        let (socket, _) = listener.accept().await?;
        read_to_end(socket).await
    })]);
    let mut socket = tokio::net::TcpStream::connect(addr).await?;
    socket.set_nodelay(true)?;
    let start = Instant::now();
    write_frames(&mut socket, frames, frame).await?;
    drop(socket);
    let read = reader.0.first_mut().ok_or_else(|| ThroughputError::Stream("no reader".into()))?;
    let (total, end) = read.await.map_err(|e| ThroughputError::Stream(e.to_string()))??;
    Ok((total, (end - start).as_secs_f64()))
}

/// Reads `socket` to its end: the bytes read, and when the end came.
pub(super) async fn read_to_end(mut socket: tokio::net::TcpStream) -> Result<(u64, Instant), ThroughputError> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            return Ok((total, Instant::now()));
        }
        total += n as u64;
    }
}

/// Writes `frames` frames of `frame` bytes, then ends the stream.
pub(super) async fn write_frames(socket: &mut tokio::net::TcpStream, frames: u64, frame: usize) -> Result<(), ThroughputError> {
    let payload = vec![0x5au8; frame];
    for _ in 0..frames {
        socket.write_all(&payload).await?;
    }
    Ok(socket.shutdown().await?)
}

/// The KV bulk path on loopback: one offer, its connection, `frames` sealed records of
/// `frame` payload bytes, each opened by the reader (which counts payload bytes).
async fn bulk(frames: u64, frame: usize) -> Result<(u64, f64), ThroughputError> {
    use crate::kv::bulk::{self, BulkListener};
    let failed = |e: bulk::BulkError| ThroughputError::Stream(e.to_string());
    let loopback = std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST);
    let (listener, accepting) = BulkListener::start(loopback)?;
    let mut tasks = AbortOnDrop(vec![accepting]);
    let (offer, handoff) = listener.offer(DEADLINE).map_err(failed)?;
    let (tcp, opener) = bulk::connect(loopback, &offer).await.map_err(failed)?;
    let reader = tokio::spawn(read_records(tcp, opener));
    let mut socket = handoff.connection(DEADLINE).await.ok_or_else(|| ThroughputError::Stream("the bulk connection did not arrive".into()))?;
    let start = Instant::now();
    write_records(&mut socket, &offer.key, frames, frame).await?;
    drop(socket);
    let (total, end) = reader.await.map_err(|e| ThroughputError::Stream(e.to_string()))??;
    tasks.0.clear();
    Ok((total, (end - start).as_secs_f64()))
}

/// Reads bulk records to the connection's end, opening each: the payload bytes, and when
/// the end came.
pub(super) async fn read_records(mut tcp: tokio::net::TcpStream, opener: crate::kv::bulk::RecordOpener) -> Result<(u64, Instant), ThroughputError> {
    use pyagent_protocol::kv::{BULK_TAG_BYTES, KV_FRAME_HEADER, parse_header};
    let mut buf = Vec::new();
    let (mut total, mut number) = (0u64, 0u64);
    loop {
        let mut header = [0u8; KV_FRAME_HEADER];
        match tcp.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok((total, Instant::now())),
            Err(e) => return Err(ThroughputError::Io(e)),
        }
        let (_, len) = parse_header(header, MAX_FRAME_BYTES).map_err(|e| ThroughputError::Stream(e.to_string()))?;
        buf.resize(len + BULK_TAG_BYTES, 0);
        tcp.read_exact(&mut buf).await?;
        total += opener.open(number, header, &mut buf).map_err(|e| ThroughputError::Stream(e.to_string()))? as u64;
        number += 1;
    }
}

/// Writes `frames` records sealing `frame` payload bytes each under `key`, then ends the
/// connection.
pub(super) async fn write_records(socket: &mut tokio::net::TcpStream, key: &[u8; 32], frames: u64, frame: usize) -> Result<(), ThroughputError> {
    use pyagent_protocol::kv::KvFrameKind;
    let mut sealer = crate::kv::bulk::RecordSealer::new(key).map_err(|e| ThroughputError::Stream(e.to_string()))?;
    let (payload, mut record) = (vec![0x5au8; frame], Vec::new());
    for _ in 0..frames {
        sealer.seal(KvFrameKind::Block, &payload, &mut record).map_err(|e| ThroughputError::Stream(e.to_string()))?;
        socket.write_all(&record).await?;
    }
    Ok(socket.shutdown().await?)
}

type BenchSwarm = Swarm<libp2p_stream::Behaviour>;

fn swarm(stack: Stack) -> Result<BenchSwarm, ThroughputError> {
    let keypair = Keypair::generate_ed25519();
    let psk = (stack == Stack::TcpPrivate).then(|| PreSharedKey::new([7u8; 32]));
    let security = if stack == Stack::TcpTls { transport::Security::Tls } else { transport::Security::Noise };
    let transport = transport::build_with(&keypair, psk, stack == Stack::Quic, security)?;
    let config = libp2p::swarm::Config::with_tokio_executor().with_idle_connection_timeout(DEADLINE);
    Ok(Swarm::new(transport, libp2p_stream::Behaviour::new(), keypair.public().to_peer_id(), config))
}

fn listen_addr(stack: Stack) -> Multiaddr {
    let loopback = Multiaddr::from(std::net::Ipv4Addr::LOCALHOST);
    if stack == Stack::Quic { loopback.with(Protocol::Udp(0)).with(Protocol::QuicV1) } else { loopback.with(Protocol::Tcp(0)) }
}

async fn over_libp2p(stack: Stack, frames: u64, frame: usize, streams: usize) -> Result<(u64, f64), ThroughputError> {
    let mut server = swarm(stack)?;
    let mut client = swarm(stack)?;
    server.listen_on(listen_addr(stack)).map_err(|e| ThroughputError::Listen(e.to_string()))?;
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = server.select_next_some().await {
            break address;
        }
    };
    let server_id: PeerId = *server.local_peer_id();
    let mut incoming = server.behaviour().new_control().accept(BENCH_PROTOCOL).map_err(|e| ThroughputError::Stream(e.to_string()))?;
    let mut control = client.behaviour().new_control();
    client.dial(addr).map_err(|e| ThroughputError::Stream(e.to_string()))?;
    // Both sides driven until the client is connected (the server's events matter too).
    loop {
        tokio::select! {
            event = client.select_next_some() => match event {
                SwarmEvent::ConnectionEstablished { .. } => break,
                SwarmEvent::OutgoingConnectionError { error, .. } => return Err(ThroughputError::Stream(error.to_string())),
                _ => {}
            },
            _ = server.select_next_some() => {}
        }
    }
    let drive = |mut swarm: BenchSwarm| tokio::spawn(async move { loop { swarm.select_next_some().await; } });
    // Both swarms and the readers stop with this measurement, also when it times out.
    let mut tasks = AbortOnDrop(vec![drive(server), drive(client)]);

    // One reader per stream; the run ends when the last one has read its stream's end.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel(streams.max(1));
    tasks.0.push(tokio::spawn(async move {
        for _ in 0..streams {
            let Some((_, mut stream)) = incoming.next().await else { return };
            let done = done_tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 20];
                let mut total = 0u64;
                let result = loop {
                    match stream.read(&mut buf).await {
                        Ok(0) => break Ok((total, Instant::now())),
                        Ok(n) => total += n as u64,
                        Err(e) => break Err(e),
                    }
                };
                let _ = done.send(result).await;
            });
        }
    }));
    let outcome = async {
        let mut opened = Vec::with_capacity(streams);
        for _ in 0..streams {
            opened.push(control.open_stream(server_id, BENCH_PROTOCOL).await.map_err(|e| ThroughputError::Stream(e.to_string()))?);
        }
        let start = Instant::now();
        let writers: Vec<_> = opened
            .into_iter()
            .enumerate()
            .map(|(i, mut stream)| {
                // Frames dealt out in turn: stream i writes frames i, i + streams, ...
                let count = (frames + (streams - 1 - i) as u64) / streams as u64;
                tokio::spawn(async move {
                    let payload = vec![0x5au8; frame];
                    for _ in 0..count {
                        stream.write_all(&payload).await?;
                    }
                    stream.close().await
                })
            })
            .collect();
        for writer in writers {
            writer.await.map_err(|e| ThroughputError::Stream(e.to_string()))??;
        }
        let (mut total, mut end) = (0, start);
        for _ in 0..streams {
            let (n, at) = done_rx.recv().await.ok_or_else(|| ThroughputError::Stream("a reader stopped".into()))??;
            total += n;
            end = end.max(at);
        }
        Ok((total, (end - start).as_secs_f64()))
    }
    .await;
    drop(tasks);
    outcome
}

pub(super) struct AbortOnDrop<T>(pub(super) Vec<tokio::task::JoinHandle<T>>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_stack_moves_every_byte() {
        for stack in Stack::ALL {
            for streams in [1, 3] {
                let m = measure(stack, 3 * 100_000 + 5, 100_000, streams).await.unwrap();
                assert_eq!(m.bytes, 4 * 100_000, "{stack:?} over {streams} streams");
                assert!(m.gbytes_per_s > 0.0, "{stack:?}");
            }
        }
    }
}
