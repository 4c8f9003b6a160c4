//! The transport stack. With a pre-shared key every TCP connection first runs the pnet
//! handshake (XSalsa20 keyed by the swarm key), so a node without the key cannot even
//! start Noise; pnet cannot protect QUIC (rust-libp2p #3275), so QUIC is off with a key.

use std::time::Duration;

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::upgrade::Version;
use either::Either;
use libp2p::identity::Keypair;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::{PeerId, Transport, noise, quic, tcp, yamux};

/// How long the security and multiplexing handshakes may take. They take milliseconds on a
/// LAN; a connection that stalls in them holds a pending slot until this passes, so it is
/// kept short (see `pending_limit` for the per-source bound).
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(4);
const QUIC_KEEP_ALIVE: Duration = Duration::from_secs(1);
const QUIC_IDLE_TIMEOUT_MS: u32 = 5_000;

/// Why the transport could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("Noise keys: {0}")]
    Noise(#[from] noise::Error),
    #[error("TLS certificate: {0}")]
    Tls(#[from] libp2p::tls::certificate::GenError),
}

/// The security handshake of TCP connections. Nodes run Noise; TLS 1.3 (libp2p-tls, the
/// same as inside QUIC) is built only by `pyagent bench-transport`, to compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    Noise,
    Tls,
}

/// Builds the node's transport.
pub fn build(keypair: &Keypair, psk: Option<PreSharedKey>, with_quic: bool) -> Result<Boxed<(PeerId, StreamMuxerBox)>, TransportError> {
    build_with(keypair, psk, with_quic, Security::Noise)
}

/// Builds a transport whose TCP connections are secured by `security`.
pub fn build_with(keypair: &Keypair, psk: Option<PreSharedKey>, with_quic: bool, security: Security) -> Result<Boxed<(PeerId, StreamMuxerBox)>, TransportError> {
    let base = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
    let maybe_private = match psk {
        Some(psk) => Either::Left(base.and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))),
        None => Either::Right(base),
    };
    let upgraded = maybe_private.upgrade(Version::V1Lazy);
    let tcp = match security {
        Security::Noise => upgraded
            .authenticate(noise::Config::new(keypair)?)
            .multiplex(yamux::Config::default())
            .timeout(UPGRADE_TIMEOUT)
            .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
            .boxed(),
        Security::Tls => upgraded
            .authenticate(libp2p::tls::Config::new(keypair)?)
            .multiplex(yamux::Config::default())
            .timeout(UPGRADE_TIMEOUT)
            .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
            .boxed(),
    };
    if !with_quic {
        return Ok(tcp);
    }
    let mut quic_config = quic::Config::new(keypair);
    // QUIC gets no FIN from a killed process: keep-alives every second and a 5 s idle
    // timeout close a dead peer's connection quickly (TCP closes at once).
    quic_config.keep_alive_interval = QUIC_KEEP_ALIVE;
    quic_config.max_idle_timeout = QUIC_IDLE_TIMEOUT_MS;
    let quic = quic::tokio::Transport::new(quic_config).map(|(peer, conn), _| (peer, StreamMuxerBox::new(conn)));
    Ok(tcp.or_transport(quic).map(|either, _| either.into_inner()).boxed())
}
