//! Direct request-response messages between two connected peers (libp2p
//! request-response, protocol [`RPC_PROTOCOL`]). Encoded with [`crate::codec`].

use serde::{Deserialize, Serialize};

use crate::Advert;

/// Stream protocol name of the request-response behaviour.
pub const RPC_PROTOCOL: &str = "/pyagent/rpc/1";

/// Largest request or response frame.
pub const MAX_RPC_BYTES: usize = crate::codec::MAX_FRAME_BYTES;

/// A request to a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RpcRequest {
    /// "Who are you?": asked right after a connection opens, so the membership view
    /// fills without waiting for the next gossip round.
    GetAdvert,
}

/// The answer to an [`RpcRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RpcResponse {
    Advert(Box<Advert>),
    /// The request was understood but refused; the text says why.
    Error(String),
}
