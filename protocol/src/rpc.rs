//! Direct request-response messages between two connected peers: one libp2p
//! request-response protocol per concern, each with its own name, message types and size
//! limits ([`RequestResponse`]), so a node routes every answer by its type and a new
//! concern (history sync, KV blocks) adds a protocol instead of a variant to a shared enum.
//! Encoded with [`crate::codec`].
//!
//! | protocol | request | response | limits (request / response) |
//! |---|---|---|---|
//! | [`Hello`] `/pyagent/hello/1` | [`HelloRequest`] | [`HelloResponse`] | 64 B / 543 KiB |
//! | [`Blobs`] `/pyagent/blobs/1` | [`GetBlobs`] | [`BlobsResponse`] | 160 KiB / 4 MiB |
//! | [`TaskResults`] `/pyagent/task-result/1` | [`TaskResult`] | [`ResultAck`] | 4 MiB / 64 B |
//! | [`crate::history::HistoryRpc`] `/pyagent/history/1` | `HistoryRequest` | `HistoryResponse` | 4 MiB / 4 MiB |

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::Advert;
use crate::advert::{AdvertError, MAX_ADDR_LEN, MAX_ADVERT_BYTES, MAX_LISTEN_ADDRS};
use crate::codec::MAX_FRAME_BYTES;
use crate::task::{BlobId, TaskId, TaskOutcome};

/// A request-response protocol: its stream protocol name, message types and the largest
/// frame each side accepts (checked before decoding).
pub trait RequestResponse: Send + Sync + 'static {
    /// Stream protocol name, e.g. `/pyagent/hello/1`.
    const NAME: &'static str;
    const MAX_REQUEST_BYTES: usize;
    const MAX_RESPONSE_BYTES: usize;
    type Request: Serialize + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static;
    type Response: Serialize + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static;
}

/// Most members listed in a [`HelloResponse`].
pub const MAX_HELLO_MEMBERS: usize = 64;

/// "Who are you, and who else is here?": asked right after a connection opens, so the view
/// fills without waiting for a gossip round, and the new node can dial the rest of the
/// swarm at once (peer exchange).
#[derive(Debug)]
pub struct Hello;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloRequest;

/// The answering node's advert, and members of its view for peer exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloResponse {
    pub advert: Box<Advert>,
    pub members: Vec<MemberAddrs>,
}

impl RequestResponse for Hello {
    const NAME: &'static str = "/pyagent/hello/1";
    const MAX_REQUEST_BYTES: usize = 64;
    // The advert, and the most members with the most addresses [`validate_members`] allows.
    const MAX_RESPONSE_BYTES: usize = MAX_ADVERT_BYTES + MAX_HELLO_MEMBERS * (136 + MAX_LISTEN_ADDRS * (MAX_ADDR_LEN + 3));
    type Request = HelloRequest;
    type Response = HelloResponse;
}

/// A member of the answering node's view, for peer exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAddrs {
    pub peer_id: String,
    pub listen_addrs: Vec<String>,
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

/// Most ids in one [`GetBlobs`].
pub const MAX_BLOBS_PER_REQUEST: usize = 4096;

/// "Send me these blobs": an executor asks a task's requester. The answer holds those the
/// responder has, as many as fit in one frame; ask again for the rest.
#[derive(Debug)]
pub struct Blobs;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetBlobs {
    pub ids: Vec<BlobId>,
}

/// One blob in a [`BlobsResponse::Blobs`].
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobsResponse {
    /// The blobs asked for that the responder has (missing ones are left out).
    Blobs(Vec<BlobData>),
    /// The request was understood but could not be served; the text says why.
    Error(String),
}

impl RequestResponse for Blobs {
    const NAME: &'static str = "/pyagent/blobs/1";
    // 4096 ids of 33 bytes each (length prefix and hash), and framing.
    const MAX_REQUEST_BYTES: usize = MAX_BLOBS_PER_REQUEST * 40;
    const MAX_RESPONSE_BYTES: usize = MAX_FRAME_BYTES;
    type Request = GetBlobs;
    type Response = BlobsResponse;
}

/// An executor's outcome for a task, sent to the task's requester.
#[derive(Debug)]
pub struct TaskResults;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResult {
    pub task: TaskId,
    pub outcome: TaskOutcome,
}

/// The result was taken (or was a duplicate, which is harmless).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultAck;

impl RequestResponse for TaskResults {
    const NAME: &'static str = "/pyagent/task-result/1";
    const MAX_REQUEST_BYTES: usize = MAX_FRAME_BYTES;
    const MAX_RESPONSE_BYTES: usize = 64;
    type Request = TaskResult;
    type Response = ResultAck;
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

    #[test]
    fn protocols_have_distinct_names_and_limits_that_fit_their_largest_messages() {
        let names = [Hello::NAME, Blobs::NAME, TaskResults::NAME];
        for (i, a) in names.iter().enumerate() {
            assert!(a.starts_with("/pyagent/"));
            assert!(names[i + 1..].iter().all(|b| a != b));
        }
        let ids = GetBlobs { ids: vec![BlobId([0xFF; 32]); MAX_BLOBS_PER_REQUEST] };
        assert!(crate::codec::encode(&ids).unwrap().len() <= Blobs::MAX_REQUEST_BYTES);
        assert!(crate::codec::encode(&HelloRequest).unwrap().len() <= Hello::MAX_REQUEST_BYTES);
        assert!(crate::codec::encode(&ResultAck).unwrap().len() <= TaskResults::MAX_RESPONSE_BYTES);
        let members = vec![
            MemberAddrs { peer_id: "p".repeat(128), listen_addrs: vec!["a".repeat(MAX_ADDR_LEN); MAX_LISTEN_ADDRS] };
            MAX_HELLO_MEMBERS
        ];
        assert!(validate_members(&members).is_ok());
        let hello = HelloResponse { advert: Box::new(crate::advert::tests::sample()), members };
        assert!(crate::codec::encode(&hello).unwrap().len() <= Hello::MAX_RESPONSE_BYTES);
    }
}
