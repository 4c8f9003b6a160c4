//! Assembling and running a node: data directory, identity, database, the model-serving
//! worker, the router and its state machines, the task runner, mDNS and the local API;
//! and taking them down again in order.

use std::sync::Arc;
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm};
use pyagent_engine::CapacityProbe;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use crate::api::{ApiServer, ApiStartError};
use crate::config::Settings;
use crate::store::data_dir::{DataDir, DataDirError};
use crate::discovery::{Announcement, DiscoveryError, MdnsDiscovery};
use crate::identity::{self, IdentityError};
use crate::membership::{Membership, MembershipConfig};
use crate::p2p::behaviour::{Behaviour, BehaviourError};
use crate::p2p::client::{COMMAND_QUEUE, EVENT_QUEUE};
use crate::p2p::router::{Channels, Domain, Router, Topics};
use crate::p2p::{NodeClient, NodeFacts, transport};
use crate::serving::{Models, ServeConfig};
use crate::store::{Store, StoreError};
use crate::tasks::{TaskEngine, TaskRunner};

/// Connections idle this long are closed; gossipsub keeps member connections busy.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(300);
/// How long start-up waits for the listeners to come up.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot set up encryption: {0}")]
    Transport(#[from] crate::p2p::transport::TransportError),
    #[error(transparent)]
    Behaviour(#[from] BehaviourError),
    #[error("cannot subscribe to the advert topic: {0}")]
    Subscribe(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("{proto} port {port} on {ip} is already in use by another process ({source}); is another pyagent node running? pick another port with --p2p-port")]
    PortInUse { proto: &'static str, ip: std::net::IpAddr, port: u16, source: std::io::Error },
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    #[error(transparent)]
    Api(#[from] ApiStartError),
    #[error(transparent)]
    Http(#[from] crate::http::HttpStartError),
    #[error("cannot start the history writer thread: {0}")]
    History(std::io::Error),
    #[error("cannot listen for the KV bulk path on {ip} port {port} ({source}); pick another port with --kv-bulk-port (0: any free one) or go without it with --no-kv-bulk")]
    BulkPort { ip: std::net::IpAddr, port: u16, source: std::io::Error },
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    peer_id: PeerId,
    client: NodeClient,
    p2p_addrs: Vec<Multiaddr>,
    api: ApiServer,
    mdns: Option<MdnsDiscovery>,
    router_task: JoinHandle<()>,
    store: Arc<Store>,
    /// The model-serving workers of the models that loaded.
    models: Models,
    /// The OpenAI-compatible HTTP API, when on.
    http: Option<crate::http::HttpServer>,
    /// Serves other nodes' inference streams.
    executor: Option<JoinHandle<()>>,
    /// Serves this node's KV blocks to peers.
    kv_server: Option<JoinHandle<()>>,
    /// The KV-block exchange (its counters).
    kv: crate::kv::KvExchange,
    /// Places inference requests on the swarm.
    inference: crate::inference::Inference,
    _data_dir: DataDir,
}

fn listen_addr(ip: std::net::IpAddr, port: u16, quic: bool) -> Multiaddr {
    let base = Multiaddr::from(ip);
    if quic { base.with(Protocol::Udp(port)).with(Protocol::QuicV1) } else { base.with(Protocol::Tcp(port)) }
}

/// The registry of the agents named in the settings (already validated; none when empty).
fn hosted_agents(names: &[String]) -> pyagent_agents::Registry {
    let parsed: Vec<pyagent_agents::AgentName> = names.iter().filter_map(|n| n.parse().ok()).collect();
    if parsed.is_empty() {
        return pyagent_agents::Registry::default();
    }
    pyagent_agents::Registry::select(&parsed).unwrap_or_default()
}

/// A random id for this process run (adverts and mDNS carry it).
pub(crate) fn random_boot_id() -> u64 {
    let mut bytes = [0u8; 8];
    // Only tells runs of one node apart; the clock is a fine fallback.
    if getrandom::fill(&mut bytes).is_err() {
        return std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
    }
    u64::from_le_bytes(bytes)
}

fn tcp_port(addr: &Multiaddr) -> Option<u16> {
    addr.iter().find_map(|p| match p {
        Protocol::Tcp(port) => Some(port),
        _ => None,
    })
}

/// An error and all its causes, "outer: inner: innermost" (libp2p's transport errors
/// often say nothing themselves and keep the reason in their source).
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !cause_text.is_empty() && !text.ends_with(&cause_text) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    if text.is_empty() { "unknown error (the transport gave no reason)".into() } else { text }
}

/// Fails when another process holds the p2p port. libp2p binds its TCP listener with
/// SO_REUSEPORT (so outgoing connections can use the listening port), which would let a
/// second node share the port silently and capture dials meant for the first: a probe
/// socket without SO_REUSEPORT cannot bind while anyone listens there, so it tells.
fn ensure_port_free(ip: std::net::IpAddr, port: u16, quic: bool) -> Result<(), StartError> {
    if port == 0 {
        return Ok(());
    }
    let addr = std::net::SocketAddr::new(ip, port);
    let refused = |proto: &'static str, listen: Multiaddr| {
        move |source: std::io::Error| match source.kind() {
            std::io::ErrorKind::AddrInUse => StartError::PortInUse { proto, ip, port, source },
            _ => StartError::Listen { addr: listen, reason: source.to_string() },
        }
    };
    std::net::TcpListener::bind(addr).map_err(refused("TCP", listen_addr(ip, port, false)))?;
    if quic {
        std::net::UdpSocket::bind(addr).map_err(refused("UDP (QUIC)", listen_addr(ip, port, true)))?;
    }
    Ok(())
}

/// Starts listening and waits until the TCP (and QUIC) listeners report an address.
async fn listen(swarm: &mut Swarm<Behaviour>, settings: &Settings) -> Result<u16, StartError> {
    ensure_port_free(settings.listen_ip, settings.p2p_port, settings.quic)?;
    let tcp = listen_addr(settings.listen_ip, settings.p2p_port, false);
    swarm.listen_on(tcp.clone()).map_err(|e| StartError::Listen { addr: tcp.clone(), reason: error_chain(&e) })?;
    let wait = async {
        loop {
            match libp2p::futures::StreamExt::select_next_some(&mut *swarm).await {
                SwarmEvent::NewListenAddr { address, .. } => {
                    tracing::info!(%address, "listening");
                    if let Some(p) = tcp_port(&address) {
                        return Ok(p);
                    }
                }
                SwarmEvent::ListenerError { error, .. } => {
                    return Err(StartError::Listen { addr: tcp.clone(), reason: error_chain(&error) });
                }
                SwarmEvent::ListenerClosed { reason: Err(error), .. } => {
                    return Err(StartError::Listen { addr: tcp.clone(), reason: error_chain(&error) });
                }
                _ => {}
            }
        }
    };
    let port = tokio::time::timeout(LISTEN_TIMEOUT, wait)
        .await
        .map_err(|_| StartError::Listen { addr: tcp.clone(), reason: "timed out".into() })??;
    if settings.quic {
        // Same port number over UDP; with port 0, QUIC picks its own.
        let quic_port = if settings.p2p_port == 0 { 0 } else { port };
        let quic = listen_addr(settings.listen_ip, quic_port, true);
        swarm.listen_on(quic.clone()).map_err(|e| StartError::Listen { addr: quic, reason: error_chain(&e) })?;
    }
    Ok(port)
}

impl Node {
    /// Starts a node with validated settings.
    pub async fn start(settings: Settings) -> Result<Self, StartError> {
        let data_dir = DataDir::open(&settings.data_dir)?;
        let keypair = identity::load_or_create(&data_dir.identity_file())?;
        let peer_id = keypair.public().to_peer_id();
        let store = Arc::new(Store::open(&data_dir.db_dir())?);
        if settings.quic_disabled_by_key {
            tracing::warn!("swarm key set: QUIC is off (libp2p pre-shared keys protect TCP only)");
        }
        let transport = transport::build(&keypair, settings.swarm_key, settings.quic)?;
        let behaviour = Behaviour::new(&keypair, &settings.namespace, settings.protocol_versions, settings.max_connections)?;
        let mut swarm = Swarm::new(
            transport,
            behaviour,
            peer_id,
            libp2p::swarm::Config::with_tokio_executor().with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT),
        );
        let p2p_port = listen(&mut swarm, &settings).await?;
        let streams = swarm.behaviour().stream.new_control();

        let mut probe = CapacityProbe::new();
        let host = probe.probe();
        let (ram_available, vram_free) = (host.ram_available_bytes, host.gpus.first().map(|g| g.vram_free_bytes));
        let serve = settings
            .models
            .iter()
            .map(|model| ServeConfig {
                model: model.clone(),
                ort_lib: settings.ort_lib.clone(),
                kv_host_bytes: settings.kv_host_bytes,
                ram_available,
                provider: settings.provider,
                vram_free,
                role: settings.role,
                lookahead: settings.lookahead,
            })
            .collect();
        let models = Models::start(serve).await;
        // The KV bulk path's port (a node serving models only), bound before anything runs.
        let bulk = (settings.kv_bulk && !models.is_empty())
            .then(|| std::net::TcpListener::bind((settings.listen_ip, settings.kv_bulk_port)))
            .transpose()
            .map_err(|source| StartError::BulkPort { ip: settings.listen_ip, port: settings.kv_bulk_port, source })?;
        let advertised = models.clone();
        probe.set_models(Box::new(move || advertised.adverts()));
        let (command_tx, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let (event_tx, _) = broadcast::channel(EVENT_QUEUE);
        let (results_tx, results_rx) = watch::channel(0u64);
        let (history_tx, history_rx) = mpsc::channel(crate::history::actor::HISTORY_INBOX);
        let history = crate::history::History::start(keypair.clone(), settings.history, store.clone(), history_tx).map_err(StartError::History)?;
        let client = NodeClient::new(command_tx, event_tx.clone(), results_rx, history.clone());
        let registry = hosted_agents(&settings.agents);
        let external = Arc::new(crate::external::ExternalAgents::default());
        let (executed_tx, executed_rx) = mpsc::channel(COMMAND_QUEUE);
        let mut capabilities = registry.capabilities();
        let mut agents = settings.agents.clone();
        if !models.is_empty() {
            // The llm agent: candidate rewrites from this node's model.
            capabilities.push(crate::tasks::suggest::SUGGEST.to_owned());
            agents.push(crate::tasks::suggest::LLM_AGENT.to_owned());
        }
        let tasks = TaskEngine::new(peer_id, store.clone(), capabilities, external.clone(), std::time::Instant::now());
        let runner = TaskRunner::start(registry, store.clone(), external.clone(), models.clone(), executed_tx);
        let boot_id = random_boot_id();
        let kv_counters = Arc::new(crate::kv::Counters::default());
        let facts = NodeFacts {
            namespace: settings.namespace.clone(),
            private: settings.swarm_key.is_some(),
            quic: settings.quic,
            mdns: settings.mdns,
            agents,
            data_dir: data_dir.path().to_owned(),
            bootstrap: settings.bootstrap.clone(),
            advert_interval: settings.advert_interval,
            peer_ttl: settings.peer_ttl,
            boot_id,
            versions: settings.protocol_versions,
            kv: kv_counters.clone(),
        };
        let membership = Membership::new(MembershipConfig {
            me: peer_id,
            namespace_tag: settings.namespace.tag().to_owned(),
            versions: settings.protocol_versions,
            bootstrap: settings.bootstrap.clone(),
            peer_ttl: settings.peer_ttl,
        });
        let votes = crate::votes::VoteBook::new(keypair.clone(), settings.agents.clone());
        let topics = Topics {
            adverts: libp2p::gossipsub::IdentTopic::new(settings.namespace.advert_topic()),
            tasks: libp2p::gossipsub::IdentTopic::new(settings.namespace.task_topic()),
            votes: libp2p::gossipsub::IdentTopic::new(settings.namespace.vote_topic()),
        };
        let channels = Channels { commands: command_rx, executed: executed_rx, events: event_tx, results: results_tx, history: history_rx };
        let domain = Domain { membership, tasks, votes, runner, history };
        let task = Router::new(swarm, channels, topics, facts, store.clone(), probe, domain).map_err(|e| StartError::Subscribe(e.to_string()))?;
        let capacity_summary = task.capacity_summary();
        let p2p_addrs = task.listen_addrs();
        let router_task = tokio::spawn(task.run());
        let executor = crate::inference::executor::start(streams.clone(), models.clone(), client.clone());
        let kv_settings = crate::kv::KvSettings { fetch: settings.kv_fetch, role: settings.role, bulk_asked: settings.kv_bulk, bulk };
        let (kv, kv_server) = crate::kv::KvExchange::start(peer_id, streams.clone(), &models, client.clone(), kv_settings, kv_counters);
        let inference = crate::inference::Inference::new(peer_id, models.clone(), client.clone(), streams).with_kv(kv.clone());
        // From here on, a failure must stop the router again.
        let rest = async {
            let api = ApiServer::start(settings.api_bind, settings.events_bind, client.clone(), store.clone(), external.clone()).await?;
            let mdns = if settings.mdns {
                let me = Announcement {
                    peer_id,
                    namespace: settings.namespace.clone(),
                    p2p_port,
                    quic: settings.quic,
                    capacity_summary,
                    interfaces: settings.mdns_interfaces.clone(),
                    boot_id,
                    versions: settings.protocol_versions,
                };
                match MdnsDiscovery::start(me, client.clone()) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        api.shutdown().await;
                        return Err(e.into());
                    }
                }
            } else {
                tracing::info!("mDNS discovery off");
                None
            };
            let http = match settings.http.clone() {
                Some(http) => match crate::http::HttpServer::start(crate::http::HttpParts {
                    settings: http,
                    client: client.clone(),
                    inference: inference.clone(),
                    configured_models: settings.models.len(),
                    expects_peers: !settings.bootstrap.is_empty(),
                })
                .await
                {
                    Ok(server) => Some(server),
                    Err(e) => {
                        if let Some(m) = mdns {
                            m.shutdown(Duration::from_millis(100)).await;
                        }
                        api.shutdown().await;
                        return Err(e.into());
                    }
                },
                None => {
                    tracing::info!("HTTP API off");
                    None
                }
            };
            Ok::<_, StartError>((api, mdns, http))
        };
        let (api, mdns, http) = match rest.await {
            Ok(parts) => parts,
            Err(e) => {
                for task in [&executor, &kv_server].into_iter().flatten() {
                    task.abort();
                }
                let _ = client.shutdown().await;
                return Err(e);
            }
        };
        tracing::info!(%peer_id, swarm = settings.namespace.name(), private = settings.swarm_key.is_some(), "node started");
        if let Some(http) = &http {
            http.set_ready();
        }
        crate::systemd::notify_ready();
        Ok(Self { peer_id, client, p2p_addrs, api, mdns, router_task, store, models, http, executor, kv_server, kv, inference, _data_dir: data_dir })
    }

    /// The model-serving worker of the first model that loaded.
    pub fn model(&self) -> Option<&crate::serving::ModelWorker> {
        self.models.all().first()
    }

    /// Every model this node serves.
    pub fn models(&self) -> &Models {
        &self.models
    }

    /// Stops serving this node's KV blocks to peers (it still fetches); the block
    /// protocol is then free for another handler on [`crate::inference::Inference::control`]
    /// once the server task has ended (tools and fault-injection tests).
    pub fn stop_serving_kv_blocks(&mut self) {
        if let Some(server) = self.kv_server.take() {
            server.abort();
        }
    }

    /// The KV-block exchange: what it fetched and served.
    pub fn kv(&self) -> &crate::kv::KvExchange {
        &self.kv
    }

    /// Places inference requests on the swarm (what the HTTP API uses).
    pub fn inference(&self) -> &crate::inference::Inference {
        &self.inference
    }

    /// The HTTP API's address (with the real port when bound to port 0).
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http.as_ref().map(crate::http::HttpServer::local_addr)
    }

    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    pub fn client(&self) -> &NodeClient {
        &self.client
    }

    /// Listen addresses known at start (TCP), with the node's `/p2p/` suffix: what other
    /// nodes can use as `--bootstrap`.
    pub fn p2p_addrs(&self) -> Vec<Multiaddr> {
        self.p2p_addrs.iter().map(|a| a.clone().with(Protocol::P2p(self.peer_id))).collect()
    }

    /// The API's ZeroMQ endpoint (with the real port when bound to port 0).
    pub fn api_endpoint(&self) -> &str {
        &self.api.endpoint
    }

    pub fn events_endpoint(&self) -> &str {
        &self.api.events_endpoint
    }

    /// Graceful shutdown: stop the API, say mDNS goodbye, close every connection, flush
    /// the database, release the data directory. Bounded to about 2.5 s in all.
    pub async fn shutdown(self) {
        let Self { client, api, mdns, router_task, store, models, http, executor, kv_server, kv, inference, _data_dir, .. } = self;
        crate::systemd::notify_stopping();
        // Open HTTP streams end (with an error event) instead of holding the node up.
        if let Some(http) = http {
            http.shutdown(Duration::from_millis(500)).await;
        }
        for task in [executor, kv_server].into_iter().flatten() {
            task.abort();
        }
        drop(kv);
        // The threads end once the queued requests are answered.
        drop(inference);
        drop(models);
        api.shutdown().await;
        if let Some(mdns) = mdns {
            mdns.shutdown(Duration::from_millis(800)).await;
        }
        match tokio::time::timeout(Duration::from_millis(500), client.shutdown()).await {
            Ok(_) => {}
            Err(_) => tracing::warn!("network task did not stop in time"),
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), router_task).await;
        // Queued history writes become durable; then the actor and its writer let go of
        // the database.
        match tokio::time::timeout(Duration::from_millis(1000), client.history().shutdown()).await {
            Ok(_) => {}
            Err(_) => tracing::warn!("history service did not stop in time"),
        }
        if let Err(e) = store.flush() {
            tracing::error!("database flush failed: {e}");
        }
        tracing::info!("node stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_tcp_port_is_refused_with_its_cause() {
        let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = holder.local_addr().unwrap().port();
        let ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let err = ensure_port_free(ip, port, false).unwrap_err().to_string();
        assert!(err.contains(&format!("TCP port {port}")) && err.contains("in use"), "{err}");
        drop(holder);
        ensure_port_free(ip, port, false).unwrap();
    }

    #[test]
    fn error_chains_keep_the_reason() {
        let inner = std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address already in use");
        #[derive(Debug, thiserror::Error)]
        #[error("")]
        struct Silent(#[source] std::io::Error);
        assert_eq!(error_chain(&Silent(inner)), "Address already in use");
    }
}
