//! The KV-block exchange, in-process over loopback: a prefix computed on one node is
//! fetched by another (counted, and the output unchanged); peers that serve corrupt,
//! truncated, foreign-model or forged blocks, that stall or hang up mid-transfer, are
//! detected, the prefix is computed instead with the same output, and the bad peer is
//! left alone for a while — over the block stream and over the bulk path (where forged
//! records and an unreachable bulk port are added); a holder killed mid-transfer costs a
//! recompute, not a hang; a decode node has a prefill node compute its prompts; an
//! outsider gets no blocks.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use pyagent_engine::infer::{GenerateOptions, Output};
use pyagent_engine::kv::{BLOCK_TOKENS, BlockHash, KvBlock, ModelId, block_hashes};
use pyagent_node::Node;
use pyagent_node::config::Config;
use pyagent_node::inference::{InferRequest, Target};
use pyagent_node::serving::{ModelWorker, Prompt, ServeConfig};
use pyagent_protocol::InferenceRole;
use pyagent_node::kv::bulk::{BulkListener, RecordSealer};
use pyagent_node::kv::transfer::{Fetched, Path as Via};
use pyagent_protocol::kv::{BulkOffer, KV_PROTOCOL, KvFrameKind, KvRequest, frame_header};
use tokio::io::AsyncWriteExt as _;

use crate::openai_api::tiny_chat_model;
use crate::support::{self, Opts, wait_until};

async fn node(dir: &Path, name: &str, model: &Path, bootstrap: &[&Node]) -> Node {
    node_with(dir, name, model, bootstrap, 256).await
}

async fn node_with(dir: &Path, name: &str, model: &Path, bootstrap: &[&Node], kv_host_mb: u64) -> Node {
    start(dir, name, model, bootstrap, |c| c.inference.kv_host_mb = kv_host_mb).await
}

async fn node_as(dir: &Path, name: &str, model: &Path, bootstrap: &[&Node], role: InferenceRole) -> Node {
    start(dir, name, model, bootstrap, |c| c.inference.role = role).await
}

async fn start(dir: &Path, name: &str, model: &Path, bootstrap: &[&Node], edit: impl FnOnce(&mut Config)) -> Node {
    try_start(dir, name, model, bootstrap, edit).await.unwrap()
}

async fn try_start(dir: &Path, name: &str, model: &Path, bootstrap: &[&Node], edit: impl FnOnce(&mut Config)) -> Result<Node, pyagent_node::StartError> {
    let opts = Opts { bootstrap: bootstrap.iter().flat_map(|n| n.p2p_addrs()).collect(), ..Default::default() };
    let mut config = support::test_config(&dir.join(name), &opts);
    config.inference.models = vec![model.to_owned()];
    edit(&mut config);
    Node::start(config.validate().unwrap()).await
}

/// A prompt of `n` tokens of the tiny model's vocabulary, varied by `seed`.
fn tokens(n: usize, seed: u32) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 31 + seed * 7 + 5) % 250 + 3).collect()
}

fn options() -> GenerateOptions {
    GenerateOptions { max_tokens: 8, keep_logits: true, ..Default::default() }
}

/// Runs `prompt` on `node`'s own worker, through placement (pinned), as a client would.
async fn run_here(node: &Node, prompt: &[u32]) -> Output {
    let request = InferRequest { model: "tiny-chat".into(), prompt: Prompt::Tokens(prompt.to_vec()), options: options(), pinned: Some(Target::Local) };
    let started = node.inference().start(request).await.unwrap();
    let mut stream = started.stream;
    while stream.pieces.recv().await.is_some() {}
    stream.done.await.unwrap().unwrap()
}

/// The output with nothing cached anywhere: a worker of its own.
async fn cold(model: &Path, prompt: &[u32]) -> Output {
    let config = ServeConfig {
        model: model.to_owned(),
        ort_lib: None,
        kv_host_bytes: 64 << 20,
        ram_available: 1 << 34,
        provider: pyagent_node::config::ProviderChoice::Cpu,
        vram_free: None,
        role: Default::default(),
        lookahead: pyagent_engine::infer::LOOKAHEAD,
    };
    let worker = ModelWorker::start(config).await.unwrap();
    worker.generate(prompt.to_vec(), options()).await.unwrap()
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs())).fold(0.0, f32::max)
}

