//! Aggregation GPU → server → rack → row → site (SPEC §6) and facility metrics.
//!
//! A site-level workload is routed round-robin over all replicas (each replica: `tp` GPUs; a
//! server holds `replicas_per_server`), except that every turn of a session goes to one
//! replica (session affinity, so its prefix cache can serve the next turn). Each replica is
//! simulated and synthesized with its own seed (site seed ⊕ replica index), in parallel over
//! racks; a server adds its non-GPU power; the site total is multiplied by the PUE. Only per-rack series are held, never per-GPU.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::engine::ServingConfig;
use crate::error::{Error, Result};
use crate::fits::quantile_sorted;
use crate::learn::LearnedModel;
use crate::synth::{downsample_mean, synthesize, OutputWindow};
use crate::workload::Workload;

/// The physical layout of a site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteLayout {
    pub servers: usize,
    pub replicas_per_server: usize,
    pub servers_per_rack: usize,
    pub racks_per_row: usize,
    /// CPU, memory, fans, NICs per server (W), constant.
    pub non_gpu_w_per_server: f64,
    /// Power usage effectiveness (≥ 1): facility power = IT power × PUE.
    pub pue: f64,
}

impl SiteLayout {
    pub(crate) fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("servers", self.servers),
            ("replicas_per_server", self.replicas_per_server),
            ("servers_per_rack", self.servers_per_rack),
            ("racks_per_row", self.racks_per_row),
        ] {
            if v == 0 {
                return Err(Error::config(name, "0 (need ≥ 1)"));
            }
        }
        if !(self.non_gpu_w_per_server >= 0.0) {
            return Err(Error::config(
                "non_gpu_w_per_server",
                format!("{} (need ≥ 0)", self.non_gpu_w_per_server),
            ));
        }
        if !(self.pue >= 1.0 && self.pue.is_finite()) {
            return Err(Error::config("pue", format!("{} (need ≥ 1)", self.pue)));
        }
        Ok(())
    }

    pub(crate) fn racks(&self) -> usize {
        self.servers.div_ceil(self.servers_per_rack)
    }
}

/// Site power on a regular grid.
#[derive(Debug, Clone, PartialEq)]
pub struct SitePower {
    pub(crate) t0_s: f64,
    pub(crate) dt_s: f64,
    /// IT power per rack (W).
    pub racks_w: Vec<Vec<f64>>,
    /// IT power per row (W).
    pub rows_w: Vec<Vec<f64>>,
    /// Facility power (IT × PUE) (W).
    pub site_w: Vec<f64>,
}

/// The replica serving request `index`: its session's (session mod R) when it has one, else
/// round-robin (index mod R).
fn replica_of(index: usize, request: &crate::workload::Request, replicas: usize) -> usize {
    match request.session {
        Some(s) => s as usize % replicas,
        None => index % replicas,
    }
}

