//! Learning a synthesis model from measured runs (SPEC §2.3, §6).
//!
//! For one configuration (model × GPU × TP), from one or more measured runs:
//! 1. [`align`]: power, GPU temperature, engine counters and the request log on one unix
//!    clock, on a regular grid (default 0.25 s): bin means of the meter, counters interpolated
//!    at bin centres, token counters differenced over each bin.
//! 2. Engine timing ([`StepTiming`]): a least-squares fit of step time on the counters' per-step
//!    means (decodes, prompt tokens computed per iteration, cache hits excluded), then refined
//!    (Nelder–Mead over the five coefficients, prefill attention included) so that the engine
//!    simulation of the training request logs reproduces the measured running-request gauge
//!    (read at the counters' instants, [`running_as_counted`]), the decode tokens per bin and
//!    the requests' times to first token (after a fitted client share). Two coefficients the
//!    runs alone may not pin down are pulled toward roofline values ([`TimingPrior`]: the KV
//!    cache read per 1k tokens of context at the GPU's HBM bandwidth, prefill attention's FLOP
//!    share), and the first step of a run pays a warm-up ([`StepTiming::first_step_s`], the
//!    best of [`FIRST_STEP_CANDIDATES_S`] between two Nelder–Mead rounds).
//!    The KV capacity of the prefix cache comes from `gpu_cache_usage_perc`
//!    ([`kv_capacity_tokens`]).
//! 3. Power ([`PowerModel`]): a point-reading meter (A100 `power.draw`) reads each bin at an
//!    instant that is idle or active, and an active one in a decode or a prefill iteration;
//!    the engine gives the chances (busy share, prefill share of the active time). Features
//!    (busy share, running requests, prefill busy share, decode tokens/s, context, recent
//!    busy share) are time averages over the meter window (1 bin by default). A reading's
//!    state is idle (cold, or warm within 1 s of work) or its active time's occupancy ×
//!    context × reading (decode / prefill; a prefill reading's power does not depend on the
//!    context, [`EngineState::context_bucket`]). Training: bins where the simulated engine
//!    and the measured counters disagree on idle vs busy are left out; of partly busy bins the
//!    round(Σ busy) highest readings are active, and of active bins with prefill work the
//!    round(Σ prefill share) highest are prefill readings (`assign_readings`); idle readings
//!    far above the idle level are left out; every reading rises with the GPU's temperature,
//!    modelled from the power drawn ([`Thermal`], fitted on the measured temperature). A
//!    sparse state pools its nearest states
//!    ([`state_distance`]: a prefill reading pools prefill readings first). Per cell the
//!    measured power values (nearest-rank quantiles, drawn as a step function) and an AR(1)
//!    coefficient of the normal scores (≥ 40 pairs; else the overall one), used as a Gaussian
//!    copula.
//!
//! Nothing here reads files: callers pass loaded [`MeasuredRun`]s.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::engine::{
    running_gauge_at, simulate, BinGrid, EngineTrace, RequestOutcome, ServingConfig, Simulation,
    StepTiming,
};
use crate::error::{Error, Result};
use crate::fits::{least_squares, nelder_mead};
use crate::prefix_cache::KvCacheConfig;
use crate::sources::board_limit_w;
use crate::sources::measured::MeasuredRun;
use crate::stats::{mean, population_variance as variance};
use crate::thermal::Thermal;
use crate::traces::interp;
use crate::workload::Workload;
use statrs::distribution::{ContinuousCDF, Normal};

/// Schema tag of the learned-model JSON (v3: engine states of the active time, a bin's
/// activity from the engine's busy share; v4: prefill readings whatever the context, the
/// timing's first-step warm-up).
pub const LEARNED_MODEL_SCHEMA: &str = "powersynth.learned_model.v4";

/// Number of engine features of a bin, each a time average over the bin (so that the meter
/// window averages them): [1, busy share, running requests, prefill busy share, decode kt/s,
/// context ktokens, busy share over the last [`WARM_IDLE_S`]].
pub const N_FEATURES: usize = 7;

/// An idle GPU busy within this span is still warm: its clocks and voltage have not settled,
/// and it draws several watts more than after a long idle (A100, Qwen3-8B: ~88–91 W in the
/// gaps of a bursty replay, ~82–83 W after seconds of idle).
pub const WARM_IDLE_S: f64 = 1.0;

/// Names of the engine features, in order.
pub const FEATURE_NAMES: [&str; N_FEATURES] = [
    "one",
    "busy_fraction",
    "running",
    "prefill_busy_fraction",
    "decode_ktok_per_s",
    "context_ktok",
    "recent_busy_fraction",
];

/// A measured run on a regular grid.
#[derive(Debug, Clone)]
pub struct AlignedRun {
    pub run_id: String,
    pub serving: ServingConfig,
    /// Measured power per bin (W, sum over the run's active GPUs).
    pub power_w: Vec<f64>,
    /// Measured GPU temperature per bin (°C, mean over the active GPUs; NaN if not logged).
    pub temperature_c: Vec<f64>,
    /// The engine state per bin, from the measured counters.
    pub engine: EngineTrace,
    /// The request log (arrivals and token counts only).
    pub workload: Workload,
    /// Measured time to first token per request of `workload` (s; NaN where not logged). Used
    /// only to calibrate the step timing on training runs.
    pub ttft_s: Vec<f64>,
    /// Timestamps of the engine counters (unix s), where the measured gauges were read.
    pub counter_t_s: Vec<f64>,
    /// Measured share of the KV cache in use per bin (`gpu_cache_usage_perc`, a fraction; NaN
    /// where the counter is absent).
    pub kv_usage: Vec<f64>,
    /// Per counter interval with engine iterations: the mean iteration.
    pub step_samples: Vec<StepSample>,
}

impl AlignedRun {
    /// The grid of the measured counters and of `power_w`'s bins.
    pub fn grid(&self) -> BinGrid {
        self.engine.grid
    }
}

/// Puts a measured run on a grid of `dt_s` covering the span where both power and engine
/// counters exist.
pub fn align(run: &MeasuredRun, dt_s: f64) -> Result<AlignedRun> {
    let p = &run.power;
    let e = &run.engine;
    let t0 = p.t_s[0].max(e.t_s[0]);
    let t1 = p.t_s[p.t_s.len() - 1].min(e.t_s[e.t_s.len() - 1]);
    if !(t1 - t0 >= 5.0 * dt_s) {
        return Err(Error::content(
            &run.dir,
            format!(
                "power and engine counters overlap for {:.2} s only",
                t1 - t0
            ),
        ));
    }
    let grid = BinGrid::new(t0, t1 - t0, dt_s)?;
    let n = grid.bins;
    // Bin means of the meter's columns; bins without a sample take the interpolation at their
    // centre.
    let bin_of = |t: f64| {
        (t >= t0)
            .then(|| ((t - t0) / dt_s).floor() as usize)
            .filter(|&i| i < n)
    };
    let mut cnt = vec![0usize; n];
    for i in p.t_s.iter().filter_map(|&t| bin_of(t)) {
        cnt[i] += 1;
    }
    let bin_mean = |v: &[f64]| -> Vec<f64> {
        let mut sum = vec![0.0; n];
        for (&t, &x) in p.t_s.iter().zip(v) {
            if let Some(i) = bin_of(t) {
                sum[i] += x;
            }
        }
        (0..n)
            .map(|i| {
                if cnt[i] > 0 {
                    sum[i] / cnt[i] as f64
                } else {
                    interp(&p.t_s, v, grid.t_s(i) + 0.5 * dt_s)
                }
            })
            .collect()
    };
    let power_w = bin_mean(&p.power_w);
    let temperature_c = bin_mean(&p.temperature_c);
    let (engine, kv_usage) = counters_on_grid(e, grid);
    let step_samples = step_samples(e);
    let workload = Workload::from_log(&run.requests)?;
    Ok(AlignedRun {
        run_id: run.manifest.run_id.clone(),
        serving: ServingConfig::from_manifest(&run.manifest),
        power_w,
        temperature_c,
        engine,
        ttft_s: run
            .requests
            .ttfts
            .clone()
            .unwrap_or_else(|| vec![f64::NAN; workload.requests.len()]),
        workload,
        counter_t_s: e.t_s.clone(),
        kv_usage,
        step_samples,
    })
}

/// The engine counters on a grid: gauges interpolated at bin centres, cumulative counters
/// differenced over each bin (zeros where a counter is absent), and the KV-cache share in use
/// (NaN where absent).
fn counters_on_grid(
    e: &crate::sources::measured::EngineCounters,
    grid: BinGrid,
) -> (EngineTrace, Vec<f64>) {
    let n = grid.bins;
    let at_centres = |v: &[f64]| -> Vec<f64> {
        (0..n)
            .map(|i| interp(&e.t_s, v, grid.t_s(i) + 0.5 * grid.dt_s))
            .collect()
    };
    let per_bin = |v: &[f64]| -> Vec<f64> {
        if v.iter().any(|x| x.is_nan()) {
            return vec![0.0; n];
        }
        (0..n)
            .map(|i| (interp(&e.t_s, v, grid.t_s(i + 1)) - interp(&e.t_s, v, grid.t_s(i))).max(0.0))
            .collect()
    };
    let running = at_centres(&e.num_requests_running);
    let engine = EngineTrace {
        grid,
        waiting: at_centres(&e.num_requests_waiting),
        prefill_tokens: per_bin(&e.prompt_tokens_total),
        decode_tokens: per_bin(&e.generation_tokens_total),
        // The counters do not hold the context; only simulations fill it.
        context_tokens: vec![0.0; n],
        cached_tokens: per_bin(&e.prefix_cache_hits_total),
        // The counters do not time the steps: busy while a request runs; the prompt tokens'
        // share of the bin needs a timing (NaN: [`raw_features`] prices them).
        busy: running.iter().map(|r| r.clamp(0.0, 1.0)).collect(),
        prefill_busy: vec![f64::NAN; n],
        running,
    };
    let kv_usage = if e.gpu_cache_usage_perc.iter().any(|x| x.is_nan()) {
        vec![f64::NAN; n]
    } else {
        at_centres(&e.gpu_cache_usage_perc)
    };
    (engine, kv_usage)
}

