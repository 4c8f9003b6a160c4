//! The model-serving worker: a node with a model keeps its engine in a worker actor after
//! the start-up measurement, serves generations from it, and refuses work beyond its
//! bounded queue at once.

use std::path::{Path, PathBuf};

use pyagent_engine::infer::GenerateOptions;
use pyagent_node::serving::ServeError;

use crate::support::{self, Opts};

fn tiny_model() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let model = root.join("target/models/tiny");
    if model.join("model.onnx").exists() && root.join(".venv-models").exists() {
        return Some(model);
    }
    assert!(std::env::var_os("CI").is_none(), "CI must prepare the tiny model (scripts/test.sh does)");
    eprintln!("\n!!!!! SKIPPED model-serving worker test: run scripts/prepare-model.sh tiny target/models/tiny !!!!!\n");
    None
}

/// A node serving the tiny model (its data directory, the node, its worker), or `None`
/// when the model is not prepared (outside CI).
async fn node_with_tiny_model() -> Option<(tempfile::TempDir, pyagent_node::Node, pyagent_node::serving::ModelWorker)> {
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::test_config(dir.path(), &Opts::default());
    config.inference.models = vec![tiny_model()?];
    let node = pyagent_node::Node::start(config.validate().unwrap()).await.unwrap();
    let worker = node.model().expect("the node serves its model").clone();
    Some((dir, node, worker))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_keeps_the_engine_serves_and_refuses_beyond_its_queue() {
    let Some((_dir, node, worker)) = node_with_tiny_model().await else { return };
    let advertised = node.client().status().await.unwrap().capacity.models.first().cloned().expect("inference on");
    let measured = worker.capacity();
    assert_eq!((&advertised.name, &advertised.model_id, advertised.prefill_tokens_per_s, advertised.decode_tokens_per_s), (&measured.name, &measured.model_id, measured.prefill_tokens_per_s, measured.decode_tokens_per_s));
    assert_eq!((advertised.queued_requests, advertised.context_length), (0, 4096), "idle; the tiny model's context");

    let prompt: Vec<u32> = (1..20).collect();
    let options = GenerateOptions { max_tokens: 4, ..Default::default() };
    let first = worker.generate(prompt.clone(), options.clone()).await.unwrap();
    assert_eq!(first.tokens.len(), 4);
    let again = worker.generate(prompt.clone(), options.clone()).await.unwrap();
    assert_eq!(again.tokens, first.tokens, "greedy output is the same from the same engine");
    assert!(again.cached_tokens > 0, "the second run reuses the KV blocks the engine kept: {}", again.cached_tokens);

    // Far more requests at once than the queue holds: the excess is refused at once.
    let long = GenerateOptions { max_tokens: 32, ..Default::default() };
    let burst = (0..pyagent_node::serving::SERVE_QUEUE * 3).map(|_| worker.generate(prompt.clone(), long.clone()));
    let results = futures::future::join_all(burst).await;
    let overloaded = results.iter().filter(|r| matches!(r, Err(ServeError::Overloaded))).count();
    let served = results.iter().filter(|r| r.is_ok()).count();
    assert!(overloaded > 0 && served > 0, "served {served}, overloaded {overloaded}");
    assert_eq!(served + overloaded, results.len(), "nothing else fails");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_advertised_rates_follow_what_the_runs_measure() {
    use pyagent_node::serving::rates::{MIN_DECODE_TOKENS, next};
    let Some((_dir, node, worker)) = node_with_tiny_model().await else { return };
    let probe = worker.capacity().clone();
    let rates = |w: &pyagent_node::serving::ModelWorker| (w.advert().prefill_tokens_per_s, w.advert().decode_tokens_per_s);
    assert_eq!(rates(&worker), (probe.prefill_tokens_per_s, probe.decode_tokens_per_s), "the probe's until a run measures");

    // A cold run of 200 prompt tokens: its prefill rate replaces the probe's (and its
    // decode rate, when it generated enough tokens to measure one).
    let prompt: Vec<u32> = (1..=200).map(|i| i * 3 % 250 + 1).collect();
    let cold = worker.generate(prompt.clone(), GenerateOptions { max_tokens: 24, ..Default::default() }).await.unwrap();
    assert_eq!(cold.cached_tokens, 0);
    let prefill = next(0, true, cold.prompt_tokens as f64 / cold.prefill_secs);
    let decode = if cold.tokens.len() >= MIN_DECODE_TOKENS { next(0, true, cold.tokens.len() as f64 / cold.decode_secs) } else { probe.decode_tokens_per_s };
    assert_eq!(rates(&worker), (prefill, decode));
    // The same prompt again reuses its blocks: its prefill time is no rate, and the
    // advertised prefill rate stays; the node's own advert says the same.
    let warm = worker.generate(prompt.clone(), GenerateOptions { max_tokens: 1, ..Default::default() }).await.unwrap();
    assert!(warm.cached_tokens > 0);
    assert_eq!(rates(&worker).0, prefill);
    // The node's advert takes them up when it is next published (the cold run's new
    // blocks asked for that soon).
    let want = rates(&worker);
    support::wait_until("the node advertises the measured rates", std::time::Duration::from_secs(10), || async {
        let advertised = node.client().status().await.unwrap().capacity.models.first().cloned().expect("inference on");
        (advertised.prefill_tokens_per_s, advertised.decode_tokens_per_s) == want
    })
    .await;
    // Another cold run moves it by the weight.
    let other: Vec<u32> = (1..=200).map(|i| i * 7 % 250 + 1).collect();
    let second = worker.generate(other, GenerateOptions { max_tokens: 1, ..Default::default() }).await.unwrap();
    assert_eq!(second.cached_tokens, 0);
    assert_eq!(rates(&worker).0, next(prefill, false, second.prompt_tokens as f64 / second.prefill_secs));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_generation_equals_the_whole_one_and_stops_when_the_caller_goes() {
    let Some((_dir, node, worker)) = node_with_tiny_model().await else { return };
    let prompt: Vec<u32> = (3..40).collect();
    let options = GenerateOptions { max_tokens: 400, ..Default::default() };
    let whole = worker.generate(prompt.clone(), options.clone()).await.unwrap();

    let mut stream = worker.generate_stream(prompt.clone(), options.clone()).unwrap();
    let mut streamed = String::new();
    let mut pieces = 0;
    while let Some(piece) = stream.pieces.recv().await {
        streamed.push_str(&piece.text);
        pieces += 1;
    }
    let done = stream.done.await.unwrap().unwrap();
    assert_eq!(done.tokens, whole.tokens, "greedy: the same tokens streamed or not");
    assert_eq!(streamed, whole.text, "the pieces make up the text");
    assert!(!done.cancelled());
    // More pieces than the stream buffers: a caller that stops reading holds the worker
    // before the end, so the cancellation below cannot race the run's end.
    assert!(pieces > pyagent_node::serving::STREAM_PIECES + 1, "{pieces} pieces");

    // The caller goes away after the first piece: the run ends early, cancelled.
    let mut stream = worker.generate_stream(prompt.clone(), options.clone()).unwrap();
    let first = stream.pieces.recv().await.expect("a first piece");
    assert!(!first.text.is_empty());
    drop(stream.pieces);
    let cut = stream.done.await.unwrap().unwrap();
    assert!(cut.cancelled(), "cancelled");
    assert!(cut.tokens.len() < options.max_tokens, "stopped early: {} tokens", cut.tokens.len());
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuda_is_used_only_where_it_exists_and_asking_for_it_without_says_why() {
    let Some(model) = tiny_model() else { return };
    let config = |provider| pyagent_node::serving::ServeConfig {
        model: model.clone(),
        ort_lib: None,
        kv_host_bytes: 16 << 20,
        ram_available: 1 << 30,
        provider,
        vram_free: None,
        role: Default::default(),
        lookahead: pyagent_engine::infer::LOOKAHEAD,
    };
    // No GPU found: auto runs on the CPU and says so in the advert.
    let auto = pyagent_node::serving::ModelWorker::start(config(pyagent_node::config::ProviderChoice::Auto)).await.unwrap();
    assert_eq!(auto.advert().provider, "cpu");
    // An fp32 model has no int8 graph: fp32 compute, advertised.
    assert_eq!(auto.advert().compute, "fp32");
    // CUDA asked for, on a CPU-only runtime: the model is not served, and the error says why.
    let err = pyagent_node::serving::ModelWorker::start(config(pyagent_node::config::ProviderChoice::Cuda)).await.unwrap_err().to_string();
    assert!(err.contains("cuda") && err.contains("onnxruntime-gpu"), "{err}");
    // A GPU reported (VRAM free) but a CPU-only runtime: auto falls back to the CPU.
    let fallback = pyagent_node::serving::ModelWorker::start(pyagent_node::serving::ServeConfig { vram_free: Some(8 << 30), ..config(pyagent_node::config::ProviderChoice::Auto) }).await.unwrap();
    assert_eq!(fallback.advert().provider, "cpu");
    assert!(fallback.generate(vec![1, 2, 3], GenerateOptions { max_tokens: 2, ..Default::default() }).await.is_ok());
}

/// An int4 model runs with the compute mode its CPU suits (int8 where it has AVX2 or Arm dot
/// product), advertises it, and its model id is that of the graph it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_int4_model_runs_and_advertises_the_compute_mode_its_cpu_suits() {
    use pyagent_engine::infer::{ComputeChoice, ComputeMode, ModelDir, compute};
    let Some(tiny) = tiny_model() else { return };
    let model = tiny.with_file_name("tiny-int4");
    assert!(model.join(compute::INT8_GRAPH).is_file(), "scripts/prepare-model.sh tiny-int4 writes {}", compute::INT8_GRAPH);
    let worker = pyagent_node::serving::ModelWorker::start(pyagent_node::serving::ServeConfig {
        model: model.clone(),
        ort_lib: None,
        kv_host_bytes: 16 << 20,
        ram_available: 1 << 30,
        provider: pyagent_node::config::ProviderChoice::Cpu,
        vram_free: None,
        role: Default::default(),
        lookahead: pyagent_engine::infer::LOOKAHEAD,
    })
    .await
    .unwrap();
    let advert = worker.advert();
    let expected = compute::mode_for(&compute::cpu_features()).mode;
    assert_eq!(advert.compute, expected.to_string(), "{:?}", compute::cpu_features());
    let ran = ModelDir::open_with(&model, ComputeChoice::Fixed(expected)).unwrap();
    assert_eq!(advert.model_id, ran.id.to_string());
    // The other mode is another graph: another id, so blocks never cross modes.
    let other = if expected == ComputeMode::Int8 { ComputeMode::Fp32 } else { ComputeMode::Int8 };
    assert_ne!(ModelDir::open_with(&model, ComputeChoice::Fixed(other)).unwrap().id, ran.id);
    // With int8 compute the worker's decode passes carry lookahead guesses, counted for
    // `/metrics`; a prompt that repeats itself gives the lookup something to find.
    let repeats: Vec<u32> = (0..48).map(|i| 5 + i % 6).collect();
    let out = worker.generate(repeats, GenerateOptions { max_tokens: 24, ..Default::default() }).await.unwrap();
    let load = worker.load();
    assert_eq!(load.lookahead_guessed.load(std::sync::atomic::Ordering::Relaxed), out.lookahead.guessed as u64);
    assert_eq!(load.lookahead_right.load(std::sync::atomic::Ordering::Relaxed), out.lookahead.right as u64);
    if expected == ComputeMode::Int8 {
        assert!(out.lookahead.guessed > 0, "{:?}", out.lookahead);
    } else {
        assert_eq!(out.lookahead.guessed, 0, "no free row with fp32 compute");
    }
}
