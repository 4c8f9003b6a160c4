//! Deterministic votes: every node that holds the same ballots computes the same tally,
//! whatever order the ballots arrived in. Pure logic with integer arithmetic only (no
//! floats, no hash-map iteration order), so the result is bit-for-bit reproducible.
//!
//! - [`ballot`]: proposals, ballots, validation, and the [`BallotBox`] that accepts one
//!   ballot per voter and rejects malformed ones with a reason.
//! - [`methods`]: the tallies — plurality, approval, Borda, instant-runoff, Schulze,
//!   quadratic and trust-weighted.
//! - [`tiebreak`]: the seeded order (from the proposal id) that breaks every remaining tie.
//! - [`wire`]: the one mapping between the wire's vote types (`pyagent_protocol::vote`)
//!   and the counting types here.
//!
//! Signing ballots and carrying them over gossip is the node's job; this module decides.

pub mod ballot;
pub mod methods;
pub mod tiebreak;
pub mod wire;

pub use ballot::{Ballot, BallotBox, BallotError, Choice, Method, Proposal, ProposalError};
pub use methods::{Tally, tally};
