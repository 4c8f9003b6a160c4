//! How an int4 model multiplies: ONNX Runtime's `MatMulNBits` either dequantizes its 4-bit
//! weights to fp32 (`accuracy_level` 0, graph `model.onnx`) or quantizes each pass's
//! activations to int8 and multiplies in integers (`accuracy_level` 4, graph
//! `model.int8.onnx` beside it, the same weights file). int8 is the faster one wherever
//! the CPU has integer dot-product SIMD (x86 AVX2 or later, Arm dot product), and both are
//! exact across passes the way the engine runs them (see `decoder.rs`: no pass has one
//! row), so the CPU decides: int8 where it has the instructions, fp32 elsewhere.
//! `PYAGENT_COMPUTE=int8|fp32|auto` (or the callers' flags) overrides.

use std::path::Path;

/// The graph of a model directory run with fp32 compute (and the only graph of fp32 models).
pub const FP32_GRAPH: &str = "model.onnx";
/// The same graph with int8 compute, written by our converters for int4 models.
pub const INT8_GRAPH: &str = "model.int8.onnx";

/// How `MatMulNBits` computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeMode {
    Fp32,
    Int8,
}

impl std::fmt::Display for ComputeMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Fp32 => "fp32",
            Self::Int8 => "int8",
        })
    }
}

/// A compute mode asked for: one of them, or whatever suits this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ComputeChoice {
    #[default]
    Auto,
    Fixed(ComputeMode),
}

impl std::str::FromStr for ComputeChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(Self::Auto),
            "int8" => Ok(Self::Fixed(ComputeMode::Int8)),
            "fp32" => Ok(Self::Fixed(ComputeMode::Fp32)),
            other => Err(format!("unknown compute mode {other:?}: int8, fp32 or auto")),
        }
    }
}

impl ComputeChoice {
    /// The choice `PYAGENT_COMPUTE` makes (auto when unset); a bad value is an error that
    /// names it.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("PYAGENT_COMPUTE") {
            Ok(value) => value.parse().map_err(|e| format!("PYAGENT_COMPUTE: {e}")),
            Err(_) => Ok(Self::Auto),
        }
    }
}

/// The compute mode a model runs with, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compute {
    pub mode: ComputeMode,
    pub why: String,
}

impl std::fmt::Display for Compute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} compute ({})", self.mode, self.why)
    }
}

/// The SIMD features of this CPU that decide the mode, as `/proc/cpuinfo` names them.
pub fn cpu_features() -> Vec<&'static str> {
    let mut found = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($feature:tt => $name:literal),* $(,)?) => {
                $(if std::arch::is_x86_feature_detected!($feature) { found.push($name); })*
            };
        }
        probe!("avx2" => "avx2", "fma" => "fma", "avx512f" => "avx512f", "avx512bw" => "avx512bw", "avx512vnni" => "avx512_vnni", "avxvnni" => "avx_vnni");
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            found.push("asimddp");
        }
        if std::arch::is_aarch64_feature_detected!("i8mm") {
            found.push("i8mm");
        }
    }
    found
}

/// The mode for a CPU with `features`: int8 where it has integer dot-product SIMD.
pub fn mode_for(features: &[&str]) -> Compute {
    let int8 = ["avx512_vnni", "avx_vnni", "avx2", "asimddp"];
    match int8.iter().find(|f| features.contains(f)) {
        Some(f) => Compute { mode: ComputeMode::Int8, why: format!("the CPU has {f}") },
        None => Compute { mode: ComputeMode::Fp32, why: "the CPU has neither AVX2 nor Arm dot product".into() },
    }
}

/// The graph file to run in `dir` for `choice`, and the compute it gives. A model without
/// an int8 graph (fp32 weights, or converted before there was one) runs its only graph.
pub fn resolve(dir: &Path, choice: ComputeChoice) -> (std::path::PathBuf, Compute) {
    let wanted = match choice {
        ComputeChoice::Auto => mode_for(&cpu_features()),
        ComputeChoice::Fixed(mode) => Compute { mode, why: "asked for".into() },
    };
    let int8 = dir.join(INT8_GRAPH);
    match wanted.mode {
        ComputeMode::Int8 if int8.is_file() => (int8, wanted),
        ComputeMode::Int8 => (dir.join(FP32_GRAPH), Compute { mode: ComputeMode::Fp32, why: format!("the model has no {INT8_GRAPH}") }),
        ComputeMode::Fp32 => (dir.join(FP32_GRAPH), wanted),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_decides_and_a_choice_overrides() {
        assert_eq!(mode_for(&["avx2", "fma"]).mode, ComputeMode::Int8);
        assert_eq!(mode_for(&["avx512f", "avx512_vnni"]).mode, ComputeMode::Int8);
        assert_eq!(mode_for(&["asimddp"]).mode, ComputeMode::Int8);
        let old = mode_for(&["fma"]);
        assert_eq!(old.mode, ComputeMode::Fp32);
        assert!(old.why.contains("AVX2"), "{}", old.why);
        assert_eq!("INT8".parse::<ComputeChoice>(), Ok(ComputeChoice::Fixed(ComputeMode::Int8)));
        assert_eq!(" auto".parse::<ComputeChoice>(), Ok(ComputeChoice::Auto));
        let bad = "int4".parse::<ComputeChoice>().unwrap_err();
        assert!(bad.contains("\"int4\"") && bad.contains("fp32"), "{bad}");
    }

    #[test]
    fn a_model_without_an_int8_graph_runs_its_only_graph() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FP32_GRAPH), b"x").unwrap();
        let (graph, compute) = resolve(dir.path(), ComputeChoice::Fixed(ComputeMode::Int8));
        assert_eq!((graph.file_name().unwrap().to_str().unwrap(), compute.mode), (FP32_GRAPH, ComputeMode::Fp32));
        assert!(compute.why.contains(INT8_GRAPH), "{}", compute.why);
        std::fs::write(dir.path().join(INT8_GRAPH), b"x").unwrap();
        let (graph, compute) = resolve(dir.path(), ComputeChoice::Fixed(ComputeMode::Int8));
        assert_eq!((graph.file_name().unwrap().to_str().unwrap(), compute.mode), (INT8_GRAPH, ComputeMode::Int8));
        let (graph, _) = resolve(dir.path(), ComputeChoice::Fixed(ComputeMode::Fp32));
        assert_eq!(graph.file_name().unwrap().to_str().unwrap(), FP32_GRAPH);
    }
}
