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

/// Builds the node's transport.
pub fn build(keypair: &Keypair, psk: Option<PreSharedKey>, with_quic: bool) -> Result<Boxed<(PeerId, StreamMuxerBox)>, noise::Error> {
    let noise = noise::Config::new(keypair)?;
    let base = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
    let maybe_private = match psk {
        Some(psk) => Either::Left(base.and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))),
        None => Either::Right(base),
    };
    let tcp = maybe_private
        .upgrade(Version::V1Lazy)
        .authenticate(noise)
        .multiplex(yamux::Config::default())
        .timeout(UPGRADE_TIMEOUT)
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
    if !with_quic {
        return Ok(tcp.boxed());
    }
    let mut quic_config = quic::Config::new(keypair);
    // QUIC gets no FIN from a killed process: keep-alives every second and a 5 s idle
    // timeout close a dead peer's connection quickly (TCP closes at once).
    quic_config.keep_alive_interval = QUIC_KEEP_ALIVE;
    quic_config.max_idle_timeout = QUIC_IDLE_TIMEOUT_MS;
    let quic = quic::tokio::Transport::new(quic_config).map(|(peer, conn), _| (peer, StreamMuxerBox::new(conn)));
    Ok(tcp.or_transport(quic).map(|either, _| either.into_inner()).boxed())
}
