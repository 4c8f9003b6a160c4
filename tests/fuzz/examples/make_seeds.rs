//! Writes the committed seed corpus (`corpus/TARGET/seed-*`): valid inputs of each fuzz
//! target, so that the fuzzers start from real messages rather than from nothing.
//! `cargo run --manifest-path tests/fuzz/Cargo.toml --example make_seeds`

use std::path::Path;

use pyagent_engine::kv::{BLOCK_TOKENS, BlockHash, DType, KvBlock, KvLayout, ModelId};
use pyagent_protocol::rpc::{GetBlobs, HelloResponse, TaskResult};
use pyagent_protocol::task::{BlobId, FileRef, TaskMessage, TaskOutcome, TaskSpec};
use pyagent_protocol::{Advert, encode};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    std::fs::create_dir_all(&dir).expect("corpus directory");
    std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("seed written");
}

fn main() {
    let advert = Advert {
        protocol_versions: pyagent_protocol::VersionRange::SUPPORTED,
        peer_id: "12D3KooWfuzz".into(),
        node_version: "pyagent/0.1.0".into(),
        listen_addrs: vec!["/ip4/127.0.0.1/tcp/7760".into()],
        agents: vec!["complexity".into()],
        capabilities: vec!["python.complexity".into()],
        capacity: Default::default(),
        uptime_secs: 5,
        boot_id: 9,
        seq: 3,
    };
    let spec = TaskSpec {
        capability: "python.complexity".into(),
        files: vec![FileRef { path: "pkg/a.py".into(), blob: BlobId::of(b"x = 1\n"), size: 6 }],
        requester: "12D3KooWfuzz".into(),
        created_unix_ms: 1,
        nonce: 7,
        lease_ms: 3000,
    };
    let task = spec.id().expect("task id");
    write("wire_messages", "advert", &encode(&advert).expect("encode"));
    write("wire_messages", "submit", &encode(&TaskMessage::Submit(spec)).expect("encode"));
    write("wire_messages", "claim", &encode(&TaskMessage::Claim { task, executor: "12D3KooWfuzz".into() }).expect("encode"));
    write("wire_messages", "get-blobs", &encode(&GetBlobs { ids: vec![BlobId::of(b"x")] }).expect("encode"));
    let result = TaskResult { task, outcome: TaskOutcome::Completed { result_json: "{}".into() } };
    write("wire_messages", "task-result", &encode(&result).expect("encode"));
    let hello = HelloResponse { advert: Box::new(advert), members: vec![] };
    write("wire_messages", "hello", &encode(&hello).expect("encode"));

    for (name, request) in [
        ("status", r#"{"id":1,"method":"status"}"#),
        ("submit", r#"{"id":"a","method":"task.submit","params":{"capability":"python.tokens","files":[{"path":"a.py","text":"x=1"}]}}"#),
        ("wait", r#"{"id":2,"method":"task.wait","params":{"task_ids":[],"timeout_ms":10}}"#),
        ("propose", r#"{"id":3,"method":"vote.propose","params":{"title":"t","options":["a","b"],"method":"borda","quorum":2}}"#),
        ("register", r#"{"id":4,"method":"agent.register","params":{"name":"docs","capabilities":["python.docstrings"]}}"#),
    ] {
        write("api_request", name, request.as_bytes());
    }

    let model = ModelId([7; 32]);
    let layout = KvLayout { layers: 1, kv_heads: 1, head_dim: 2, dtype: DType::F32 };
    let data = vec![1u8; layout.block_bytes()];
    let block = KvBlock::new(model, BlockHash([0; 32]), [5; BLOCK_TOKENS], layout, data).expect("block");
    let mut seed = model.0.to_vec();
    seed.extend(block.export());
    write("kv_block_import", "one-layer", &seed);

    write("config_toml", "example", include_bytes!("../../../scripts/config.example.toml"));
    write("config_toml", "small", b"swarm = \"lab\"\n[p2p]\nport = 7000\nquic = false\n[api]\nbind = \"127.0.0.1:7000\"\n");

    write("python_source", "latin1", b"# -*- coding: latin-1 -*-\ns = '\xe9'\n");
    write("python_source", "bom", b"\xef\xbb\xbfdef f():\n    return 1\n");
    write("python_source", "line2", b"#!/usr/bin/env python\n# vim: set fileencoding=us-ascii :\nx = 1\n");
}
