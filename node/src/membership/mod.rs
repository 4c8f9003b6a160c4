//! Membership: who is in the swarm, and keeping it so.
//!
//! - [`view`]: the membership view (members, their adverts, TTL expiry, protocol
//!   version negotiation); pure state with an injected clock.
//! - [`upkeep`]: the state machine around it: connections, identify, adverts, hellos,
//!   dials and redials, turned into [`crate::effects::Effect`]s.

pub mod upkeep;
pub mod view;

pub use upkeep::{Membership, MembershipConfig};
pub use view::{Change, LeaveReason, Member, MembershipView, peer_info};
