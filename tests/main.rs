//! The integration tests: one test binary (one link, as ripgrep does), one module per
//! concern. Multi-node tests run in-process over loopback with mDNS off, or (as root) in
//! the network-namespace lab, so nothing leaves the machine.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod support;

mod adversary;
mod cli;
mod history;
mod hostile;
mod in_process;
mod kv_exchange;
mod lab;
mod lab_history;
mod openai_api;
mod serving;
mod swarm_inference;
mod tasks;
mod votes;
