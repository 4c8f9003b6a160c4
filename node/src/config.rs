//! Node configuration: defaults, then a TOML file (`--config`), then `PYAGENT_*`
//! environment variables, then command-line flags. [`Config`] is the file format and the
//! effective configuration (`pyagent node --print-config`); [`Config::validate`] turns it
//! into typed [`Settings`] once, and every error names the field at fault.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use libp2p::Multiaddr;
use libp2p::pnet::PreSharedKey;
use pyagent_protocol::SwarmNamespace;
use serde::{Deserialize, Serialize};

/// Default TCP/QUIC port of the peer-to-peer listener.
pub const DEFAULT_P2P_PORT: u16 = 7760;
/// Default port of the local request/reply API (ZeroMQ ROUTER).
pub const DEFAULT_API_PORT: u16 = 7761;
/// Default port of the local event stream (ZeroMQ PUB).
pub const DEFAULT_EVENTS_PORT: u16 = 7762;

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
    pub log: LogConfig,
}

/// Inference: the model this node serves, if any.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InferenceConfig {
    /// Model directory (model.onnx, tokenizer.json, config.json). None: inference off.
    pub model: Option<PathBuf>,
    /// ONNX Runtime library. Default: ORT_DYLIB_PATH, then `.venv-models`.
    pub ort_lib: Option<PathBuf>,
    /// KV block pool budget in host RAM, MiB.
    pub kv_host_mb: u64,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self { model: None, ort_lib: None, kv_host_mb: 256 }
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

/// Values that override the file: from the environment or from flags. `None` keeps the
/// value below.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub swarm: Option<String>,
    pub swarm_key: Option<PathBuf>,
    pub bootstrap: Option<Vec<String>>,
    pub agents: Option<Vec<String>>,
    pub listen_ip: Option<IpAddr>,
    pub p2p_port: Option<u16>,
    pub quic: Option<bool>,
    pub mdns: Option<bool>,
    pub mdns_interfaces: Option<Vec<String>>,
    pub api_bind: Option<SocketAddr>,
    pub events_bind: Option<SocketAddr>,
    pub allow_non_loopback_api: Option<bool>,
    pub log_format: Option<LogFormat>,
    pub model: Option<PathBuf>,
    pub ort_lib: Option<PathBuf>,
}

/// The environment variables read by [`Overrides::from_env`], and what they set.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("PYAGENT_DATA_DIR", "data_dir"),
    ("PYAGENT_SWARM", "swarm"),
    ("PYAGENT_SWARM_KEY", "swarm_key"),
    ("PYAGENT_BOOTSTRAP", "bootstrap (comma-separated multiaddrs)"),
    ("PYAGENT_AGENTS", "agents (comma-separated names, or none)"),
    ("PYAGENT_LISTEN_IP", "p2p.listen_ip"),
    ("PYAGENT_P2P_PORT", "p2p.port"),
    ("PYAGENT_QUIC", "p2p.quic (true/false)"),
    ("PYAGENT_MDNS", "mdns.enabled (true/false)"),
    ("PYAGENT_MDNS_INTERFACES", "mdns.interfaces (comma-separated)"),
    ("PYAGENT_API", "api.bind"),
    ("PYAGENT_MODEL", "inference.model"),
    ("PYAGENT_ORT_LIB", "inference.ort_lib"),
    ("PYAGENT_EVENTS", "api.events_bind"),
    ("PYAGENT_API_ALLOW_NON_LOOPBACK", "api.allow_non_loopback (true/false)"),
    ("PYAGENT_LOG_FORMAT", "log.format (pretty/json)"),
];

fn parse_env<T: std::str::FromStr>(vars: &HashMap<String, String>, var: &'static str) -> Result<Option<T>, ConfigError>
where
    T::Err: std::fmt::Display,
{
    vars.get(var)
        .map(|raw| raw.trim().parse::<T>().map_err(|e| ConfigError::Env { var, message: format!("{raw:?}: {e}") }))
        .transpose()
}

fn parse_env_bool(vars: &HashMap<String, String>, var: &'static str) -> Result<Option<bool>, ConfigError> {
    vars.get(var)
        .map(|raw| match raw.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(ConfigError::Env { var, message: format!("{raw:?} is not a boolean (true/false)") }),
        })
        .transpose()
}

fn parse_env_list(vars: &HashMap<String, String>, var: &'static str) -> Option<Vec<String>> {
    vars.get(var).map(|raw| raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect())
}

/// `PYAGENT_*` variables that configure nothing (typos, most likely).
pub fn unknown_env_vars(vars: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
    const OTHERS: &[&str] = &["PYAGENT_CONFIG", "PYAGENT_API_ENDPOINT"];
    let mut unknown: Vec<String> = vars
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("PYAGENT_") && !OTHERS.contains(&k.as_str()) && !ENV_VARS.iter().any(|(v, _)| v == k))
        .collect();
    unknown.sort();
    unknown
}

