//! Everything libp2p. One task ([`router`]) owns the `Swarm` and only routes: events go
//! into the domain state machines (membership, tasks, votes), the effects they return
//! are carried out ([`apply`]). The rest of the node talks to it through a cloneable
//! [`NodeClient`] that sends [`Command`]s over a bounded channel, with `oneshot` replies.
//!
//! ```text
//!  API server ─┐                        ┌─ gossipsub: adverts, tasks, votes
//!  mDNS ───────┼─ Command ─► router ────┼─ request-response, one per concern:
//!  Node ───────┘   (mpsc)    │  ▲       │    /pyagent/hello/1, /pyagent/blobs/1,
//!                            │  │       │    /pyagent/task-result/1, /pyagent/history/1
//!                            │  │       │    (history: to and from the history actor)
//!             events in ─────┘  │       └─ identify / kad / ping / limits
//!             effects out ──────┘
//!                            └─ Event (broadcast) ─► API PUB socket, tests
//! ```
//!
//! - [`transport`]: TCP (+ pnet when a swarm key is set) + Noise + Yamux, and QUIC;
//!   [`throughput`]: one stream's rate over each stack (`pyagent bench-transport`);
//!   [`throughput_between`]: raw TCP and the KV bulk path between two hosts.
//! - [`behaviour`]: the composed `NetworkBehaviour`; [`pending_limit`]: handshakes in
//!   progress bounded per source address.
//! - [`codec`]: the request-response codec, generic over `pyagent_protocol::rpc`'s
//!   protocols (each with its own name and limits).
//! - [`client`]: [`NodeClient`] and [`Command`]; [`facts`]: what the node is.
//! - [`router`]: the event loop; [`apply`]: effects carried out; [`commands`]: answers
//!   to commands; `history`: the history protocol routed to and from the history
//!   actor; [`addrs`]: multiaddr helpers.

pub mod addrs;
mod apply;
pub mod behaviour;
pub mod client;
pub mod codec;
mod commands;
pub mod facts;
mod history;
pub mod pending_limit;
pub mod router;
pub mod throughput;
pub mod throughput_between;
pub mod transport;

pub use client::{ClientError, Command, NodeClient};
pub use facts::NodeFacts;
