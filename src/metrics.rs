//! Validation metrics (SPEC §8): how close a synthesized power series y is to a measured one
//! g on the same grid. Pure functions of two slices, compared on their common length.

use serde::{Deserialize, Serialize};

use crate::stats::quantile;
/// Summary statistics under the names the metrics have always used; defined in
/// [`crate::stats`] (`median_of` is [`crate::stats::median_finite`]).
pub use crate::stats::{mean as mean_of, median_finite as median_of, sd as sd_of};

/// Every metric of SPEC §8 for one (measured, synthesized) pair.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Bins compared.
    pub(crate) n: usize,
    /// 100 · (Σy − Σg) / Σg.
    pub energy_error_signed_pct: f64,
    /// |energy_error_signed_pct|.
    pub energy_error_pct: f64,
    /// max |F_g(v) − F_y(v)| over pooled values.
    pub ks: f64,
    /// 1 − Σ(ρ_g − ρ_y)² / Σ(ρ_g − mean ρ_g)² over lags 1…min(50, n − 1).
    pub acf_r2: f64,
    /// RMSE / (max g − min g).
    pub(crate) nrmse: f64,
    /// 100 · |P95(y) − P95(g)| / P95(g).
    pub p95_error_pct: f64,
    /// 100 · |P99(y) − P99(g)| / P99(g).
    pub p99_error_pct: f64,
}

impl Metrics {
    /// The seven figures in a fixed order: |ΔE|, signed ΔE, KS, ACF R², NRMSE, P95, P99.
    pub(crate) fn fields(&self) -> [f64; 7] {
        [
            self.energy_error_pct,
            self.energy_error_signed_pct,
            self.ks,
            self.acf_r2,
            self.nrmse,
            self.p95_error_pct,
            self.p99_error_pct,
        ]
    }

    /// The inverse of [`Metrics::fields`].
    fn from_fields(n: usize, f: [f64; 7]) -> Self {
        Metrics {
            n,
            energy_error_pct: f[0],
            energy_error_signed_pct: f[1],
            ks: f[2],
            acf_r2: f[3],
            nrmse: f[4],
            p95_error_pct: f[5],
            p99_error_pct: f[6],
        }
    }

    /// Figure by figure, `reduce` over the values of `items` (mean, median, sd …).
    pub(crate) fn reduce(items: &[Metrics], reduce: impl Fn(&[f64]) -> f64) -> Self {
        let n = items.first().map_or(0, |m| m.n);
        let f = std::array::from_fn(|k| {
            let v: Vec<f64> = items.iter().map(|m| m.fields()[k]).collect();
            reduce(&v)
        });
        Metrics::from_fields(n, f)
    }
}

/// Lags used by the ACF R² (SPEC §8: 50, i.e. 12.5 s at 0.25 s).
pub(crate) const ACF_MAX_LAG: usize = 50;

/// Sample autocorrelation at lags 1…`max_lag` (biased estimator, as numpy/statsmodels).
pub(crate) fn acf(x: &[f64], max_lag: usize) -> Vec<f64> {
    let n = x.len();
    let m = x.iter().sum::<f64>() / n.max(1) as f64;
    let d: Vec<f64> = x.iter().map(|v| v - m).collect();
    let c0: f64 = d.iter().map(|v| v * v).sum();
    (1..=max_lag.min(n.saturating_sub(1)))
        .map(|k| {
            if c0 == 0.0 {
                0.0
            } else {
                d[..n - k]
                    .iter()
                    .zip(&d[k..])
                    .map(|(a, b)| a * b)
                    .sum::<f64>()
                    / c0
            }
        })
        .collect()
}

/// Two-sample Kolmogorov–Smirnov statistic.
fn ks_statistic(g: &[f64], y: &[f64]) -> f64 {
    let mut a = g.to_vec();
    let mut b = y.to_vec();
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j, mut d) = (0usize, 0usize, 0.0f64);
    while i < a.len() && j < b.len() {
        let v = a[i].min(b[j]);
        while i < a.len() && a[i] <= v {
            i += 1;
        }
        while j < b.len() && b[j] <= v {
            j += 1;
        }
        d = d.max((i as f64 / na - j as f64 / nb).abs());
    }
    d
}

