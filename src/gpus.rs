//! Facts about the GPU models the toolkit knows, from their datasheets: what a transfer to a
//! GPU nobody measured needs ([`crate::transfer`]). Nothing here is fitted.

/// One GPU model (SXM form factor, the datacenter part).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct GpuSpec {
    pub(crate) name: &'static str,
    /// Board power limit (W) at the default setting.
    pub(crate) board_limit_w: f64,
    /// Dense BF16 tensor throughput (TFLOP/s), the datasheet figure without sparsity.
    pub(crate) bf16_dense_tflops: f64,
    /// HBM capacity (GB).
    pub(crate) hbm_gb: f64,
    /// HBM bandwidth (TB/s): what a decode step's reads of the KV cache are bound by.
    pub(crate) hbm_tb_s: f64,
    /// What nvidia-smi's `power.draw` averages (s): 0 for a point reading (GA100: the A100
    /// samples its sensor for a fraction of each period), 1 for the one-second average NVML
    /// reports from Ampere onward except GA100 (H100, B200).
    pub(crate) meter_window_s: f64,
}

/// The GPUs of the measured runs and of the ML.ENERGY leaderboard.
pub(crate) const GPUS: [GpuSpec; 3] = [
    GpuSpec {
        name: "A100",
        board_limit_w: 400.0,
        bf16_dense_tflops: 312.0,
        hbm_gb: 80.0,
        hbm_tb_s: 2.039,
        meter_window_s: 0.0,
    },
    GpuSpec {
        name: "H100",
        board_limit_w: 700.0,
        bf16_dense_tflops: 989.0,
        hbm_gb: 80.0,
        hbm_tb_s: 3.35,
        meter_window_s: 1.0,
    },
    GpuSpec {
        name: "B200",
        board_limit_w: 1000.0,
        bf16_dense_tflops: 2250.0,
        hbm_gb: 180.0,
        hbm_tb_s: 8.0,
        meter_window_s: 1.0,
    },
];

/// The spec of a GPU model by name (case-insensitive; `NVIDIA H100 80GB HBM3` finds `H100`).
pub(crate) fn gpu_spec(hardware: &str) -> Option<&'static GpuSpec> {
    let h = hardware.to_ascii_uppercase();
    GPUS.iter().find(|g| h.contains(g.name))
}

/// The names of the known GPU models, for error messages.
pub(crate) fn known_gpus() -> String {
    GPUS.iter().map(|g| g.name).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_gpus_by_name() {
        assert_eq!(gpu_spec("h100").unwrap().board_limit_w, 700.0);
        assert_eq!(
            gpu_spec("NVIDIA A100-SXM4-80GB").unwrap().meter_window_s,
            0.0
        );
        assert!(gpu_spec("MI300X").is_none());
        // The table agrees with the board limits the loaders check readings against.
        for g in &GPUS {
            assert_eq!(g.board_limit_w, crate::sources::board_limit_w(g.name));
        }
    }
}