/// The mean engine iteration of one counter interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepSample {
    /// Seconds per iteration.
    pub step_s: f64,
    /// Requests decoded per iteration.
    pub decode_seqs: f64,
    /// Prompt tokens computed per iteration (cache hits taken off).
    pub prefill_tokens: f64,
}

/// Per counter interval with engine iterations while busy, its mean iteration (the prompt
/// counter counts cached tokens too, so cache hits are taken off).
fn step_samples(e: &crate::sources::measured::EngineCounters) -> Vec<StepSample> {
    let mut out = Vec::new();
    for k in 1..e.t_s.len() {
        let d_iter = e.iteration_tokens_total_count[k] - e.iteration_tokens_total_count[k - 1];
        let d_gen = e.generation_tokens_total[k] - e.generation_tokens_total[k - 1];
        let d_hits = e.prefix_cache_hits_total[k] - e.prefix_cache_hits_total[k - 1];
        let d_prompt = e.prompt_tokens_total[k]
            - e.prompt_tokens_total[k - 1]
            - if d_hits.is_finite() { d_hits } else { 0.0 };
        let busy = e.num_requests_running[k] > 0.0 && e.num_requests_running[k - 1] > 0.0;
        if busy && d_iter >= 1.0 && d_gen.is_finite() && d_prompt.is_finite() {
            out.push(StepSample {
                step_s: (e.t_s[k] - e.t_s[k - 1]) / d_iter,
                decode_seqs: d_gen / d_iter,
                prefill_tokens: d_prompt / d_iter,
            });
        }
    }
    out
}

/// Per-bin engine features of the power model, before smoothing: time averages over the bin.
/// The busy share is the part of the bin the engine spends stepping; the prefill busy share
/// the part spent on prompt tokens ([`StepTiming::prefill_s`] of each step), a
/// hardware-independent measure of prefill work. A trace built from measured counters has no
/// step times (its `prefill_busy` is NaN): there prompt tokens × the timing's seconds per
/// prompt token stand in.
pub fn raw_features(trace: &EngineTrace, timing: &StepTiming) -> Vec<[f64; N_FEATURES]> {
    let dt = trace.grid.dt_s;
    let warm_bins = ((WARM_IDLE_S / dt).round() as usize).max(1);
    let mut recent = 0.0;
    (0..trace.grid.bins)
        .map(|i| {
            recent += trace.busy[i].clamp(0.0, 1.0);
            if i >= warm_bins {
                recent -= trace.busy[i - warm_bins].clamp(0.0, 1.0);
            }
            let busy = trace.busy[i].clamp(0.0, 1.0);
            let prefill = if trace.prefill_busy[i].is_nan() {
                trace.prefill_tokens[i] * timing.per_prefill_token_s / dt
            } else {
                trace.prefill_busy[i]
            };
            [
                1.0,
                busy,
                trace.running[i].max(0.0),
                prefill.clamp(0.0, busy),
                trace.decode_tokens[i] / dt * 1e-3,
                trace.context_tokens[i] * 1e-3,
                (recent / warm_bins as f64).max(0.0),
            ]
        })
        .collect()
}

/// Trailing moving average over `window` bins (the first bins average what exists).
pub fn smooth_features(raw: &[[f64; N_FEATURES]], window: usize) -> Vec<[f64; N_FEATURES]> {
    let w = window.max(1);
    let mut out = Vec::with_capacity(raw.len());
    let mut acc = [0.0; N_FEATURES];
    for i in 0..raw.len() {
        for (a, v) in acc.iter_mut().zip(&raw[i]) {
            *a += v;
        }
        if i >= w {
            for (a, v) in acc.iter_mut().zip(&raw[i - w]) {
                *a -= v;
            }
        }
        let k = (i + 1).min(w) as f64;
        out.push(acc.map(|a| a / k));
    }
    out
}

/// Occupancy buckets of a busy bin (running requests per unit of busy time): < 2, < 4, < 8,
/// < 16, < 32, ≥ 32. Bucket 0 is idle (busy share < [`IDLE_BUSY`] over the meter window).
pub const RUNNING_BUCKETS: usize = 7;
/// Below this busy share over the meter window a bin is idle.
pub const IDLE_BUSY: f64 = 0.05;
/// From this busy share over the meter window a training bin is wholly active: its reading
/// teaches its active state. Bins in between hold an idle or an active reading; training
/// keeps the highest round(Σ busy) of them as active readings (`assign_readings`), and
/// synthesis draws each bin idle or active with its busy share.
pub const ACTIVE_BUSY: f64 = 0.9;
/// Context buckets (thousands of tokens held by running requests): < 1, < 4, < 16, < 64, ≥ 64.
pub const CONTEXT_BUCKETS: usize = 5;
/// Prefill levels of an active bin, by the share of its active time spent on prompt tokens:
/// < 0.02 a decode reading (0), ≥ 0.8 a prefill reading (2), in between mixed (1). A
/// point-sampling meter (A100 `power.draw`) reads a mixed bin in a prefill or in a decode
/// iteration, with about the prefill share as the chance of the first: training takes the
/// highest round(Σ share) readings of mixed bins as prefill readings (`assign_readings`),
/// and synthesis draws each active bin's reading as a prefill one with its prefill share
/// ([`crate::synth::power_from_engine`]). So no cell is mixed (level 1 serves no reading),
/// and prefill power (compute-bound, near the board limit) holds for a 12k-token prompt as
/// for a burst of short ones.
pub const PREFILL_LEVELS: usize = 3;
const PREFILL_LO: f64 = 0.02;
const PREFILL_HI: f64 = 0.8;
/// Cells of the engine-state table: running × context × prefill level.
pub const N_CELLS: usize = RUNNING_BUCKETS * CONTEXT_BUCKETS * PREFILL_LEVELS;

/// The engine state of a bin, discretised: (running bucket, context bucket, prefill level).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EngineState {
    pub running_bucket: u8,
    /// The context held ([`CONTEXT_BUCKETS`]); 0 for every prefill reading. A prefill
    /// iteration is compute-bound whatever the context: keyed by it, a prefill reading with
    /// short contexts at low occupancy (a burst of short requests) drew only the few such
    /// readings of ShareGPT runs (~405 W, single short prompts beside decodes) and not the
    /// long-context ones (445–450 W) of the same kind. Leave-one-run-out over the six A100
    /// Qwen3-8B runs, the BurstGPT replay's energy: −5.0 % keyed by context, −3.8 % without.
    pub context_bucket: u8,
    /// Share of the active time spent on prompt tokens, bucketed (see [`PREFILL_LEVELS`]).
    pub prefill_level: PrefillLevel,
}

/// How much of a bin's active time goes to prompt tokens ([`PREFILL_LEVELS`] levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PrefillLevel {
    /// Under 2 %: a decode reading.
    Decode = 0,
    /// In between (serves no reading: training and synthesis split mixed bins).
    Mixed = 1,
    /// From 80 %: a prefill reading.
    Prefill = 2,
}

impl PrefillLevel {
    /// Every level, in order.
    pub const ALL: [Self; PREFILL_LEVELS] = [Self::Decode, Self::Mixed, Self::Prefill];
}

impl EngineState {
    /// The state of a bin from its smoothed features: idle when the engine is busy for less
    /// than 5 % of the meter window, else the state of its active time (running requests,
    /// prefill share and context per unit of busy time).
    pub fn of(f: &[f64; N_FEATURES]) -> Self {
        if f[1] < IDLE_BUSY {
            return Self::idle(f);
        }
        Self::active(f)
    }

    /// The idle state after a long idle.
    pub const IDLE: Self = Self {
        running_bucket: 0,
        context_bucket: 0,
        prefill_level: PrefillLevel::Decode,
    };

    /// The idle state within [`WARM_IDLE_S`] of the engine's last step (warm idle).
    pub const WARM_IDLE: Self = Self {
        running_bucket: 0,
        context_bucket: 1,
        prefill_level: PrefillLevel::Decode,
    };

    /// The idle state of a bin: warm if the engine stepped within [`WARM_IDLE_S`].
    pub fn idle(f: &[f64; N_FEATURES]) -> Self {
        if f[6] > 1e-6 {
            Self::WARM_IDLE
        } else {
            Self::IDLE
        }
    }

    /// The state of an active reading of a bin: its active time's state with the prefill
    /// share set to 1 (a prefill reading) or 0 (a decode reading).
    pub fn reading(f: &[f64; N_FEATURES], prefill: bool) -> Self {
        let mut g = *f;
        g[3] = if prefill { g[1] } else { 0.0 };
        Self::active(&g)
    }

