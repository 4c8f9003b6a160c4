//! Tasks across the swarm: who executes what, blobs, results.
//!
//! - [`scheduler`]: the executor-side state machine (claims, leases, failover); pure.
//! - [`engine`]: both sides of tasks as one pure state machine that returns effects;
//!   [`requester`]: its requester side (submit, first result wins, reports).
//! - [`runner`]: the actor that executes tasks off the event loop (bounded inbox).
//! - [`execute`]: running a task with a hosted agent (blocking pool).
//! - [`suggest`]: the `llm` agent's `llm.suggest` (candidate rewrites from this node's model).
//!
//! Executors are ordered by [`crate::placement`] (rendezvous hashing).

pub mod engine;
pub mod execute;
pub mod requester;
pub mod runner;
pub mod scheduler;
pub mod suggest;

pub use engine::TaskEngine;
pub use requester::SubmitError;
pub use runner::{Executed, TaskRunner};
