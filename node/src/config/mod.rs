//! Node configuration: defaults, then a TOML file (`--config`), then `PYAGENT_*`
//! environment variables, then command-line flags. [`Config`] is the file format and the
//! effective configuration (`pyagent node --print-config`); [`Config::validate`] turns it
//! into typed [`Settings`] once, and every error names the field at fault.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use libp2p::Multiaddr;
use libp2p::pnet::PreSharedKey;
use pyagent_protocol::{SwarmNamespace, VersionRange};
use serde::{Deserialize, Serialize};

mod env;
mod http;
mod inference;

pub use http::{HttpConfig, HttpSettings, MIN_API_KEY_LEN, read_api_key};
pub use inference::{InferenceConfig, ProviderChoice};

pub use env::{ENV_VARS, Overrides, unknown_env_vars};

/// Default TCP/QUIC port of the peer-to-peer listener.
pub const DEFAULT_P2P_PORT: u16 = 7760;
/// Default port of the local request/reply API (ZeroMQ ROUTER).
pub const DEFAULT_API_PORT: u16 = 7761;
/// Default port of the local event stream (ZeroMQ PUB).
pub const DEFAULT_EVENTS_PORT: u16 = 7762;
/// Default port of the OpenAI-compatible HTTP API.
pub const DEFAULT_HTTP_PORT: u16 = 7763;

/// The whole configuration, as written in the TOML file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the identity and the database live. Default: `$XDG_DATA_HOME/pyagent`.
    pub data_dir: Option<PathBuf>,
    /// Swarm namespace: nodes only join peers of the same namespace.
    pub swarm: String,
    /// Pre-shared key file of a private swarm (`pyagent keygen --swarm-key FILE`).
    pub swarm_key: Option<PathBuf>,
    /// Peers to dial at start and whenever the connection drops (routed fleets).
    pub bootstrap: Vec<String>,
    /// Agents this node hosts: built-in agent names; empty means all of them, `["none"]`
    /// none (a node that only relays and stores).
    pub agents: Vec<String>,
    pub p2p: P2pConfig,
    pub mdns: MdnsConfig,
    pub api: ApiConfig,
    pub membership: MembershipConfig,
    pub inference: InferenceConfig,
    pub http: HttpConfig,
    pub history: HistoryConfig,
    pub log: LogConfig,
}


/// The history DHT: replicas per shard, acknowledgements per write, anti-entropy period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Owners of each shard (R).
    pub replicas: usize,
    /// Owners that must hold an entry durably before it is acknowledged (W ≤ R).
    pub write_quorum: usize,
    /// How often co-owners compare shard fingerprints.
    pub sync_interval_ms: u64,
}

/// How many owners hold each shard, how many must acknowledge a write, how often
/// co-owners compare digests (validated [`HistoryConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistorySettings {
    pub replicas: usize,
    pub write_quorum: usize,
    pub sync_interval: Duration,
}

impl Default for HistorySettings {
    fn default() -> Self {
        Self { replicas: 3, write_quorum: 2, sync_interval: Duration::from_secs(2) }
    }
}

impl Default for HistoryConfig {
    fn default() -> Self {
        let d = HistorySettings::default();
        Self { replicas: d.replicas, write_quorum: d.write_quorum, sync_interval_ms: d.sync_interval.as_millis() as u64 }
    }
}


