//! Wire types and codecs of PyAgent Swarm. Pure data: no sockets, no tokio, no disk.
//!
//! Layout:
//! - [`codec`]: the one place that knows the binary wire encoding (postcard);
//!   every peer-to-peer message is encoded and decoded through it, with a size limit.
//! - [`swarm`]: protocol version ranges, swarm namespaces and the names derived from them
//!   (gossip topics, identify protocol string, mDNS service type and TXT keys).
//! - [`advert`]: the membership advert every node gossips, and the capacity it carries.
//! - [`rpc`]: request-response messages exchanged directly between two peers.
//! - [`task`]: tasks, blobs and the task topic's messages (content-addressed, BLAKE3).
//! - [`vote`]: proposals and signed ballots on the vote topic.
//! - [`history`]: the history DHT's signed entries, shards, fingerprints and its
//!   request-response protocol (`/pyagent/history/1`).
//! - [`inference`]: the inference stream protocol (`/pyagent/infer/1`): a request, then
//!   the tokens as they come.
//! - [`kv`]: KV blocks between peers: the summary of what a node holds (in its advert)
//!   and the block transfer stream protocol (`/pyagent/kv/1`).
//! - [`api`]: the JSON schema of the local ZeroMQ API (requests, replies, events).
//! - [`openai`]: the OpenAI-compatible HTTP API's requests (checked), responses, errors.

pub mod advert;
pub mod api;
pub mod codec;
pub mod history;
pub mod inference;
pub mod kv;
pub mod openai;
pub mod rpc;
pub mod swarm;
pub mod task;
pub mod vote;

#[cfg(test)]
mod wire_properties;

pub use advert::{Advert, AdvertError, Capacity, GpuInfo, InferenceCapacity, InferenceRole};
pub use codec::{CodecError, decode, encode};
pub use swarm::{IdentifyProtocol, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, SwarmNamespace, VersionRange};
