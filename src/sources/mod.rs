//! Sources (SPEC §2): everything that reads benchmark or measured data from outside. Each
//! loader validates what it reads and names the file, the row and the value it rejects.
//!
//! - [`mlenergy`]: ML.ENERGY benchmark v3 runs, from the Hugging Face Hub or a local mirror.
//! - [`leaderboard`]: ML.ENERGY leaderboard summaries (one JSON per task).
//! - [`measured`]: measured runs (nvidia-smi power, vLLM request logs, engine counters).

pub mod leaderboard;
pub mod measured;
pub mod mlenergy;

/// Per-GPU board power limit (W) for the GPU models we know; used to reject absurd readings
/// (> 2× the limit). Unknown models get a generous 1,500 W.
pub(crate) fn board_limit_w(gpu_model: &str) -> f64 {
    let g = gpu_model.to_ascii_uppercase();
    if g.contains("A100") {
        400.0
    } else if g.contains("H100") || g.contains("H200") || g.contains("H800") {
        700.0
    } else if g.contains("B200") || g.contains("B100") {
        1000.0
    } else if g.contains("GB200") || g.contains("B300") {
        1400.0
    } else {
        1500.0
    }
}