    /// The state of a bin's active time, whatever its busy share (a bin busy for 10 % of the
    /// window is, when the meter catches it busy, in this state).
    pub fn active(f: &[f64; N_FEATURES]) -> Self {
        let busy = f[1].max(1e-9);
        let running = f[2] / busy;
        let (prefill, context) = (f[3] / busy, f[5] / busy);
        let running_bucket = match running {
            r if r < 2.0 => 1,
            r if r < 4.0 => 2,
            r if r < 8.0 => 3,
            r if r < 16.0 => 4,
            r if r < 32.0 => 5,
            _ => 6,
        };
        let prefill_level = match prefill {
            p if p < PREFILL_LO => PrefillLevel::Decode,
            p if p < PREFILL_HI => PrefillLevel::Mixed,
            _ => PrefillLevel::Prefill,
        };
        let context_bucket = match context {
            // See [`EngineState::context_bucket`].
            _ if prefill_level == PrefillLevel::Prefill => 0,
            c if c < 1.0 => 0,
            c if c < 4.0 => 1,
            c if c < 16.0 => 2,
            c if c < 64.0 => 3,
            _ => 4,
        };
        Self {
            running_bucket,
            context_bucket,
            prefill_level,
        }
    }

    pub fn is_idle(&self) -> bool {
        self.running_bucket == 0
    }

    /// Index into the dense cell table.
    pub fn index(&self) -> usize {
        (self.running_bucket as usize * CONTEXT_BUCKETS + self.context_bucket as usize)
            * PREFILL_LEVELS
            + self.prefill_level as usize
    }
}

/// The measured power distribution of one group of engine states.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PowerCell {
    /// What the cell pools: e.g. `running 3 · context 1 · prefill`, `running 3`, `busy`.
    pub label: String,
    /// Training bins in the cell.
    pub bins: usize,
    pub mean_w: f64,
    /// Power quantiles (W) at k / (m − 1), k = 0 … m − 1.
    pub quantiles_w: Vec<f64>,
    /// Lag-1 autocorrelation of the normal scores of consecutive bins that both fall in this
    /// cell (SPEC §6: AR(1) per state); the model's overall φ when the cell has fewer than
    /// [`MIN_PHI_PAIRS`] such pairs.
    #[serde(default)]
    pub phi: Option<f64>,
}

/// The largest power reading a model may hold (W): several boards' worth (TP up to 8).
const MAX_READING_W: f64 = 20_000.0;

/// Pairs of consecutive same-cell bins needed for a cell's own φ.
pub const MIN_PHI_PAIRS: usize = 40;

impl PowerCell {
    /// A cell from its training power samples (at least one), keeping `m` ≥ 2 quantiles.
    fn from_samples(label: String, mut power_w: Vec<f64>, m: usize) -> Self {
        power_w.sort_by(f64::total_cmp);
        Self {
            label,
            bins: power_w.len(),
            mean_w: mean(&power_w),
            quantiles_w: (0..m)
                .map(|k| {
                    let rank = (k as f64 / (m - 1) as f64 * (power_w.len() - 1) as f64).round();
                    power_w[rank as usize]
                })
                .collect(),
            phi: None,
        }
    }

    /// The power at probability `u` in [0, 1]: the nearest stored quantile (a step function:
    /// every value drawn is a measured value).
    pub fn power_at(&self, u: f64) -> f64 {
        let q = &self.quantiles_w;
        let x = u.clamp(0.0, 1.0) * (q.len() - 1) as f64;
        q[x.round() as usize]
    }
}

/// Bin power as a function of the engine state: the empirical power distribution of the
/// state's cell, with temporal structure from a Gaussian AR(1) copula: the normal score
/// z_t = Φ⁻¹(u_t) follows z_t = φ_c·z_{t−1} + √(1−φ_c²)·ε_t (φ_c of the bin's cell c) and
/// power_t = Q_c(u_t).
/// A busy state with too few training bins pools its nearest busy states (see
/// [`state_distance`]); idle is its own cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PowerModel {
    /// Trailing window of the power meter, in bins.
    pub meter_window_bins: usize,
    /// Cells: states with enough training bins, and the pools serving sparser states.
    pub cells: Vec<PowerCell>,
    /// For each [`EngineState::index`], the index in `cells` that serves it.
    pub lookup: Vec<usize>,
    /// Lag-1 autocorrelation of the normal scores within runs.
    pub phi: f64,
    /// Share of training power variance explained by the cell means.
    pub r2: f64,
    /// Minimum training bins for a cell of its own.
    pub min_cell_bins: usize,
    /// How power rises with the GPU's temperature, and the temperature with the power drawn
    /// (absent in older models: flat).
    #[serde(default)]
    pub thermal: Thermal,
}

impl PowerModel {
    /// The cell that serves a bin's state.
    pub fn cell(&self, s: &EngineState) -> &PowerCell {
        &self.cells[self.lookup[s.index()]]
    }
    /// The decode reading of an active bin's state on a GPU held there until its temperature
    /// settles: the decode cell's mean (a cold GPU) plus its steady leakage, P = c + k·R·(P −
    /// P0) with R the rise per W of both averages, so P = (c − kR·P0) / (1 − kR).
    pub fn steady_decode_w(&self, f: &[f64; N_FEATURES]) -> f64 {
        let c = self.cell(&EngineState::reading(f, false)).mean_w;
        let th = &self.thermal;
        let kr = th.active_w_per_c * (th.rise_fast_c_per_w + th.rise_slow_c_per_w);
        if (0.0..0.9).contains(&kr) {
            (c - kr * th.cold_w) / (1.0 - kr)
        } else {
            c
        }
    }

    /// The AR(1) coefficient of a cell: its own, else the model's.
    pub fn phi_of(&self, cell: &PowerCell) -> f64 {
        cell.phi.unwrap_or(self.phi)
    }
}

/// Levels of the simple baselines (SPEC §8), from the same training runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineLevels {
    /// Board limit × TP.
    pub tdp_w: f64,
    /// Mean training power.
    pub mean_w: f64,
    /// Two-level model: idle bins, bins with prefill, other busy bins.
    pub idle_w: f64,
    pub prefill_w: f64,
    pub decode_w: f64,
}

/// How well the calibrated engine simulation reproduces one training run's counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineCheck {
    pub run_id: String,
    pub running_corr: f64,
    pub running_mae: f64,
    pub decode_tokens_corr: f64,
}

/// A learned synthesis model: what `synthesize` loads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LearnedModel {
    pub schema: String,
    /// model × GPU × TP.
    pub configuration: String,
    pub model: String,
    pub hardware: String,
    pub tp: u32,
    pub dt_s: f64,
    pub timing: StepTiming,
    /// The replica's KV cache as the prefix cache sees it (capacity learned from the usage
    /// counters; absent in models written before it, which then never evict).
    #[serde(default)]
    pub kv_cache: KvCacheConfig,
    pub power: PowerModel,
    pub baselines: BaselineLevels,
    pub training_runs: Vec<String>,
    pub engine_checks: Vec<EngineCheck>,
    /// Set when this model was transferred from a measured reference to a configuration
    /// nobody measured ([`crate::transfer`]): how the reference's readings map to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<crate::level_map::LevelMap>,
    /// The traffic of the training runs (absent in older models): synthesis warns beyond it.
    #[serde(default)]
    pub training_traffic: Option<crate::workload::TrafficEnvelope>,
}

impl LearnedModel {
    /// Reads a learned model written by `synthesize --model-out`, checking its schema and that
    /// its cell table covers every engine state.
    pub fn read_json(path: &Path) -> Result<Self> {
        let model: Self = crate::io::read_json(path)?;
        if model.schema != LEARNED_MODEL_SCHEMA {
            return Err(Error::content(
                path,
                format!(
                    "schema {:?}, expected {LEARNED_MODEL_SCHEMA:?} (learn the model again with \
                     this version)",
                    model.schema
                ),
            ));
        }
        let pm = &model.power;
        if pm.lookup.len() != N_CELLS || pm.lookup.iter().any(|&k| k >= pm.cells.len()) {
            return Err(Error::content(
                path,
                format!(
                    "power.lookup must hold {N_CELLS} indices below the {} cells",
                    pm.cells.len()
                ),
            ));
        }
        let power_ok = |w: &f64| (0.0..=MAX_READING_W).contains(w);
        if let Some(c) = pm.cells.iter().find(|c| {
            c.quantiles_w.len() < 2
                || !c.quantiles_w.iter().all(power_ok)
                || c.quantiles_w.windows(2).any(|w| w[1] < w[0])
        }) {
            return Err(Error::content(
                path,
                format!(
                    "cell {:?}: quantiles_w must be at least 2 non-decreasing values in \
                     0 … {MAX_READING_W} W",
                    c.label
                ),
            ));
        }
        let phi_ok = |p: f64| (-1.0..1.0).contains(&p);
        if let Some(c) = pm.cells.iter().find(|c| c.phi.is_some_and(|p| !phi_ok(p))) {
            return Err(Error::content(
                path,
                format!("cell {:?}: phi {:?} (need −1 ≤ φ < 1)", c.label, c.phi),
            ));
        }
        if !phi_ok(pm.phi)
            || pm.meter_window_bins == 0
            || !(model.dt_s > 0.0 && model.dt_s.is_finite())
        {
            return Err(Error::content(
                path,
                format!(
                    "power.phi {} (need −1 ≤ φ < 1), power.meter_window_bins {} (need ≥ 1), \
                     dt_s {} (need > 0)",
                    pm.phi, pm.meter_window_bins, model.dt_s
                ),
            ));
        }
        model
            .timing
            .validate()
            .map_err(|e| Error::content(path, e.to_string()))?;
        Ok(model)
    }
}