#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct P2pConfig {
    /// Address to listen on; `0.0.0.0` means every interface.
    pub listen_ip: IpAddr,
    /// TCP port, and UDP port of QUIC. `0` picks a free port.
    pub port: u16,
    /// Also listen and dial over QUIC. Forced off with a swarm key (pnet is TCP-only).
    pub quic: bool,
    /// Upper bound of established connections.
    pub max_connections: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MdnsConfig {
    pub enabled: bool,
    /// Interfaces to announce and browse on. Empty: every non-virtual IPv4 interface
    /// except loopback (docker, bridge and veth interfaces are left out).
    pub interfaces: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Request/reply socket (ZeroMQ ROUTER), `IP:PORT`.
    pub bind: SocketAddr,
    /// Event socket (ZeroMQ PUB), `IP:PORT`.
    pub events_bind: SocketAddr,
    /// The API has no authentication: binding it off loopback must be asked for.
    pub allow_non_loopback: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MembershipConfig {
    /// How often a node gossips its advert.
    pub advert_interval_ms: u64,
    /// A peer with no advert for this long leaves the view.
    pub peer_ttl_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: None,
            swarm: "default".into(),
            swarm_key: None,
            bootstrap: Vec::new(),
            agents: Vec::new(),
            p2p: P2pConfig::default(),
            mdns: MdnsConfig::default(),
            api: ApiConfig::default(),
            membership: MembershipConfig::default(),
            inference: InferenceConfig::default(),
            http: HttpConfig::default(),
            history: HistoryConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for P2pConfig {
    fn default() -> Self {
        Self { listen_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED), port: DEFAULT_P2P_PORT, quic: true, max_connections: 256 }
    }
}

impl Default for MdnsConfig {
    fn default() -> Self {
        Self { enabled: true, interfaces: Vec::new() }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_API_PORT),
            events_bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_EVENTS_PORT),
            allow_non_loopback: false,
        }
    }
}

impl Default for MembershipConfig {
    fn default() -> Self {
        Self { advert_interval_ms: 2000, peer_ttl_ms: 7000 }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Pretty }
    }
}

/// A configuration error: which field, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: &'static str, message: String },
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field, message: message.into() }
}

impl Config {
    /// Reads a TOML file; unknown keys and wrong types are errors that name the key.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse { path: path.to_owned(), message })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }

    /// Applies overrides on top of this configuration.
    pub fn apply(&mut self, o: Overrides) {
        fn set<T>(slot: &mut T, value: Option<T>) {
            if let Some(v) = value {
                *slot = v;
            }
        }
        if o.data_dir.is_some() {
            self.data_dir = o.data_dir;
        }
        if o.swarm_key.is_some() {
            self.swarm_key = o.swarm_key;
        }
        set(&mut self.inference.models, o.models);
        set(&mut self.inference.provider, o.provider);
        set(&mut self.inference.kv_fetch, o.kv_fetch);
        set(&mut self.inference.kv_bulk, o.kv_bulk);
        set(&mut self.inference.kv_bulk_port, o.kv_bulk_port);
        set(&mut self.inference.role, o.role);
        set(&mut self.inference.kv_host_mb, o.kv_host_mb);
        set(&mut self.inference.lookahead, o.lookahead);
        if o.ort_lib.is_some() {
            self.inference.ort_lib = o.ort_lib;
        }
        set(&mut self.swarm, o.swarm);
        set(&mut self.bootstrap, o.bootstrap);
        set(&mut self.agents, o.agents);
        set(&mut self.p2p.listen_ip, o.listen_ip);
        set(&mut self.p2p.port, o.p2p_port);
        set(&mut self.p2p.quic, o.quic);
        set(&mut self.mdns.enabled, o.mdns);
        set(&mut self.mdns.interfaces, o.mdns_interfaces);
        set(&mut self.api.bind, o.api_bind);
        set(&mut self.api.events_bind, o.events_bind);
        set(&mut self.api.allow_non_loopback, o.allow_non_loopback_api);
        set(&mut self.log.format, o.log_format);
        set(&mut self.http.enabled, o.http);
        if o.http_bind.is_some() {
            // Naming an address asks for the API.
            self.http.enabled = true;
        }
        set(&mut self.http.bind, o.http_bind);
        set(&mut self.http.allow_non_loopback, o.http_allow_non_loopback);
        if o.http_api_key_file.is_some() {
            self.http.api_key_file = o.http_api_key_file;
        }
    }