/// Compares synthesized `y` with measured `g` on their common length (≥ 2 bins).
pub(crate) fn compare(g: &[f64], y: &[f64]) -> Metrics {
    let n = g.len().min(y.len());
    let (g, y) = (&g[..n], &y[..n]);
    let sg: f64 = g.iter().sum();
    let sy: f64 = y.iter().sum();
    let signed = 100.0 * (sy - sg) / sg;
    let lags = ACF_MAX_LAG.min(n.saturating_sub(1));
    let (rg, ry) = (acf(g, lags), acf(y, lags));
    let mean_rg = rg.iter().sum::<f64>() / rg.len().max(1) as f64;
    let ss_res: f64 = rg.iter().zip(&ry).map(|(a, b)| (a - b).powi(2)).sum();
    let ss_tot: f64 = rg.iter().map(|a| (a - mean_rg).powi(2)).sum();
    let acf_r2 = if ss_tot > 0.0 {
        1.0 - ss_res / ss_tot
    } else {
        f64::NAN
    };
    let rmse = (g.iter().zip(y).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / n as f64).sqrt();
    let range = g.iter().copied().fold(f64::NEG_INFINITY, f64::max)
        - g.iter().copied().fold(f64::INFINITY, f64::min);
    let perr = |q: f64| {
        let pg = quantile(g, q);
        100.0 * (quantile(y, q) - pg).abs() / pg
    };
    Metrics {
        n,
        energy_error_signed_pct: signed,
        energy_error_pct: signed.abs(),
        ks: ks_statistic(g, y),
        acf_r2,
        nrmse: if range > 0.0 { rmse / range } else { f64::NAN },
        p95_error_pct: perr(0.95),
        p99_error_pct: perr(0.99),
    }
}

/// Resamples drawn by [`resampling_noise`] in validation.
pub(crate) const NOISE_RESAMPLES: usize = 200;

