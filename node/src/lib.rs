//! The PyAgent Swarm node: the only crate that touches the network and the disk layout.
//!
//! Layout:
//! - [`config`]: defaults, TOML file, `PYAGENT_*` environment, flags → validated [`config::Settings`].
//! - [`data_dir`]: the locked data directory; [`identity`]: the persistent ed25519 key;
//!   [`store`]: RocksDB (known peers, blobs).
//! - [`p2p`]: libp2p transport and behaviours, the swarm task and its [`p2p::NodeClient`].
//! - [`membership`]: the membership view (pure state, fed by the swarm task).
//! - [`votes`]: proposals and signed ballots over gossip; tallies.
//! - [`tasks`]: tasks across the swarm (rendezvous executor choice, leases, failover,
//!   blobs, results), run inside the swarm task.
//! - [`discovery`]: mDNS announcement and browsing.
//! - [`inference`]: the served model, measured at start, in the advert.
//! - [`external`]: external agents (any language) serving capabilities over the API.
//! - [`api`]: the local ZeroMQ API server; [`api_client`]: its client.
//! - [`node`]: assembling, running and shutting down a [`Node`].
//! - [`cli`], [`logging`]: the `pyagent` binary's front end; [`analyze`]: `pyagent analyze`.

pub mod analyze;
pub mod api;
pub mod api_admission;
pub mod api_client;
pub mod api_agents;
pub mod api_tasks;
pub mod api_votes;
pub mod cli;
pub mod config;
pub mod data_dir;
pub mod discovery;
pub mod external;
pub mod identity;
pub mod inference;
pub mod logging;
pub mod membership;
pub mod node;
pub mod p2p;
pub mod store;
pub mod tasks;
pub mod votes;

pub use node::{Node, StartError};