fn same_output(got: &Output, cold: &Output, what: &str) {
    assert_eq!(got.tokens, cold.tokens, "{what}: the same greedy tokens as a cold run");
    let diff = max_diff(&got.step_logits, &cold.step_logits);
    assert!(diff < 1e-5, "{what}: logits differ by {diff}");
}

/// Waits until `node` sees `holder` advertise the first `n` blocks of `prompt`.
async fn sees_blocks(node: &Node, holder: &Node, model: ModelId, prompt: &[u32], n: usize) {
    let hashes: Vec<[u8; 32]> = block_hashes(&model, prompt).iter().map(|h| h.0).collect();
    let holder = holder.peer_id().to_string();
    wait_until("the holder's blocks are in the advert", Duration::from_secs(20), || async {
        node.client().peers().await.unwrap().iter().filter(|p| p.peer_id == holder).flat_map(|p| p.capacity.models.iter()).any(|m| m.kv_blocks.run(&hashes) >= n)
    })
    .await;
}

/// The role `node` sees `peer` advertise with its model.
async fn role_of(node: &Node, peer: &str) -> Option<InferenceRole> {
    node.client().peers().await.unwrap().iter().filter(|x| x.peer_id == peer).flat_map(|x| x.capacity.models.iter().map(|m| m.role)).next()
}

fn model_id(node: &Node) -> ModelId {
    node.model().unwrap().model_id()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_prefix_computed_on_one_peer_is_fetched_by_another_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let Some(model) = tiny_chat_model(dir.path()) else { return };
    let a = node(dir.path(), "a", &model, &[]).await;
    let b = node(dir.path(), "b", &model, &[&a]).await;
    let prefix = tokens(200, 1);
    let mut prompt = prefix.clone();
    prompt.extend(tokens(20, 2));
    let reference = cold(&model, &prompt).await;
    assert_eq!(reference.cached_tokens, 0);

    run_here(&a, &prefix).await;
    let blocks = prefix.len() / BLOCK_TOKENS; // 12 full blocks of the prefix
    sees_blocks(&b, &a, model_id(&a), &prefix, blocks).await;
    let fetched = run_here(&b, &prompt).await;
    assert_eq!(fetched.cached_tokens, blocks * BLOCK_TOKENS, "prefill skipped the fetched prefix");
    same_output(&fetched, &reference, "fetched prefix");
    let (bs, as_) = (b.kv().stats(), a.kv().stats());
    assert_eq!(bs.blocks_fetched, blocks as u64, "{bs:?}");
    assert_eq!(bs.blocks_fetched_bulk, blocks as u64, "the bulk path carried them: {bs:?}");
    assert_eq!(as_.blocks_served, blocks as u64, "{as_:?}");
    assert_eq!((bs.fetch_failures, bs.fallbacks, bs.bad_blocks), (0, 0, 0), "{bs:?}");

    // Counted where users look: /metrics and the OpenAI usage.
    let addr = b.http_addr().unwrap();
    let (_, metrics) = tokio::task::spawn_blocking(move || support::http::get(addr, "/metrics")).await.unwrap();
    assert!(metrics.contains(&format!("pyagent_kv_exchange{{what=\"blocks_fetched\"}} {blocks}")), "{metrics}");
    let body = serde_json::json!({"model": "tiny-chat", "prompt": prompt, "max_tokens": 2, "temperature": 0}).to_string();
    let addr = a.http_addr().unwrap();
    // a holds only the prefix; b's blocks of the whole prompt are fetched back.
    sees_blocks(&a, &b, model_id(&a), &prompt, (prompt.len() - 1) / BLOCK_TOKENS).await;
    let (status, _, answer) = tokio::task::spawn_blocking(move || support::http::post(addr, "/v1/completions", &body, &[("X-Pyagent-Peer", "local")])).await.unwrap();
    assert!(status.contains("200"), "{status} {answer}");
    let json = answer.lines().find(|l| l.starts_with('{')).unwrap_or(&answer);
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {answer}"));
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], (prompt.len() - 1) / BLOCK_TOKENS * BLOCK_TOKENS, "{v}");
    assert!(a.kv().stats().blocks_fetched > 0);

    // A prompt of whole blocks that a peer ran: all of them are fetched, the last one
    // included, and only the last token runs again.
    let aligned = tokens(12 * BLOCK_TOKENS, 3);
    let reference = cold(&model, &aligned).await;
    run_here(&a, &aligned).await;
    sees_blocks(&b, &a, model_id(&a), &aligned, 12).await;
    let before = b.kv().stats().blocks_fetched;
    let fetched = run_here(&b, &aligned).await;
    assert_eq!(fetched.cached_tokens, aligned.len() - 1, "every block fetched, the last token run again");
    assert_eq!(b.kv().stats().blocks_fetched - before, 12);
    same_output(&fetched, &reference, "fetched whole prompt");
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blocks_a_full_pool_drops_are_offloaded_to_a_peer_and_fetched_back_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let Some(model) = tiny_chat_model(dir.path()) else { return };
    // 1 MiB: 256 blocks of the tiny model's 4 KiB.
    let a = node_with(dir.path(), "a", &model, &[], 1).await;
    let b = node(dir.path(), "b", &model, &[&a]).await;
    wait_until("a sees b", Duration::from_secs(20), || async { a.client().peers().await.unwrap().iter().any(|p| p.connected && !p.capacity.models.is_empty()) }).await;
    let first = tokens(320, 10);
    run_here(&a, &first).await;
    // 14 prompts of 20 blocks each: the first prompt's blocks are the oldest, and dropped.
    for seed in 11..24 {
        run_here(&a, &tokens(320, seed)).await;
    }
    let id = model_id(&a);
    let hashes = block_hashes(&id, &first);
    assert_eq!(a.model().unwrap().pool().lock().held_run(&hashes), 0, "a no longer holds the first prompt");
    // Pushed in the background after each request.
    wait_until("the dropped blocks are offloaded to b", Duration::from_secs(20), || async {
        a.kv().stats().blocks_offloaded >= 20 && b.kv().stats().blocks_kept_for_peers >= 20
    })
    .await;
    sees_blocks(&a, &b, id, &first, first.len() / BLOCK_TOKENS).await;
    let mut prompt = first.clone();
    prompt.extend(tokens(20, 30));
    let back = run_here(&a, &prompt).await;
    assert_eq!(back.cached_tokens, first.len(), "the offloaded prefix came back");
    same_output(&back, &cold(&model, &prompt).await, "offloaded and fetched back");
    assert!(a.kv().stats().blocks_fetched >= 20, "{:?}", a.kv().stats());
    b.shutdown().await;
    a.shutdown().await;
}

