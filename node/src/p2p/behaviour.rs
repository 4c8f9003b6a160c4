//! The composed network behaviour of a node.

use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{StreamProtocol, connection_limits, gossipsub, identify, kad, ping, request_response};
use pyagent_protocol::history::HistoryRpc;
use pyagent_protocol::rpc::{Blobs, Hello, RequestResponse, TaskResults};
use pyagent_protocol::{SwarmNamespace, VersionRange};

use super::codec::FrameCodec;
use super::pending_limit::PendingPerSource;

/// Software version that identify and adverts carry.
pub const NODE_VERSION: &str = concat!("pyagent/", env!("CARGO_PKG_VERSION"));

/// Most connections to one peer (simultaneous dials from both sides make two).
const MAX_CONNECTIONS_PER_PEER: u32 = 4;
/// Most connections still in their handshakes.
const MAX_PENDING: u32 = 64;

#[allow(missing_debug_implementations)] // the libp2p behaviours inside are not Debug
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// First: a source over its share of handshakes is denied before it takes a slot of
    /// `limits`' node-wide pending bound.
    pub pending: PendingPerSource,
    pub limits: connection_limits::Behaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub gossipsub: gossipsub::Behaviour,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    /// One request-response behaviour per concern, each with its own protocol name and
    /// size limits (`pyagent_protocol::rpc`).
    pub hello: request_response::Behaviour<FrameCodec<Hello>>,
    pub blobs: request_response::Behaviour<FrameCodec<Blobs>>,
    pub results: request_response::Behaviour<FrameCodec<TaskResults>>,
    /// History replication: writes, reads, anti-entropy (`pyagent_protocol::history`).
    pub history: request_response::Behaviour<FrameCodec<HistoryRpc>>,
    /// Raw streams: inference requests and their tokens (`pyagent_protocol::inference`),
    /// handled outside the router through a [`libp2p_stream::Control`].
    pub stream: libp2p_stream::Behaviour,
}

/// Streams of the history protocol open at once on one connection: anti-entropy keeps at
/// most [`crate::history::sync::MAX_SESSIONS_PER_PEER`] of them busy, which leaves room for
/// writes (libp2p's default of 100 made a busy peer drop writes during repair).
pub const HISTORY_STREAMS: usize = 256;

/// A request-response behaviour for protocol `P`.
fn request_response<P: RequestResponse>(timeout: Duration, streams: usize) -> request_response::Behaviour<FrameCodec<P>> {
    request_response::Behaviour::new(
        [(StreamProtocol::new(P::NAME), request_response::ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(timeout).with_max_concurrent_streams(streams),
    )
}

/// libp2p's default number of concurrent streams per connection.
const DEFAULT_STREAMS: usize = 100;

/// Why the behaviour could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BehaviourError {
    #[error("gossipsub configuration: {0}")]
    Gossipsub(String),
    #[error("invalid protocol name {0}")]
    Protocol(String),
}

impl Behaviour {
    pub fn new(keypair: &Keypair, namespace: &SwarmNamespace, versions: VersionRange, max_connections: u32) -> Result<Self, BehaviourError> {
        let peer_id = keypair.public().to_peer_id();
        let limits = connection_limits::Behaviour::new(
            connection_limits::ConnectionLimits::default()
                .with_max_established(Some(max_connections))
                .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER))
                .with_max_pending_incoming(Some(MAX_PENDING))
                .with_max_pending_outgoing(Some(MAX_PENDING)),
        );
        let identify = identify::Behaviour::new(
            identify::Config::new(namespace.identify_protocol(versions), keypair.public())
                .with_agent_version(NODE_VERSION.to_owned())
                .with_push_listen_addr_updates(true),
        );
        let gossip_config = gossipsub::ConfigBuilder::default()
            .heartbeat_interval(Duration::from_secs(1))
            .validation_mode(gossipsub::ValidationMode::Strict)
            .validate_messages()
            .max_transmit_size(pyagent_protocol::task::MAX_TASK_MESSAGE_BYTES)
            .build()
            .map_err(|e| BehaviourError::Gossipsub(e.to_string()))?;
        let gossipsub = gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(keypair.clone()), gossip_config)
            .map_err(|e| BehaviourError::Gossipsub(e.to_owned()))?;
        let kad_protocol = namespace.kad_protocol();
        let kad_protocol = StreamProtocol::try_from_owned(kad_protocol.clone()).map_err(|_| BehaviourError::Protocol(kad_protocol))?;
        let mut kad_config = kad::Config::new(kad_protocol);
        // The router bootstraps once it has peers; kad's own timer only warns when alone.
        kad_config.set_periodic_bootstrap_interval(None);
        let mut kad = kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kad_config);
        // On a LAN every node is reachable: serve the DHT rather than wait to be confirmed.
        kad.set_mode(Some(kad::Mode::Server));
        Ok(Self {
            pending: PendingPerSource::default(),
            limits,
            identify,
            ping: ping::Behaviour::new(ping::Config::new()),
            gossipsub,
            kad,
            hello: request_response::<Hello>(Duration::from_secs(10), DEFAULT_STREAMS),
            // Up to 4 MiB of blobs per answer.
            blobs: request_response::<Blobs>(Duration::from_secs(30), DEFAULT_STREAMS),
            results: request_response::<TaskResults>(Duration::from_secs(10), DEFAULT_STREAMS),
            history: request_response::<HistoryRpc>(Duration::from_secs(10), HISTORY_STREAMS),
            stream: libp2p_stream::Behaviour::new(),
        })
    }
}
