//! Tasks across the swarm: who executes what, blobs, results.
//!
//! - [`rendezvous`]: the executor order every node computes alike.
//! - [`scheduler`]: the executor-side state machine (claims, leases, failover); pure.
//! - [`engine`]: requester and executor sides, wired into the swarm task.
//! - [`execute`]: running a task with a hosted agent (blocking pool).

pub mod engine;
pub mod execute;
pub mod rendezvous;
pub mod scheduler;

pub use engine::{Executed, SubmitError, TaskEngine};
