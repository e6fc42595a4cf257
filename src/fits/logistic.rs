//! Logistic curves versus batch size (SPEC §4.1): y = b0 + L·σ(k·(x − x0)), x = log2(batch).
//!
//! The peer fits by a 40 × 60 grid over (x0, k) with (b0, L) by least squares ([`fit_grid`]).
//! [`fit`] starts from that grid optimum and refines with argmin's Nelder–Mead over (x0, ln k)
//! while (b0, L) stay at their exact least-squares values for each (x0, k) (variable
//! projection), so all four parameters move, within the grid's own box
//! (x0 ∈ [min x − 1, max x + 1], k ∈ [1e-2, 1e2]); the result is never worse than the grid
//! optimum by construction.

use serde::{Deserialize, Serialize};

/// A fitted logistic curve. Field names follow the peer's `logistic_fit.json` (`L`, `x0`, `k`, `b0`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LogisticFit {
    /// Amplitude (units of y).
    #[serde(rename = "L")]
    pub l: f64,
    /// Midpoint in log2(batch).
    pub x0: f64,
    /// Steepness per doubling of the batch size.
    pub k: f64,
    /// Offset (units of y).
    pub b0: f64,
}

/// A fit with its quality figures, as written to `fits/logistic_fits/part-0.parquet`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogisticFitReport {
    pub fit: LogisticFit,
    /// The peer's grid-search optimum on the same points (what `fit` started from).
    pub(crate) grid: LogisticFit,
    pub(crate) n_points: usize,
    /// Root-mean-square residual of `fit` (units of y).
    pub(crate) rmse: f64,
    /// Sum of squared residuals of `fit` and of `grid`.
    pub sse: f64,
    pub grid_sse: f64,
    /// Coefficient of determination (NaN when y is constant).
    pub(crate) r2: f64,
    /// Reasons to distrust the fit (low R², midpoint outside the data, …); empty when none.
    pub(crate) warnings: Vec<String>,
}

/// Numerically stable logistic function.
pub(crate) fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

impl LogisticFit {
    /// The flat curve y = b0.
    pub(crate) fn constant(x0: f64, b0: f64) -> Self {
        LogisticFit {
            l: 0.0,
            x0,
            k: 1.0,
            b0,
        }
    }
    /// y at x = log2(batch).
    pub fn eval_x(&self, x: f64) -> f64 {
        self.b0 + self.l * sigmoid(self.k * (x - self.x0))
    }
    /// y at a batch size (x = log2(max(batch, 1)), as the peer).
    pub fn eval_batch(&self, batch: u32) -> f64 {
        self.eval_x((batch.max(1) as f64).log2())
    }
    /// dy/dx at x = log2(batch): L·k·σ(1 − σ). Used by the OFO controller.
    pub fn deriv_wrt_x(&self, x: f64) -> f64 {
        let s = sigmoid(self.k * (x - self.x0));
        self.l * self.k * s * (1.0 - s)
    }
    fn sse(&self, x: &[f64], y: &[f64]) -> f64 {
        x.iter()
            .zip(y)
            .map(|(&xi, &yi)| (self.eval_x(xi) - yi).powi(2))
            .sum()
    }
}

/// (b0, L) minimising Σ(b0 + L·s_i − y_i)², with numpy `lstsq`'s minimum-norm answer when all
/// s_i are equal (a rank-deficient design). Returns (b0, L, sse).
fn least_squares_b0_l(s: &[f64], y: &[f64]) -> (f64, f64, f64) {
    let n = s.len() as f64;
    let s_mean = s.iter().sum::<f64>() / n;
    let y_mean = y.iter().sum::<f64>() / n;
    let mut sxx = 0.0;
    let mut sxy = 0.0;
    let mut ss = 0.0;
    for (&si, &yi) in s.iter().zip(y) {
        sxx += (si - s_mean).powi(2);
        sxy += (si - s_mean) * (yi - y_mean);
        ss += si * si;
    }
    let (b0, l) = if sxx <= 1e-26 * (n + ss) {
        // Min-norm solution of b0 + c·L = ȳ.
        let c = s_mean;
        (y_mean / (1.0 + c * c), y_mean * c / (1.0 + c * c))
    } else {
        let l = sxy / sxx;
        (y_mean - l * s_mean, l)
    };
    let sse = s
        .iter()
        .zip(y)
        .map(|(&si, &yi)| (b0 + l * si - yi).powi(2))
        .sum();
    (b0, l, sse)
}

fn projected(x: &[f64], y: &[f64], x0: f64, k: f64, s: &mut Vec<f64>) -> (LogisticFit, f64) {
    s.clear();
    s.extend(x.iter().map(|&xi| sigmoid(k * (xi - x0))));
    let (b0, l, sse) = least_squares_b0_l(s, y);
    (LogisticFit { l, x0, k, b0 }, sse)
}

