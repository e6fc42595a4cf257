//! GPU temperature and leakage (SPEC §6): the power a GPU draws in a given engine state rises
//! with its temperature (leakage), and its temperature follows the power it drew.
//!
//! Measured on the A100 runs here: idle ~83 W at 33 °C, ~88 W at 40 °C, ~92 W at 49 °C; in the
//! same decode state ~311 W at 50 °C and ~326 W at 55 °C. A sustained load (a 12k-token
//! replay at the board limit) runs hotter than an agent that pauses, and draws more in every
//! state; a bursty replay's idle gaps stay several watts above a cold GPU.
//!
//! The model: the temperature rise over a cold GPU before bin t is
//! ΔT_t = r_f·(F_t − P_0) + r_s·(S_t − P_0), with F and S exponential moving averages of the
//! power over the bins before t (time constants τ_f ≈ 1 s, the die; τ_s ≈ tens of s, the
//! heatsink) started at the cold idle power P_0; a reading in an active state is its cell's
//! value + k_active·ΔT_t, an idle one + k_idle·ΔT_slow,t (the heatsink's part: the die's fast
//! excursion lasts while the GPU works); cells hold the power of a cold GPU. Fitted on
//! training runs with a `temperature.gpu` column ([`Thermal::fit`]); without one the model is
//! flat (k = 0). The idle slope is fitted on the measured temperature itself (~0.6 W/°C):
//! fitted through the modelled rise it came out twice too steep.

use serde::{Deserialize, Serialize};

/// The thermal model of one replica (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Thermal {
    tau_fast_s: f64,
    tau_slow_s: f64,
    /// °C of rise per W of the fast and slow averages.
    pub(crate) rise_fast_c_per_w: f64,
    pub(crate) rise_slow_c_per_w: f64,
    /// Cold idle power the averages start from (W).
    pub(crate) cold_w: f64,
    /// Leakage of active readings: W per °C of rise.
    pub(crate) active_w_per_c: f64,
    /// Leakage of idle readings: W per °C of the slow (heatsink) rise.
    #[serde(default)]
    idle_w_per_c: f64,
}

impl Default for Thermal {
    fn default() -> Self {
        Self {
            tau_fast_s: 1.0,
            tau_slow_s: 20.0,
            rise_fast_c_per_w: 0.0,
            rise_slow_c_per_w: 0.0,
            cold_w: 0.0,
            active_w_per_c: 0.0,
            idle_w_per_c: 0.0,
        }
    }
}

/// The two moving averages of the power, stepped bin by bin.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ThermalState {
    fast_w: f64,
    slow_w: f64,
}

impl Thermal {
    /// A cold GPU.
    pub(crate) fn cold(&self) -> ThermalState {
        ThermalState {
            fast_w: self.cold_w,
            slow_w: self.cold_w,
        }
    }

    /// The rise over a cold GPU (°C) in state `s`.
    #[inline]
    fn rise_c(&self, s: &ThermalState) -> f64 {
        self.rise_fast_c_per_w * (s.fast_w - self.cold_w)
            + self.rise_slow_c_per_w * (s.slow_w - self.cold_w)
    }

    /// The state after a bin of `power_w` lasting `dt_s`.
    #[inline]
    pub(crate) fn step(&self, s: ThermalState, power_w: f64, dt_s: f64) -> ThermalState {
        let a = (-dt_s / self.tau_fast_s.max(1e-9)).exp();
        let b = (-dt_s / self.tau_slow_s.max(1e-9)).exp();
        ThermalState {
            fast_w: a * s.fast_w + (1.0 - a) * power_w,
            slow_w: b * s.slow_w + (1.0 - b) * power_w,
        }
    }

    /// The slow (heatsink) part of the rise (°C) in state `s`.
    #[inline]
    fn slow_rise_c(&self, s: &ThermalState) -> f64 {
        self.rise_slow_c_per_w * (s.slow_w - self.cold_w)
    }

    /// The state before each bin of a power series, from a GPU at its first bin's power.
    pub(crate) fn states(&self, power_w: &[f64], dt_s: f64) -> Vec<ThermalState> {
        let start = power_w.first().copied().unwrap_or(self.cold_w);
        let mut s = ThermalState {
            fast_w: start,
            slow_w: start,
        };
        power_w
            .iter()
            .map(|&p| {
                let before = s;
                s = self.step(s, p, dt_s);
                before
            })
            .collect()
    }

    /// The leakage offset of a reading (W) in thermal state `s`: active readings by the whole
    /// rise, idle ones by the slow (heatsink) rise.
    #[inline]
    pub(crate) fn offset_w(&self, idle: bool, s: &ThermalState) -> f64 {
        if idle {
            self.idle_w_per_c * self.slow_rise_c(s)
        } else {
            self.active_w_per_c * self.rise_c(s)
        }
    }

