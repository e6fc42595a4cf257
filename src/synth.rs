//! State-transition synthesis (SPEC §6): workload → engine simulation → per-bin engine state →
//! power from the learned per-state model with its temporal structure.
//!
//! For bin t with engine features x_t over the meter window, the meter's reading is drawn
//! idle or active with the engine's busy share, and an active reading decode or prefill with
//! the prefill share of its active time (systematic sampling: [`active_bins`],
//! [`prefill_readings`]); its state s_t is then idle (cold or warm) or the active time's
//! occupancy × context × reading. z_t = φ_s·z_{t−1} + √(1−φ_s²)·ε_t with φ_s the AR(1)
//! coefficient of the state's cell (ε standard normal from a seeded PCG64 stream), and
//! power_t = Q_{s_t}(u_t) + leakage, the learned power quantile function of the state's cell
//! at u_t, the Latin-hypercube probability of z_t's rank among the bins of the same cell
//! (≈ Φ(z_t) on long series), plus an active reading's leakage at the temperature the power
//! before it left ([`crate::thermal`]; see [`power_from_engine`]). Same model, workload and
//! seed → the same bytes.

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;

use crate::engine::{simulate, BinGrid, EngineTrace, ServingConfig};
use crate::error::{Error, Result};
use crate::learn::{
    raw_features, smooth_features, two_level_classes, EngineState, LearnedModel, TwoLevelClass,
    N_FEATURES,
};
use crate::level_map::ActiveBin;
use crate::workload::Workload;
use rand_distr::StandardNormal;

/// A synthesized power series on a regular grid.
#[derive(Debug, Clone, PartialEq)]
pub struct PowerSeries {
    pub t0_s: f64,
    pub dt_s: f64,
    /// Power per bin (W), total over the replica's GPUs.
    pub power_w: Vec<f64>,
}

impl PowerSeries {
    /// Time of bin i: t0 + i·dt.
    pub fn t_s(&self, i: usize) -> f64 {
        self.t0_s + i as f64 * self.dt_s
    }
}

/// The time span and step of an output series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutputWindow {
    /// First bin's start (s, the workload's clock).
    pub t0_s: f64,
    pub duration_s: f64,
    /// A whole multiple of the model's step.
    pub dt_s: f64,
}

/// Power for an engine trace on the model's grid.
///
/// The AR(1) normal scores z_t set the order in time; the values are drawn by Latin-hypercube
/// sampling within each cell: the bins that fall in cell c, ranked by z, take the probabilities
/// u = (rank + v) / n_c (v uniform), so one realization's values in a state follow the learned
/// distribution to within 1/n_c of every quantile instead of scattering around it. On short
/// series this matters: a 95 s run holds only about 20 prefill peaks, and independent draws
/// move its energy and tail percentiles by several percent from one seed to the next.
pub fn power_from_engine(model: &LearnedModel, trace: &EngineTrace, seed: u64) -> Vec<f64> {
    let pm = &model.power;
    let feats = smooth_features(&raw_features(trace, &model.timing), pm.meter_window_bins);
    let mut rng = Pcg64::seed_from_u64(seed);
    let active = active_bins(&feats, rng.gen());
    let prefill = prefill_readings(&feats, &active, rng.gen());
    let cell_of: Vec<usize> = feats
        .iter()
        .zip(active.iter().zip(&prefill))
        .map(|(f, (&on, &pf))| {
            let state = if on {
                EngineState::reading(f, pf)
            } else {
                EngineState::idle(f)
            };
            pm.lookup[state.index()]
        })
        .collect();
    let mut z: f64 = rng.sample(StandardNormal);
    let scores: Vec<f64> = cell_of
        .iter()
        .map(|&k| {
            let phi = pm.phi_of(&pm.cells[k]);
            let eps: f64 = rng.sample(StandardNormal);
            z = phi * z + (1.0 - phi * phi).max(0.0).sqrt() * eps;
            z
        })
        .collect();
    let mut bins_of: Vec<Vec<usize>> = vec![Vec::new(); pm.cells.len()];
    for (t, &k) in cell_of.iter().enumerate() {
        bins_of[k].push(t);
    }
    let mut power_w = vec![0.0; cell_of.len()];
    for (cell, mut bins) in pm.cells.iter().zip(bins_of) {
        // Stable sort: ties (equal scores) keep time order, so the output is deterministic.
        bins.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
        let n = bins.len() as f64;
        for (rank, &t) in bins.iter().enumerate() {
            let v: f64 = rng.gen();
            power_w[t] = cell.power_at((rank as f64 + v) / n);
        }
    }
    // Every reading rises with the GPU's temperature, which follows the power of the bins
    // before it (in time order, from a cold GPU).
    let thermal = &pm.thermal;
    let mut state = thermal.cold();
    for (t, p) in power_w.iter_mut().enumerate() {
        *p += thermal.offset_w(!active[t], &state);
        state = thermal.step(state, *p, model.dt_s);
    }
    if let Some(map) = &model.transfer {
        let bins: Vec<Option<ActiveBin>> = feats
            .iter()
            .zip(&active)
            .map(|(f, &on)| {
                on.then(|| ActiveBin {
                    batch: (f[2] / f[1].max(1e-9)).max(1.0),
                    reference_decode_w: pm.steady_decode_w(f),
                })
            })
            .collect();
        map.apply(&bins, &mut power_w);
    }
    power_w
}