fn degenerate(x: &[f64], y: &[f64]) -> Option<LogisticFit> {
    if x.is_empty() {
        return Some(LogisticFit::constant(0.0, 0.0));
    }
    let y0 = y[0];
    // numpy.allclose(y, y[0]): |a − b| ≤ atol + rtol·|b|.
    let constant = y.iter().all(|&v| (v - y0).abs() <= 1e-8 + 1e-5 * y0.abs());
    if x.len() == 1 || constant {
        let mean = y.iter().sum::<f64>() / y.len() as f64;
        return Some(LogisticFit::constant(x[0], mean));
    }
    None
}

/// The peer's fit (mlenergy-data `LogisticModel.fit`): grid only, first strict minimum wins.
pub fn fit_grid(x: &[f64], y: &[f64]) -> LogisticFit {
    assert_eq!(x.len(), y.len(), "x and y must have equal lengths");
    if let Some(f) = degenerate(x, y) {
        return f;
    }
    let (x_min, x_max) = x
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let n = x.len() as f64;
    let mut best = LogisticFit::constant(x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let mut best_mse = f64::INFINITY;
    let mut s = Vec::with_capacity(x.len());
    for i in 0..40 {
        let x0 = linspace_at(x_min - 1.0, x_max + 1.0, 40, i);
        for j in 0..60 {
            let k = 10f64.powf(linspace_at(-2.0, 2.0, 60, j));
            let (f, sse) = projected(x, y, x0, k, &mut s);
            let mse = sse / n;
            if mse < best_mse {
                best_mse = mse;
                best = f;
            }
        }
    }
    best
}

/// numpy.linspace(a, b, n)[i].
fn linspace_at(a: f64, b: f64, n: usize, i: usize) -> f64 {
    if i == n - 1 {
        b
    } else {
        a + (b - a) * (i as f64) / ((n - 1) as f64)
    }
}

/// Grid start plus argmin refinement; never worse than [`fit_grid`] on the same points.
pub fn fit(x: &[f64], y: &[f64]) -> LogisticFitReport {
    let grid = fit_grid(x, y);
    let grid_sse = grid.sse(x, y);
    let (best, best_sse) = if degenerate(x, y).is_none() {
        refine(x, y, grid, grid_sse)
    } else {
        (grid, grid_sse)
    };
    let n = x.len();
    let (r2, rmse) = goodness(y, n, best_sse);
    LogisticFitReport {
        fit: best,
        grid,
        n_points: n,
        rmse,
        sse: best_sse,
        grid_sse,
        r2,
        warnings: fit_warnings(x, &best, r2),
    }
}

/// (min, max) of `x`; (∞, −∞) when empty.
fn x_range(x: &[f64]) -> (f64, f64) {
    x.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        })
}

/// Nelder–Mead from the grid's best point over (x0, ln k) within the grid's box; the grid fit
/// and its SSE back when refinement does not improve on it.
fn refine(x: &[f64], y: &[f64], grid: LogisticFit, grid_sse: f64) -> (LogisticFit, f64) {
    let (x_min, x_max) = x_range(x);
    let (lo_x0, hi_x0) = (x_min - 1.0, x_max + 1.0);
    let (lo_lnk, hi_lnk) = (1e-2f64.ln(), 1e2f64.ln());
    let scratch = std::cell::RefCell::new(Vec::with_capacity(x.len()));
    let cost = |p: &[f64]| {
        if p[0] < lo_x0 || p[0] > hi_x0 || p[1] < lo_lnk || p[1] > hi_lnk {
            return f64::INFINITY;
        }
        projected(x, y, p[0], p[1].exp(), &mut scratch.borrow_mut()).1
    };
    let start = [grid.x0, grid.k.ln()];
    // Stop once the simplex's SSEs agree to 1e-15 of the grid's SSE (an absolute 1e-14 sits
    // below the SSE's own rounding on curves of hundreds of watts: the simplex would wander
    // to its 2000-iteration limit), then restart from the best point with a small simplex
    // while that still improves (a simplex can collapse before the minimum).
    let tol = (1e-15 * grid_sse).max(1e-300);
    let (mut p, mut sse) = super::nelder_mead_tol(cost, &start, &[0.1, 0.1], 2000, tol);
    for _ in 0..10 {
        let (q, c) = super::nelder_mead_tol(cost, &p, &[1e-3, 1e-3], 2000, tol);
        if c >= sse {
            break;
        }
        (p, sse) = (q, c);
    }
    // Written so that a NaN SSE keeps the grid fit.
    if !(sse < grid_sse) {
        return (grid, grid_sse);
    }
    let mut s = Vec::new();
    let best = projected(x, y, p[0], p[1].exp(), &mut s).0;
    let best_sse = best.sse(x, y);
    if best_sse > grid_sse {
        (grid, grid_sse)
    } else {
        (best, best_sse)
    }
}

/// (R², RMSE) of a fit with SSE `sse` on `n` points of `y` (NaN when undefined).
fn goodness(y: &[f64], n: usize, sse: f64) -> (f64, f64) {
    let y_mean = if n > 0 {
        y.iter().sum::<f64>() / n as f64
    } else {
        f64::NAN
    };
    let sst: f64 = y.iter().map(|v| (v - y_mean).powi(2)).sum();
    let r2 = if sst > 0.0 { 1.0 - sse / sst } else { f64::NAN };
    let rmse = if n > 0 {
        (sse / n as f64).sqrt()
    } else {
        f64::NAN
    };
    (r2, rmse)
}

