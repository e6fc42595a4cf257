//! The map from a reference configuration's synthesized readings to a target configuration's
//! (built by [`crate::transfer`], stored in a transferred [`crate::learn::LearnedModel`],
//! applied by [`crate::synth::power_from_engine`]). Plain data and arithmetic: it knows
//! neither engine states nor power cells; synthesis hands it each bin's running batch and the
//! reference's steady decode level there.

use serde::{Deserialize, Serialize};

use crate::fits::batch_curve::BatchCurve;

/// How reference readings map to the target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelMap {
    /// The reference's idle reading and the target's (replica totals, W).
    pub(crate) reference_idle_w: f64,
    pub(crate) target_idle_w: f64,
    /// The target replica's board limit (W): averaged readings are capped at it.
    pub(crate) board_limit_w: f64,
    /// The target meter's averaging window over the mapped readings (bins; 1 = none).
    pub(crate) meter_window_bins: usize,
    pub(crate) levels: Levels,
}

/// The target's active level versus running batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub(crate) enum Levels {
    /// The target's steady replica power (W): a reference decode reading at its steady level
    /// maps onto it.
    Absolute { power_w: BatchCurve },
    /// The target's dynamic power (above idle) as a multiple of the reference's.
    Ratio { dynamic_ratio: BatchCurve },
}

/// What synthesis knows of one bin of an active reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ActiveBin {
    /// Running requests per unit of busy time (≥ 1).
    pub(crate) batch: f64,
    /// The reference's steady decode reading in the bin's state (W).
    pub(crate) reference_decode_w: f64,
}

impl LevelMap {
    /// The multiplier of an active reading's dynamic part (above idle).
    fn active_scale(&self, bin: &ActiveBin) -> f64 {
        let s = match &self.levels {
            Levels::Absolute { power_w } => {
                (power_w.eval(bin.batch) - self.target_idle_w)
                    / (bin.reference_decode_w - self.reference_idle_w).max(1.0)
            }
            Levels::Ratio { dynamic_ratio } => dynamic_ratio.eval(bin.batch),
        };
        s.max(0.0)
    }

    /// Maps one synthesized series in place: idle readings (`None`) by the idle ratio, active
    /// ones as idle_T + (p − idle_R)·[`Self::active_scale`]; then the target meter's trailing
    /// average, capped at the board limit.
    pub(crate) fn apply(&self, bins: &[Option<ActiveBin>], power_w: &mut [f64]) {
        let idle_scale = self.target_idle_w / self.reference_idle_w.max(1e-9);
        for (p, bin) in power_w.iter_mut().zip(bins) {
            *p = match bin {
                None => *p * idle_scale,
                Some(b) => self.target_idle_w + (*p - self.reference_idle_w) * self.active_scale(b),
            };
        }
        let w = self.meter_window_bins;
        if w > 1 {
            let raw = power_w.to_vec();
            let mut acc = 0.0;
            for (t, p) in power_w.iter_mut().enumerate() {
                acc += raw[t];
                if t >= w {
                    acc -= raw[t - w];
                }
                *p = (acc / (t + 1).min(w) as f64).min(self.board_limit_w);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_levels_put_a_steady_decode_reading_on_the_target_curve() {
        let map = LevelMap {
            reference_idle_w: 80.0,
            target_idle_w: 140.0,
            board_limit_w: 700.0,
            meter_window_bins: 1,
            levels: Levels::Absolute {
                power_w: BatchCurve::from_points(vec![(8.0, 430.0), (64.0, 520.0)]).unwrap(),
            },
        };
        let bin = |batch| {
            Some(ActiveBin {
                batch,
                reference_decode_w: 300.0,
            })
        };
        // A reading at the reference's decode level lands on the target's power; a prefill
        // reading 100 W above it keeps its excess in proportion (290 / 220).
        let mut p = vec![300.0, 400.0, 300.0, 80.0, 300.0];
        map.apply(&[bin(8.0), bin(8.0), bin(64.0), None, bin(1.0)], &mut p);
        assert!((p[0] - 430.0).abs() < 1e-9);
        assert!((p[1] - (430.0 + 100.0 * 290.0 / 220.0)).abs() < 1e-9);
        assert!((p[2] - 520.0).abs() < 1e-9);
        assert!((p[3] - 140.0).abs() < 1e-9);
        // Below the curve's range its first segment's 30 W per doubling goes on: 430 − 90.
        assert!((p[4] - 340.0).abs() < 1e-9, "{}", p[4]);
    }

    #[test]
    fn ratio_levels_and_the_averaging_meter() {
        let map = LevelMap {
            reference_idle_w: 100.0,
            target_idle_w: 100.0,
            board_limit_w: 500.0,
            meter_window_bins: 2,
            levels: Levels::Ratio {
                dynamic_ratio: BatchCurve::from_points(vec![(1.0, 2.0)]).unwrap(),
            },
        };
        let on = Some(ActiveBin {
            batch: 4.0,
            reference_decode_w: 0.0,
        });
        let mut p = vec![100.0, 300.0, 300.0, 100.0];
        map.apply(&[None, on, on, None], &mut p);
        // Mapped: 100, 500, 500, 100; averaged over two bins, capped at 500.
        assert_eq!(p, vec![100.0, 300.0, 500.0, 300.0]);
    }
}
