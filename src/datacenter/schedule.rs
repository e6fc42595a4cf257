//! Replica schedules (peer `ReplicaSchedule`): an initial count and linear ramps.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One ramp from the level before it to `target` over [t_start_s, t_end_s].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct ReplicaRamp {
    pub(crate) target: u64,
    pub(crate) t_start_s: f64,
    pub(crate) t_end_s: f64,
}

/// Replicas of one model over time.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ReplicaSchedule {
    pub(crate) initial: u64,
    ramps: Vec<ReplicaRamp>,
}

impl ReplicaSchedule {
    pub fn new(initial: u64) -> Self {
        ReplicaSchedule {
            initial,
            ramps: Vec::new(),
        }
    }

    /// Adds a ramp. Rejects reversed or non-finite windows, a ramp starting at the same time as
    /// another, and overlapping windows (touching is allowed), naming both ramps.
    pub fn ramp_to(mut self, target: u64, t_start_s: f64, t_end_s: f64) -> Result<Self> {
        let field = "replica schedule";
        if !(t_start_s.is_finite() && t_end_s.is_finite() && t_start_s >= 0.0) {
            return Err(Error::config(
                field,
                format!("ramp to {target} over [{t_start_s}, {t_end_s}] s: times must be finite and ≥ 0"),
            ));
        }
        if t_end_s < t_start_s {
            return Err(Error::config(
                field,
                format!("ramp to {target} ends at {t_end_s} s before it starts at {t_start_s} s"),
            ));
        }
        let new = ReplicaRamp {
            target,
            t_start_s,
            t_end_s,
        };
        for r in &self.ramps {
            let overlap = new.t_start_s < r.t_end_s && r.t_start_s < new.t_end_s;
            if overlap || new.t_start_s == r.t_start_s {
                return Err(Error::config(
                    field,
                    format!(
                        "ramp to {} over [{}, {}] s overlaps ramp to {} over [{}, {}] s",
                        new.target, new.t_start_s, new.t_end_s, r.target, r.t_start_s, r.t_end_s
                    ),
                ));
            }
        }
        self.ramps.push(new);
        self.ramps
            .sort_by(|a, b| a.t_start_s.total_cmp(&b.t_start_s));
        Ok(self)
    }

    /// Continuous replica level at `t_s`.
    fn count_at(&self, t_s: f64) -> f64 {
        let mut level = self.initial as f64;
        for r in &self.ramps {
            if t_s < r.t_start_s {
                return level;
            }
            if t_s <= r.t_end_s {
                if r.t_end_s == r.t_start_s {
                    return r.target as f64;
                }
                return level
                    + (r.target as f64 - level) * (t_s - r.t_start_s) / (r.t_end_s - r.t_start_s);
            }
            level = r.target as f64;
        }
        level
    }

    /// Whole replicas at `t_s`: the level rounded half to even (as Python's `round`).
    pub(crate) fn replicas_at(&self, t_s: f64) -> u64 {
        self.count_at(t_s).round_ties_even().max(0.0) as u64
    }

    /// Every ramp start and end (where the capacity is checked).
    pub(crate) fn boundaries(&self) -> impl Iterator<Item = f64> + '_ {
        self.ramps.iter().flat_map(|r| [r.t_start_s, r.t_end_s])
    }

    pub fn max_count(&self) -> u64 {
        self.ramps
            .iter()
            .map(|r| r.target)
            .fold(self.initial, u64::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_rounding_vector() {
        // Peer spec §9: ReplicaSchedule(9).ramp_to(0, 0, 9): count_at(4.5) = 4.5 → 4,
        // count_at(3.5) = 5.5 → 6 (half to even).
        let s = ReplicaSchedule::new(9).ramp_to(0, 0.0, 9.0).unwrap();
        assert_eq!(s.count_at(4.5), 4.5);
        assert_eq!(s.replicas_at(4.5), 4);
        assert_eq!(s.count_at(3.5), 5.5);
        assert_eq!(s.replicas_at(3.5), 6);
        assert_eq!(s.replicas_at(100.0), 0);
    }

    #[test]
    fn ramps_chain_and_reject_overlap() {
        let s = ReplicaSchedule::new(10)
            .ramp_to(20, 10.0, 20.0)
            .unwrap()
            .ramp_to(0, 20.0, 30.0)
            .unwrap()
            .ramp_to(5, 40.0, 40.0)
            .unwrap();
        assert_eq!(s.count_at(5.0), 10.0);
        assert_eq!(s.count_at(15.0), 15.0);
        assert_eq!(s.count_at(20.0), 20.0);
        assert_eq!(s.count_at(25.0), 10.0);
        assert_eq!(s.count_at(35.0), 0.0);
        assert_eq!(s.count_at(40.0), 5.0);
        assert_eq!(s.max_count(), 20);
        let err = s.clone().ramp_to(3, 25.0, 35.0).unwrap_err().to_string();
        assert!(err.contains("overlaps ramp to 0 over [20, 30] s"), "{err}");
        assert!(s.clone().ramp_to(3, 40.0, 41.0).is_err(), "same start");
        assert!(ReplicaSchedule::new(1).ramp_to(2, 5.0, 4.0).is_err());
    }
}