/// Options of [`learn`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LearnOptions {
    pub dt_s: f64,
    /// Nelder–Mead iterations of the timing calibration (0: regression only).
    pub timing_iters: u64,
    /// Number of power quantiles stored per cell.
    pub quantiles: usize,
    /// Minimum training bins for a cell of its own (fewer: a coarser pool serves it).
    pub min_cell_bins: usize,
    /// Where the power model's training features come from.
    pub features_from: FeatureSource,
    /// The power meter's trailing window in bins; `None` learns it (1–8 bins, the window
    /// whose states explain the most power variance). Default 1: A100 `power.draw` is a point
    /// reading (a 0.15 s burst shows in exactly one 0.25 s bin of the BurstGPT replay), and a
    /// wider window puts synthesized peaks a bin late.
    pub meter_window_bins: Option<usize>,
}

/// The engine features the power model is trained on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureSource {
    /// The calibrated engine simulation of each training run's request log: the same kind of
    /// features synthesis will see (default).
    Simulated,
    /// The measured engine counters (no context feature: it is zero).
    Measured,
}

impl Default for LearnOptions {
    fn default() -> Self {
        Self {
            dt_s: 0.25,
            timing_iters: 150,
            quantiles: 101,
            min_cell_bins: 30,
            features_from: FeatureSource::Simulated,
            meter_window_bins: Some(1),
        }
    }
}

/// Pearson correlation (0 when either side is constant).
pub fn correlation(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    if n < 2 {
        return 0.0;
    }
    let ma = a[..n].iter().sum::<f64>() / n as f64;
    let mb = b[..n].iter().sum::<f64>() / n as f64;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let (x, y) = (a[i] - ma, b[i] - mb);
        sab += x * y;
        saa += x * x;
        sbb += y * y;
    }
    if saa == 0.0 || sbb == 0.0 {
        0.0
    } else {
        sab / (saa * sbb).sqrt()
    }
}

/// Mean absolute difference over the common length (0 when empty).
pub fn mean_abs_error(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    if n == 0 {
        return 0.0;
    }
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() / n as f64
}

/// Step timing by least squares on the counters' per-interval iteration means.
pub fn regress_timing(runs: &[AlignedRun]) -> StepTiming {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for r in runs {
        for s in &r.step_samples {
            x.push(vec![1.0, s.decode_seqs, s.prefill_tokens]);
            y.push(s.step_s);
        }
    }
    let b = least_squares(&x, &y).unwrap_or_else(|| vec![0.02, 0.0, 0.0]);
    StepTiming {
        base_s: b[0].max(1e-3),
        per_decode_seq_s: b[1].max(0.0),
        per_prefill_token_s: b[2].max(1e-7),
        per_context_ktoken_s: 0.0,
        per_prefill_attention_s: 0.0,
        first_step_s: 0.0,
    }
}

/// Simulates a run's request log on its grid with the run's serving settings.
pub fn simulate_run(
    run: &AlignedRun,
    timing: &StepTiming,
    kv: &KvCacheConfig,
) -> Result<Simulation> {
    simulate(&run.workload, &run.serving, timing, kv, run.grid())
}

/// The simulated running gauge read the way the run's counters were: at the counters' own
/// timestamps, then interpolated at the bin centres as [`align`] does with the measured ones.
/// Compared bin by bin with `run.engine.running`, it sets point samples against point samples
/// (a time average would be smoother than any 4 Hz reading of sub-bin bursts).
pub fn running_as_counted(run: &AlignedRun, outcomes: &[RequestOutcome]) -> Vec<f64> {
    let at_counters = running_gauge_at(outcomes, &run.counter_t_s);
    let grid = run.grid();
    (0..grid.bins)
        .map(|i| {
            interp(
                &run.counter_t_s,
                &at_counters,
                grid.t_s(i) + 0.5 * grid.dt_s,
            )
        })
        .collect()
}

/// KV-cache capacity (tokens) from the measured `gpu_cache_usage_perc`: the median over busy
/// bins (usage ≥ 1 %) of the simulated context held ÷ the measured share in use. `None` when
/// no run has the counter. vLLM counts cached blocks no request uses as free, so the share
/// measures the running requests' context, which is what the simulation holds.
pub fn kv_capacity_tokens(runs: &[AlignedRun], simulated: &[EngineTrace]) -> Option<u64> {
    let mut ratios: Vec<f64> = Vec::new();
    for (r, sim) in runs.iter().zip(simulated) {
        for (&u, &ctx) in r.kv_usage.iter().zip(&sim.context_tokens) {
            if u >= 0.01 && ctx > 0.0 {
                ratios.push(ctx / u);
            }
        }
    }
    if ratios.len() < 10 {
        return None;
    }
    ratios.sort_by(f64::total_cmp);
    Some(ratios[ratios.len() / 2].round() as u64)
}

/// How far a timing's simulation of the training runs is from their measurements: per run,
/// the normalised squared error of the running requests and of the decode tokens per bin, plus
/// the mean squared log error of the requests' time to first token (where logged). The TTFT
/// term is what pins the prefill coefficients on long prompts: running requests alone barely
/// see a prefill that lasts a fraction of a bin.
fn timing_cost(runs: &[AlignedRun], timing: &StepTiming) -> f64 {
    let mut cost = 0.0;
    for r in runs {
        let kv = KvCacheConfig::default();
        let Ok(sim) = simulate(&r.workload, &r.serving, timing, &kv, r.grid()) else {
            return f64::INFINITY;
        };
        let nmse = |a: &[f64], b: &[f64]| -> f64 {
            let v = variance(b).max(1e-9);
            a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>() / b.len() as f64 / v
        };
        cost += nmse(&running_as_counted(r, &sim.outcomes), &r.engine.running)
            + nmse(&sim.trace.decode_tokens, &r.engine.decode_tokens);
        cost += ttft_error(r, &sim.outcomes);
    }
    cost
}

/// Mean squared log error of the simulated times to first token against the measured ones,
/// after the client's and front end's share (HTTP, tokenisation: c0 + c1 · prompt tokens,
/// fitted by least squares, never negative), which the engine does not see. 0 without TTFTs.
fn ttft_error(r: &AlignedRun, outcomes: &[crate::engine::RequestOutcome]) -> f64 {
    let pairs: Vec<(f64, f64, f64)> = outcomes
        .iter()
        .zip(r.ttft_s.iter().zip(&r.workload.requests))
        .filter_map(|(o, (&measured, q))| {
            let simulated = o.first_token_s - q.arrival_s;
            (measured > 0.0 && simulated > 0.0 && simulated.is_finite()).then_some((
                simulated,
                measured,
                q.input_tokens as f64,
            ))
        })
        .collect();
    if pairs.is_empty() {
        return 0.0;
    }
    let n = pairs.len() as f64;
    let (mx, my) = pairs.iter().fold((0.0, 0.0), |(a, b), &(s, m, x)| {
        (a + x / n, b + (m - s) / n)
    });
    let (sxy, sxx) = pairs.iter().fold((0.0, 0.0), |(a, b), &(s, m, x)| {
        (a + (x - mx) * (m - s - my), b + (x - mx) * (x - mx))
    });
    let mut c1 = if sxx > 0.0 { (sxy / sxx).max(0.0) } else { 0.0 };
    let mut c0 = my - c1 * mx;
    if c0 < 0.0 {
        c0 = 0.0;
        let (num, den) = pairs.iter().fold((0.0, 0.0), |(a, b), &(s, m, x)| {
            (a + x * (m - s), b + x * x)
        });
        c1 = if den > 0.0 { (num / den).max(0.0) } else { 0.0 };
    }
    pairs
        .iter()
        .map(|&(s, m, x)| ((s + c0 + c1 * x).ln() - m.ln()).powi(2))
        .sum::<f64>()
        / n
}

/// Share of the HBM bandwidth a decode step's reads of the KV cache reach (paged-attention
/// kernels on long contexts; the A100 runs' in-sample fits give 0.70–0.75).
pub(crate) const KV_READ_EFFICIENCY: f64 = 0.7;

/// How much slower per FLOP prefill attention runs than the dense layers (FlashAttention
/// against cuBLAS GEMMs; the A100 runs' in-sample fits give 1.2–1.3).
pub(crate) const ATTENTION_FLOP_COST_RATIO: f64 = 1.25;

/// Nelder–Mead runs of the timing calibration, each from the previous best point with a
/// simplex half as wide (LOO over the six A100 runs: one run left a fold's prefill coefficient
/// at 40 % of the others'; two agree with three).
const TIMING_FIT_ROUNDS: usize = 2;

/// Spread (natural-log units) of the roofline priors of [`TimingPrior`].
const PRIOR_SIGMA: f64 = 0.25;

/// Weight of each roofline prior against the fit's cost (a run's cost terms are normalised
/// errors of order 0.1–1): enough to pick between coefficients the runs cannot tell apart,
/// too little to override what they do tell (leave-one-out over the six A100 runs, 5 draws,
/// with prefill readings then keyed by context: at 0.1 every run's running ρ ≥ 0.91; at 0.2
/// BurstGPT's KS is 0.27, at 0.5 its ΔE −5.7 %; 0.05 lets one of six calibration starts
/// drop the agentic run's ρ to 0.75).
const PRIOR_WEIGHT: f64 = 0.1;