    /// Fits the model on training runs: `runs` are (power per bin, measured temperature per
    /// bin), `groups[i]` the reading state of bin i over the runs concatenated (`None`: not a
    /// training reading), `idle_group(g)` whether a state is idle, `cold_w` the cold idle
    /// power. The time constants come from a grid (τ_f ∈ {0.5, 1, 2.5} s, τ_s ∈ {10, 20, 40,
    /// 80, 160} s), the rises by least squares of the measured temperature on the two
    /// averages within runs; the active leakage slope by least squares of the active readings
    /// on the modelled rise within states, clamped to [0, 5] W/°C; the idle one on the
    /// measured temperature ([`idle_leakage`]).
    /// Runs without temperatures do not count; none with them: the flat default.
    pub(crate) fn fit(
        runs: &[(&[f64], &[f64])],
        groups: &[Option<usize>],
        idle_group: impl Fn(usize) -> bool,
        cold_w: f64,
        dt_s: f64,
    ) -> Self {
        let Some((tau_fast_s, tau_slow_s, rf, rs)) = fit_rises(runs, dt_s) else {
            return Self::default();
        };
        let mut model = Self {
            tau_fast_s,
            tau_slow_s,
            rise_fast_c_per_w: rf,
            rise_slow_c_per_w: rs,
            cold_w,
            active_w_per_c: 0.0,
            idle_w_per_c: 0.0,
        };
        let states: Vec<ThermalState> = runs
            .iter()
            .flat_map(|(p, _)| model.states(p, dt_s))
            .collect();
        let rises: Vec<f64> = states.iter().map(|s| model.rise_c(s)).collect();
        let power: Vec<f64> = runs.iter().flat_map(|(p, _)| p.iter().copied()).collect();
        // Within-state means of (rise, power).
        let n_groups = groups.iter().flatten().max().map_or(0, |g| g + 1);
        let mut sums = vec![(0.0, 0.0, 0usize); n_groups];
        for (i, g) in groups.iter().enumerate() {
            if let Some(g) = *g {
                sums[g].0 += rises[i];
                sums[g].1 += power[i];
                sums[g].2 += 1;
            }
        }
        let (mut num, mut den) = (0.0, 0.0);
        for (i, g) in groups.iter().enumerate() {
            if let Some(g) = g.filter(|&g| !idle_group(g)) {
                let (sx, sy, n) = sums[g];
                let dx = rises[i] - sx / n as f64;
                num += dx * (power[i] - sy / n as f64);
                den += dx * dx;
            }
        }
        model.active_w_per_c = if den > 0.0 {
            (num / den).clamp(0.0, 5.0)
        } else {
            0.0
        };
        model.idle_w_per_c = idle_leakage(runs, groups, &idle_group);
        model
    }
}

/// The idle leakage slope (W/°C): idle readings against the *measured* temperature, by least
/// squares within idle states and runs, clamped to [0, 2]. Measured directly (A100: ~0.6
/// W/°C), not against the modelled rise: the model's rise in short idle gaps is the uncertain
/// part, and a slope fitted through it came out twice too steep.
fn idle_leakage(
    runs: &[(&[f64], &[f64])],
    groups: &[Option<usize>],
    idle_group: &impl Fn(usize) -> bool,
) -> f64 {
    let (mut num, mut den) = (0.0, 0.0);
    let mut offset = 0;
    for (p, t) in runs {
        // Means per idle state within this run.
        let mut sums: std::collections::HashMap<usize, (f64, f64, usize)> = Default::default();
        let idle_bins: Vec<(usize, usize)> = (0..p.len())
            .filter_map(|i| {
                let g = groups[offset + i]?;
                (idle_group(g) && t[i].is_finite()).then_some((i, g))
            })
            .collect();
        for &(i, g) in &idle_bins {
            let e = sums.entry(g).or_insert((0.0, 0.0, 0));
            e.0 += t[i];
            e.1 += p[i];
            e.2 += 1;
        }
        for &(i, g) in &idle_bins {
            let (st, sp, n) = sums[&g];
            let dt = t[i] - st / n as f64;
            num += dt * (p[i] - sp / n as f64);
            den += dt * dt;
        }
        offset += p.len();
    }
    if den > 0.0 {
        (num / den).clamp(0.0, 2.0)
    } else {
        0.0
    }
}