    /// The effective configuration as TOML, with the data directory resolved.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        if shown.data_dir.is_none() {
            shown.data_dir = default_data_dir();
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot print configuration: {e}\n"))
    }

    /// Validates everything and reads the swarm key, giving the settings a node runs with.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let data_dir = match &self.data_dir {
            Some(dir) if dir.as_os_str().is_empty() => return Err(invalid("data_dir", "must not be empty")),
            Some(dir) => dir.clone(),
            None => default_data_dir().ok_or_else(|| {
                invalid("data_dir", "no default: neither XDG_DATA_HOME nor HOME is set; pass --data-dir")
            })?,
        };
        let namespace = SwarmNamespace::new(&self.swarm).map_err(|e| invalid("swarm", e.to_string()))?;
        let swarm_key = self.swarm_key.as_deref().map(read_swarm_key).transpose()?;
        let bootstrap = self
            .bootstrap
            .iter()
            .map(|s| s.parse::<Multiaddr>().map_err(|e| invalid("bootstrap", format!("{s:?} is not a multiaddr: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let agents = select_agents(&self.agents)?;
        if self.p2p.max_connections == 0 {
            return Err(invalid("p2p.max_connections", "must be at least 1"));
        }
        for (field, addr) in [("api.bind", self.api.bind), ("api.events_bind", self.api.events_bind)] {
            if !addr.ip().is_loopback() && !self.api.allow_non_loopback {
                return Err(invalid(
                    field,
                    format!(
                        "{addr} is not a loopback address; the API has no authentication, \
                         so set api.allow_non_loopback (--api-allow-non-loopback) to expose it"
                    ),
                ));
            }
        }
        if self.api.bind == self.api.events_bind && self.api.bind.port() != 0 {
            return Err(invalid("api.events_bind", "must differ from api.bind"));
        }
        for iface in &self.mdns.interfaces {
            if iface.is_empty() || iface.len() > 15 || iface.contains(['/', ' ']) {
                return Err(invalid("mdns.interfaces", format!("{iface:?} is not an interface name")));
            }
        }
        let m = &self.membership;
        if !(100..=60_000).contains(&m.advert_interval_ms) {
            return Err(invalid("membership.advert_interval_ms", "must be between 100 and 60000"));
        }
        if m.peer_ttl_ms < 2 * m.advert_interval_ms {
            return Err(invalid("membership.peer_ttl_ms", "must be at least twice membership.advert_interval_ms"));
        }
        if !(1..=1_048_576).contains(&self.inference.kv_host_mb) {
            return Err(invalid("inference.kv_host_mb", "must be between 1 and 1048576"));
        }
        if self.inference.lookahead > inference::MAX_LOOKAHEAD {
            return Err(invalid("inference.lookahead", format!("must be at most {} (0 turns it off)", inference::MAX_LOOKAHEAD)));
        }
        let h = &self.history;
        if !(1..=16).contains(&h.replicas) {
            return Err(invalid("history.replicas", "must be between 1 and 16"));
        }
        if !(1..=h.replicas).contains(&h.write_quorum) {
            return Err(invalid("history.write_quorum", format!("must be between 1 and history.replicas ({})", h.replicas)));
        }
        if !(100..=60_000).contains(&h.sync_interval_ms) {
            return Err(invalid("history.sync_interval_ms", "must be between 100 and 60000"));
        }
        let quic = self.p2p.quic && swarm_key.is_none();
        let http = self.validate_http()?;
        for dir in &self.inference.models {
            if dir.as_os_str().is_empty() {
                return Err(invalid("inference.models", "a model directory must not be empty"));
            }
        }
        Ok(Settings {
            http,
            history: HistorySettings {
                replicas: h.replicas,
                write_quorum: h.write_quorum,
                sync_interval: Duration::from_millis(h.sync_interval_ms),
            },
            models: self.inference.models.clone(),
            provider: self.inference.provider,
            ort_lib: self.inference.ort_lib.clone(),
            kv_host_bytes: self.inference.kv_host_mb << 20,
            kv_fetch: self.inference.kv_fetch,
            kv_bulk: self.inference.kv_bulk,
            kv_bulk_port: self.inference.kv_bulk_port,
            role: self.inference.role,
            lookahead: self.inference.lookahead,
            protocol_versions: VersionRange::SUPPORTED,
            data_dir,
            namespace,
            swarm_key,
            bootstrap,
            agents,
            listen_ip: self.p2p.listen_ip,
            p2p_port: self.p2p.port,
            quic,
            quic_disabled_by_key: self.p2p.quic && !quic,
            max_connections: self.p2p.max_connections,
            mdns: self.mdns.enabled,
            mdns_interfaces: self.mdns.interfaces.clone(),
            api_bind: self.api.bind,
            events_bind: self.api.events_bind,
            advert_interval: Duration::from_millis(m.advert_interval_ms),
            peer_ttl: Duration::from_millis(m.peer_ttl_ms),
            log_format: self.log.format,
        })
    }
}


/// The hosted agents' names: all built-in ones for an empty list, none for `["none"]`.
fn select_agents(names: &[String]) -> Result<Vec<String>, ConfigError> {
    if names == ["none"] {
        return Ok(Vec::new());
    }
    let parsed = names
        .iter()
        .map(|n| n.parse::<pyagent_agents::AgentName>().map_err(|e| invalid("agents", e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let registry = pyagent_agents::Registry::select(&parsed).map_err(|e| invalid("agents", e.to_string()))?;
    Ok(registry.names().iter().map(ToString::to_string).collect())
}

/// `$XDG_DATA_HOME/pyagent`, i.e. `~/.local/share/pyagent`.
pub fn default_data_dir() -> Option<PathBuf> {
    dirs::data_dir().map(|d| d.join("pyagent"))
}

/// Reads a libp2p pre-shared key file (`/key/swarm/psk/1.0.0/` format).
pub fn read_swarm_key(path: &Path) -> Result<PreSharedKey, ConfigError> {
    use std::io::Read;
    // A key file is about 100 bytes: read at most 4 KiB, so that a path such as /dev/zero
    // is refused instead of read without end.
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(4096).read_to_end(&mut bytes))
        .map_err(|e| invalid("swarm_key", format!("cannot read {}: {e}", path.display())))?;
    let text = String::from_utf8(bytes).map_err(|_| invalid("swarm_key", format!("{} is not a swarm key file: not text", path.display())))?;
    text.trim_end()
        .parse::<PreSharedKey>()
        .map_err(|e| invalid("swarm_key", format!("{} is not a swarm key file: {e}", path.display())))
}

/// Validated settings a node runs with.
#[derive(Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub namespace: SwarmNamespace,
    pub swarm_key: Option<PreSharedKey>,
    pub bootstrap: Vec<Multiaddr>,
    /// Names of the hosted agents (validated against the built-in ones).
    pub agents: Vec<String>,
    pub listen_ip: IpAddr,
    pub p2p_port: u16,
    pub quic: bool,
    /// QUIC was asked for but a swarm key turned it off (pnet protects TCP only).
    pub quic_disabled_by_key: bool,
    pub max_connections: u32,
    pub mdns: bool,
    pub mdns_interfaces: Vec<String>,
    pub api_bind: SocketAddr,
    pub events_bind: SocketAddr,
    pub advert_interval: Duration,
    pub peer_ttl: Duration,
    pub log_format: LogFormat,
    /// Inference: model directories (empty: none served), ONNX Runtime library, KV budget.
    pub models: Vec<PathBuf>,
    pub provider: ProviderChoice,
    pub ort_lib: Option<PathBuf>,
    pub kv_host_bytes: u64,
    /// Fetch prompt prefixes from peers that hold them before prefill.
    pub kv_fetch: bool,
    /// Move fetched KV blocks over the bulk path (a TCP port beside libp2p).
    pub kv_bulk: bool,
    /// Its TCP port (0: any free one).
    pub kv_bulk_port: u16,
    /// `--role`: prefill, decode or both.
    pub role: pyagent_protocol::InferenceRole,
    /// Guesses per decode pass at most (`inference.lookahead`).
    pub lookahead: usize,
    /// The history DHT's replication.
    pub history: HistorySettings,
    /// The OpenAI-compatible HTTP API; `None`: off.
    pub http: Option<HttpSettings>,
    /// Peer protocol versions this node speaks: always [`VersionRange::SUPPORTED`] outside
    /// tests (which run nodes of two versions in one process).
    pub protocol_versions: VersionRange,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("data_dir", &self.data_dir)
            .field("namespace", &self.namespace.name())
            // Never print the key itself; its fingerprint identifies it.
            .field("swarm_key", &self.swarm_key.as_ref().map(|k| k.fingerprint().to_string()))
            .field("bootstrap", &self.bootstrap)
            .field("agents", &self.agents)
            .field("listen_ip", &self.listen_ip)
            .field("p2p_port", &self.p2p_port)
            .field("quic", &self.quic)
            .field("mdns", &self.mdns)
            .field("mdns_interfaces", &self.mdns_interfaces)
            .field("api_bind", &self.api_bind)
            .field("events_bind", &self.events_bind)
            .field("http", &self.http)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
