//! State-transition synthesis (SPEC §6): workload → engine simulation → per-bin engine state →
//! power from the learned per-state model with its temporal structure.
//!
//! For bin t with smoothed engine features x_t (the learned meter window) in discretised
//! state s_t: z_t = φ_s·z_{t−1} + √(1−φ_s²)·ε_t with φ_s the AR(1) coefficient of the state's
//! cell (ε standard normal from a seeded PCG64 stream), and power_t = Q_{s_t}(Φ(z_t)), the
//! learned power quantile function of the state's cell. Same model, workload and seed → the
//! same bytes.

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;

use crate::engine::{simulate, BinGrid, EngineTrace, ServingConfig};
use crate::error::{Error, Result};
use crate::learn::{raw_features, smooth_features, two_level_class, EngineState, LearnedModel};
use crate::workload::Workload;
use rand_distr::StandardNormal;
use statrs::distribution::{ContinuousCDF, Normal};

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
pub fn power_from_engine(model: &LearnedModel, trace: &EngineTrace, seed: u64) -> Vec<f64> {
    let pm = &model.power;
    let feats = smooth_features(&raw_features(trace, &model.timing), pm.meter_window_bins);
    let mut rng = Pcg64::seed_from_u64(seed);
    let normal = Normal::standard();
    let mut z: f64 = rng.sample(StandardNormal);
    feats
        .iter()
        .map(|f| {
            let cell = pm.cell(&EngineState::of(f));
            let phi = pm.phi_of(cell);
            let eps: f64 = rng.sample(StandardNormal);
            z = phi * z + (1.0 - phi * phi).max(0.0).sqrt() * eps;
            cell.power_at(normal.cdf(z))
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
    let sim = simulate(workload, serving, &model.timing, grid)?;
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
        two_level_w: (0..n)
            .map(
                |i| match two_level_class(trace.running[i], trace.prefill_tokens[i]) {
                    0 => b.idle_w,
                    1 => b.prefill_w,
                    _ => b.decode_w,
                },
            )
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
