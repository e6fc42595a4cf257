//! Summary statistics of plain `f64` slices: mean, sample standard deviation, median and
//! numpy-style quantiles. A bottom module (pure math, nothing of the crate): fits, metrics and
//! every later stage use these one definitions.
//!
//! ```
//! use powersynth::stats::{mean, median, quantile_sorted};
//! assert_eq!(mean(&[1.0, 2.0, 6.0]), 3.0);
//! assert_eq!(median(&[3.0, 1.0, 2.0, 10.0]), 2.5);
//! assert_eq!(quantile_sorted(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.5);
//! ```

/// Mean of the values (NaN for none).
pub fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Sample standard deviation (n − 1 in the denominator; 0 for fewer than two values).
pub fn sd(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let m = mean(v);
    (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}

/// Population variance (n in the denominator: the mean squared deviation; NaN for none).
pub fn population_variance(v: &[f64]) -> f64 {
    let m = mean(v);
    v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64
}

/// Linear-interpolation quantile of sorted data (numpy's default), `q` in [0, 1]; NaN for no
/// values.
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    let Some((lo, hi, frac)) = interpolation_ranks(sorted.len(), q) else {
        return f64::NAN;
    };
    sorted[lo] + (sorted[hi] - sorted[lo]) * frac
}

/// The two order statistics (ranks `lo` ≤ `hi` = `lo` or `lo` + 1) that numpy's linear
/// interpolation reads for quantile `q` of `n` values, and the weight of the upper one; `None`
/// for no values.
fn interpolation_ranks(n: usize, q: f64) -> Option<(usize, usize, f64)> {
    if n == 0 {
        return None;
    }
    let pos = q.clamp(0.0, 1.0) * (n - 1) as f64;
    let lo = pos.floor() as usize;
    Some((lo, pos.ceil() as usize, pos - lo as f64))
}

/// [`quantile_sorted`] of the values in any order (ordered by `f64::total_cmp`).
pub fn quantile(values: &[f64], q: f64) -> f64 {
    quantile_select(&mut values.to_vec(), q)
}

/// [`quantile_sorted`] of the values in any order, found by selection in O(n) rather than by
/// a sort (the same two order statistics, so the same value to the bit); reorders `values`.
pub fn quantile_select(values: &mut [f64], q: f64) -> f64 {
    let Some((lo, hi, frac)) = interpolation_ranks(values.len(), q) else {
        return f64::NAN;
    };
    let (_, at_lo, above) = values.select_nth_unstable_by(lo, f64::total_cmp);
    let at_lo = *at_lo;
    let at_hi = if hi == lo {
        at_lo
    } else {
        // The smallest value above the `lo`-th is the `hi`-th (hi = lo + 1).
        above
            .iter()
            .copied()
            .min_by(f64::total_cmp)
            .expect("hi < n, so values lie above lo")
    };
    at_lo + (at_hi - at_lo) * frac
}

/// Median (mean of the two middle values for an even count) of every value, NaN for no values.
pub fn median(values: &[f64]) -> f64 {
    quantile(values, 0.5)
}

/// Median of the finite values only (NaN and ±∞ left out; NaN when none is finite): for
/// summaries over runs where a run may have no value.
pub fn median_finite(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    quantile_sorted(&v, 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile_sorted(&v, 0.5), 2.5);
        assert!((quantile_sorted(&v, 0.35) - 2.05).abs() < 1e-12);
        assert_eq!(
            quantile(&[4.0, 1.0, 3.0, 2.0], 0.35),
            quantile_sorted(&v, 0.35)
        );
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn selection_gives_the_sorted_quantile_to_the_bit() {
        // A deterministic jumble with repeats, signed zeros, infinities and a NaN.
        let mut values: Vec<f64> = (0..1001u64)
            .map(|i| ((i * 7919) % 997) as f64 * 0.37 - 120.0)
            .collect();
        values.extend([
            0.0,
            -0.0,
            5.5,
            5.5,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
        ]);
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        for q in [0.0, 0.01, 0.35, 0.5, 0.85, 0.999, 1.0] {
            for len in [1, 2, 3, 10, 500, values.len()] {
                let mut part = values[..len].to_vec();
                let mut part_sorted = part.clone();
                part_sorted.sort_by(f64::total_cmp);
                let want = quantile_sorted(&part_sorted, q);
                let got = quantile_select(&mut part, q);
                assert_eq!(got.to_bits(), want.to_bits(), "q {q}, first {len} values");
            }
        }
        assert!(quantile_select(&mut [], 0.5).is_nan());
    }

    #[test]
    fn median_finite_leaves_out_what_is_not_a_number() {
        assert_eq!(median_finite([3.0, f64::NAN, 1.0, f64::INFINITY]), 2.0);
        assert!(median_finite([f64::NAN]).is_nan());
        // `median` keeps every value: a NaN sorts last under total_cmp.
        assert_eq!(median(&[1.0, 2.0, f64::NAN]), 2.0);
    }

    #[test]
    fn population_variance_divides_by_n() {
        // Deviations −2, −1, 3 from the mean 3: (4 + 1 + 9) / 3.
        assert!((population_variance(&[1.0, 2.0, 6.0]) - 14.0 / 3.0).abs() < 1e-12);
        assert_eq!(population_variance(&[5.0]), 0.0);
        assert!(population_variance(&[]).is_nan());
    }

    #[test]
    fn mean_and_sample_sd() {
        assert!(mean(&[]).is_nan());
        assert_eq!(mean(&[1.0, 2.0, 6.0]), 3.0);
        assert!((sd(&[1.0, 2.0, 3.0, 4.0]) - 1.290_994_448_735_805_6).abs() < 1e-12);
        assert_eq!(sd(&[7.0]), 0.0);
    }
}