/// Which bins the meter catches the engine busy: each bin's busy share f over the meter
/// window is its probability ([`systematic_draws`]), so the active bins number Σ f to within
/// one and a bin busy throughout is always active. Bins idle by [`EngineState::of`] (f < 5 %)
/// are never active.
pub fn active_bins(feats: &[[f64; N_FEATURES]], offset: f64) -> Vec<bool> {
    let p = feats.iter().map(|f| {
        if EngineState::of(f).is_idle() {
            0.0
        } else {
            f[1]
        }
    });
    systematic_draws(p, offset)
}

/// Which active bins the meter reads in a prefill iteration: the share of a bin's active time
/// spent on prompt tokens is its probability ([`systematic_draws`] over the active bins).
pub fn prefill_readings(feats: &[[f64; N_FEATURES]], active: &[bool], offset: f64) -> Vec<bool> {
    let p = feats
        .iter()
        .zip(active)
        .map(|(f, &on)| if on { f[3] / f[1].max(1e-9) } else { 0.0 });
    systematic_draws(p, offset)
}

/// Systematic sampling: draw t succeeds when ⌊C_t + v⌋ > ⌊C_{t−1} + v⌋, C_t the running sum
/// of the probabilities (each clamped to [0, 1]) and v ∈ [0, 1) one offset per series. A
/// probability of 0 never succeeds, 1 always; the successes number Σ p to within one.
fn systematic_draws(probabilities: impl Iterator<Item = f64>, offset: f64) -> Vec<bool> {
    let mut acc = offset.clamp(0.0, 1.0 - f64::EPSILON);
    probabilities
        .map(|p| {
            let before = acc.floor();
            acc += p.clamp(0.0, 1.0);
            acc.floor() > before
        })
        .collect()
}

/// Mean-downsampling by an integer factor (a trailing partial block averages what it has).
pub fn downsample_mean(v: &[f64], factor: usize) -> Vec<f64> {
    v.chunks(factor.max(1))
        .map(|c| c.iter().sum::<f64>() / c.len() as f64)
        .collect()
}

/// The integer factor k with dt_s = k·model_dt_s, or an error naming both.
pub fn downsample_factor(model_dt_s: f64, dt_s: f64) -> Result<usize> {
    let k = (dt_s / model_dt_s).round();
    if k < 1.0 || (k * model_dt_s - dt_s).abs() > 1e-9 * dt_s.max(1.0) {
        return Err(Error::config(
            "dt_s",
            format!(
                "{dt_s} s must be a whole multiple of the model's {model_dt_s} s (learned at that \
                 step; synthesis cannot be finer)"
            ),
        ));
    }
    Ok(k as usize)
}

/// Simulates the engine for `workload` and synthesizes the replica's power from t0_s over
/// duration_s at dt_s (a whole multiple of the model's step).
pub fn synthesize(
    model: &LearnedModel,
    serving: &ServingConfig,
    workload: &Workload,
    t0_s: f64,
    duration_s: f64,
    dt_s: f64,
    seed: u64,
) -> Result<(PowerSeries, EngineTrace)> {
    check_serving(model, serving)?;
    let k = downsample_factor(model.dt_s, dt_s)?;
    let out = BinGrid::new(t0_s, duration_s, dt_s)?;
    let grid = BinGrid {
        t0_s,
        dt_s: model.dt_s,
        bins: out.bins * k,
    };
    let sim = simulate(workload, serving, &model.timing, &model.kv_cache, grid)?;
    let fine = power_from_engine(model, &sim.trace, seed);
    Ok((
        PowerSeries {
            t0_s,
            dt_s,
            power_w: downsample_mean(&fine, k),
        },
        sim.trace,
    ))
}

/// What a user should know before trusting a synthesized trace: requests outside the window
/// [t0, t0 + duration), traffic beyond what the model was learned on.
pub fn synthesis_warnings(
    model: &LearnedModel,
    workload: &Workload,
    t0_s: f64,
    duration_s: f64,
) -> Vec<String> {
    let mut out = crate::workload::window_warnings(workload, t0_s, duration_s);
    if let Some(env) = &model.training_traffic {
        out.extend(env.warnings(workload));
    }
    out
}

