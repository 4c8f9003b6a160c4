//! The engine against Python onnxruntime on the same model (an independent reference), and
//! its failure modes. Needs ONNX Runtime and the tiny model (`scripts/prepare-model.sh tiny
//! target/models/tiny`; `scripts/test.sh` prepares both): skipped loudly without them, a
//! failure in CI.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::Command;

use pyagent_engine::infer::{self, Decoder, KvState, ModelDir, ModelError, RuntimeError};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The tiny model, ONNX Runtime and the reference Python, when prepared.
fn prepared(test: &str) -> Option<(ModelDir, &'static ort::environment::Environment, PathBuf)> {
    let model_dir = std::env::var_os("PYAGENT_TEST_MODEL_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target/models/tiny"));
    let python = root().join(".venv-models/bin/python");
    let env = infer::environment(None);
    if !model_dir.join("model.onnx").exists() || !python.exists() || env.is_err() {
        assert!(std::env::var_os("CI").is_none(), "CI must prepare ONNX Runtime and the tiny model (scripts/test.sh does)");
        eprintln!("\n!!!!! SKIPPED {test}: run scripts/prepare-model.sh tiny target/models/tiny !!!!!\n");
        return None;
    }
    Some((ModelDir::open(&model_dir).unwrap(), env.unwrap(), python))
}

fn reference(python: &Path, model: &Path, ids: &[u32], max_tokens: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
    let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
    let out = Command::new(python)
        .arg(root().join("scripts/ort_reference.py"))
        .arg(model)
        .args(["--ids", &ids.join(","), "--max-tokens", &max_tokens.to_string()])
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

#[test]
fn greedy_tokens_and_logits_match_python_onnxruntime() {
    let Some((model, env, python)) = prepared("onnx reference test") else { return };
    let mut decoder = Decoder::load(&model, env, 1).unwrap();
    let layers = model.config.num_hidden_layers as usize;
    for prompt in ["Hello world", "def f(x):\n    return x", "The capital of France is"] {
        let ids = model.encode(prompt).unwrap();
        let ours = infer::generate::greedy(&mut decoder, layers, &ids, 12, &[], |_| {}).unwrap();
        let (tokens, logits) = reference(&python, &model.dir, &ids, 12);
        assert_eq!(ours.tokens, tokens, "{prompt:?}");
        for (step, (a, b)) in ours.step_logits.iter().zip(&logits).enumerate() {
            let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-4, "{prompt:?} step {step}: logits differ by {worst}");
        }
    }
}

#[test]
fn a_cached_prefix_gives_the_same_logits_as_recomputing_it() {
    let Some((model, env, _)) = prepared("cached prefix test") else { return };
    let mut decoder = Decoder::load(&model, env, 1).unwrap();
    let layers = model.config.num_hidden_layers as usize;
    let ids = model.encode("a prefix computed once, and a continuation").unwrap();
    let (full, _) = decoder.forward(&ids, &KvState::empty(layers)).unwrap();
    let split = 20;
    let (_, cache) = decoder.forward(&ids[..split], &KvState::empty(layers)).unwrap();
    let (rest, _) = decoder.forward(&ids[split..], &cache).unwrap();
    let vocab = decoder.vocab();
    let worst = rest.iter().zip(&full[split * vocab..]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-5, "cached prefix changed the logits by {worst}");
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

    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(model.dir.join("config.json")).unwrap()).unwrap();
    config["vocab_size"] = 100.into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    assert!(matches!(ModelDir::open(dir.path()), Err(ModelError::TokenizerMismatch { tokenizer: 257, model: 100 })));
    std::fs::write(dir.path().join("config.json"), "{").unwrap();
    assert!(matches!(ModelDir::open(dir.path()), Err(ModelError::Config { .. })));
    assert!(matches!(ModelDir::open(&dir.path().join("missing")), Err(ModelError::Read { .. })));
}