/// How a hostile peer spoils the block at [`SPOILED`] of each answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spoil {
    /// One byte of the data flipped (the checksum no longer holds).
    Corrupt,
    /// Cut short (and the frame says so).
    Truncated,
    /// The same data, as a block of another model.
    ForeignModel,
    /// A well-formed block whose hash is not that of its tokens.
    Forged,
    /// Another prefix's valid block in its place.
    Swapped,
    /// Nothing more is sent; the stream stays open.
    Stall,
    /// The stream is closed mid-answer.
    HangUp,
    /// Bulk path only: the record is sealed with another key.
    ForgedRecord,
    /// Bulk path only: a record's sealed bytes flipped in flight.
    TamperedRecord,
}

/// How the hostile peer answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Over {
    /// Over the block stream, whatever was asked.
    Stream,
    /// Over its bulk path when asked for it.
    Bulk,
    /// It offers the bulk path on a port where nothing listens, then answers plain
    /// fetches over the stream, unspoiled.
    UnreachableBulk,
}

/// Where the hostile peer writes its answer frames.
enum FakeSink<'a> {
    Stream(&'a mut libp2p::Stream),
    Bulk(tokio::net::TcpStream, RecordSealer),
}

impl FakeSink<'_> {
    async fn send(&mut self, kind: KvFrameKind, bytes: &[u8], spoil: Option<Spoil>) -> bool {
        match self {
            Self::Stream(stream) => stream.write_all(&frame_header(kind, bytes.len())).await.is_ok() && stream.write_all(bytes).await.is_ok(),
            Self::Bulk(tcp, sealer) => {
                let mut record = Vec::new();
                match spoil {
                    Some(Spoil::ForgedRecord) => RecordSealer::new(&[0x5A; 32]).unwrap().seal(kind, bytes, &mut record).unwrap(),
                    _ => sealer.seal(kind, bytes, &mut record).unwrap(),
                }
                if spoil == Some(Spoil::TamperedRecord) {
                    record[1000] ^= 0x01;
                }
                tcp.write_all(&record).await.is_ok()
            }
        }
    }

    async fn close(self) {
        match self {
            Self::Stream(stream) => {
                let _ = stream.close().await;
            }
            Self::Bulk(mut tcp, ..) => {
                let _ = tcp.shutdown().await;
            }
        }
    }
}

