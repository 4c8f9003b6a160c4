//! Host capacity probe.
//!
//! CPU count and memory come from the OS (through `sysinfo`); GPUs from NVML, which is
//! loaded at run time: on a machine without an NVIDIA driver the probe simply reports no
//! GPU. A probe is cheap to refresh and is refreshed before every advert.

use pyagent_protocol::{Capacity, GpuInfo};
use sysinfo::{MemoryRefreshKind, RefreshKind, System};

/// Measures what this host can run.
pub struct CapacityProbe {
    system: System,
    nvml: Option<nvml_wrapper::Nvml>,
    models: Option<ModelsSource>,
}

/// Reads the served models' capacity and current load when an advert is made.
pub type ModelsSource = Box<dyn Fn() -> Vec<pyagent_protocol::InferenceCapacity> + Send + Sync>;

impl std::fmt::Debug for CapacityProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapacityProbe").field("nvml", &self.nvml.is_some()).finish()
    }
}

impl Default for CapacityProbe {
    fn default() -> Self {
        Self::new()
    }
}

impl CapacityProbe {
    /// Creates a probe; looks for NVML once.
    pub fn new() -> Self {
        let nvml = match nvml_wrapper::Nvml::init() {
            Ok(nvml) => Some(nvml),
            Err(e) => {
                tracing::debug!("no NVIDIA GPU support (NVML: {e}); reporting no VRAM");
                None
            }
        };
        let system = System::new_with_specifics(RefreshKind::nothing().with_memory(MemoryRefreshKind::nothing().with_ram()));
        Self { system, nvml, models: None }
    }

    /// Where the served models' capacity comes from (read at every probe from now on).
    pub fn set_models(&mut self, source: ModelsSource) {
        self.models = Some(source);
    }

    /// Measures the host now.
    pub fn probe(&mut self) -> Capacity {
        self.system.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Capacity {
            cpus: u32::try_from(cpus).unwrap_or(u32::MAX),
            ram_total_bytes: self.system.total_memory(),
            ram_available_bytes: self.system.available_memory(),
            gpus: self.gpus(),
            models: self.models.as_ref().map(|f| f()).unwrap_or_default(),
        }
    }

    fn gpus(&self) -> Vec<GpuInfo> {
        let Some(nvml) = &self.nvml else { return Vec::new() };
        let count = match nvml.device_count() {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("NVML is loaded but cannot count devices: {e}");
                return Vec::new();
            }
        };
        (0..count)
            .filter_map(|i| {
                let device = nvml.device_by_index(i).map_err(|e| tracing::warn!("NVML device {i}: {e}")).ok()?;
                let memory = device.memory_info().map_err(|e| tracing::warn!("NVML device {i} memory: {e}")).ok()?;
                let name = device.name().unwrap_or_else(|_| format!("gpu{i}"));
                Some(GpuInfo { name, vram_total_bytes: memory.total, vram_free_bytes: memory.free })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meminfo_kib(field: &str) -> u64 {
        let text = std::fs::read_to_string("/proc/meminfo").unwrap();
        let line = text.lines().find(|l| l.starts_with(field)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn probe_reports_this_hosts_cpus_and_ram() {
        let cap = CapacityProbe::new().probe();
        let cpus = std::thread::available_parallelism().unwrap().get() as u32;
        assert_eq!(cap.cpus, cpus);
        // Same total as the kernel reports, within rounding.
        let total = meminfo_kib("MemTotal:") * 1024;
        assert!(cap.ram_total_bytes.abs_diff(total) < 16 << 20, "{} vs {total}", cap.ram_total_bytes);
        assert!(cap.ram_available_bytes > 0 && cap.ram_available_bytes <= cap.ram_total_bytes);
    }

    #[test]
    fn gpus_match_nvidia_driver_presence() {
        let cap = CapacityProbe::new().probe();
        let driver = std::path::Path::new("/proc/driver/nvidia/gpus").exists();
        assert_eq!(!cap.gpus.is_empty(), driver, "GPUs reported: {:?}", cap.gpus);
    }
}