/// Roofline values two step-timing coefficients are pulled toward during calibration, from
/// the served model's shape (the manifest's `arch`) and the GPU's datasheet. Runs whose
/// contexts are all short cannot tell a per-request cost from a per-context one, nor a prompt
/// token's dense cost from its attention: without these a long-context target depends on
/// which one the fit happened to choose.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TimingPrior {
    /// [`StepTiming::per_context_ktoken_s`]: reading 1,000 tokens of KV cache at
    /// [`KV_READ_EFFICIENCY`] of the replica's HBM bandwidth (s).
    pub per_context_ktoken_s: Option<f64>,
    /// [`StepTiming::per_prefill_attention_s`] ÷ [`StepTiming::per_prefill_token_s`]: the
    /// attention FLOP share per 1,000 tokens of context × [`ATTENTION_FLOP_COST_RATIO`].
    pub attention_to_prefill: Option<f64>,
}

impl TimingPrior {
    /// The priors a run's manifest supports (none for a model with sliding-window or linear
    /// attention, an unknown GPU, or a manifest without `arch`).
    pub fn of(run: &MeasuredRun) -> Self {
        let m = &run.manifest;
        let Some(arch) = m.arch.as_ref() else {
            return Self::default();
        };
        let bytes_per_element = if m.server.kv_cache_dtype.starts_with("fp8") {
            1.0
        } else {
            2.0
        };
        let per_context_ktoken_s = arch
            .kv_bytes_per_token(bytes_per_element)
            .zip(crate::gpus::gpu_spec(&m.hardware))
            .map(|(kv_bytes, gpu)| {
                1e3 * kv_bytes / (gpu.hbm_tb_s * 1e12 * m.tp.max(1) as f64 * KV_READ_EFFICIENCY)
            });
        Self {
            per_context_ktoken_s,
            attention_to_prefill: arch
                .attention_flops_ratio_per_ktoken()
                .map(|r| r * ATTENTION_FLOP_COST_RATIO),
        }
    }

    /// The priors' cost at log-space timing parameters `p` ([`calibrate_timing`]'s order).
    fn cost(&self, p: &[f64]) -> f64 {
        let term = |log_value: f64, target: f64| {
            PRIOR_WEIGHT * ((log_value - target.ln()) / PRIOR_SIGMA).powi(2)
        };
        self.per_context_ktoken_s.map_or(0.0, |c| term(p[3], c))
            + self
                .attention_to_prefill
                .map_or(0.0, |r| term(p[4] - p[2], r))
    }
}

/// Step timing: regression, then calibration by simulation (see the module docs), with the
/// [`TimingPrior`]s added to the cost.
pub fn calibrate_timing(runs: &[AlignedRun], iters: u64, prior: &TimingPrior) -> StepTiming {
    let start = regress_timing(runs);
    if iters == 0 {
        return start;
    }
    // Search in log space around the regression.
    let to_timing = |p: &[f64], first_step_s: f64| StepTiming {
        base_s: p[0].exp(),
        per_decode_seq_s: p[1].exp(),
        per_prefill_token_s: p[2].exp(),
        per_context_ktoken_s: p[3].exp(),
        per_prefill_attention_s: p[4].exp(),
        first_step_s,
    };
    let per_prefill_token_s = start.per_prefill_token_s.max(1e-7);
    let p0 = [
        start.base_s.ln(),
        start.per_decode_seq_s.max(1e-5).ln(),
        per_prefill_token_s.ln(),
        // Physical starts for the context terms (A100, 8B model: ~0.1 ms per 1k tokens of
        // KV read per step; prefill attention ~5 % of a prompt token's cost per 1k tokens
        // before it).
        prior.per_context_ktoken_s.unwrap_or(1e-4).ln(),
        (per_prefill_token_s * prior.attention_to_prefill.unwrap_or(0.05)).ln(),
    ];
    let cost = |p: &[f64], first_step_s: f64| {
        if p.iter().any(|v| !(v.abs() < 40.0)) {
            return f64::INFINITY;
        }
        timing_cost(runs, &to_timing(p, first_step_s)) + prior.cost(p)
    };
    // The step coefficients without a warm-up, then the warm-up that fits best with them,
    // then the coefficients again from there with a simplex half as wide: the cost of a
    // discrete simulation is flat in places, where a simplex can collapse on a plateau.
    let mut step = [0.3, 1.0, 0.5, 1.0, 1.0];
    let (mut best, mut best_cost) = nelder_mead(|p: &[f64]| cost(p, 0.0), &p0, &step, iters);
    let mut first_step_s = 0.0;
    for &w in FIRST_STEP_CANDIDATES_S.iter().skip(1) {
        let c = cost(&best, w);
        if c < best_cost {
            (first_step_s, best_cost) = (w, c);
        }
    }
    for _ in 1..TIMING_FIT_ROUNDS {
        step.iter_mut().for_each(|s| *s *= 0.5);
        let (p, c) = nelder_mead(|p: &[f64]| cost(p, first_step_s), &best, &step, iters);
        if c < best_cost {
            (best, best_cost) = (p, c);
        }
    }
    let fitted = to_timing(&best, first_step_s);
    if timing_cost(runs, &fitted) < timing_cost(runs, &start) {
        fitted
    } else {
        start
    }
}

/// Warm-ups a calibration tries for [`StepTiming::first_step_s`] (s), the first none.
const FIRST_STEP_CANDIDATES_S: [f64; 9] = [0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6, 0.8];

/// Distance between two busy states for pooling: a prefill level counts 16 (more than any
/// context and occupancy difference together, so a prefill reading pools every prefill
/// reading before it borrows a decode one), a context bucket 2, an occupancy bucket 1
/// (prefill work sets power the most, then the context held).
fn state_distance(a: &EngineState, b: &EngineState) -> u32 {
    let d = |x: u8, y: u8| x.abs_diff(y) as u32;
    16 * d(a.prefill_level as u8, b.prefill_level as u8)
        + 2 * d(a.context_bucket, b.context_bucket)
        + d(a.running_bucket, b.running_bucket)
}

fn state_label(s: &EngineState) -> String {
    if *s == EngineState::WARM_IDLE {
        "idle (warm)".into()
    } else if s.is_idle() {
        "idle".into()
    } else if s.prefill_level == PrefillLevel::Prefill {
        format!(
            "running {} · prefill {}",
            s.running_bucket, s.prefill_level as u8
        )
    } else {
        format!(
            "running {} · context {} · prefill {}",
            s.running_bucket, s.context_bucket, s.prefill_level as u8
        )
    }
}

/// The power cells and, per state index, the cell serving it. A state with at least
/// `min_bins` training bins is a cell of its own; a sparser busy state pools the nearest busy
/// states with bins ([`state_distance`], all states at the last distance taken) until the pool
/// holds `min_bins`. Idle never pools with busy states; a kind with no bins at all (never
/// idle, never busy) takes every training bin.
fn pool_cells(
    power: &[f64],
    states: &[EngineState],
    min_bins: usize,
    quantiles: usize,
) -> (Vec<PowerCell>, Vec<usize>) {
    let all = all_states();
    let mut by_state: Vec<Vec<f64>> = vec![Vec::new(); N_CELLS];
    for (p, s) in power.iter().zip(states) {
        by_state[s.index()].push(*p);
    }
    let mut cells: Vec<PowerCell> = Vec::new();
    let mut members_of: Vec<Vec<usize>> = Vec::new();
    let mut lookup = Vec::with_capacity(N_CELLS);
    for s in &all {
        // Idle power is narrow: an idle state is its own cell from a quarter of the bins a
        // busy one needs.
        let own = if s.is_idle() {
            (min_bins / 4).max(5)
        } else {
            min_bins
        };
        let members: Vec<usize> = if by_state[s.index()].len() >= own {
            vec![s.index()]
        } else if s.is_idle() {
            // A sparse idle state pools the idle states (warm and long idle).
            all.iter()
                .filter(|t| t.is_idle() && !by_state[t.index()].is_empty())
                .map(|t| t.index())
                .collect()
        } else {
            let mut near: Vec<(u32, usize)> = all
                .iter()
                .filter(|t| !t.is_idle() && !by_state[t.index()].is_empty())
                .map(|t| (state_distance(s, t), t.index()))
                .collect();
            near.sort_unstable();
            let mut taken = Vec::new();
            let (mut n, mut last) = (0, None);
            for (d, k) in near {
                if n >= min_bins && last != Some(d) {
                    break;
                }
                taken.push(k);
                n += by_state[k].len();
                last = Some(d);
            }
            taken.sort_unstable();
            taken
        };
        let members = if members.iter().all(|&k| by_state[k].is_empty()) {
            Vec::new() // the pool of all bins
        } else {
            members
        };
        let k = match members_of.iter().position(|m| *m == members) {
            Some(k) => k,
            None => {
                let (label, v) = if members.is_empty() {
                    ("all".to_string(), power.to_vec())
                } else if members == [s.index()] {
                    (state_label(s), by_state[s.index()].clone())
                } else {
                    (
                        format!("near {} ({} states)", state_label(s), members.len()),
                        members
                            .iter()
                            .flat_map(|&k| by_state[k].iter().copied())
                            .collect(),
                    )
                };
                cells.push(PowerCell::from_samples(label, v, quantiles));
                members_of.push(members);
                cells.len() - 1
            }
        };
        lookup.push(k);
    }
    (cells, lookup)
}

fn all_states() -> Vec<EngineState> {
    let mut v = Vec::with_capacity(N_CELLS);
    for r in 0..RUNNING_BUCKETS as u8 {
        for c in 0..CONTEXT_BUCKETS as u8 {
            for p in PrefillLevel::ALL {
                v.push(EngineState {
                    running_bucket: r,
                    context_bucket: c,
                    prefill_level: p,
                });
            }
        }
    }
    v
}

