//! The ITL mixture fitted to known percentiles (SPEC §4.3), for sources such as the ML.ENERGY
//! leaderboard that publish p50/p90/p95/p99 but no samples.
//!
//! With four quantiles and a seven-parameter model the problem is under-determined, so the
//! shift is fixed at 0 and five parameters are fitted (steady log-median and log-σ, the stall
//! component's log-distance above steady and its log-σ, the stall weight's logit) by argmin's
//! Nelder–Mead on the squared error of log quantiles, plus a weak pull (weight 1e-4) towards a
//! plain prior so that flat directions do not wander. Several starts; the best is kept.

use super::itl_mixture::ItlMixture;

/// A fitted mixture and its error on the given percentiles.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PercentileFit {
    pub mixture: ItlMixture,
    /// Root-mean-square error of ln(quantile), fitted versus given (dimensionless; 0.01 ≈ 1 %).
    pub(crate) log_quantile_rmse: f64,
}

fn mixture_of(p: &[f64]) -> ItlMixture {
    let pi_stall = 1.0 / (1.0 + (-p[4]).exp());
    ItlMixture {
        loc: 0.0,
        pi_steady: 1.0 - pi_stall,
        sigma_steady: p[1].exp(),
        scale_steady: p[0].exp(),
        pi_stall,
        sigma_stall: p[3].exp(),
        scale_stall: (p[0] + p[2].exp()).exp(),
    }
}

fn log_quantile_sse(m: &ItlMixture, points: &[(f64, f64)]) -> f64 {
    points
        .iter()
        .map(|&(q, v)| (m.quantile(q).ln() - v.ln()).powi(2))
        .sum()
}

/// Fits the mixture to `(probability, value_s)` pairs, e.g. `[(0.5, p50_s), (0.9, p90_s), …]`.
/// Returns `None` when fewer than two valid (0 < q < 1, value > 0 and finite) points are given.
pub fn fit(points: &[(f64, f64)]) -> Option<PercentileFit> {
    let mut pts: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|&(q, v)| q > 0.0 && q < 1.0 && v.is_finite() && v > 0.0)
        .collect();
    if pts.len() < 2 {
        return None;
    }
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (q_lo, v_lo) = pts[0];
    let (_, v_hi) = pts[pts.len() - 1];
    let spread = (v_hi / v_lo).ln().max(0.01);
    let prior = [
        v_lo.ln() - 0.1 * normal_z(q_lo),
        0.1f64.ln(),
        spread.ln(),
        0.3f64.ln(),
        (0.05f64 / 0.95).ln(),
    ];
    let cost = |p: &[f64]| {
        if p[1] < -7.0 || p[1] > 2.0 || p[3] < -7.0 || p[3] > 2.0 || p[4].abs() > 12.0 {
            return f64::INFINITY;
        }
        let penalty: f64 = p.iter().zip(&prior).map(|(a, b)| (a - b).powi(2)).sum();
        log_quantile_sse(&mixture_of(p), &pts) + 1e-4 * penalty
    };
    let mut best: Option<(Vec<f64>, f64)> = None;
    for (pi_stall, sigma_steady) in [(0.05f64, 0.1f64), (0.01, 0.05), (0.2, 0.2), (0.5, 0.5)] {
        let mut start = prior;
        start[1] = f64::ln(sigma_steady);
        start[4] = (pi_stall / (1.0 - pi_stall)).ln();
        let (p, c) = super::nelder_mead(cost, &start, &[0.05, 0.3, 0.3, 0.3, 0.5], 4000);
        if best.as_ref().is_none_or(|(_, bc)| c < *bc) {
            best = Some((p, c));
        }
    }
    let (p, _) = best?;
    let mixture = mixture_of(&p);
    let log_quantile_rmse = (log_quantile_sse(&mixture, &pts) / pts.len() as f64).sqrt();
    Some(PercentileFit {
        mixture,
        log_quantile_rmse,
    })
}

/// Standard-normal quantile by bisection (only used for a starting point).
fn normal_z(q: f64) -> f64 {
    let (mut lo, mut hi) = (-10.0, 10.0);
    for _ in 0..80 {
        let mid = 0.5 * (lo + hi);
        if super::itl_mixture::normal_cdf(mid) < q {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_the_percentiles_of_a_known_mixture() {
        let truth = ItlMixture {
            loc: 0.0,
            pi_steady: 0.9,
            sigma_steady: 0.12,
            scale_steady: 0.02,
            pi_stall: 0.1,
            sigma_stall: 0.4,
            scale_stall: 0.08,
        };
        let pts: Vec<(f64, f64)> = [0.5, 0.9, 0.95, 0.99]
            .iter()
            .map(|&q| (q, truth.quantile(q)))
            .collect();
        let f = fit(&pts).unwrap();
        assert!(f.log_quantile_rmse < 0.01, "{f:?}");
        for &(q, v) in &pts {
            let got = f.mixture.quantile(q);
            assert!((got / v - 1.0).abs() < 0.02, "q={q}: {got} vs {v}");
        }
    }

    #[test]
    fn too_few_points() {
        assert!(fit(&[(0.5, 0.01)]).is_none());
        assert!(fit(&[(0.5, 0.01), (0.9, f64::NAN)]).is_none());
    }
}