/// The sampling noise of a measured series' own figures, given what the engine did in each
/// bin: the median, over `resamples` stratified bootstrap copies of `g` (each bin's value
/// drawn at random from the bins of its stratum, e.g. idle / prefill / decode-only from the
/// measured counters, so the workload's course stays fixed), of [`compare`]`(g, copy)`. It is
/// the error that a second measurement of the same requests would show against this one
/// through the power meter's sampling alone (which iterations a 4 Hz sample happens to hit),
/// on ΔE, KS, P95 and P99: the resolution below which a synthesized series cannot be told
/// better or worse on this run. ACF R² and NRMSE are NaN (a copy has no time order to score).
/// Seeded: the same inputs give the same figures.
pub(crate) fn resampling_noise(g: &[f64], strata: &[u8], resamples: usize, seed: u64) -> Metrics {
    use rand::{Rng, SeedableRng};
    let n = g.len().min(strata.len());
    let mut members: Vec<Vec<f64>> = vec![Vec::new(); 256];
    for (&v, &s) in g.iter().zip(strata) {
        members[s as usize].push(v);
    }
    let mut rng = rand_pcg::Pcg64::seed_from_u64(seed);
    let copies: Vec<Metrics> = (0..resamples.max(1))
        .map(|_| {
            let copy: Vec<f64> = strata[..n]
                .iter()
                .map(|&s| {
                    let m = &members[s as usize];
                    m[rng.gen_range(0..m.len())]
                })
                .collect();
            compare(&g[..n], &copy)
        })
        .collect();
    let mut m = Metrics::reduce(&copies, |v| median_of(v.iter().copied()));
    m.acf_r2 = f64::NAN;
    m.nrmse = f64::NAN;
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduce_figure_by_figure() {
        assert!((sd_of(&[1.0, 2.0, 3.0, 4.0]) - 1.290_994_448_735_805_6).abs() < 1e-12);
        assert_eq!(sd_of(&[7.0]), 0.0);
        let a = Metrics::from_fields(9, [1.0, -1.0, 0.1, 0.9, 0.2, 3.0, 4.0]);
        let b = Metrics::from_fields(9, [3.0, 3.0, 0.3, 0.5, 0.4, 5.0, 8.0]);
        let m = Metrics::reduce(&[a, b], mean_of);
        assert_eq!(
            m.fields(),
            [2.0, 1.0, 0.2, 0.7, 0.30000000000000004, 4.0, 6.0]
        );
        assert_eq!(m.n, 9);
    }

    #[test]
    fn identical_series_score_perfectly() {
        let g: Vec<f64> = (0..200)
            .map(|i| 300.0 + 50.0 * (i as f64 / 7.0).sin())
            .collect();
        let m = compare(&g, &g);
        assert_eq!(m.energy_error_pct, 0.0);
        assert_eq!(m.ks, 0.0);
        assert!((m.acf_r2 - 1.0).abs() < 1e-12);
        assert_eq!(m.nrmse, 0.0);
        assert_eq!(m.p99_error_pct, 0.0);
    }

    #[test]
    fn known_values() {
        // y = 1.1 g: energy +10 %, percentiles +10 %.
        let g: Vec<f64> = (1..=100).map(|i| i as f64).collect();
        let y: Vec<f64> = g.iter().map(|v| 1.1 * v).collect();
        let m = compare(&g, &y);
        assert!((m.energy_error_signed_pct - 10.0).abs() < 1e-9);
        assert!((m.p95_error_pct - 10.0).abs() < 1e-9);
        // RMSE of 0.1·g over 1..100 = 0.1·sqrt(mean(i²)); range 99.
        let want = 0.1 * ((1..=100).map(|i| (i * i) as f64).sum::<f64>() / 100.0).sqrt() / 99.0;
        assert!((m.nrmse - want).abs() < 1e-12);
        // Disjoint samples: KS = 1; half-shifted: 0.5.
        assert_eq!(ks_statistic(&[1.0, 2.0], &[3.0, 4.0]), 1.0);
        assert_eq!(
            ks_statistic(&[1.0, 2.0, 3.0, 4.0], &[3.0, 4.0, 5.0, 6.0]),
            0.5
        );
        // Alternating series: ACF at lag 1 = −(n−1)/n.
        let alt: Vec<f64> = (0..10)
            .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        assert!((acf(&alt, 1)[0] + 0.9).abs() < 1e-12);
    }

    #[test]
    fn resampling_noise_known_answers() {
        // A stratum per bin: every copy is the series itself.
        let g: Vec<f64> = (0..40).map(|i| (i % 7) as f64 + 1.0).collect();
        let own: Vec<u8> = (0..40).collect();
        let m = resampling_noise(&g, &own, 20, 1);
        assert_eq!((m.energy_error_pct, m.ks, m.p95_error_pct), (0.0, 0.0, 0.0));
        assert!(m.acf_r2.is_nan() && m.nrmse.is_nan());
        // Constant strata (idle 80 W, busy 300 W): the mix is fixed, so there is no noise.
        let c: Vec<f64> = (0..30).map(|i| if i < 10 { 80.0 } else { 300.0 }).collect();
        let s: Vec<u8> = (0..30).map(|i| u8::from(i >= 10)).collect();
        assert_eq!(
            resampling_noise(&c, &s, 50, 2).fields()[0..3],
            [0.0, 0.0, 0.0]
        );
        // One stratum, 95 bins at 100 W and 5 at 200 W: P95 = 105 W (linear between ranks 94
        // and 95). A copy holds k ~ Binomial(100, 0.05) peaks: k < 5 (44 %) gives P95 =
        // 100 W, k = 5 (18 %) 105 W, k > 5 200 W, so the median copy is off by 5/105.
        let mut p = vec![100.0; 95];
        p.extend([200.0; 5]);
        let one = vec![0u8; 100];
        let m = resampling_noise(&p, &one, 400, 3);
        assert!((m.p95_error_pct - 500.0 / 105.0).abs() < 1e-9, "{m:?}");
        assert!(m.energy_error_pct < m.p95_error_pct, "{m:?}");
        // Seeded.
        let bits = |m: Metrics| m.fields().map(f64::to_bits);
        assert_eq!(
            bits(resampling_noise(&p, &one, 50, 9)),
            bits(resampling_noise(&p, &one, 50, 9))
        );
    }
}