/// Share of variance of `power` explained by the means of its states' groups.
fn between_state_r2(power: &[f64], states: &[EngineState]) -> f64 {
    let mut acc = vec![(0.0, 0usize); N_CELLS];
    for (p, s) in power.iter().zip(states) {
        acc[s.index()].0 += p;
        acc[s.index()].1 += 1;
    }
    let var = variance(power);
    if var <= 0.0 {
        return 0.0;
    }
    let within: f64 = power
        .iter()
        .zip(states)
        .map(|(p, s)| {
            let (sum, n) = acc[s.index()];
            (p - sum / n as f64).powi(2)
        })
        .sum::<f64>()
        / power.len() as f64;
    1.0 - within / var
}

/// Fits the power model on aligned runs, with engine features from `engines` (one per run:
/// the measured counters, or a simulation of the run).
pub fn fit_power(
    runs: &[AlignedRun],
    engines: &[EngineTrace],
    timing: &StepTiming,
    opts: &LearnOptions,
) -> Result<PowerModel> {
    let raw: Vec<Vec<[f64; N_FEATURES]>> =
        engines.iter().map(|e| raw_features(e, timing)).collect();
    let power: Vec<f64> = runs
        .iter()
        .flat_map(|r| r.power_w.iter().copied())
        .collect();
    if power.len() < 20 {
        return Err(Error::data(format!(
            "power model: {} training bins, need at least 20",
            power.len()
        )));
    }
    // Bins where the features' engine and the measured counters disagree on idle vs busy teach
    // the simulator's errors, not power: they are left out (none when the features are the
    // measured counters).
    let measured_raw: Vec<Vec<[f64; N_FEATURES]>> = runs
        .iter()
        .map(|r| raw_features(&r.engine, timing))
        .collect();
    let usable = |w: usize| reading_states(&raw, &measured_raw, &power, w);
    // The meter window: given, or the trailing window whose states explain the most power
    // variance (ties go to the shorter window).
    let windows = match opts.meter_window_bins {
        Some(w) => w.max(1)..=w.max(1),
        None => 1..=8usize,
    };
    let (window, r2) = windows
        .map(|w| {
            let (states, keep) = usable(w);
            let (p, s) = kept(&power, &states, &keep);
            (w, between_state_r2(&p, &s))
        })
        .fold((1, f64::NEG_INFINITY), |best, c| {
            if c.1 > best.1 + 1e-3 {
                c
            } else {
                best
            }
        });
    let (states, keep) = usable(window);
    let keep = drop_idle_outliers(&power, &states, keep);
    // Readings net of their leakage over a cold GPU ([`Thermal`]).
    let thermal = fit_thermal(runs, &power, &states, &keep, opts.dt_s);
    let heat: Vec<crate::thermal::ThermalState> = runs
        .iter()
        .flat_map(|r| thermal.states(&r.power_w, opts.dt_s))
        .collect();
    let power: Vec<f64> = (0..power.len())
        .map(|i| power[i] - thermal.offset_w(states[i].is_idle(), &heat[i]))
        .collect();
    let (kept_power, kept_states) = kept(&power, &states, &keep);
    let (cells, lookup) = pool_cells(
        &kept_power,
        &kept_states,
        opts.min_cell_bins,
        opts.quantiles.max(2),
    );
    let mut model = PowerModel {
        meter_window_bins: window,
        cells,
        lookup,
        phi: 0.0,
        r2,
        min_cell_bins: opts.min_cell_bins,
        thermal,
    };
    fit_phi(&mut model, runs, &states, &keep, &power);
    Ok(model)
}

/// The training readings of the bins kept: (power, state) pairs.
fn kept(power: &[f64], states: &[EngineState], keep: &[bool]) -> (Vec<f64>, Vec<EngineState>) {
    (0..power.len())
        .filter(|&i| keep[i])
        .map(|i| (power[i], states[i]))
        .unzip()
}

/// With a meter window of `w` bins: each training bin's reading state and whether it teaches
/// a cell — not where the simulated (`raw`) and the measured (`measured_raw`) engines disagree
/// on idle vs busy, nor the partly busy readings `assign_readings` leaves out.
fn reading_states(
    raw: &[Vec<[f64; N_FEATURES]>],
    measured_raw: &[Vec<[f64; N_FEATURES]>],
    power: &[f64],
    w: usize,
) -> (Vec<EngineState>, Vec<bool>) {
    let smoothed = |raw: &[Vec<[f64; N_FEATURES]>]| -> Vec<[f64; N_FEATURES]> {
        raw.iter().flat_map(|f| smooth_features(f, w)).collect()
    };
    let feats = smoothed(raw);
    let keep: Vec<bool> = feats
        .iter()
        .zip(smoothed(measured_raw))
        .map(|(a, b)| EngineState::of(a).is_idle() == EngineState::of(&b).is_idle())
        .collect();
    let (states, dropped) = assign_readings(&feats, power, &keep);
    let keep = keep.iter().zip(dropped).map(|(&k, d)| k && !d).collect();
    (states, keep)
}

/// φ of the normal scores within runs (`power`, `states`, `keep` over the runs' bins
/// concatenated): overall, and per cell over consecutive kept bins that are both in the cell
/// (≥ [`MIN_PHI_PAIRS`] pairs for a cell's own).
fn fit_phi(
    model: &mut PowerModel,
    runs: &[AlignedRun],
    states: &[EngineState],
    keep: &[bool],
    power: &[f64],
) {
    let normal = Normal::standard();
    let (mut num, mut den) = (0.0, 0.0);
    let mut per_cell = vec![(0.0f64, 0.0f64, 0usize); model.cells.len()];
    let mut offset = 0;
    for r in runs {
        let n = r.power_w.len();
        let cell_of: Vec<usize> = (0..n)
            .map(|i| model.lookup[states[offset + i].index()])
            .collect();
        let z: Vec<f64> = (0..n)
            .map(|i| {
                let cell = &model.cells[cell_of[i]];
                let u = empirical_cdf(&cell.quantiles_w, power[offset + i]);
                normal.inverse_cdf(u.clamp(0.01, 0.99))
            })
            .collect();
        for k in 1..n {
            if !(keep[offset + k] && keep[offset + k - 1]) {
                continue;
            }
            num += z[k] * z[k - 1];
            den += z[k - 1] * z[k - 1];
            if cell_of[k] == cell_of[k - 1] {
                let c = &mut per_cell[cell_of[k]];
                c.0 += z[k] * z[k - 1];
                c.1 += z[k - 1] * z[k - 1];
                c.2 += 1;
            }
        }
        offset += n;
    }
    model.phi = if den > 0.0 {
        (num / den).clamp(0.0, 0.99)
    } else {
        0.0
    };
    for (cell, (cn, cd, pairs)) in model.cells.iter_mut().zip(per_cell) {
        if pairs >= MIN_PHI_PAIRS && cd > 0.0 {
            cell.phi = Some((cn / cd).clamp(0.0, 0.99));
        }
    }
}

/// The state of each training bin's reading. A meter reading is idle or active, and an active
/// one a decode or a prefill reading; a bin's features give only the chances (its busy share
/// f, its active time's prefill share p), which its value alone cannot resolve. But the
/// readings are ordered: active ones above idle ones, prefill ones (compute-bound iterations
/// near the board limit) above decode ones. So of the partly busy bins (5 % ≤ f < 90 %) the
/// round(Σ f) highest readings are taken as active and the rest left out (they mix idle
/// readings with the meter's transitions, and would blur the narrow idle levels); then of the
/// active readings with p ≥ 2 % the round(Σ p) highest are taken as prefill readings and the
/// rest as decode readings, each in the state of its bin's active time. Synthesis draws the
/// same numbers ([`crate::synth::active_bins`], [`crate::synth::prefill_readings`]), so the
/// mix is learned where it is measured, whatever the engine's sub-bin timing errors.
fn assign_readings(
    feats: &[[f64; N_FEATURES]],
    power: &[f64],
    keep: &[bool],
) -> (Vec<EngineState>, Vec<bool>) {
    let mut states: Vec<EngineState> = feats.iter().map(EngineState::of).collect();
    let share = |i: usize| (feats[i][3] / feats[i][1].max(1e-9)).clamp(0.0, 1.0);
    let by_power_desc = |v: &mut Vec<usize>| {
        v.sort_by(|&a, &b| power[b].total_cmp(&power[a]).then(a.cmp(&b)));
    };
    let mut partly: Vec<usize> = (0..feats.len())
        .filter(|&i| keep[i] && !states[i].is_idle() && feats[i][1] < ACTIVE_BUSY)
        .collect();
    let n_active = partly.iter().map(|&i| feats[i][1]).sum::<f64>().round() as usize;
    by_power_desc(&mut partly);
    let mut active: Vec<bool> = states.iter().map(|s| !s.is_idle()).collect();
    let mut dropped = vec![false; feats.len()];
    for (rank, &i) in partly.iter().enumerate() {
        if rank >= n_active {
            active[i] = false;
            dropped[i] = true;
        }
    }
    let mut mixed: Vec<usize> = (0..feats.len())
        .filter(|&i| keep[i] && active[i] && share(i) >= PREFILL_LO)
        .collect();
    let n_prefill = mixed.iter().map(|&i| share(i)).sum::<f64>().round() as usize;
    by_power_desc(&mut mixed);
    for (rank, &i) in mixed.iter().enumerate() {
        states[i] = EngineState::reading(&feats[i], rank < n_prefill);
    }
    (states, dropped)
}