impl Overrides {
    /// Reads the `PYAGENT_*` variables of `vars` (pass `std::env::vars()`).
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let vars: HashMap<String, String> = vars.into_iter().filter(|(k, _)| k.starts_with("PYAGENT_")).collect();
        Ok(Self {
            data_dir: vars.get("PYAGENT_DATA_DIR").map(PathBuf::from),
            swarm: vars.get("PYAGENT_SWARM").cloned(),
            swarm_key: vars.get("PYAGENT_SWARM_KEY").map(PathBuf::from),
            bootstrap: parse_env_list(&vars, "PYAGENT_BOOTSTRAP"),
            agents: parse_env_list(&vars, "PYAGENT_AGENTS"),
            listen_ip: parse_env(&vars, "PYAGENT_LISTEN_IP")?,
            p2p_port: parse_env(&vars, "PYAGENT_P2P_PORT")?,
            quic: parse_env_bool(&vars, "PYAGENT_QUIC")?,
            mdns: parse_env_bool(&vars, "PYAGENT_MDNS")?,
            mdns_interfaces: parse_env_list(&vars, "PYAGENT_MDNS_INTERFACES"),
            api_bind: parse_env(&vars, "PYAGENT_API")?,
            events_bind: parse_env(&vars, "PYAGENT_EVENTS")?,
            allow_non_loopback_api: parse_env_bool(&vars, "PYAGENT_API_ALLOW_NON_LOOPBACK")?,
            model: vars.get("PYAGENT_MODEL").map(PathBuf::from),
            ort_lib: vars.get("PYAGENT_ORT_LIB").map(PathBuf::from),
            log_format: vars
                .get("PYAGENT_LOG_FORMAT")
                .map(|raw| match raw.trim() {
                    "pretty" => Ok(LogFormat::Pretty),
                    "json" => Ok(LogFormat::Json),
                    _ => Err(ConfigError::Env { var: "PYAGENT_LOG_FORMAT", message: format!("{raw:?}: expected pretty or json") }),
                })
                .transpose()?,
        })
    }
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
        if o.model.is_some() {
            self.inference.model = o.model;
        }
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
        let quic = self.p2p.quic && swarm_key.is_none();
        Ok(Settings {
            model: self.inference.model.clone(),
            ort_lib: self.inference.ort_lib.clone(),
            kv_host_bytes: self.inference.kv_host_mb << 20,
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
    /// Inference: model directory (None: off), ONNX Runtime library, KV budget.
    pub model: Option<PathBuf>,
    pub ort_lib: Option<PathBuf>,
    pub kv_host_bytes: u64,
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
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Overrides {
        Overrides::from_env(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap()
    }

    #[test]
    fn defaults_validate() {
        let c = Config { data_dir: Some("/tmp/x".into()), ..Default::default() };
        let s = c.validate().unwrap();
        assert_eq!(s.p2p_port, 7760);
        assert_eq!(s.api_bind.port(), 7761);
        assert_eq!(s.events_bind.port(), 7762);
        assert_eq!(s.namespace.name(), "default");
        assert!(s.quic && s.mdns && s.swarm_key.is_none());
    }

    #[test]
    fn precedence_is_defaults_file_env_flags() {
        let mut c = Config::from_toml("swarm = \"file\"\n[p2p]\nport = 1000\nquic = false\n").unwrap();
        assert_eq!((c.swarm.as_str(), c.p2p.port, c.p2p.quic), ("file", 1000, false));
        // Untouched by the file: default.
        assert_eq!(c.api.bind.port(), 7761);
        c.apply(env(&[("PYAGENT_P2P_PORT", "2000"), ("PYAGENT_SWARM", "env")]));
        assert_eq!((c.swarm.as_str(), c.p2p.port), ("env", 2000));
        c.apply(Overrides { p2p_port: Some(3000), ..Default::default() });
        assert_eq!((c.swarm.as_str(), c.p2p.port, c.p2p.quic), ("env", 3000, false));
    }

    #[test]
    fn unknown_file_key_is_named() {
        let err = Config::from_toml("[p2p]\nprot = 1\n").unwrap_err();
        assert!(err.contains("prot"), "{err}");
    }

    #[test]
    fn wrong_type_is_named() {
        let err = Config::from_toml("[p2p]\nport = \"many\"\n").unwrap_err();
        assert!(err.contains("port"), "{err}");
        let err = Config::from_toml("[api]\nbind = \"localhost\"\n").unwrap_err();
        assert!(err.contains("bind"), "{err}");
    }

    #[test]
    fn bad_env_value_names_the_variable() {
        let err = Overrides::from_env([("PYAGENT_P2P_PORT".to_string(), "70000".to_string())]).unwrap_err();
        assert!(err.to_string().contains("PYAGENT_P2P_PORT"), "{err}");
        let err = Overrides::from_env([("PYAGENT_MDNS".to_string(), "maybe".to_string())]).unwrap_err();
        assert!(err.to_string().contains("PYAGENT_MDNS"), "{err}");
    }

    #[test]
    fn unknown_env_vars_are_reported() {
        let vars = [("PYAGENT_P2P_PROT", "1"), ("PYAGENT_SWARM", "x"), ("PYAGENT_CONFIG", "f"), ("HOME", "/root")];
        let unknown = unknown_env_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        assert_eq!(unknown, vec!["PYAGENT_P2P_PROT".to_string()]);
    }

    #[test]
    fn env_lists_split_on_commas() {
        let o = env(&[("PYAGENT_MDNS_INTERFACES", "eth0, eth1,"), ("PYAGENT_QUIC", "off")]);
        assert_eq!(o.mdns_interfaces, Some(vec!["eth0".to_string(), "eth1".to_string()]));
        assert_eq!(o.quic, Some(false));
    }

    fn validate_err(c: &Config) -> String {
        match c.validate() {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn validation_names_the_field() {
        let mut c = Config { data_dir: Some("/tmp/x".into()), ..Default::default() };
        c.swarm = "bad name".into();
        assert!(validate_err(&c).starts_with("swarm:"));
        let mut c = Config { data_dir: Some("/tmp/x".into()), ..Default::default() };
        c.bootstrap = vec!["not-an-addr".into()];
        assert!(validate_err(&c).starts_with("bootstrap:"));
        let mut c = Config { data_dir: Some("/tmp/x".into()), ..Default::default() };
        c.membership.peer_ttl_ms = 100;
        assert!(validate_err(&c).starts_with("membership.peer_ttl_ms:"));
        let mut c = Config { data_dir: Some("/tmp/x".into()), ..Default::default() };
        c.swarm_key = Some("/nonexistent/swarm.key".into());
        assert!(validate_err(&c).starts_with("swarm_key:"));
        c.swarm_key = Some("/dev/zero".into());
        assert!(validate_err(&c).contains("not a swarm key file"), "a device is read bounded and refused");
    }

    #[test]
    fn agents_default_to_all_builtin_and_can_be_narrowed_or_none() {
        let base = Config { data_dir: Some("/tmp/x".into()), ..Default::default() };
        let all: Vec<String> = pyagent_agents::builtin().iter().map(ToString::to_string).collect();
        assert_eq!(base.validate().unwrap().agents, all);
        let none = Config { agents: vec!["none".into()], ..base.clone() };
        assert!(none.validate().unwrap().agents.is_empty());
        let tokens = Config { agents: vec!["tokens".into()], ..base.clone() };
        assert_eq!(tokens.validate().unwrap().agents, vec!["tokens".to_string()]);
        let unknown = Config { agents: vec!["tokens".into(), "astrology".into()], ..base.clone() };
        let err = validate_err(&unknown);
        assert!(err.starts_with("agents:") && err.contains("astrology") && err.contains("tokens"), "{err}");
        let bad = Config { agents: vec!["Not A Name".into()], ..base };
        assert!(validate_err(&bad).starts_with("agents:"));
    }

    #[test]
    fn non_loopback_api_needs_explicit_permission() {
        let mut c = Config { data_dir: Some("/tmp/x".into()), ..Default::default() };
        c.api.bind = "0.0.0.0:7761".parse().unwrap();
        assert!(validate_err(&c).starts_with("api.bind:"));
        c.api.allow_non_loopback = true;
        assert!(c.validate().is_ok());
    }

    #[test]
    fn swarm_key_turns_quic_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("swarm.key");
        let key = PreSharedKey::new([7; 32]);
        std::fs::write(&path, key.to_string()).unwrap();
        let c = Config { data_dir: Some("/tmp/x".into()), swarm_key: Some(path), ..Default::default() };
        let s = c.validate().unwrap();
        assert!(!s.quic && s.quic_disabled_by_key);
        assert_eq!(s.swarm_key.unwrap().fingerprint().to_string(), key.fingerprint().to_string());
    }

    #[test]
    fn corrupt_swarm_key_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("swarm.key");
        std::fs::write(&path, "/key/swarm/psk/1.0.0/\n/base16/\nnothex").unwrap();
        let c = Config { data_dir: Some("/tmp/x".into()), swarm_key: Some(path), ..Default::default() };
        assert!(validate_err(&c).starts_with("swarm_key:"));
    }

    #[test]
    fn printed_config_parses_back() {
        let c = Config { bootstrap: vec!["/ip4/10.0.0.1/tcp/7760".into()], ..Default::default() };
        let text = c.to_toml();
        let back = Config::from_toml(&text).unwrap();
        assert_eq!(back.bootstrap, c.bootstrap);
        assert_eq!(back.p2p, c.p2p);
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn shipped_example_config_is_valid() {
        let text = include_str!("../../scripts/config.example.toml");
        let c = Config::from_toml(text).unwrap();
        assert_eq!(c.data_dir.as_deref(), Some(Path::new("/var/lib/pyagent")));
        let s = c.validate().unwrap();
        assert_eq!((s.p2p_port, s.api_bind.port(), s.events_bind.port()), (7760, 7761, 7762));
    }
}
