//! Direct request-response messages between two connected peers (libp2p
//! request-response, protocol [`RPC_PROTOCOL`]). Encoded with [`crate::codec`].

use serde::{Deserialize, Serialize};

use crate::Advert;
use crate::task::{BlobId, TaskId, TaskOutcome};
use crate::advert::{AdvertError, MAX_ADDR_LEN, MAX_LISTEN_ADDRS};

/// Stream protocol name of the request-response behaviour.
pub const RPC_PROTOCOL: &str = "/pyagent/rpc/1";

/// Largest request or response frame.
pub const MAX_RPC_BYTES: usize = crate::codec::MAX_FRAME_BYTES;

/// Most members listed in a [`RpcResponse::Hello`].
pub const MAX_HELLO_MEMBERS: usize = 64;

/// A request to a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RpcRequest {
    /// "Who are you, and who else is here?": asked right after a connection opens, so the
    /// view fills without waiting for a gossip round, and the new node can dial the rest
    /// of the swarm at once (peer exchange).
    Hello,
    /// "Send me these blobs" (an executor asks a task's requester). The answer holds
    /// those the responder has, as many as fit in one frame; ask again for the rest.
    GetBlobs { ids: Vec<BlobId> },
    /// An executor's outcome for a task, sent to the task's requester.
    TaskResult { task: TaskId, outcome: TaskOutcome },
}

/// Most ids in one [`RpcRequest::GetBlobs`].
pub const MAX_BLOBS_PER_REQUEST: usize = 4096;

/// One blob in a [`RpcResponse::Blobs`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobData {
    pub id: BlobId,
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for BlobData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlobData({}, {} bytes)", self.id, self.bytes.len())
    }
}

/// A member of the answering node's view, for peer exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAddrs {
    pub peer_id: String,
    pub listen_addrs: Vec<String>,
}

/// The answer to an [`RpcRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RpcResponse {
    Hello { advert: Box<Advert>, members: Vec<MemberAddrs> },
    /// Blobs asked for by [`RpcRequest::GetBlobs`] (missing ones are left out).
    Blobs(Vec<BlobData>),
    /// A [`RpcRequest::TaskResult`] was taken (or was a duplicate, which is harmless).
    Ack,
    /// The request was understood but refused; the text says why.
    Error(String),
}

/// Checks the bounds of a peer-exchange list.
pub fn validate_members(members: &[MemberAddrs]) -> Result<(), AdvertError> {
    let field = |reason: String| AdvertError::Field { field: "members", reason };
    if members.len() > MAX_HELLO_MEMBERS {
        return Err(field(format!("{} entries, limit {MAX_HELLO_MEMBERS}", members.len())));
    }
    for m in members {
        if m.peer_id.len() > 128 || m.listen_addrs.len() > MAX_LISTEN_ADDRS || m.listen_addrs.iter().any(|a| a.len() > MAX_ADDR_LEN) {
            return Err(field("member entry out of bounds".into()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_lists_are_bounded() {
        let m = MemberAddrs { peer_id: "p".into(), listen_addrs: vec!["/ip4/1.2.3.4/tcp/1".into()] };
        assert!(validate_members(&vec![m.clone(); MAX_HELLO_MEMBERS]).is_ok());
        assert!(validate_members(&vec![m.clone(); MAX_HELLO_MEMBERS + 1]).is_err());
        let long = MemberAddrs { peer_id: "p".into(), listen_addrs: vec!["x".repeat(MAX_ADDR_LEN + 1)] };
        assert!(validate_members(&[long]).is_err());
    }
}
