//! The PyAgent Swarm node: the only crate that touches the network and the disk layout.
//!
//! Layout (one folder or file per concern):
//! - [`config`]: defaults, TOML file, `PYAGENT_*` environment, flags → validated
//!   [`config::Settings`].
//! - [`store`]: RocksDB (known peers, blobs, history shards) and the locked data directory;
//!   [`identity`]: the persistent ed25519 key.
//! - [`p2p`]: libp2p transport and behaviours, and the router: the one task that owns the
//!   `Swarm`, routes events into the state machines below and carries out their
//!   [`effects`]; the rest of the node talks to it through [`p2p::NodeClient`].
//! - [`membership`]: the membership view and its upkeep (adverts, hellos, dials); pure.
//! - [`tasks`]: tasks across the swarm (executor choice, leases, failover, blobs,
//!   results) as a pure state machine, and the runner actor that executes them.
//! - [`votes`]: proposals and signed ballots; typed tallies; pure.
//! - [`placement`]: rendezvous hashing, the one placement order (task executors and
//!   history shard owners; inference next).
//! - [`history`]: the history DHT (1,024 replicated shards of signed entries; writes
//!   acknowledged at W owners, hints, reads, anti-entropy, hand-off) and its actor.
//! - [`serving`]: the model-serving worker actors (one per hosted model, each owning its
//!   inference engine) and the placement cost of inference requests.
//! - [`inference`]: inference across the swarm: placement over local workers and peers'
//!   adverts, failover, and the `/pyagent/infer/1` token streams (requester, executor).
//! - [`kv`]: the KV-block exchange: prefix blocks fetched from the peers that hold them
//!   (`/pyagent/kv/1`), block summaries in adverts, placement credit.
//! - [`http`]: the OpenAI-compatible HTTP API, `/healthz`, `/readyz`, `/metrics`;
//!   [`systemd`]: readiness notification (`Type=notify`).
//! - [`discovery`]: mDNS announcement and browsing.
//! - [`external`]: external agents (any language) serving capabilities over the API.
//! - [`api`]: the local ZeroMQ API server, its admission control, its methods, and its
//!   client.
//! - [`node`]: assembling, running and shutting down a [`Node`].
//! - [`cli`], [`logging`]: the `pyagent` binary's front end; [`analyze`]: `pyagent analyze`.

pub mod analyze;
pub mod api;
pub mod cli;
pub mod config;
pub mod discovery;
pub mod effects;
pub mod external;
pub mod history;
pub mod http;
pub mod identity;
pub mod inference;
pub mod kv;
pub mod logging;
pub mod membership;
pub mod node;
pub mod p2p;
pub mod placement;
pub mod serving;
pub mod store;
pub mod systemd;
pub mod tasks;
pub mod votes;

pub use node::{Node, StartError};
