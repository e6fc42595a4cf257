//! Grid metrics of a run (GRID.md "Metrics"), accumulated snapshot by snapshot: violation per
//! snapshot Σ over monitored bus-phases of max(v_min − v, 0) + max(v − v_max, 0), times the grid
//! step (pu·s); time with any violation; worst voltages and where; tap operations (steps moved,
//! summed over regulators).

use serde::Serialize;

use super::GridState;

/// What the outputs know about a run's grid.
#[derive(Debug, Clone, PartialEq)]
pub struct GridOutputSpec {
    /// Monitored (bus, phase 1..3).
    pub(crate) monitored: Vec<(String, usize)>,
    pub(crate) v_min: f64,
    pub(crate) v_max: f64,
    /// The grid's step (s).
    pub(crate) dt_s: f64,
}

/// The run's grid figures (written to `grid_metrics.json` and the summary line).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GridMetrics {
    pub(crate) grid_steps: u64,
    pub(crate) v_min: f64,
    pub(crate) v_max: f64,
    monitored_bus_phases: usize,
    violation_integral_pu_s: f64,
    time_in_violation_s: f64,
    min_voltage_pu: f64,
    min_voltage_node: String,
    max_voltage_pu: f64,
    max_voltage_node: String,
    /// Regulator steps moved over the run (|Δtap| / 0.00625, summed).
    tap_operations: u64,
}

/// Accumulates [`GridMetrics`] over grid snapshots.
#[derive(Debug, Clone)]
pub struct GridMetricsAccumulator {
    spec: GridOutputSpec,
    /// Index of each monitored row in the snapshot's bus list (found at the first snapshot).
    index: Vec<Option<(usize, usize)>>,
    last_taps: Option<Vec<f64>>,
    m: GridMetrics,
}

impl GridMetricsAccumulator {
    pub(crate) fn new(spec: GridOutputSpec) -> Self {
        let m = GridMetrics {
            grid_steps: 0,
            v_min: spec.v_min,
            v_max: spec.v_max,
            monitored_bus_phases: spec.monitored.len(),
            violation_integral_pu_s: 0.0,
            time_in_violation_s: 0.0,
            min_voltage_pu: f64::INFINITY,
            min_voltage_node: String::new(),
            max_voltage_pu: f64::NEG_INFINITY,
            max_voltage_node: String::new(),
            tap_operations: 0,
        };
        GridMetricsAccumulator {
            spec,
            index: Vec::new(),
            last_taps: None,
            m,
        }
    }

    pub(crate) fn spec(&self) -> &GridOutputSpec {
        &self.spec
    }

    /// The monitored voltages of a snapshot, in [`GridOutputSpec::monitored`] order.
    pub(crate) fn monitored_voltages(&mut self, state: &GridState) -> Vec<f64> {
        if self.index.len() != self.spec.monitored.len() {
            self.index = self
                .spec
                .monitored
                .iter()
                .map(|(bus, phase)| {
                    state
                        .voltages_pu
                        .iter()
                        .position(|(b, _)| **b == **bus)
                        .map(|i| (i, phase - 1))
                })
                .collect();
        }
        self.index
            .iter()
            .map(|ix| ix.map_or(f64::NAN, |(i, p)| state.voltages_pu[i].1[p]))
            .collect()
    }

    pub(crate) fn add(&mut self, state: &GridState) {
        let v = self.monitored_voltages(state);
        let (lo, hi) = (self.spec.v_min, self.spec.v_max);
        let mut violation = 0.0;
        for (r, &x) in v.iter().enumerate() {
            if !x.is_finite() {
                continue;
            }
            violation += (lo - x).max(0.0) + (x - hi).max(0.0);
            let node = || {
                let (b, p) = &self.spec.monitored[r];
                format!("{b}.{p}")
            };
            if x < self.m.min_voltage_pu {
                self.m.min_voltage_pu = x;
                self.m.min_voltage_node = node();
            }
            if x > self.m.max_voltage_pu {
                self.m.max_voltage_pu = x;
                self.m.max_voltage_node = node();
            }
        }
        self.m.violation_integral_pu_s += violation * self.spec.dt_s;
        if violation > 0.0 {
            self.m.time_in_violation_s += self.spec.dt_s;
        }
        let taps: Vec<f64> = state.tap_positions.iter().map(|(_, t)| *t).collect();
        if let Some(prev) = &self.last_taps {
            for (a, b) in prev.iter().zip(&taps) {
                self.m.tap_operations += ((a - b).abs() / 0.00625).round() as u64;
            }
        }
        self.last_taps = Some(taps);
        self.m.grid_steps += 1;
    }

    pub fn metrics(&self) -> GridMetrics {
        self.m.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violation_integral_time_and_taps_known_answer() {
        let spec = GridOutputSpec {
            monitored: vec![("a".into(), 1), ("a".into(), 2), ("b".into(), 1)],
            v_min: 0.95,
            v_max: 1.05,
            dt_s: 0.1,
        };
        let mut acc = GridMetricsAccumulator::new(spec);
        let snap = |va: [f64; 3], vb: [f64; 3], tap: f64| GridState {
            time_s: 0.0,
            voltages_pu: vec![("a".into(), va), ("b".into(), vb)],
            tap_positions: vec![("r".into(), tap)],
            storage: vec![],
        };
        // 0.94 → 0.01 under; 1.07 → 0.02 over; phase 3 of a is not monitored.
        acc.add(&snap([0.94, 1.07, 0.5], [1.0, f64::NAN, f64::NAN], 1.0));
        acc.add(&snap([1.0, 1.0, 0.5], [1.0, f64::NAN, f64::NAN], 1.0125));
        let m = acc.metrics();
        assert!((m.violation_integral_pu_s - 0.03 * 0.1).abs() < 1e-15);
        assert!((m.time_in_violation_s - 0.1).abs() < 1e-15);
        assert_eq!(m.tap_operations, 2);
        assert_eq!(
            (m.min_voltage_pu, m.min_voltage_node.as_str()),
            (0.94, "a.1")
        );
        assert_eq!(
            (m.max_voltage_pu, m.max_voltage_node.as_str()),
            (1.07, "a.2")
        );
    }
}
