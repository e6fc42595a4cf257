//! Power traces and simulation templates (SPEC §5). Pure functions: no I/O.
//!
//! An [`InferenceTrace`] is one model × batch size's replica power over time (the median over
//! runs, on a regular grid). A template is a trace turned into per-GPU power on a simulation's
//! own grid, repeated with the trace's period.

use crate::error::{Error, Result};

/// Replica power over time for one (model, batch size).
#[derive(Debug, Clone, PartialEq)]
pub struct InferenceTrace {
    /// Strictly increasing times (s).
    pub t_s: Vec<f64>,
    /// Total over `measured_gpus` GPUs (W).
    pub(crate) power_w: Vec<f64>,
    pub(crate) measured_gpus: u32,
}

impl InferenceTrace {
    /// Validates: equal lengths, ≥ 5 samples, strictly increasing finite times, finite power,
    /// measured_gpus ≥ 1.
    pub fn new(t_s: Vec<f64>, power_w: Vec<f64>, measured_gpus: u32) -> Result<Self> {
        if t_s.len() != power_w.len() {
            return Err(Error::data(format!(
                "trace has {} times and {} power values",
                t_s.len(),
                power_w.len()
            )));
        }
        if t_s.len() < 5 {
            return Err(Error::data(format!(
                "trace has {} samples; need ≥ 5",
                t_s.len()
            )));
        }
        if measured_gpus < 1 {
            return Err(Error::data("trace measured_gpus must be ≥ 1"));
        }
        if let Some(i) = t_s
            .windows(2)
            .position(|w| !(w[1] > w[0]) || !w[1].is_finite())
        {
            return Err(Error::data(format!(
                "trace time at index {} ({}) does not increase from {}",
                i + 1,
                t_s[i + 1],
                t_s[i]
            )));
        }
        if let Some(i) = power_w.iter().position(|p| !p.is_finite()) {
            return Err(Error::data(format!(
                "trace power at index {i} is {}",
                power_w[i]
            )));
        }
        Ok(InferenceTrace {
            t_s,
            power_w,
            measured_gpus,
        })
    }

    pub(crate) fn duration_s(&self) -> f64 {
        self.t_s[self.t_s.len() - 1] - self.t_s[0]
    }

    pub(crate) fn mean_power_w(&self) -> f64 {
        self.power_w.iter().sum::<f64>() / self.power_w.len() as f64
    }
}

/// Linear interpolation of (t, v) at `x`, clamped to the end values outside [t₀, tₙ].
pub(crate) fn interp(t: &[f64], v: &[f64], x: f64) -> f64 {
    let n = t.len();
    if x <= t[0] {
        return v[0];
    }
    if x >= t[n - 1] {
        return v[n - 1];
    }
    let j = t.partition_point(|&ti| ti <= x);
    let (t0, t1) = (t[j - 1], t[j]);
    let (v0, v1) = (v[j - 1], v[j]);
    if t1 == t0 {
        v0
    } else {
        v0 + (v1 - v0) * (x - t0) / (t1 - t0)
    }
}

/// Several runs of one (model, batch) → one trace: grid 0, dt, … while < median(last time) +
/// 1e-12; each run clamped-linearly interpolated; element-wise median across runs. Runs with
/// fewer than 2 samples are ignored.
pub fn median_trace(
    runs: &[(Vec<f64>, Vec<f64>)],
    dt_s: f64,
    measured_gpus: u32,
) -> Result<InferenceTrace> {
    if !(dt_s > 0.0 && dt_s.is_finite()) {
        return Err(Error::config("dt_s", format!("{dt_s} (must be > 0)")));
    }
    let runs: Vec<&(Vec<f64>, Vec<f64>)> = runs.iter().filter(|(t, _)| t.len() >= 2).collect();
    if runs.is_empty() {
        return Err(Error::data("no run with ≥ 2 power samples"));
    }
    let lasts: Vec<f64> = runs.iter().map(|(t, _)| t[t.len() - 1]).collect();
    let t_end = crate::fits::median(&lasts);
    let n = ((t_end + 1e-12) / dt_s).ceil().max(0.0) as usize;
    let grid: Vec<f64> = (0..n)
        .map(|i| i as f64 * dt_s)
        .filter(|&t| t < t_end + 1e-12)
        .collect();
    let mut column = Vec::with_capacity(runs.len());
    let power: Vec<f64> = grid
        .iter()
        .map(|&t| {
            column.clear();
            column.extend(runs.iter().map(|(rt, rv)| interp(rt, rv, t)));
            crate::fits::median(&column)
        })
        .collect();
    InferenceTrace::new(grid, power, measured_gpus)
}

/// How to turn traces into templates.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TemplateOptions {
    /// Simulated duration (s): templates have ceil(duration / dt) + 1 samples.
    pub duration_s: f64,
    /// Simulation timestep (s).
    pub dt_s: f64,
    /// Warm-up to drop from the start of each trace (s); ignored when fewer than 5 samples
    /// would remain.
    #[serde(default)]
    pub steady_skip_s: f64,
}

/// The most samples one template may hold (8 bytes each).
pub(crate) const MAX_TEMPLATE_SAMPLES: usize = 50_000_000;

