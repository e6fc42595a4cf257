//! Fits (SPEC §4): pure functions from numbers to fitted parameters. No file system, no
//! printing: callers load inputs and store outputs.
//!
//! - [`logistic`]: power / latency / throughput versus log2 batch size.
//! - [`itl_mixture`]: the two-component shifted log-normal ITL model, fitted by EM on samples
//!   (peer-compatible and robust modes), with analytic moments and fleet-average sampling.
//! - [`itl_percentiles`]: the same model fitted to a few known percentiles.

pub(crate) mod batch_curve;
pub mod itl_mixture;
pub mod itl_percentiles;
pub mod logistic;

use argmin::core::{CostFunction, Executor, State};
use argmin::solver::neldermead::NelderMead;

/// Minimises `cost` with argmin's Nelder–Mead from a simplex around `start` (one vertex moved by
/// `step[i]` along each axis). Returns the best point and its cost; a cost that is not finite is
/// treated as +∞, so callers express box constraints by returning `f64::INFINITY`.
pub(crate) fn nelder_mead(
    cost: impl Fn(&[f64]) -> f64,
    start: &[f64],
    step: &[f64],
    max_iters: u64,
) -> (Vec<f64>, f64) {
    nelder_mead_tol(cost, start, step, max_iters, 1e-14)
}

/// [`nelder_mead`] stopping once the standard deviation of the simplex's costs is below
/// `sd_tolerance` (absolute, in the cost's units).
pub(crate) fn nelder_mead_tol(
    cost: impl Fn(&[f64]) -> f64,
    start: &[f64],
    step: &[f64],
    max_iters: u64,
    sd_tolerance: f64,
) -> (Vec<f64>, f64) {
    struct Problem<F>(F);
    impl<F: Fn(&[f64]) -> f64> CostFunction for Problem<F> {
        type Param = Vec<f64>;
        type Output = f64;
        fn cost(&self, p: &Vec<f64>) -> Result<f64, argmin::core::Error> {
            let c = (self.0)(p);
            Ok(if c.is_finite() { c } else { f64::INFINITY })
        }
    }
    let start_cost = {
        let c = cost(start);
        if c.is_finite() {
            c
        } else {
            f64::INFINITY
        }
    };
    let mut simplex = vec![start.to_vec()];
    for (i, s) in step.iter().enumerate() {
        let mut v = start.to_vec();
        v[i] += s;
        simplex.push(v);
    }
    let solver = match NelderMead::new(simplex).with_sd_tolerance(sd_tolerance) {
        Ok(s) => s,
        Err(_) => return (start.to_vec(), start_cost),
    };
    let result = Executor::new(Problem(cost), solver)
        .configure(|s| s.max_iters(max_iters))
        .run();
    match result {
        Ok(r) => {
            let state = r.state();
            match state.get_best_param() {
                Some(p) if state.get_best_cost() < start_cost => (p.clone(), state.get_best_cost()),
                _ => (start.to_vec(), start_cost),
            }
        }
        Err(_) => (start.to_vec(), start_cost),
    }
}

/// The quantile and median the fits use, defined in [`crate::stats`] and kept here under
/// their old paths.
pub(crate) use crate::stats::{median, quantile_sorted};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nelder_mead_finds_quadratic_minimum() {
        let (p, c) = nelder_mead(
            |p| (p[0] - 3.0).powi(2) + 10.0 * (p[1] + 1.0).powi(2),
            &[0.0, 0.0],
            &[1.0, 1.0],
            1000,
        );
        assert!((p[0] - 3.0).abs() < 1e-5 && (p[1] + 1.0).abs() < 1e-5 && c < 1e-9);
    }
}

/// Ordinary least squares: the β minimising Σ (y − Xβ)², rows of `x` as features, solved by
/// the normal equations with a tiny ridge (1e-9 × trace) so collinear columns stay finite.
/// `None` when there are fewer rows than columns or the system is singular.
pub(crate) fn least_squares(x: &[Vec<f64>], y: &[f64]) -> Option<Vec<f64>> {
    let p = x.first()?.len();
    if x.len() < p || p == 0 {
        return None;
    }
    let mut a = vec![vec![0.0; p + 1]; p];
    for (row, &yi) in x.iter().zip(y) {
        for i in 0..p {
            for j in 0..p {
                a[i][j] += row[i] * row[j];
            }
            a[i][p] += row[i] * yi;
        }
    }
    let ridge = 1e-9 * (0..p).map(|i| a[i][i]).sum::<f64>() / p as f64;
    for (i, r) in a.iter_mut().enumerate() {
        r[i] += ridge;
    }
    // Gaussian elimination with partial pivoting.
    for col in 0..p {
        let piv = (col..p).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[piv][col].abs() < 1e-300 {
            return None;
        }
        a.swap(col, piv);
        for r in col + 1..p {
            let f = a[r][col] / a[col][col];
            let pivot_row = a[col].clone();
            for (x, pv) in a[r][col..].iter_mut().zip(&pivot_row[col..]) {
                *x -= f * pv;
            }
        }
    }
    let mut beta = vec![0.0; p];
    for i in (0..p).rev() {
        let s: f64 = (i + 1..p).map(|j| a[i][j] * beta[j]).sum();
        beta[i] = (a[i][p] - s) / a[i][i];
    }
    beta.iter().all(|b| b.is_finite()).then_some(beta)
}

#[cfg(test)]
mod ls_tests {
    #[test]
    fn least_squares_recovers_a_plane() {
        let x: Vec<Vec<f64>> = (0..20)
            .map(|i| vec![1.0, i as f64, ((i * 7) % 5) as f64])
            .collect();
        let y: Vec<f64> = x.iter().map(|r| 2.0 - 0.5 * r[1] + 3.0 * r[2]).collect();
        let b = super::least_squares(&x, &y).unwrap();
        for (got, want) in b.iter().zip([2.0, -0.5, 3.0]) {
            assert!((got - want).abs() < 1e-6, "{b:?}");
        }
    }
}
