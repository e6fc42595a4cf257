//! Training overlay (peer §3.5, §6): a synthetic training power trace, runs that replay it
//! periodically between two times, and schedules of runs.

use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal, Poisson};
use rand_pcg::Pcg64;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::traces::interp;

/// Parameters of the synthetic training trace (the peer's defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct TrainingTraceParams {
    pub(crate) duration_s: f64,
    pub(crate) dt_s: f64,
    pub(crate) seed: u64,
    p_hi_w: f64,
    p_lo_w: f64,
    sigma_hi_w: f64,
    sigma_lo_w: f64,
    seg_lo_range_s: (f64, f64),
    seg_hi_range_s: (f64, f64),
    dip_prob_per_s: f64,
    dip_depth_range_w: (f64, f64),
    dip_dur_range_s: (f64, f64),
    smooth_window_s: f64,
    ramp_s: f64,
    ramp_from_w: f64,
}

impl Default for TrainingTraceParams {
    fn default() -> Self {
        TrainingTraceParams {
            duration_s: 1000.0,
            dt_s: 0.1,
            seed: 2,
            p_hi_w: 225.0,
            p_lo_w: 175.0,
            sigma_hi_w: 50.0,
            sigma_lo_w: 50.0,
            seg_lo_range_s: (10.0, 15.0),
            seg_hi_range_s: (35.0, 40.0),
            dip_prob_per_s: 0.01,
            dip_depth_range_w: (120.0, 125.0),
            dip_dur_range_s: (0.06, 0.14),
            smooth_window_s: 0.30,
            ramp_s: 18.0,
            ramp_from_w: 50.0,
        }
    }
}

/// A training power trace (per GPU, W).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingTrace {
    pub t_s: Vec<f64>,
    pub power_w: Vec<f64>,
}

/// The most power one GPU may be given (W): above any board's limit (B200: 1,000 W).
pub(crate) const MAX_W_PER_GPU: f64 = 5_000.0;

impl TrainingTrace {
    /// The peer's generator (same steps and order of draws; our PCG64 stream, so equal in
    /// distribution, not bit for bit): alternating high/low segments starting high, Gaussian
    /// noise, a zero-padded moving average, Poisson dips, a warm-up ramp.
    pub(crate) fn generate(p: &TrainingTraceParams) -> Result<Self> {
        if !(p.dt_s > 0.0 && p.duration_s > p.dt_s) {
            return Err(Error::config(
                "training.trace",
                format!(
                    "duration_s {} / dt_s {}: need duration > dt > 0",
                    p.duration_s, p.dt_s
                ),
            ));
        }
        let mut rng = Pcg64::seed_from_u64(p.seed);
        let n = (p.duration_s / p.dt_s).ceil() as usize;
        let t: Vec<f64> = (0..n).map(|i| i as f64 * p.dt_s).collect();
        let env = segment_envelope(p, n, &mut rng);
        let mut power = env.clone();
        add_noise(p, &env, &mut power, &mut rng)?;
        let w = ((p.smooth_window_s / p.dt_s).round_ties_even() as usize).max(1);
        if w > 1 {
            moving_average(&mut power, w);
        }
        add_dips(p, &mut power, &mut rng)?;
        cap_by_ramp(p, &mut power);
        Ok(TrainingTrace {
            t_s: t,
            power_w: power,
        })
    }
}

/// The trace's envelope over `n` samples: alternating high and low power segments of
/// random lengths, starting high.
fn segment_envelope(p: &TrainingTraceParams, n: usize, rng: &mut Pcg64) -> Vec<f64> {
    let mut env = Vec::with_capacity(n);
    let mut high = true;
    while env.len() < n {
        let (lo, hi, level) = if high {
            (p.seg_hi_range_s.0, p.seg_hi_range_s.1, p.p_hi_w)
        } else {
            (p.seg_lo_range_s.0, p.seg_lo_range_s.1, p.p_lo_w)
        };
        let len = (rng.gen_range(lo..=hi) / p.dt_s).round_ties_even().max(1.0) as usize;
        env.extend(std::iter::repeat_n(level, len.min(n - env.len())));
        high = !high;
    }
    env
}