/// The thermal model of the training runs: their power and measured temperature, their
/// training readings grouped by state, the cold idle level (5th percentile of the idle
/// readings).
fn fit_thermal(
    runs: &[AlignedRun],
    power: &[f64],
    states: &[EngineState],
    keep: &[bool],
    dt_s: f64,
) -> Thermal {
    let mut idle_w: Vec<f64> = (0..power.len())
        .filter(|&i| keep[i] && states[i].is_idle())
        .map(|i| power[i])
        .collect();
    if idle_w.len() < 10 {
        return Thermal::default();
    }
    idle_w.sort_by(f64::total_cmp);
    let cold_w = idle_w[idle_w.len() / 20];
    let groups: Vec<Option<usize>> = (0..power.len())
        .map(|i| keep[i].then_some(states[i].index()))
        .collect();
    let series: Vec<(&[f64], &[f64])> = runs
        .iter()
        .map(|r| (r.power_w.as_slice(), r.temperature_c.as_slice()))
        .collect();
    let all = all_states();
    Thermal::fit(&series, &groups, |g| all[g].is_idle(), cold_w, dt_s)
}

/// Leaves out idle training readings far above the idle level: the simulation called those
/// bins idle, but a reading above median + max(6 robust SD, 15 W) of the idle readings is
/// the engine at work (a sub-bin timing error of the simulation, a request it ended early),
/// and would put active power into idle cells.
fn drop_idle_outliers(power: &[f64], states: &[EngineState], mut keep: Vec<bool>) -> Vec<bool> {
    let idle: Vec<usize> = (0..power.len())
        .filter(|&i| keep[i] && states[i].is_idle())
        .collect();
    if idle.len() < 10 {
        return keep;
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let m = median(idle.iter().map(|&i| power[i]).collect());
    let mad = median(idle.iter().map(|&i| (power[i] - m).abs()).collect());
    let limit = m + (6.0 * 1.4826 * mad).max(15.0);
    for i in idle {
        if power[i] > limit {
            keep[i] = false;
        }
    }
    keep
}

/// The probability of `v` under a distribution given by equally spaced quantiles (the mid
/// rank within ties).
fn empirical_cdf(q: &[f64], v: f64) -> f64 {
    let below = q.partition_point(|&x| x < v);
    let not_above = q.partition_point(|&x| x <= v);
    let m = (q.len() - 1) as f64;
    if not_above == 0 {
        return 0.0;
    }
    if below >= q.len() {
        return 1.0;
    }
    if below < not_above {
        return 0.5 * (below as f64 + not_above as f64 - 1.0) / m;
    }
    // Linear between q[below−1] and q[below].
    let (lo, hi) = (q[below - 1], q[below]);
    ((below - 1) as f64 + (v - lo) / (hi - lo)) / m
}

/// Every training run must be of the first one's model × GPU × TP.
fn check_one_configuration(runs: &[&MeasuredRun], aligned: &[AlignedRun]) -> Result<()> {
    let first = &aligned[0].serving;
    for (r, a) in runs.iter().zip(aligned) {
        let s = &a.serving;
        if (s.model.as_str(), s.hardware.as_str(), s.tp)
            != (first.model.as_str(), first.hardware.as_str(), first.tp)
        {
            return Err(Error::content(
                r.dir.join("manifest.json"),
                format!(
                    "configuration {} differs from the first training run's {}",
                    s.configuration(),
                    first.configuration()
                ),
            ));
        }
    }
    Ok(())
}

/// How the engine simulation of each training run follows its counters: the running gauge
/// as counted, and decode tokens.
fn engine_checks(aligned: &[AlignedRun], simulations: &[Simulation]) -> Vec<EngineCheck> {
    aligned
        .iter()
        .zip(simulations)
        .map(|(a, sim)| {
            let running = running_as_counted(a, &sim.outcomes);
            EngineCheck {
                run_id: a.run_id.clone(),
                running_corr: correlation(&running, &a.engine.running),
                running_mae: mean_abs_error(&running, &a.engine.running),
                decode_tokens_corr: correlation(&sim.trace.decode_tokens, &a.engine.decode_tokens),
            }
        })
        .collect()
}

/// Learns a synthesis model from runs of one configuration.
pub fn learn(runs: &[MeasuredRun], opts: &LearnOptions) -> Result<LearnedModel> {
    if runs.is_empty() {
        return Err(Error::config("train", "no training runs"));
    }
    // In run-id order: the model does not depend on the order the runs were given in (the
    // timing calibration's simplex takes other paths when its cost terms add up in another
    // order).
    let mut runs: Vec<&MeasuredRun> = runs.iter().collect();
    runs.sort_by(|a, b| a.manifest.run_id.cmp(&b.manifest.run_id));
    let aligned: Vec<AlignedRun> = runs
        .iter()
        .map(|r| align(r, opts.dt_s))
        .collect::<Result<_>>()?;
    check_one_configuration(&runs, &aligned)?;
    let first = &aligned[0].serving;
    let timing = calibrate_timing(&aligned, opts.timing_iters, &TimingPrior::of(runs[0]));
    // The KV capacity from the usage counters (a first simulation, nothing evicted), then one
    // simulation per training run serves both the features and the engine check.
    let unbounded: Vec<EngineTrace> = aligned
        .iter()
        .map(|a| Ok(simulate_run(a, &timing, &KvCacheConfig::default())?.trace))
        .collect::<Result<_>>()?;
    let kv_cache = KvCacheConfig {
        capacity_tokens: kv_capacity_tokens(&aligned, &unbounded),
        ..KvCacheConfig::default()
    };
    let simulations: Vec<Simulation> = aligned
        .iter()
        .map(|a| simulate_run(a, &timing, &kv_cache))
        .collect::<Result<_>>()?;
    let engine_checks = engine_checks(&aligned, &simulations);
    let simulated: Vec<EngineTrace> = simulations.into_iter().map(|s| s.trace).collect();
    let power = match opts.features_from {
        FeatureSource::Simulated => fit_power(&aligned, &simulated, &timing, opts)?,
        FeatureSource::Measured => {
            let measured: Vec<EngineTrace> = aligned.iter().map(|a| a.engine.clone()).collect();
            fit_power(&aligned, &measured, &timing, opts)?
        }
    };
    let baselines = baseline_levels(&aligned);
    tracing::debug!(
        configuration = %first.configuration(),
        runs = aligned.len(),
        kv_capacity_tokens = ?kv_cache.capacity_tokens,
        power_cells = power.cells.len(),
        "learned model"
    );
    Ok(LearnedModel {
        schema: LEARNED_MODEL_SCHEMA.into(),
        configuration: first.configuration(),
        model: first.model.clone(),
        hardware: first.hardware.clone(),
        tp: first.tp,
        dt_s: opts.dt_s,
        timing,
        kv_cache,
        power,
        baselines,
        training_runs: aligned.iter().map(|a| a.run_id.clone()).collect(),
        engine_checks,
        transfer: None,
        training_traffic: crate::workload::TrafficEnvelope::of(
            &aligned.iter().map(|a| &a.workload).collect::<Vec<_>>(),
        ),
    })
}

/// What a bin counts as for the two-level baseline (SPEC §8) and the measured-noise strata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TwoLevelClass {
    /// Nothing running and no prompt token.
    Idle = 0,
    /// Prompt tokens computed in the bin.
    Prefill = 1,
    /// Requests running, no prompt token.
    Decode = 2,
}

/// The class of a bin from its running requests and prompt tokens.
pub fn two_level_class(running: f64, prefill_tokens: f64) -> TwoLevelClass {
    if running < 0.05 && prefill_tokens <= 0.0 {
        TwoLevelClass::Idle
    } else if prefill_tokens > 0.0 {
        TwoLevelClass::Prefill
    } else {
        TwoLevelClass::Decode
    }
}

/// [`two_level_class`] of every bin of an engine trace.
pub fn two_level_classes(trace: &EngineTrace) -> impl Iterator<Item = TwoLevelClass> + '_ {
    trace
        .running
        .iter()
        .zip(&trace.prefill_tokens)
        .map(|(&running, &prefill)| two_level_class(running, prefill))
}