const SPOILED: usize = 3;

/// Serves `holder`'s real blocks over the block protocol, spoiling one per answer; counts
/// the requests it gets.
/// A holder that has run `prefix` and serves it spoiled by `spoil` (its requests
/// counted), and a node `victim` that sees the holder's blocks.
async fn spoiled_holder(dir: &Path, model: &Path, (holder, victim): (&str, &str), prefix: &[u32], spoil: Spoil, over: Over) -> (Node, Arc<AtomicUsize>, Node) {
    let mut bad = node(dir, holder, model, &[]).await;
    run_here(&bad, prefix).await;
    let asked = serve_spoiled(&mut bad, spoil, over).await;
    let victim = node(dir, victim, model, &[&bad]).await;
    sees_blocks(&victim, &bad, model_id(&bad), prefix, prefix.len() / BLOCK_TOKENS).await;
    (bad, asked, victim)
}

async fn serve_spoiled(holder: &mut Node, spoil: Spoil, over: Over) -> Arc<AtomicUsize> {
    holder.stop_serving_kv_blocks();
    let mut control = holder.inference().control();
    let mut incoming = loop {
        match control.accept(libp2p::StreamProtocol::new(KV_PROTOCOL)) {
            Ok(incoming) => break incoming,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await, // the server task is ending
        }
    };
    let pool = holder.model().unwrap().pool().clone();
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = asked.clone();
    let (bulk, _) = BulkListener::start(std::net::IpAddr::from([127, 0, 0, 1])).unwrap();
    tokio::spawn(async move {
        while let Some((_, mut stream)) = incoming.next().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let (pool, bulk) = (pool.clone(), bulk.clone());
            tokio::spawn(async move {
                let mut len = [0u8; 4];
                stream.read_exact(&mut len).await.unwrap();
                let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
                stream.read_exact(&mut body).await.unwrap();
                let (hashes, asked_bulk) = match pyagent_protocol::decode::<KvRequest>(&body, 1 << 16) {
                    Ok(KvRequest::Fetch { hashes, .. }) => (hashes, false),
                    Ok(KvRequest::FetchBulk { hashes, .. }) => (hashes, true),
                    _ => return,
                };
                let mut sink = match over {
                    Over::Bulk if asked_bulk => {
                        let (offer, handoff) = bulk.offer(Duration::from_secs(5)).unwrap();
                        stream.write_all(&frame_header(KvFrameKind::Bulk, 66)).await.unwrap();
                        stream.write_all(&offer.to_bytes()).await.unwrap();
                        let Some(tcp) = handoff.connection(Duration::from_secs(5)).await else { return };
                        FakeSink::Bulk(tcp, RecordSealer::new(&offer.key).unwrap())
                    }
                    Over::UnreachableBulk if asked_bulk => {
                        let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                        let port = nobody.local_addr().unwrap().port();
                        drop(nobody);
                        let offer = BulkOffer { port, token: [1; 32], key: [2; 32] };
                        stream.write_all(&frame_header(KvFrameKind::Bulk, 66)).await.unwrap();
                        stream.write_all(&offer.to_bytes()).await.unwrap();
                        let _ = stream.close().await;
                        return;
                    }
                    _ => FakeSink::Stream(&mut stream),
                };
                let spoil = (over != Over::UnreachableBulk).then_some(spoil);
                for (i, hash) in hashes.iter().enumerate() {
                    let block = pool.lock().peek(&BlockHash(*hash)).unwrap().unwrap();
                    let mut bytes = block.export();
                    let spoiled = if i == SPOILED { spoil } else { None };
                    match spoiled {
                        None | Some(Spoil::ForgedRecord | Spoil::TamperedRecord) => {}
                        Some(Spoil::Corrupt) => bytes[500] ^= 0x40,
                        Some(Spoil::Truncated) => bytes.truncate(bytes.len() - 100),
                        Some(Spoil::ForeignModel) => bytes = KvBlock::new(ModelId::of(b"another model"), block.parent, block.tokens, block.layout, block.data()).unwrap().export(),
                        Some(Spoil::Forged) => {
                            let mut forged = (*block).clone();
                            forged.hash = BlockHash([7; 32]);
                            bytes = forged.export();
                        }
                        Some(Spoil::Swapped) => {
                            let mut tokens = block.tokens;
                            tokens[0] = tokens[0].wrapping_add(1);
                            bytes = KvBlock::new(block.model, block.parent, tokens, block.layout, block.data()).unwrap().export();
                        }
                        Some(Spoil::Stall) => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                        Some(Spoil::HangUp) => {
                            sink.close().await;
                            return;
                        }
                    }
                    if !sink.send(KvFrameKind::Block, &bytes, spoiled).await {
                        return;
                    }
                }
                sink.close().await;
            });
        }
    });
    asked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_blocks_and_broken_transfers_are_recomputed_with_the_same_output_and_the_peer_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let Some(model) = tiny_chat_model(dir.path()) else { return };
    let prefix = tokens(160, 3);
    let mut prompt = prefix.clone();
    prompt.extend(tokens(20, 4));
    let reference = cold(&model, &prompt).await;
    let over_stream = [Spoil::Corrupt, Spoil::Truncated, Spoil::ForeignModel, Spoil::Forged, Spoil::Swapped, Spoil::Stall, Spoil::HangUp].map(|s| (s, Over::Stream));
    // Over the bulk path a block's checksum is not sent (the AEAD record guards the bytes
    // on their way: a tampered or forged record is the corrupt block there).
    let over_bulk = [Spoil::ForgedRecord, Spoil::TamperedRecord, Spoil::Truncated, Spoil::ForeignModel, Spoil::Forged, Spoil::Stall, Spoil::HangUp].map(|s| (s, Over::Bulk));
    for (n, (spoil, over)) in over_stream.into_iter().chain(over_bulk).enumerate() {
        let what = format!("{spoil:?} over {over:?}");
        let (bad, asked, victim) = spoiled_holder(dir.path(), &model, (&format!("bad{n}"), &format!("victim{n}")), &prefix, spoil, over).await;
        let started = std::time::Instant::now();
        let out = run_here(&victim, &prompt).await;
        assert!(started.elapsed() < Duration::from_secs(30), "{what}: no hang ({:?})", started.elapsed());
        same_output(&out, &reference, &what);
        // The blocks before the spoiled one are good and used; the rest was computed.
        assert_eq!(out.cached_tokens, SPOILED * BLOCK_TOKENS, "{what}");
        let stats = victim.kv().stats();
        assert_eq!((stats.blocks_fetched, stats.fetch_failures, stats.fallbacks), (SPOILED as u64, 1, 1), "{what}: {stats:?}");
        let expect_bad = !matches!(spoil, Spoil::Stall | Spoil::HangUp);
        assert_eq!(stats.bad_blocks, u64::from(expect_bad), "{what}: {stats:?}");
        let bulk = if over == Over::Bulk { SPOILED as u64 } else { 0 };
        assert_eq!(stats.blocks_fetched_bulk, bulk, "{what}: {stats:?}");
        // A second request with the same prefix does not go back to the bad peer.
        let mut other = prefix.clone();
        other.extend(tokens(24, 5));
        let before = asked.load(Ordering::SeqCst);
        assert_eq!(before, 1, "{what}");
        let again = run_here(&victim, &other).await;
        assert_eq!(asked.load(Ordering::SeqCst), before, "{what}: the bad peer was asked again");
        assert_eq!(again.tokens, cold(&model, &other).await.tokens, "{what}");
        victim.shutdown().await;
        bad.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_bulk_port_or_a_holder_without_one_costs_nothing_but_the_bulk_path() {
    let dir = tempfile::tempdir().unwrap();
    let Some(model) = tiny_chat_model(dir.path()) else { return };
    let (prefix, later) = (tokens(160, 12), tokens(160, 13));
    let (holder, asked, victim) = spoiled_holder(dir.path(), &model, ("holder", "victim"), &prefix, Spoil::Corrupt, Over::UnreachableBulk).await;
    let blocks = prefix.len() / BLOCK_TOKENS;
    let mut prompt = prefix.clone();
    prompt.extend(tokens(20, 14));
    let out = run_here(&victim, &prompt).await;
    same_output(&out, &cold(&model, &prompt).await, "bulk port unreachable");
    assert_eq!(out.cached_tokens, blocks * BLOCK_TOKENS, "every block came over the stream instead");
    let stats = victim.kv().stats();
    assert_eq!((stats.blocks_fetched, stats.blocks_fetched_bulk, stats.fetch_failures, stats.fallbacks), (blocks as u64, 0, 0, 0), "{stats:?}");
    assert_eq!(asked.load(Ordering::SeqCst), 2, "the bulk request, then a plain one");
    // The holder is not offered the bulk path again for a while: one plain request.
    run_here(&holder, &later).await;
    sees_blocks(&victim, &holder, model_id(&holder), &later, blocks).await;
    let mut prompt = later.clone();
    prompt.extend(tokens(20, 15));
    assert_eq!(run_here(&victim, &prompt).await.cached_tokens, blocks * BLOCK_TOKENS);
    assert_eq!(asked.load(Ordering::SeqCst), 3);
    victim.shutdown().await;
    holder.shutdown().await;

    // A holder with the bulk path off answers bulk requests over the stream.
    let plain = start(dir.path(), "plain", &model, &[], |c| c.inference.kv_bulk = false).await;
    run_here(&plain, &prefix).await;
    let asker = node(dir.path(), "asker", &model, &[&plain]).await;
    sees_blocks(&asker, &plain, model_id(&plain), &prefix, blocks).await;
    let mut prompt = prefix.clone();
    prompt.extend(tokens(20, 16));
    let out = run_here(&asker, &prompt).await;
    assert_eq!(out.cached_tokens, blocks * BLOCK_TOKENS);
    let stats = asker.kv().stats();
    assert_eq!((stats.blocks_fetched, stats.blocks_fetched_bulk, stats.fetch_failures), (blocks as u64, 0, 0), "{stats:?}");
    asker.shutdown().await;
    plain.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fixed_bulk_port_is_where_blocks_go_and_a_taken_one_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let Some(model) = tiny_chat_model(dir.path()) else { return };
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let a = start(dir.path(), "a", &model, &[], |c| c.inference.kv_bulk_port = port).await;
    let prefix = tokens(64, 17);
    run_here(&a, &prefix).await;
    let b = node(dir.path(), "b", &model, &[&a]).await;
    sees_blocks(&b, &a, model_id(&a), &prefix, prefix.len() / BLOCK_TOKENS).await;
    let mut prompt = prefix.clone();
    prompt.extend(tokens(20, 18));
    assert_eq!(run_here(&b, &prompt).await.cached_tokens, prefix.len());
    assert_eq!(b.kv().stats().blocks_fetched_bulk, (prefix.len() / BLOCK_TOKENS) as u64, "{:?}", b.kv().stats());
    // Anyone else on that port without a token is closed out.
    let mut stranger = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stranger.write_all(&[0x42; 32]).await.unwrap();
    let mut rest = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut stranger, &mut rest).await.unwrap();
    assert!(rest.is_empty());
    // The same port for a second node: it does not start, and says why.
    let err = try_start(dir.path(), "c", &model, &[], |c| c.inference.kv_bulk_port = port).await.expect_err("the bulk port is taken").to_string();
    assert!(err.contains(&format!("port {port}")) && err.contains("--kv-bulk-port"), "{err}");
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_outside_the_swarm_gets_no_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let Some(model) = tiny_chat_model(dir.path()) else { return };
    let a = node(dir.path(), "a", &model, &[]).await;
    let prefix = tokens(64, 6);
    run_here(&a, &prefix).await;
    let opts = Opts { swarm: Some("elsewhere".into()), bootstrap: a.p2p_addrs(), ..Default::default() };
    let outsider = support::start_in(&dir.path().join("outsider"), &opts).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let id = model_id(&a);
    let hashes = block_hashes(&id, &prefix);
    let layout = a.model().unwrap().pool().lock().layout();
    // Asking for the bulk path changes nothing: no offer goes to an outsider.
    let loopback = Some(std::net::IpAddr::from([127, 0, 0, 1]));
    let mut blocks = Vec::new();
    let Fetched { got, error, path } =
        pyagent_node::kv::transfer::fetch_run(&mut outsider.inference().control(), a.peer_id(), loopback, id, layout, &hashes, pyagent_engine::kv::hash::ROOT, &mut blocks).await;
    assert_eq!(got, 0);
    assert!(blocks.is_empty());
    assert_eq!(path, Via::Stream);
    // Refused by a, or the connection to a closed first (the namespaces differ): either
    // way an error, never blocks.
    let error = error.expect("an outsider's fetch must fail").to_string();
    assert!(error.contains("only members") || error.contains("cannot open") || error.contains("closed"), "{error}");
    assert_eq!(a.kv().stats().blocks_served, 0);
    outsider.shutdown().await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_holder_killed_mid_transfer_costs_a_recompute_and_no_hang() {
    let dir = tempfile::tempdir().unwrap();
    let Some(model) = tiny_chat_model(dir.path()) else { return };
    let prefix = tokens(160, 8);
    let mut prompt = prefix.clone();
    prompt.extend(tokens(20, 9));
    let reference = cold(&model, &prompt).await;
    // It answers with the first blocks, then holds the stream until it is killed.
    let (holder, asked, victim) = spoiled_holder(dir.path(), &model, ("holder", "victim"), &prefix, Spoil::Stall, Over::Stream).await;
    let started = std::time::Instant::now();
    let kill = async {
        wait_until("the holder is asked", Duration::from_secs(20), || async { asked.load(Ordering::SeqCst) > 0 }).await;
        holder.shutdown().await;
    };
    let (out, ()) = tokio::join!(run_here(&victim, &prompt), kill);
    assert!(started.elapsed() < Duration::from_secs(30), "no hang ({:?})", started.elapsed());
    same_output(&out, &reference, "holder killed");
    assert_eq!(out.cached_tokens, SPOILED * BLOCK_TOKENS, "the blocks got before the kill are used");
    let stats = victim.kv().stats();
    assert_eq!((stats.blocks_fetched, stats.fetch_failures, stats.fallbacks, stats.bad_blocks), (SPOILED as u64, 1, 1, 0), "{stats:?}");
    victim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_decode_node_has_a_prefill_node_compute_its_prompt_and_the_output_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let Some(model) = tiny_chat_model(dir.path()) else { return };
    let prefill = node_as(dir.path(), "prefill", &model, &[], InferenceRole::Prefill).await;
    let decode = node_as(dir.path(), "decode", &model, &[&prefill], InferenceRole::Decode).await;
    let prompt = tokens(200, 10);
    let reference = cold(&model, &prompt).await;
    let (p, d) = (prefill.peer_id().to_string(), decode.peer_id().to_string());
    wait_until("each sees the other's role", Duration::from_secs(20), || async {
        role_of(&decode, &p).await == Some(InferenceRole::Prefill) && role_of(&prefill, &d).await == Some(InferenceRole::Decode)
    })
    .await;

    let out = run_here(&decode, &prompt).await;
    let blocks = (prompt.len() - 1) / BLOCK_TOKENS; // 12: the last token is always computed
    assert_eq!(out.cached_tokens, blocks * BLOCK_TOKENS, "the decode node computed only the rest");
    same_output(&out, &reference, "prefilled by a peer");
    let (ds, ps) = (decode.kv().stats(), prefill.kv().stats());
    assert_eq!((ds.blocks_prefilled_by_peers, ds.fetch_failures, ds.fallbacks), (blocks as u64, 0, 0), "{ds:?}");
    assert_eq!((ps.prefills_served, ps.blocks_served), (1, blocks as u64), "{ps:?}");

    // The decode node computes no prompts for others.
    let id = model_id(&decode);
    let hashes = block_hashes(&id, &prompt[..blocks * BLOCK_TOKENS]);
    let layout = decode.model().unwrap().pool().lock().layout();
    let ask = pyagent_node::kv::transfer::PrefillAsk { model: id, layout, tokens: &prompt[..blocks * BLOCK_TOKENS], hashes: &hashes };
    let (got, error) = pyagent_node::kv::transfer::prefill_run(&mut prefill.inference().control(), decode.peer_id(), ask, 0, Duration::from_secs(10)).await;
    assert!(got.is_empty());
    let error = error.expect("a decode node refuses to prefill").to_string();
    assert!(error.contains("decodes only"), "{error}");
    assert_eq!(decode.kv().stats().prefills_served, 0);

    // A request that reaches the prefill node unpinned runs on the decode node.
    let request = InferRequest { model: "tiny-chat".into(), prompt: Prompt::Tokens(tokens(40, 11)), options: options(), pinned: None };
    let started = prefill.inference().start(request).await.unwrap();
    assert_eq!(started.ran_on, Target::Peer(decode.peer_id()));
    let mut stream = started.stream;
    while stream.pieces.recv().await.is_some() {}
    stream.done.await.unwrap().unwrap();
    decode.shutdown().await;
    prefill.shutdown().await;
}
