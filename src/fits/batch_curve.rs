//! A quantity versus running batch size from a few measured batch sizes (the ML.ENERGY
//! leaderboard's power, ITL and throughput): exact where measured, log-linear between, the
//! first segment's slope below and the logistic fit's shape above.

use serde::{Deserialize, Serialize};

use super::logistic::LogisticFit;

/// A quantity versus running batch size: exact at the measured batch sizes and linear in
/// log2 b between them. Below the smallest it goes on along the first segment's slope per
/// doubling when that rises with batch (power, ITL and throughput do: a GPU at batch 2 does
/// less than at batch 8), else holds flat; above the largest it moves along the logistic fit
/// of all points (saturating; flat when fewer than four points).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct BatchCurve {
    pub(crate) batch: Vec<f64>,
    pub(crate) values: Vec<f64>,
    #[serde(default)]
    pub(crate) logistic: Option<LogisticFit>,
}

impl BatchCurve {
    /// A curve through (batch, value) points (non-finite and batch < 1 dropped, equal batch
    /// sizes averaged); `None` without a point.
    pub(crate) fn from_points(mut points: Vec<(f64, f64)>) -> Option<Self> {
        points.retain(|(b, v)| b.is_finite() && *b >= 1.0 && v.is_finite());
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut batch: Vec<f64> = Vec::new();
        let mut values: Vec<f64> = Vec::new();
        let mut counts: Vec<f64> = Vec::new();
        for (b, v) in points {
            if batch.last() == Some(&b) {
                let k = values.len() - 1;
                values[k] += v;
                counts[k] += 1.0;
            } else {
                batch.push(b);
                values.push(v);
                counts.push(1.0);
            }
        }
        if batch.is_empty() {
            return None;
        }
        for (v, n) in values.iter_mut().zip(&counts) {
            *v /= n;
        }
        let logistic = (batch.len() >= 4).then(|| {
            let x: Vec<f64> = batch.iter().map(|b| b.log2()).collect();
            super::logistic::fit(&x, &values).fit
        });
        Some(Self {
            batch,
            values,
            logistic,
        })
    }

    /// The value at running batch `batch` (≥ 1).
    pub(crate) fn eval(&self, batch: f64) -> f64 {
        let x = batch.max(1.0).log2();
        let n = self.batch.len();
        let xs = |i: usize| self.batch[i].log2();
        if x <= xs(0) {
            let slope = if n >= 2 {
                ((self.values[1] - self.values[0]) / (xs(1) - xs(0))).max(0.0)
            } else {
                0.0
            };
            return self.values[0] - slope * (xs(0) - x);
        }
        if x >= xs(n - 1) {
            let last = self.values[n - 1];
            return last
                + self
                    .logistic
                    .map_or(0.0, |l| l.eval_x(x) - l.eval_x(xs(n - 1)));
        }
        let i = self.batch.partition_point(|&b| b.log2() <= x) - 1;
        let w = (x - xs(i)) / (xs(i + 1) - xs(i));
        self.values[i] * (1.0 - w) + self.values[i + 1] * w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_curve_is_exact_at_points_and_log_linear_between() {
        let c = BatchCurve::from_points(vec![(8.0, 400.0), (32.0, 500.0), (16.0, 460.0)]).unwrap();
        assert_eq!(c.eval(8.0), 400.0);
        assert_eq!(c.eval(16.0), 460.0);
        assert!((c.eval(std::f64::consts::SQRT_2 * 16.0) - 480.0).abs() < 1e-9);
        // Below: the first segment's 60 per doubling goes on; above, fewer than four points:
        // flat.
        assert!((c.eval(2.0) - 280.0).abs() < 1e-9);
        assert_eq!(c.eval(1000.0), 500.0);
        // A first segment falling with batch is held flat below.
        let f = BatchCurve::from_points(vec![(8.0, 600.0), (16.0, 500.0)]).unwrap();
        assert_eq!(f.eval(1.0), 600.0);
        // Duplicates average; bad points drop.
        let d = BatchCurve::from_points(vec![(4.0, 1.0), (4.0, 3.0), (f64::NAN, 9.0), (0.5, 9.0)])
            .unwrap();
        assert_eq!((d.batch.clone(), d.values.clone()), (vec![4.0], vec![2.0]));
        // With a logistic, the upper edge moves along it: a saturating curve stays flat.
        let pts: Vec<(f64, f64)> = [8.0, 16.0, 32.0, 64.0, 128.0]
            .iter()
            .map(|&b: &f64| {
                (
                    b,
                    300.0 + 200.0 * super::super::logistic::sigmoid(b.log2() - 5.0),
                )
            })
            .collect();
        let l = BatchCurve::from_points(pts.clone()).unwrap();
        for (b, v) in &pts {
            assert_eq!(l.eval(*b), *v);
        }
        let expect = 300.0 + 200.0 * super::super::logistic::sigmoid(5.0);
        assert!((l.eval(1e5) - expect).abs() < 2.0, "{}", l.eval(1e5));
    }
}
