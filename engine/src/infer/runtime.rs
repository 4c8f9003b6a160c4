//! Finding and loading ONNX Runtime (the shared library of the PyPI wheel
//! `onnxruntime==1.31.1`; `scripts/prepare-model.sh runtime` installs it into
//! `.venv-models`). Loading happens once per process; without the library, inference is
//! off and the error says where it looked.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The ONNX Runtime version this engine is built against.
pub const ORT_VERSION: &str = "1.31.1";
const LIBRARY: &str = "libonnxruntime.so.1.31.1";

/// Why ONNX Runtime is not available.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    #[error("ONNX Runtime {ORT_VERSION} not found (looked in: {}); run scripts/prepare-model.sh runtime, or point --ort-lib / ORT_DYLIB_PATH at {LIBRARY}", .searched.join(", "))]
    NotFound { searched: Vec<String> },
    #[error("cannot load ONNX Runtime from {path}: {reason}")]
    Load { path: String, reason: String },
}

/// Where the library is: `explicit` (`--ort-lib`), then `ORT_DYLIB_PATH`, then
/// `.venv-models` under the working directory and above the executable.
pub fn find_library(explicit: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    let mut searched = Vec::new();
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = explicit {
        candidates.push(p.to_owned());
    } else if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        candidates.push(PathBuf::from(p));
    } else {
        let mut roots: Vec<PathBuf> = Vec::new();
        if let Ok(cwd) = std::env::current_dir() {
            roots.push(cwd);
        }
        if let Ok(exe) = std::env::current_exe() {
            // target/{debug,release}/pyagent → the checkout.
            roots.extend(exe.ancestors().skip(1).take(4).map(Path::to_owned));
        }
        for root in roots {
            let lib = root.join(".venv-models/lib");
            let pythons = std::fs::read_dir(&lib).into_iter().flatten().flatten().map(|e| e.path());
            for python in pythons {
                candidates.push(python.join("site-packages/onnxruntime/capi").join(LIBRARY));
            }
            if candidates.is_empty() {
                searched.push(lib.display().to_string());
            }
        }
    }
    for c in candidates {
        if c.is_file() {
            return Ok(c);
        }
        searched.push(c.display().to_string());
    }
    Err(RuntimeError::NotFound { searched })
}

static LOADED: OnceLock<(PathBuf, ort::environment::Environment)> = OnceLock::new();
static LOADING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Loads ONNX Runtime once for the process and returns its environment. A failed attempt
/// is not remembered (a later call may name another library); once loaded, the library
/// stays, whatever a later call names.
pub fn environment(explicit: Option<&Path>) -> Result<&'static ort::environment::Environment, RuntimeError> {
    if let Some((_, env)) = LOADED.get() {
        return Ok(env);
    }
    let _guard = LOADING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, env)) = LOADED.get() {
        return Ok(env);
    }
    let path = find_library(explicit)?;
    let load = |reason: String| RuntimeError::Load { path: path.display().to_string(), reason };
    let builder = ort::init_from(&path).map_err(|e| load(e.to_string()))?;
    let env = builder.with_name("pyagent").build().map_err(|e| load(e.to_string()))?;
    tracing::info!(library = %path.display(), "ONNX Runtime loaded");
    let (_, env) = LOADED.get_or_init(|| (path, env));
    Ok(env)
}

/// Where a model's forward passes run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Provider {
    /// ONNX Runtime's CPU execution provider.
    #[default]
    Cpu,
    /// The CUDA execution provider on GPU `device`: needs the onnxruntime-gpu wheel's
    /// library and an NVIDIA GPU. The KV cache stays in host tensors (copied per step).
    Cuda { device: i32 },
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda { device } => write!(f, "cuda:{device}"),
        }
    }
}