/// (τ_f, τ_s, r_f, r_s) by least squares of the temperature on the two averages within runs,
/// best over the grid; `None` without a run with temperatures or with non-positive rises.
fn fit_rises(runs: &[(&[f64], &[f64])], dt_s: f64) -> Option<(f64, f64, f64, f64)> {
    let usable: Vec<&(&[f64], &[f64])> = runs
        .iter()
        .filter(|(p, t)| p.len() >= 20 && t.iter().all(|x| x.is_finite()))
        .collect();
    if usable.is_empty() {
        return None;
    }
    let mut best: Option<(f64, (f64, f64, f64, f64))> = None;
    for tau_f in [0.5, 1.0, 2.5] {
        for tau_s in [10.0, 20.0, 40.0, 80.0, 160.0] {
            let probe = Thermal {
                tau_fast_s: tau_f,
                tau_slow_s: tau_s,
                ..Thermal::default()
            };
            // Normal equations of t − t̄ on (F − F̄, S − S̄), pooled within runs.
            let (mut sff, mut sfs, mut sss, mut sft, mut sst, mut stt) =
                (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
            for (p, t) in &usable {
                let start = p[0];
                let mut s = ThermalState {
                    fast_w: start,
                    slow_w: start,
                };
                let mut fs = Vec::with_capacity(p.len());
                for &x in p.iter() {
                    fs.push((s.fast_w, s.slow_w));
                    s = probe.step(s, x, dt_s);
                }
                let n = p.len() as f64;
                let mf = fs.iter().map(|v| v.0).sum::<f64>() / n;
                let ms = fs.iter().map(|v| v.1).sum::<f64>() / n;
                let mt = t.iter().sum::<f64>() / n;
                for (&(f, sl), &tc) in fs.iter().zip(t.iter()) {
                    let (df, ds, dtc) = (f - mf, sl - ms, tc - mt);
                    sff += df * df;
                    sfs += df * ds;
                    sss += ds * ds;
                    sft += df * dtc;
                    sst += ds * dtc;
                    stt += dtc * dtc;
                }
            }
            let det = sff * sss - sfs * sfs;
            if det <= 0.0 {
                continue;
            }
            let rf = (sss * sft - sfs * sst) / det;
            let rs = (sff * sst - sfs * sft) / det;
            if !(rf >= 0.0 && rs >= 0.0 && rf + rs > 0.0) {
                continue;
            }
            let sse = stt - rf * sft - rs * sst;
            if best.is_none_or(|b| sse < b.0) {
                best = Some((sse, (tau_f, tau_s, rf, rs)));
            }
        }
    }
    best.map(|b| b.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_a_known_thermal_model_and_leakage() {
        // Power switching between 80 and 300 W; temperature generated by τ_f = 1 s,
        // τ_s = 40 s, r_f = 0.06, r_s = 0.03 °C/W; active readings leak 2 W/°C.
        let truth = Thermal {
            tau_fast_s: 1.0,
            tau_slow_s: 40.0,
            rise_fast_c_per_w: 0.06,
            rise_slow_c_per_w: 0.03,
            cold_w: 80.0,
            active_w_per_c: 2.0,
            idle_w_per_c: 0.0,
        };
        let dt = 0.25;
        let active: Vec<bool> = (0..4000).map(|i| (i / 200) % 3 != 0).collect();
        let base: Vec<f64> = active
            .iter()
            .map(|&a| if a { 300.0 } else { 80.0 })
            .collect();
        // Generated as synthesis does: each bin's leakage from the state before it.
        let mut state = truth.cold();
        let power: Vec<f64> = (0..base.len())
            .map(|i| {
                let p = base[i] + truth.offset_w(!active[i], &state);
                state = truth.step(state, p, dt);
                p
            })
            .collect();
        let temp: Vec<f64> = truth
            .states(&power, dt)
            .iter()
            .map(|s| 30.0 + truth.rise_c(s))
            .collect();
        let groups: Vec<Option<usize>> = active.iter().map(|&a| Some(usize::from(a))).collect();
        let fit = Thermal::fit(&[(&power, &temp)], &groups, |g| g == 0, 80.0, dt);
        assert_eq!((fit.tau_fast_s, fit.tau_slow_s), (1.0, 40.0), "{fit:?}");
        assert!((fit.rise_fast_c_per_w - 0.06).abs() < 1e-3, "{fit:?}");
        assert!((fit.rise_slow_c_per_w - 0.03).abs() < 1e-3, "{fit:?}");
        assert!((fit.active_w_per_c - 2.0).abs() < 1e-6, "{fit:?}");
        // The idle slope comes from the measured temperature: idle readings here do not leak.
        assert!(fit.idle_w_per_c.abs() < 1e-9, "{fit:?}");
        // No temperatures: flat.
        let nan = vec![f64::NAN; power.len()];
        assert_eq!(
            Thermal::fit(&[(&power, &nan)], &groups, |g| g == 0, 80.0, dt),
            Thermal::default()
        );
    }

    #[test]
    fn idle_leakage_is_the_slope_on_the_measured_temperature() {
        // Two runs, idle readings 80 + 0.6 · (T − 30) (run 2 starts 3 °C warmer, 2 W higher),
        // active bins in between ignored.
        let t1: Vec<f64> = (0..100).map(|i| 30.0 + (i % 10) as f64).collect();
        let t2: Vec<f64> = (0..100).map(|i| 33.0 + (i % 7) as f64).collect();
        let p = |t: &[f64], extra: f64| -> Vec<f64> {
            t.iter()
                .enumerate()
                .map(|(i, x)| {
                    if i % 5 == 0 {
                        300.0
                    } else {
                        80.0 + extra + 0.6 * (x - 30.0)
                    }
                })
                .collect()
        };
        let (p1, p2) = (p(&t1, 0.0), p(&t2, 2.0));
        let groups: Vec<Option<usize>> = (0..200).map(|i| Some(usize::from(i % 5 == 0))).collect();
        let k = idle_leakage(&[(&p1, &t1), (&p2, &t2)], &groups, &|g| g == 0);
        assert!((k - 0.6).abs() < 1e-9, "{k}");
    }
}