/// Adds Gaussian noise to `power`: σ_hi on the samples of high segments of `env` (drawn
/// first, in order), then σ_lo on those of low segments.
fn add_noise(
    p: &TrainingTraceParams,
    env: &[f64],
    power: &mut [f64],
    rng: &mut Pcg64,
) -> Result<()> {
    let mid = 0.5 * (p.p_hi_w + p.p_lo_w);
    let nh = Normal::new(0.0, p.sigma_hi_w.max(0.0))
        .map_err(|e| Error::config("training.sigma_hi_w", e.to_string()))?;
    let nl = Normal::new(0.0, p.sigma_lo_w.max(0.0))
        .map_err(|e| Error::config("training.sigma_lo_w", e.to_string()))?;
    for (i, e) in env.iter().enumerate() {
        if *e > mid {
            power[i] += nh.sample(rng);
        }
    }
    for (i, e) in env.iter().enumerate() {
        if *e <= mid {
            power[i] += nl.sample(rng);
        }
    }
    Ok(())
}

/// Smooths `power` in place with a moving average over `w` samples: numpy
/// `convolve(mode="same")` with a box of w ones / w, zero padding at the ends.
fn moving_average(power: &mut [f64], w: usize) {
    let n = power.len();
    let left = (w - 1) / 2;
    let src = power.to_vec();
    for (i, out) in power.iter_mut().enumerate() {
        let mut s = 0.0;
        for j in 0..w {
            let k = i as i64 + j as i64 - (w - 1 - left) as i64;
            if k >= 0 && (k as usize) < n {
                s += src[k as usize];
            }
        }
        *out = s / w as f64;
    }
}

/// Cuts Poisson-many dips (rate `dip_prob_per_s` over the trace) of random start, length
/// and depth into `power`, floored at 0 W.
fn add_dips(p: &TrainingTraceParams, power: &mut [f64], rng: &mut Pcg64) -> Result<()> {
    let n = power.len();
    let lambda = p.dip_prob_per_s * p.duration_s;
    let dips = if lambda > 0.0 {
        Poisson::new(lambda)
            .map_err(|e| Error::config("training.dip_prob_per_s", e.to_string()))?
            .sample(rng) as usize
    } else {
        0
    };
    for _ in 0..dips {
        let t0 = rng.gen_range(0.0..p.duration_s);
        let k0 = (t0 / p.dt_s).floor() as usize;
        let d = rng.gen_range(p.dip_dur_range_s.0..=p.dip_dur_range_s.1);
        let k1 = n.min(k0 + (d / p.dt_s).round_ties_even() as usize);
        if k1 <= k0 {
            continue;
        }
        let depth = rng.gen_range(p.dip_depth_range_w.0..=p.dip_depth_range_w.1);
        for v in &mut power[k0..k1] {
            *v = (*v - depth).max(0.0);
        }
    }
    Ok(())
}

/// Caps the first `ramp_s` of `power` by the warm-up ramp, linear from `ramp_from_w` to
/// `p_hi_w`.
fn cap_by_ramp(p: &TrainingTraceParams, power: &mut [f64]) {
    let n = power.len();
    let k = n.min((p.ramp_s / p.dt_s).round_ties_even() as usize);
    for (i, v) in power[..k].iter_mut().enumerate() {
        let ramp = if k > 1 {
            p.ramp_from_w + (p.p_hi_w - p.ramp_from_w) * i as f64 / (k - 1) as f64
        } else {
            p.ramp_from_w
        };
        *v = v.min(ramp);
    }
}

/// A training job of `n_gpus` GPUs replaying a trace, peak rescaled to `target_peak_w_per_gpu`.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingRun {
    pub(crate) n_gpus: u64,
    t_s: Vec<f64>,
    per_gpu_w: Vec<f64>,
    period_s: f64,
}