/// A model learned for one configuration synthesizes only that configuration.
pub fn check_serving(model: &LearnedModel, serving: &ServingConfig) -> Result<()> {
    if serving.model != model.model || serving.hardware != model.hardware || serving.tp != model.tp
    {
        return Err(Error::config(
            "serving",
            format!(
                "{} does not match the training runs' configuration {}",
                serving.configuration(),
                model.configuration
            ),
        ));
    }
    Ok(())
}

/// The simple baselines of SPEC §8 on an engine trace of the model's grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Baselines {
    /// Board limit × TP in every bin.
    pub tdp_w: Vec<f64>,
    /// Mean training power in every bin.
    pub mean_w: Vec<f64>,
    /// Two-level prefill/decode model (idle level when nothing runs).
    pub two_level_w: Vec<f64>,
}

/// Baselines for an engine trace.
pub fn baselines(model: &LearnedModel, trace: &EngineTrace) -> Baselines {
    let b = &model.baselines;
    let n = trace.grid.bins;
    Baselines {
        tdp_w: vec![b.tdp_w; n],
        mean_w: vec![b.mean_w; n],
        two_level_w: two_level_classes(trace)
            .map(|c| match c {
                TwoLevelClass::Idle => b.idle_w,
                TwoLevelClass::Prefill => b.prefill_w,
                TwoLevelClass::Decode => b.decode_w,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::StepTiming;
    use crate::learn::{BaselineLevels, PowerCell, PowerModel, LEARNED_MODEL_SCHEMA, N_CELLS};

    /// A model whose every state draws from one cell holding 0, 1, …, 100 W.
    fn one_cell_model(phi: f64) -> LearnedModel {
        LearnedModel {
            schema: LEARNED_MODEL_SCHEMA.into(),
            configuration: "m × A100 × TP1".into(),
            model: "m".into(),
            hardware: "A100".into(),
            tp: 1,
            dt_s: 0.25,
            kv_cache: Default::default(),
            timing: StepTiming {
                base_s: 0.01,
                per_decode_seq_s: 1e-4,
                per_prefill_token_s: 1e-4,
                per_context_ktoken_s: 0.0,
                per_prefill_attention_s: 0.0,
                first_step_s: 0.0,
            },
            power: PowerModel {
                meter_window_bins: 1,
                cells: vec![PowerCell {
                    label: "all".into(),
                    bins: 101,
                    mean_w: 50.0,
                    quantiles_w: (0..=100).map(f64::from).collect(),
                    phi: Some(phi),
                }],
                lookup: vec![0; N_CELLS],
                phi,
                r2: 0.0,
                min_cell_bins: 30,
                thermal: Default::default(),
            },
            baselines: BaselineLevels {
                tdp_w: 400.0,
                mean_w: 50.0,
                idle_w: 50.0,
                prefill_w: 50.0,
                decode_w: 50.0,
            },
            training_runs: vec![],
            engine_checks: vec![],
            transfer: None,
            training_traffic: None,
        }
    }

    #[test]
    fn one_realization_follows_the_cell_distribution_and_the_copula_order() {
        let trace = EngineTrace::zeros(BinGrid {
            t0_s: 0.0,
            dt_s: 0.25,
            bins: 200,
        });
        for seed in 0..5 {
            let p = power_from_engine(&one_cell_model(0.9), &trace, seed);
            // Latin hypercube: the r-th smallest of 200 values is drawn at u in
            // [r/200, (r+1)/200), i.e. within one step of the 0…100 W grid of r/2 W.
            let mut sorted = p.clone();
            sorted.sort_by(f64::total_cmp);
            for (r, v) in sorted.iter().enumerate() {
                assert!(
                    (v - r as f64 / 2.0).abs() <= 1.0,
                    "seed {seed}: rank {r} → {v}"
                );
            }
            // φ = 0.9: neighbours stay close (an i.i.d. order has a lag-1 correlation near 0).
            let acf1 = crate::metrics::acf(&p, 1)[0];
            assert!(acf1 > 0.6, "seed {seed}: lag-1 ACF {acf1}");
        }
    }

    #[test]
    fn downsampling() {
        assert_eq!(
            downsample_mean(&[1.0, 3.0, 5.0, 7.0, 9.0], 2),
            vec![2.0, 6.0, 9.0]
        );
        assert_eq!(downsample_factor(0.25, 1.0).unwrap(), 4);
        assert!(downsample_factor(0.25, 0.3).is_err());
        assert!(downsample_factor(0.25, 0.1).is_err());
    }
}