/// Suspicious fits on three points or more: a poor R², a midpoint outside the data, a step.
fn fit_warnings(x: &[f64], best: &LogisticFit, r2: f64) -> Vec<String> {
    let mut warnings = Vec::new();
    if x.len() < 3 {
        return warnings;
    }
    if r2 < 0.9 {
        warnings.push(format!("R² = {r2:.3} < 0.9"));
    }
    let (x_min, x_max) = x_range(x);
    if best.x0 < x_min - 0.5 || best.x0 > x_max + 0.5 {
        warnings.push(format!(
            "midpoint x0 = {:.2} outside the data [{x_min:.2}, {x_max:.2}]",
            best.x0
        ));
    }
    if best.k >= 99.0 {
        warnings.push(format!("step-like curve (k = {:.1})", best.k));
    }
    warnings
}

/// Median y per batch size, then x = log2(batch): the points a curve is fitted on. Batch sizes
/// in `exclude` are dropped. Input pairs are (batch, y) over runs; output is sorted by batch.
pub(crate) fn points_per_batch(samples: &[(u32, f64)], exclude: &[u32]) -> (Vec<f64>, Vec<f64>) {
    let mut by_batch: std::collections::BTreeMap<u32, Vec<f64>> = Default::default();
    for &(b, v) in samples {
        if !exclude.contains(&b) && v.is_finite() {
            by_batch.entry(b).or_default().push(v);
        }
    }
    by_batch
        .into_iter()
        .map(|(b, v)| ((b.max(1) as f64).log2(), crate::stats::median(&v)))
        .unzip()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer_points() -> (Vec<f64>, Vec<f64>) {
        let x = [8u32, 16, 32, 64, 128, 256, 512, 1024]
            .iter()
            .map(|&b| (b as f64).log2())
            .collect();
        (
            x,
            vec![300.0, 320.0, 360.0, 430.0, 520.0, 590.0, 625.0, 640.0],
        )
    }

    #[test]
    fn grid_reproduces_peer_test_vector() {
        // mlenergy-data 0.4 LogisticModel.fit on these points (peer spec §9).
        let (x, y) = peer_points();
        let f = fit_grid(&x, &y);
        assert!((f.l - 350.5706248480498).abs() < 1e-9, "{f:?}");
        assert!((f.x0 - 6.384615384615385).abs() < 1e-12);
        assert!((f.k - 1.0811807510766078).abs() < 1e-12);
        assert!((f.b0 - 292.9098060387019).abs() < 1e-9);
        assert!((f.eval_batch(128) - 524.4474607290101).abs() < 1e-9);
        assert!((f.deriv_wrt_x(7.0) - 84.9985824079803).abs() < 1e-9);
    }

    #[test]
    fn degenerate_inputs_match_peer_defaults() {
        assert_eq!(fit_grid(&[], &[]), LogisticFit::constant(0.0, 0.0));
        assert_eq!(
            fit_grid(&[3.0, 4.0], &[5.0, 5.0]),
            LogisticFit::constant(3.0, 5.0)
        );
        assert_eq!(fit_grid(&[2.0], &[7.0]), LogisticFit::constant(2.0, 7.0));
    }

    #[test]
    fn refinement_improves_on_grid_and_recovers_truth() {
        let truth = LogisticFit {
            l: 400.0,
            x0: 5.3,
            k: 1.37,
            b0: 250.0,
        };
        let x: Vec<f64> = (3..=10).map(|e| e as f64).collect();
        let y: Vec<f64> = x.iter().map(|&v| truth.eval_x(v)).collect();
        let r = fit(&x, &y);
        assert!(r.sse < r.grid_sse, "{r:?}");
        assert!(r.sse < 1e-6, "{r:?}");
        assert!((r.fit.x0 - 5.3).abs() < 1e-3 && (r.fit.k - 1.37).abs() < 1e-3);
    }

    #[test]
    fn refined_fit_never_worse_on_peer_points() {
        let (x, y) = peer_points();
        let r = fit(&x, &y);
        assert!(r.sse <= r.grid_sse);
        assert!(r.r2 > 0.99 && r.warnings.is_empty(), "{r:?}");
    }

    #[test]
    fn derivative_matches_finite_difference() {
        let f = LogisticFit {
            l: 350.0,
            x0: 6.0,
            k: 1.1,
            b0: 290.0,
        };
        let h = 1e-6;
        let fd = (f.eval_x(7.0 + h) - f.eval_x(7.0 - h)) / (2.0 * h);
        assert!((fd - f.deriv_wrt_x(7.0)).abs() < 1e-5);
    }

    #[test]
    fn median_per_batch_and_exclusion() {
        let (x, y) = points_per_batch(&[(8, 1.0), (8, 3.0), (16, 5.0), (32, 9.0)], &[32]);
        assert_eq!(x, vec![3.0, 4.0]);
        assert_eq!(y, vec![2.0, 5.0]);
    }
}