impl TemplateOptions {
    pub(crate) fn validate(&self) -> Result<()> {
        if !(self.dt_s > 0.0 && self.dt_s.is_finite()) {
            return Err(Error::config(
                "templates.dt_s",
                format!("{} (must be > 0)", self.dt_s),
            ));
        }
        if !(self.duration_s > 0.0 && self.duration_s.is_finite()) {
            return Err(Error::config(
                "templates.duration_s",
                format!("{} (must be > 0)", self.duration_s),
            ));
        }
        if !(self.steady_skip_s >= 0.0) {
            return Err(Error::config(
                "templates.steady_skip_s",
                format!("{} (must be ≥ 0)", self.steady_skip_s),
            ));
        }
        let samples = self.duration_s / self.dt_s;
        if samples > MAX_TEMPLATE_SAMPLES as f64 {
            return Err(Error::config(
                "templates.duration_s / dt_s",
                format!(
                    "{} s at {} s is {samples:.3e} samples per template, over {MAX_TEMPLATE_SAMPLES} \
                     ({} MB each): shorten the template (a template repeats with its trace's \
                     period; `periodic = true` keeps one period) or widen dt_s",
                    self.duration_s,
                    self.dt_s,
                    MAX_TEMPLATE_SAMPLES * 8 / 1_000_000
                ),
            ));
        }
        Ok(())
    }
    /// Samples per template.
    pub(crate) fn len(&self) -> usize {
        (self.duration_s / self.dt_s).ceil() as usize + 1
    }
}

/// Per-GPU template of a trace: power / measured_gpus clipped at 0, warm-up dropped, rebased
/// to 0, repeated with period = span, sampled at i·dt for i = 0 … ceil(duration/dt).
pub fn build_template(trace: &InferenceTrace, opts: &TemplateOptions) -> Result<Vec<f64>> {
    opts.validate()?;
    let g = trace.measured_gpus.max(1) as f64;
    let n = trace.t_s.len();
    let mut start = 0;
    if opts.steady_skip_s > 0.0 {
        let cut = trace.t_s[0] + opts.steady_skip_s;
        let i0 = trace.t_s.partition_point(|&t| t < cut);
        // Same rule as the peer: only when more than 5 samples remain after the cut.
        if i0 + 5 < n {
            start = i0;
        }
    }
    let t0 = trace.t_s[start];
    let t: Vec<f64> = trace.t_s[start..].iter().map(|x| x - t0).collect();
    let q: Vec<f64> = trace.power_w[start..]
        .iter()
        .map(|p| (p / g).max(0.0))
        .collect();
    let period = t[t.len() - 1];
    if !(period > 0.0) {
        return Err(Error::data("trace has a non-positive duration"));
    }
    Ok((0..opts.len())
        .map(|i| interp(&t, &q, (i as f64 * opts.dt_s) % period).max(0.0))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_matches_peer_vector() {
        // Peer spec §2: t = 0..5 s, total power 200…1200 W on 2 GPUs, dt 0.5 s, 6 s.
        let trace = InferenceTrace::new(
            (0..6).map(|i| i as f64).collect(),
            (1..=6).map(|i| 200.0 * i as f64).collect(),
            2,
        )
        .unwrap();
        let want = [
            100.0, 150.0, 200.0, 250.0, 300.0, 350.0, 400.0, 450.0, 500.0, 550.0, 100.0, 150.0,
            200.0,
        ];
        for skip in [0.0, 1.0] {
            let got = build_template(
                &trace,
                &TemplateOptions {
                    duration_s: 6.0,
                    dt_s: 0.5,
                    steady_skip_s: skip,
                },
            )
            .unwrap();
            assert_eq!(got.len(), 13);
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-9, "{got:?}");
            }
        }
    }

    #[test]
    fn skip_applies_when_enough_samples_remain() {
        let trace = InferenceTrace::new(
            (0..10).map(|i| i as f64).collect(),
            (0..10).map(|i| i as f64).collect(),
            1,
        )
        .unwrap();
        let got = build_template(
            &trace,
            &TemplateOptions {
                duration_s: 1.0,
                dt_s: 1.0,
                steady_skip_s: 2.0,
            },
        )
        .unwrap();
        assert_eq!(got, vec![2.0, 3.0]);
    }

    #[test]
    fn median_across_runs_on_grid() {
        let runs = vec![
            (vec![0.0, 1.0, 2.0], vec![10.0, 10.0, 10.0]),
            (vec![0.0, 1.0, 2.0, 3.0], vec![20.0, 20.0, 20.0, 20.0]),
            (vec![0.0, 1.0, 2.0, 3.0, 4.0], vec![0.0, 2.0, 4.0, 6.0, 8.0]),
            (vec![0.0], vec![99.0]),
        ];
        let tr = median_trace(&runs, 0.5, 1).unwrap();
        // Median of last times = 3 → grid 0, 0.5, …, 3.0.
        assert_eq!(tr.t_s.len(), 7);
        assert_eq!(tr.power_w[0], 10.0);
        assert_eq!(tr.power_w[6], 10.0);
        assert_eq!(tr.power_w[5], 10.0);
    }

    #[test]
    fn trace_validation() {
        assert!(InferenceTrace::new(vec![0.0, 1.0], vec![1.0, 2.0], 1).is_err());
        let e = InferenceTrace::new(vec![0.0, 1.0, 1.0, 2.0, 3.0], vec![1.0; 5], 1).unwrap_err();
        assert!(e.to_string().contains("index 2"), "{e}");
        assert!(InferenceTrace::new(vec![0.0, 1.0, 2.0, 3.0, 4.0], vec![1.0; 5], 0).is_err());
        assert!(InferenceTrace::new(vec![0.0, 1.0, 2.0, 3.0, 4.0], vec![1.0; 4], 1).is_err());
    }
}
