//! What the domain state machines ask of the outside world.
//!
//! Membership ([`crate::membership::Membership`]), tasks ([`crate::tasks::TaskEngine`])
//! and votes ([`crate::votes::VoteBook`]) never hold the libp2p `Swarm`: they take events
//! (with the time, injected) and push [`Effect`]s; the router
//! ([`crate::p2p::router`]) carries them out. So each of them is unit-tested by feeding
//! events and reading the effects, with no network.

use libp2p::{Multiaddr, PeerId};
use pyagent_protocol::api::Event;
use pyagent_protocol::history::HistoryEvent;
use pyagent_protocol::task::{BlobId, TaskId, TaskMessage, TaskOutcome, TaskSpec};
use pyagent_protocol::vote::VoteMessage;

/// One thing to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Publish this node's advert now (the router assembles it).
    PublishAdvert,
    PublishTask(TaskMessage),
    PublishVote(VoteMessage),
    /// Dial a peer at these addresses (unless connected or dialing).
    Dial { peer: PeerId, addrs: Vec<Multiaddr> },
    /// Dial a bootstrap address (its peer may be unknown yet).
    DialAddress { peer: Option<PeerId>, addr: Multiaddr },
    Disconnect(PeerId),
    /// Addresses a peer announced (for the DHT's routing table).
    AddAddresses { peer: PeerId, addrs: Vec<Multiaddr> },
    /// Remember a peer and its addresses on disk, to redial it after a restart.
    RememberPeer { peer: PeerId, addrs: Vec<Multiaddr> },
    /// Ask a peer for its advert and members (hello protocol).
    Hello(PeerId),
    /// Ask a task's requester for blobs (blobs protocol).
    FetchBlobs { peer: PeerId, task: TaskId, ids: Vec<BlobId> },
    /// Send a task's outcome to its requester (task-result protocol).
    DeliverResult { peer: PeerId, task: TaskId, outcome: TaskOutcome },
    /// Run a task with a hosted agent (the task runner actor).
    Execute { task: TaskId, spec: TaskSpec },
    /// Tell API subscribers.
    Emit(Event),
    /// Append to the history of a task or proposal.
    Record { subject: TaskId, event: HistoryEvent },
}

/// The effects of one event, in order.
pub type Effects = Vec<Effect>;