impl TrainingRun {
    pub fn new(n_gpus: u64, trace: &TrainingTrace, target_peak_w_per_gpu: f64) -> Result<Self> {
        if n_gpus == 0 {
            return Err(Error::config("training.n_gpus", "0 (need > 0)"));
        }
        if trace.t_s.len() < 2 || trace.t_s.len() != trace.power_w.len() {
            return Err(Error::config(
                "training.trace",
                "need ≥ 2 samples of equal length",
            ));
        }
        let t0 = trace.t_s[0];
        let t_s: Vec<f64> = trace.t_s.iter().map(|t| t - t0).collect();
        let period_s = t_s[t_s.len() - 1];
        if !(period_s > 0.0) {
            return Err(Error::config("training.trace", "zero period"));
        }
        let peak = trace
            .power_w
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        if !(peak > 0.0) {
            return Err(Error::config(
                "training.trace",
                format!("peak power {peak} W (need > 0)"),
            ));
        }
        if !(target_peak_w_per_gpu > 0.0 && target_peak_w_per_gpu <= MAX_W_PER_GPU) {
            return Err(Error::config(
                "training.target_peak_w_per_gpu",
                format!("{target_peak_w_per_gpu} W (need > 0 and ≤ {MAX_W_PER_GPU} W)"),
            ));
        }
        if n_gpus > 100_000_000 {
            return Err(Error::config(
                "training.n_gpus",
                format!("{n_gpus} (over 10^8 GPUs: check the value)"),
            ));
        }
        let scale = target_peak_w_per_gpu / peak;
        Ok(TrainingRun {
            n_gpus,
            per_gpu_w: trace.power_w.iter().map(|p| p.max(0.0) * scale).collect(),
            t_s,
            period_s,
        })
    }

    /// Power of the whole run at `t_s` for a window [t0, t1] (0 outside, inclusive ends).
    pub(crate) fn power_w(&self, t_s: f64, t0_s: f64, t1_s: f64) -> f64 {
        if t_s < t0_s || t_s > t1_s {
            return 0.0;
        }
        self.n_gpus as f64 * interp(&self.t_s, &self.per_gpu_w, (t_s - t0_s) % self.period_s)
    }
}

/// Training runs with their windows; overlapping entries add.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainingSchedule {
    entries: Vec<(TrainingRun, f64, f64)>,
}

impl TrainingSchedule {
    /// Adds `run` over [t0, t1] (t1 ≥ t0).
    pub fn with(mut self, run: TrainingRun, t0_s: f64, t1_s: f64) -> Result<Self> {
        if !(t1_s >= t0_s && t0_s.is_finite() && t1_s.is_finite()) {
            return Err(Error::config(
                "training",
                format!("window [{t0_s}, {t1_s}] s is reversed or not finite"),
            ));
        }
        self.entries.push((run, t0_s, t1_s));
        self.entries.sort_by(|a, b| a.1.total_cmp(&b.1));
        Ok(self)
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    /// Total training power at `t_s` (W).
    pub(crate) fn power_w(&self, t_s: f64) -> f64 {
        self.entries
            .iter()
            .map(|(r, a, b)| r.power_w(t_s, *a, *b))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_trace_has_the_peer_shape() {
        let tr = TrainingTrace::generate(&TrainingTraceParams::default()).unwrap();
        assert_eq!(tr.t_s.len(), 10_000);
        // Warm-up ramp caps the first 18 s at 50 → 225 W.
        assert!(tr.power_w[0] <= 50.0 + 1e-9);
        let mean_after: f64 =
            tr.power_w[200..].iter().sum::<f64>() / (tr.power_w.len() - 200) as f64;
        // Mostly high (35–40 s) segments at 225 W, low (10–15 s) at 175 W: mean ≈ 213 W.
        assert!((200.0..225.0).contains(&mean_after), "{mean_after}");
        let run = TrainingRun::new(10, &tr, 400.0).unwrap();
        let peak = (0..10_000)
            .map(|i| run.power_w(i as f64 * 0.1, 0.0, 1e9))
            .fold(0.0, f64::max);
        assert!((peak - 4000.0).abs() < 1e-6, "{peak}");
        assert_eq!(run.power_w(5.0, 10.0, 20.0), 0.0);
        assert!(TrainingRun::new(0, &tr, 400.0).is_err());
    }
}
