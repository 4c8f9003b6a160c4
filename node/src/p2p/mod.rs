//! Everything libp2p. One task ([`swarm_task`]) owns the `Swarm`; the rest of the node
//! talks to it through a cloneable [`NodeClient`] that sends [`Command`]s over a bounded
//! channel, with `oneshot` replies.
//!
//! ```text
//!  API server ─┐                          ┌─ gossipsub: adverts, tasks, votes
//!  mDNS ───────┼─ Command ─► swarm task ──┼─ request-response: Hello, blobs, results
//!  Node ───────┘   (mpsc)      │          └─ identify / kad / ping / limits
//!                              └─ Event (broadcast) ─► API PUB socket, tests
//! ```
//!
//! - [`transport`]: TCP (+ pnet when a swarm key is set) + Noise + Yamux, and QUIC.
//! - [`behaviour`]: the composed `NetworkBehaviour`; [`pending_limit`]: handshakes in
//!   progress bounded per source address.
//! - [`rpc`]: the request-response codec (through `pyagent_protocol::codec`).
//! - [`client`]: [`NodeClient`] and [`Command`].
//! - [`swarm_task`]: the event loop, membership view upkeep, adverts, redials.

pub mod behaviour;
pub mod client;
pub mod pending_limit;
pub mod rpc;
pub mod swarm_task;
pub mod transport;

pub use client::{ClientError, Command, NodeClient};
