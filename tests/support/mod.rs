//! Helpers shared by the integration tests: start in-process nodes on loopback, wait for
//! a condition with a deadline, and drive real `pyagent` processes in the namespace lab.


pub mod http;
pub mod lab;

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use libp2p::Multiaddr;
use pyagent_node::Node;
use pyagent_node::config::Config;

/// Waits until `check` returns true, polling every 100 ms; panics after `limit`.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `pyagent analyze ARGS` against `node`'s API.
pub async fn analyze_cli(node: &Node, args: &[&str]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_pyagent"));
    cmd.arg("analyze").arg("--api").arg(node.api_endpoint()).args(args);
    cmd.output().await.expect("run pyagent analyze")
}

/// Writes `text` to `rel` under `root`, creating its directories.
pub fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// Options of an in-process test node.
#[derive(Debug, Clone, Default)]
pub struct Opts {
    pub swarm: Option<String>,
    pub swarm_key: Option<PathBuf>,
    pub bootstrap: Vec<Multiaddr>,
    pub quic: Option<bool>,
    pub agents: Vec<String>,
}

/// Configuration of an in-process node: loopback only, mDNS off, ephemeral ports,
/// quick adverts so tests stay short.
pub fn test_config(data_dir: &Path, opts: &Opts) -> Config {
    let mut c = Config { data_dir: Some(data_dir.to_owned()), ..Default::default() };
    if let Some(s) = &opts.swarm {
        c.swarm = s.clone();
    }
    c.swarm_key = opts.swarm_key.clone();
    c.bootstrap = opts.bootstrap.iter().map(ToString::to_string).collect();
    c.agents = opts.agents.clone();
    c.p2p.listen_ip = "127.0.0.1".parse().unwrap();
    c.p2p.port = 0;
    c.p2p.quic = opts.quic.unwrap_or(true);
    c.mdns.enabled = false;
    c.api.bind = "127.0.0.1:0".parse().unwrap();
    c.api.events_bind = "127.0.0.1:0".parse().unwrap();
    c.http.bind = "127.0.0.1:0".parse().unwrap();
    c.membership.advert_interval_ms = 500;
    c.membership.peer_ttl_ms = 2000;
    c
}

/// Starts a node in `data_dir`.
pub async fn start_in(data_dir: &Path, opts: &Opts) -> Node {
    let settings = test_config(data_dir, opts).validate().expect("valid test config");
    Node::start(settings).await.expect("node starts")
}

/// PeerIds in a node's membership view.
pub async fn view(node: &Node) -> BTreeSet<String> {
    node.client().peers().await.expect("peers").into_iter().map(|p| p.peer_id).collect()
}

pub fn ids<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> BTreeSet<String> {
    nodes.into_iter().map(|n| n.peer_id().to_string()).collect()
}

/// Writes a fresh swarm key file into `dir` under `name`.
pub fn swarm_key(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    pyagent_node::cli::keygen(&pyagent_node::cli::KeygenArgs { swarm_key: path.clone(), force: false }).expect("keygen");
    path
}