/// Synthesizes a whole site. `workload` is the site's traffic; replica k gets requests k,
/// k + R, k + 2R, … (R replicas), and a session's turns all go to one replica.
pub fn synthesize_site(
    model: &LearnedModel,
    serving: &ServingConfig,
    layout: &SiteLayout,
    workload: &Workload,
    window: OutputWindow,
    seed: u64,
) -> Result<SitePower> {
    let OutputWindow {
        t0_s,
        duration_s,
        dt_s,
    } = window;
    layout.validate()?;
    let replicas = layout.servers * layout.replicas_per_server;
    let per_rack = layout.servers_per_rack * layout.replicas_per_server;
    let racks_w: Vec<Vec<f64>> = (0..layout.racks())
        .into_par_iter()
        .map(|rack| -> Result<Vec<f64>> {
            let first = rack * per_rack;
            let last = ((rack + 1) * per_rack).min(replicas);
            let mut sum: Option<Vec<f64>> = None;
            for r in first..last {
                let w = Workload {
                    requests: workload
                        .requests
                        .iter()
                        .enumerate()
                        .filter(|(i, q)| replica_of(*i, q, replicas) == r)
                        .map(|(_, q)| *q)
                        .collect(),
                    session_names: workload.session_names.clone(),
                };
                let replica_seed = seed ^ (r as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let (p, _) = synthesize(model, serving, &w, t0_s, duration_s, dt_s, replica_seed)?;
                match &mut sum {
                    None => sum = Some(p.power_w),
                    Some(s) => s.iter_mut().zip(&p.power_w).for_each(|(a, b)| *a += b),
                }
            }
            let servers = (last - first).div_ceil(layout.replicas_per_server) as f64;
            let mut s = sum.unwrap_or_default();
            s.iter_mut()
                .for_each(|v| *v += servers * layout.non_gpu_w_per_server);
            Ok(s)
        })
        .collect::<Result<_>>()?;
    let n = racks_w.first().map_or(0, Vec::len);
    let rows_w: Vec<Vec<f64>> = racks_w
        .chunks(layout.racks_per_row)
        .map(|row| (0..n).map(|i| row.iter().map(|r| r[i]).sum()).collect())
        .collect();
    let site_w = (0..n)
        .map(|i| layout.pue * rows_w.iter().map(|r| r[i]).sum::<f64>())
        .collect();
    Ok(SitePower {
        t0_s,
        dt_s,
        racks_w,
        rows_w,
        site_w,
    })
}

/// Facility metrics of a power series at one resolution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FacilityMetrics {
    pub(crate) dt_s: f64,
    pub peak_w: f64,
    pub average_w: f64,
    peak_to_average: f64,
    /// average / peak.
    load_factor: f64,
    /// Largest rise and fall between consecutive samples (W per sample step).
    max_ramp_up_w: f64,
    max_ramp_down_w: f64,
    /// Load-duration curve: the power exceeded this share of the time, at 1, 5, 10, 50, 90 %.
    load_duration_w: Vec<(f64, f64)>,
}

/// Facility metrics of `power_w` sampled every `dt_s`.
pub(crate) fn facility_metrics(power_w: &[f64], dt_s: f64) -> FacilityMetrics {
    let n = power_w.len().max(1) as f64;
    let peak = power_w.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let avg = power_w.iter().sum::<f64>() / n;
    let (mut up, mut down) = (0.0f64, 0.0f64);
    for w in power_w.windows(2) {
        up = up.max(w[1] - w[0]);
        down = down.max(w[0] - w[1]);
    }
    let mut sorted = power_w.to_vec();
    sorted.sort_by(f64::total_cmp);
    FacilityMetrics {
        dt_s,
        peak_w: peak,
        average_w: avg,
        peak_to_average: peak / avg,
        load_factor: avg / peak,
        max_ramp_up_w: up,
        max_ramp_down_w: down,
        load_duration_w: [0.01, 0.05, 0.10, 0.50, 0.90]
            .iter()
            .map(|&p| (p, quantile_sorted(&sorted, 1.0 - p)))
            .collect(),
    }
}

/// Facility metrics at the series' own step and mean-downsampled to 1 s, 1 min and 15 min
/// (resolutions finer than the series or not a whole multiple of its step are skipped).
pub fn facility_metrics_multi(power_w: &[f64], dt_s: f64) -> Vec<FacilityMetrics> {
    let mut out = vec![facility_metrics(power_w, dt_s)];
    for target in [1.0, 60.0, 900.0] {
        let k = (target / dt_s).round();
        if target > dt_s && (k * dt_s - target).abs() < 1e-9 && (k as usize) <= power_w.len() {
            out.push(facility_metrics(
                &downsample_mean(power_w, k as usize),
                target,
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facility_metrics_of_a_known_series() {
        let p = [100.0, 200.0, 300.0, 200.0];
        let m = facility_metrics(&p, 1.0);
        assert_eq!(m.peak_w, 300.0);
        assert_eq!(m.average_w, 200.0);
        assert_eq!(m.peak_to_average, 1.5);
        assert!((m.load_factor - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(m.max_ramp_up_w, 100.0);
        assert_eq!(m.max_ramp_down_w, 100.0);
        // Exceeded 50 % of the time: the median, 200 W.
        assert_eq!(m.load_duration_w[3], (0.5, 200.0));
        let multi = facility_metrics_multi(&[1.0; 240], 0.25);
        assert_eq!(multi.len(), 3); // 0.25 s, 1 s, 1 min
        assert_eq!(multi[2].dt_s, 60.0);
    }
}