fn baseline_levels(runs: &[AlignedRun]) -> BaselineLevels {
    let mut sums = [(0.0, 0usize); 3];
    let mut all = Vec::new();
    for r in runs {
        for (&p, c) in r.power_w.iter().zip(two_level_classes(&r.engine)) {
            sums[c as usize].0 += p;
            sums[c as usize].1 += 1;
            all.push(p);
        }
    }
    let mean_w = mean(&all);
    let level = |c: usize| {
        if sums[c].1 > 0 {
            sums[c].0 / sums[c].1 as f64
        } else {
            mean_w
        }
    };
    BaselineLevels {
        tdp_w: board_limit_w(&runs[0].serving.hardware) * runs[0].serving.tp as f64,
        mean_w,
        idle_w: level(TwoLevelClass::Idle as usize),
        prefill_w: level(TwoLevelClass::Prefill as usize),
        decode_w: level(TwoLevelClass::Decode as usize),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_bytes_and_attention_share_from_the_arch_block() {
        use crate::sources::measured::ModelArch;
        let arch: ModelArch = serde_json::from_str(
            r#"{"n_layers": 36, "n_kv": 8, "head_dim": 128, "d_model": 4096,
                "transformer_active_params": 6.95e9}"#,
        )
        .unwrap();
        assert_eq!(arch.kv_bytes_per_token(2.0), Some(147_456.0));
        assert_eq!(arch.kv_bytes_per_token(1.0), Some(73_728.0));
        // 1,000 context tokens × 4 · 36 · 4096 FLOPs against 2 · 6.95e9 per token.
        let r = arch.attention_flops_ratio_per_ktoken().unwrap();
        assert!((r - 1e3 * 4.0 * 36.0 * 4096.0 / 13.9e9).abs() < 1e-12);
        let swa = ModelArch {
            swa_window: 4096.0,
            ..arch.clone()
        };
        assert_eq!(swa.kv_bytes_per_token(2.0), None);
        assert_eq!(swa.attention_flops_ratio_per_ktoken(), None);
        let bare: ModelArch = serde_json::from_str("{}").unwrap();
        assert_eq!(bare.kv_bytes_per_token(2.0), None);
    }

    #[test]
    fn smoothing_is_a_trailing_mean() {
        let raw: Vec<[f64; N_FEATURES]> = (0..6).map(|i| [i as f64; N_FEATURES]).collect();
        let s = smooth_features(&raw, 3);
        assert_eq!(s[0][0], 0.0);
        assert_eq!(s[1][0], 0.5);
        assert_eq!(s[2][0], 1.0);
        assert_eq!(s[5][0], 4.0);
    }

    #[test]
    fn cell_quantiles_round_trip() {
        let cell = PowerCell {
            label: "x".into(),
            bins: 5,
            mean_w: 2.0,
            quantiles_w: vec![0.0, 1.0, 2.0, 4.0, 8.0],
            phi: None,
        };
        assert_eq!(cell.power_at(0.0), 0.0);
        assert_eq!(cell.power_at(1.0), 8.0);
        // A step function: u = 0.6 → x = 2.4 → the nearest stored quantile, 2.
        assert_eq!(cell.power_at(0.6), 2.0);
        assert_eq!(cell.power_at(0.7), 4.0);
        // Stored values map back to their rank; values between them interpolate.
        for (k, &v) in cell.quantiles_w.iter().enumerate() {
            assert!((empirical_cdf(&cell.quantiles_w, v) - k as f64 / 4.0).abs() < 1e-12);
        }
        assert!((empirical_cdf(&cell.quantiles_w, 3.0) - 0.625).abs() < 1e-12);
    }

    #[test]
    fn state_buckets() {
        let f = |busy: f64, running: f64, pre: f64, dec: f64, ctx: f64| {
            EngineState::of(&[1.0, busy, running, pre, dec, ctx, busy])
        };
        assert!(f(0.0, 0.0, 0.0, 0.0, 0.0).is_idle());
        assert_eq!(f(0.0, 0.0, 0.0, 0.0, 0.0), EngineState::IDLE);
        // Idle now, busy within the last second: warm idle.
        assert_eq!(
            EngineState::of(&[1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.2]),
            EngineState::WARM_IDLE
        );
        // Busy a fifth of the window with 1 request: its active time runs 5 per unit of busy
        // time, a prefill share of 0.1 / 0.2 = 0.5 (mixed), 0.6 / 0.2 = 3k tokens of context.
        let s = f(0.2, 1.0, 0.1, 0.1, 0.6);
        assert_eq!(
            (s.running_bucket, s.context_bucket, s.prefill_level),
            (3, 1, PrefillLevel::Mixed)
        );
        // Its readings: a prefill one, or a decode one.
        let x = [1.0, 0.2, 1.0, 0.1, 0.1, 0.6, 0.2];
        assert_eq!(
            EngineState::reading(&x, true).prefill_level,
            PrefillLevel::Prefill
        );
        assert_eq!(
            EngineState::reading(&x, false).prefill_level,
            PrefillLevel::Decode
        );
        // A prefill reading's context bucket is 0 whatever the context (3k or 30k tokens).
        for ctx in [3.0, 30.0] {
            let s = f(1.0, 5.0, 0.9, 0.5, ctx);
            assert_eq!(
                (s.running_bucket, s.context_bucket, s.prefill_level),
                (3, 0, PrefillLevel::Prefill)
            );
        }
        let s = EngineState::reading(&x, true);
        assert_eq!(
            (s.context_bucket, s.prefill_level),
            (0, PrefillLevel::Prefill)
        );
        let s = EngineState::reading(&x, false);
        assert_eq!(
            (s.context_bucket, s.prefill_level),
            (1, PrefillLevel::Decode)
        );
        let s = f(1.0, 40.0, 0.0, 0.5, 100.0);
        assert_eq!(
            (s.running_bucket, s.context_bucket, s.prefill_level),
            (6, 4, PrefillLevel::Decode)
        );
        assert!(s.index() < N_CELLS);
    }

    fn idle() -> EngineState {
        EngineState::of(&[1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    }

    fn busy(running_bucket: u8, context_bucket: u8, prefill_level: u8) -> EngineState {
        let prefill_level = PrefillLevel::ALL[prefill_level as usize];
        EngineState {
            running_bucket,
            context_bucket,
            prefill_level,
        }
    }

    #[test]
    fn sparse_states_pool_their_nearest_states() {
        // 40 bins at (3, 1, none) = 300 W, 10 at (3, 1, heavy) = 500 W, 30 at (3, 4, heavy)
        // = 450 W, 5 idle at 80 W.
        let mut states = Vec::new();
        let mut power = Vec::new();
        for (s, w, n) in [
            (busy(3, 1, 0), 300.0, 40),
            (busy(3, 1, 2), 500.0, 10),
            (busy(3, 4, 2), 450.0, 30),
            (idle(), 80.0, 5),
        ] {
            states.extend(std::iter::repeat_n(s, n));
            power.extend(std::iter::repeat_n(w, n));
        }
        let (cells, lookup) = pool_cells(&power, &states, 30, 11);
        let cell = |s: EngineState| &cells[lookup[s.index()]];
        // Enough bins: its own cell.
        assert_eq!(cell(busy(3, 1, 0)).bins, 40);
        assert_eq!(cell(busy(3, 1, 0)).mean_w, 300.0);
        // (3, 1, heavy) has 10: the nearest state with bins is (3, 4, heavy), 3 context buckets
        // = 6, before (3, 1, none), 2 prefill levels = 8; it brings the pool to 40 ≥ 30.
        let c = cell(busy(3, 1, 2));
        assert_eq!(
            (c.bins, c.mean_w),
            (40, (10.0 * 500.0 + 30.0 * 450.0) / 40.0)
        );
        // A never-seen heavy state next to (3, 4, heavy) takes that state alone (distance 1).
        assert_eq!(cell(busy(4, 4, 2)).mean_w, 450.0);
        // A never-seen light state: (3, 1, none) and (3, 1, heavy) tie at distance 4; both.
        let c = cell(busy(3, 1, 1));
        assert_eq!(
            (c.bins, c.mean_w),
            (50, (10.0 * 500.0 + 40.0 * 300.0) / 50.0)
        );
        // Idle never pools with busy states.
        assert_eq!((cell(idle()).bins, cell(idle()).mean_w), (5, 80.0));
        // Values drawn are measured values: a step function over nearest-rank quantiles.
        let c = cell(busy(3, 1, 1));
        assert!(c.quantiles_w.iter().all(|&q| q == 300.0 || q == 500.0));
        assert_eq!((c.power_at(0.1), c.power_at(0.99)), (300.0, 500.0));
    }

    #[test]
    fn bins_where_simulation_and_counters_disagree_on_idle_are_left_out() {
        // Two runs' worth of one run: the simulated engine says idle in bins 0..20 but the
        // measured counters say busy in 10..20 (power 300 W there): those bins must not reach
        // the idle cell.
        let n = 60;
        let grid = BinGrid::new(0.0, n as f64 * 0.25, 0.25).unwrap();
        let trace = |running: Vec<f64>| EngineTrace {
            grid,
            busy: running.iter().map(|r| r.min(1.0)).collect(),
            prefill_busy: vec![0.0; n],
            running,
            waiting: vec![0.0; n],
            prefill_tokens: vec![0.0; n],
            decode_tokens: vec![0.0; n],
            context_tokens: vec![0.0; n],
            cached_tokens: vec![0.0; n],
        };
        let sim = trace((0..n).map(|i| if i < 20 { 0.0 } else { 4.0 }).collect());
        let measured = trace((0..n).map(|i| if i < 10 { 0.0 } else { 4.0 }).collect());
        let power_w: Vec<f64> = (0..n).map(|i| if i < 10 { 80.0 } else { 300.0 }).collect();
        let run = AlignedRun {
            temperature_c: vec![f64::NAN; n],
            run_id: "r".into(),
            serving: ServingConfig {
                model: "m".into(),
                hardware: "A100".into(),
                tp: 1,
                max_num_seqs: 8,
                max_num_batched_tokens: 2048,
                enable_chunked_prefill: true,
                enable_prefix_caching: false,
            },
            power_w,
            engine: measured,
            workload: Workload::default(),
            kv_usage: vec![f64::NAN; n],
            counter_t_s: vec![],
            ttft_s: vec![],
            step_samples: vec![],
        };
        let timing = StepTiming {
            base_s: 0.01,
            per_decode_seq_s: 1e-4,
            per_prefill_token_s: 5e-5,
            per_context_ktoken_s: 1e-4,
            per_prefill_attention_s: 0.0,
            first_step_s: 0.0,
        };
        let opts = LearnOptions {
            min_cell_bins: 5,
            ..LearnOptions::default()
        };
        let pm = fit_power(&[run], &[sim], &timing, &opts).unwrap();
        let cell = pm.cell(&idle());
        assert_eq!(cell.label, "idle");
        assert_eq!(cell.mean_w, 80.0, "{cell:?}");
    }

    #[test]
    fn correlation_of_known_series() {
        assert!((correlation(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]) - 1.0).abs() < 1e-12);
        assert!((correlation(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        assert_eq!(correlation(&[1.0, 1.0], &[1.0, 2.0]), 0.0);
    }
}
