//! Simple grid controllers with the peer's semantics (GRID.md "Controllers"):
//! - [`RuleBasedController`]: the worst under- and over-voltage over the monitored bus-phases
//!   (optionally a zone) give a pressure (under if above the deadband, else −over if above it,
//!   else nothing); log2 batch ← x − step·pressure clamped to the model's range, no increase
//!   while the model's ITL exceeds its deadline, snapped to the model's feasible sizes; a
//!   command only when a batch changes.
//! - [`TapScheduleController`]: every entry with t ≤ now + 1e-12 fires, merged (later wins),
//!   as one `SetTaps` (regulator names, or a/b/c for the regulator on that phase).

use std::collections::BTreeMap;

use crate::error::{Error, Result};

use super::{
    Command, Component, Controller, DatacenterCommand, EventSource, Events, GridCommand, Seconds,
    SimView, SimulationClock,
};

/// The peer's `RuleBasedConfig`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RuleBasedConfig {
    /// log2(batch) change per pu of violation.
    pub(crate) step_size: f64,
    pub(crate) v_min: f64,
    pub(crate) v_max: f64,
    /// Violations at or below this (pu) are ignored.
    pub(crate) deadband: f64,
    /// No batch increase while the model's ITL exceeds its deadline.
    pub(crate) latency_guard: bool,
}

impl Default for RuleBasedConfig {
    fn default() -> Self {
        RuleBasedConfig {
            step_size: 10.0,
            v_min: 0.95,
            v_max: 1.05,
            deadband: 1e-4,
            latency_guard: true,
        }
    }
}

/// A model the rule-based controller steers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RuleBasedModel {
    pub(crate) label: String,
    pub(crate) feasible_batch_sizes: Vec<u32>,
    pub(crate) itl_deadline_s: f64,
    pub(crate) initial_batch_size: u32,
}

/// The rule-based batch-size controller of one datacenter.
#[derive(Debug, Clone)]
pub(crate) struct RuleBasedController {
    dt_s: Seconds,
    datacenter: String,
    cfg: RuleBasedConfig,
    models: Vec<RuleBasedModel>,
    /// Buses not looked at (lowercase).
    exclude: Vec<String>,
    /// Only these buses, when given (lowercase).
    zone: Option<Vec<String>>,
    x: Vec<f64>,
}

impl RuleBasedController {
    pub(crate) fn new(
        dt_s: Seconds,
        datacenter: &str,
        mut models: Vec<RuleBasedModel>,
        cfg: RuleBasedConfig,
        exclude: Vec<String>,
        zone: Option<Vec<String>>,
    ) -> Result<Self> {
        if !(cfg.v_min < cfg.v_max) || !(cfg.step_size > 0.0) || !(cfg.deadband >= 0.0) {
            return Err(Error::config(
                "controllers.rule-based",
                "needs v_min < v_max, step_size > 0 and deadband ≥ 0",
            ));
        }
        for m in &mut models {
            m.feasible_batch_sizes.sort_unstable();
            m.feasible_batch_sizes.dedup();
            if m.feasible_batch_sizes.first().is_none_or(|&b| b == 0) {
                return Err(Error::config(
                    "controllers.rule-based",
                    format!("model {:?} has no feasible batch size ≥ 1", m.label),
                ));
            }
        }
        let lower = |v: Vec<String>| v.into_iter().map(|b| b.to_ascii_lowercase()).collect();
        let mut c = RuleBasedController {
            dt_s,
            datacenter: datacenter.to_string(),
            cfg,
            models,
            exclude: lower(exclude),
            zone: zone.map(lower),
            x: Vec::new(),
        };
        c.reset();
        Ok(c)
    }

    /// The signed pressure of a snapshot: worst under-voltage if above the deadband, else
    /// minus the worst over-voltage if above it, else 0.
    pub(crate) fn pressure(&self, voltages_pu: &[(std::sync::Arc<str>, [f64; 3])]) -> f64 {
        let (mut under, mut over) = (0.0f64, 0.0f64);
        for (bus, abc) in voltages_pu {
            let named = |list: &[String]| list.iter().any(|b| **b == **bus);
            if named(&self.exclude) || self.zone.as_deref().is_some_and(|z| !named(z)) {
                continue;
            }
            for &v in abc.iter().filter(|v| v.is_finite()) {
                if v < self.cfg.v_min {
                    under = under.max(self.cfg.v_min - v);
                } else if v > self.cfg.v_max {
                    over = over.max(v - self.cfg.v_max);
                }
            }
        }
        if under > self.cfg.deadband {
            under
        } else if over > self.cfg.deadband {
            -over
        } else {
            0.0
        }
    }
}

/// The feasible size nearest 2^x (ties to the smaller), `sizes` sorted.
fn nearest_feasible(sizes: &[u32], x: f64) -> u32 {
    let target = 2f64.powf(x);
    let mut best = sizes[0];
    for &b in sizes {
        if ((b as f64) - target).abs() < ((best as f64) - target).abs() {
            best = b;
        }
    }
    best
}

impl Component for RuleBasedController {
    fn dt_s(&self) -> Seconds {
        self.dt_s
    }
    fn reset(&mut self) {
        self.x = self
            .models
            .iter()
            .map(|m| (m.initial_batch_size.max(1) as f64).log2())
            .collect();
    }
}

impl Controller for RuleBasedController {
    fn name(&self) -> &str {
        "rule-based"
    }
    fn check(&self, view: &SimView<'_>) -> Result<()> {
        let dc = view.datacenter(&self.datacenter).ok_or_else(|| {
            Error::config(
                "controllers.rule-based.datacenter",
                format!("no datacenter named {:?}", self.datacenter),
            )
        })?;
        for m in &self.models {
            if !dc.model_labels().contains(&m.label) {
                return Err(Error::config(
                    "controllers.rule-based",
                    format!("model {:?} is not served by {:?}", m.label, self.datacenter),
                ));
            }
        }
        if view.grid.is_none() {
            return Err(Error::config("controllers.rule-based", "needs a [grid]"));
        }
        Ok(())
    }
    fn step(
        &mut self,
        clock: &SimulationClock,
        view: &SimView<'_>,
        events: &mut Events,
    ) -> Result<Vec<Command>> {
        let Some(state) = view.grid_state else {
            return Ok(Vec::new());
        };
        let pressure = self.pressure(&state.voltages_pu);
        if pressure == 0.0 {
            return Ok(Vec::new());
        }
        let dc = view
            .datacenter(&self.datacenter)
            .ok_or_else(|| Error::config("controllers.rule-based", "datacenter vanished"))?;
        let labels = dc.model_labels();
        let dc_state = dc.state();
        let mut batch = Vec::new();
        let mut changed = false;
        for (m, model) in self.models.iter().enumerate() {
            let k = labels
                .iter()
                .position(|l| *l == model.label)
                .expect("checked");
            let sizes = &model.feasible_batch_sizes;
            let lo = (sizes[0] as f64).log2();
            let hi = (*sizes.last().unwrap() as f64).log2();
            let delta = -self.cfg.step_size * pressure;
            let mut x = (self.x[m] + delta).clamp(lo, hi);
            let itl = dc_state.map_or(f64::NAN, |s| s.models[k].observed_itl_s);
            if self.cfg.latency_guard
                && delta > 0.0
                && itl.is_finite()
                && itl > model.itl_deadline_s
            {
                x = self.x[m];
            }
            self.x[m] = x;
            let b = nearest_feasible(sizes, x);
            let current = dc_state.map_or(model.initial_batch_size, |s| s.models[k].batch_size);
            changed |= b != current;
            batch.push((model.label.clone(), b));
        }
        if !changed {
            return Ok(Vec::new());
        }
        events.emit(
            EventSource::Controller,
            "controller.rule_based.step",
            serde_json::json!({
                "time_s": clock.time_s(),
                "pressure": pressure,
                "batch": batch.iter().cloned().collect::<BTreeMap<_, _>>(),
            }),
        );
        Ok(vec![Command::Datacenter {
            target: self.datacenter.clone(),
            command: DatacenterCommand::SetBatchSize {
                batch_size_by_model: batch,
                ramp_up_rate_by_model: Vec::new(),
            },
        }])
    }
}

/// One tap-schedule entry: at `at_s`, these regulators (or a/b/c) to these taps (pu).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TapChange {
    pub(crate) at_s: f64,
    pub(crate) taps: Vec<(String, f64)>,
}

/// Fires scheduled tap changes.
#[derive(Debug, Clone)]
pub(crate) struct TapScheduleController {
    dt_s: Seconds,
    entries: Vec<TapChange>,
    next: usize,
}

impl TapScheduleController {
    /// Entries are sorted by time (stable: same-time entries keep their order, later wins).
    pub(crate) fn new(dt_s: Seconds, mut entries: Vec<TapChange>) -> Result<Self> {
        for e in &entries {
            if !e.at_s.is_finite() || e.at_s < 0.0 {
                return Err(Error::config(
                    "controllers.tap-schedule",
                    format!("time {} s must be finite and ≥ 0", e.at_s),
                ));
            }
            for (reg, tap) in &e.taps {
                if !(*tap > 0.5 && *tap < 1.5) {
                    return Err(Error::config(
                        "controllers.tap-schedule",
                        format!(
                            "tap {tap} pu of {reg} at {} s is outside (0.5, 1.5)",
                            e.at_s
                        ),
                    ));
                }
            }
        }
        entries.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
        Ok(TapScheduleController {
            dt_s,
            entries,
            next: 0,
        })
    }
}

impl Component for TapScheduleController {
    fn dt_s(&self) -> Seconds {
        self.dt_s
    }
    fn reset(&mut self) {
        self.next = 0;
    }
}

impl Controller for TapScheduleController {
    fn name(&self) -> &str {
        "tap-schedule"
    }
    fn check(&self, view: &SimView<'_>) -> Result<()> {
        if view.grid.is_none() {
            return Err(Error::config("controllers.tap-schedule", "needs a [grid]"));
        }
        Ok(())
    }
    fn step(
        &mut self,
        clock: &SimulationClock,
        _view: &SimView<'_>,
        events: &mut Events,
    ) -> Result<Vec<Command>> {
        let now = clock.time_s() + 1e-12;
        let mut merged: Vec<(String, f64)> = Vec::new();
        while self.next < self.entries.len() && self.entries[self.next].at_s <= now {
            for (reg, tap) in &self.entries[self.next].taps {
                match merged.iter_mut().find(|(r, _)| r == reg) {
                    Some(slot) => slot.1 = *tap,
                    None => merged.push((reg.clone(), *tap)),
                }
            }
            self.next += 1;
        }
        if merged.is_empty() {
            return Ok(Vec::new());
        }
        events.emit(
            EventSource::Controller,
            "controller.tap_schedule.fired",
            serde_json::json!({ "taps": merged.iter().cloned().collect::<BTreeMap<_, _>>() }),
        );
        Ok(vec![Command::Grid(GridCommand::SetTaps(merged))])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use num_rational::Ratio;

    fn rule() -> RuleBasedController {
        RuleBasedController::new(
            Ratio::from_integer(1),
            "dc",
            vec![RuleBasedModel {
                label: "m".into(),
                feasible_batch_sizes: vec![8, 16, 32, 64, 128],
                itl_deadline_s: 0.05,
                initial_batch_size: 64,
            }],
            RuleBasedConfig::default(),
            vec!["src".into()],
            None,
        )
        .unwrap()
    }

    #[test]
    fn pressure_under_first_then_over_deadband_and_exclusions() {
        let c = rule();
        let snap = |v: [f64; 3]| -> Vec<(std::sync::Arc<str>, [f64; 3])> {
            vec![("src".into(), [0.5; 3]), ("b".into(), v)]
        };
        // Under-voltage 0.02 wins over an over-voltage of 0.03.
        assert!((c.pressure(&snap([0.93, 1.08, f64::NAN])) - 0.02).abs() < 1e-12);
        assert!((c.pressure(&snap([1.0, 1.08, 1.0])) + 0.03).abs() < 1e-12);
        // Inside the band (the excluded bus at 0.5 pu does not count) and at the deadband.
        assert_eq!(c.pressure(&snap([1.0, 1.0, 1.0])), 0.0);
        assert_eq!(c.pressure(&snap([0.94995, 1.0, 1.0])), 0.0);
    }

    /// A dip of 0.04 pu with step 10: log2 batch 6 → 5.6, 2^5.6 = 48.5, which is nearer 64
    /// (15.5 away) than 32 (16.5 away): 64 stays; a second dip → 5.2, 2^5.2 = 36.8 → 32.
    #[test]
    fn dip_lowers_the_batch_as_specified() {
        let c = rule();
        let x0 = c.x[0];
        assert_eq!(x0, 6.0);
        let x1 = x0 - 10.0 * 0.04;
        assert_eq!(nearest_feasible(&[8, 16, 32, 64, 128], x1), 64);
        let x2 = x1 - 10.0 * 0.04;
        assert_eq!(nearest_feasible(&[8, 16, 32, 64, 128], x2), 32);
        // Ties go to the smaller size: 2^x = 24 is 8 from both 16 and 32.
        assert_eq!(nearest_feasible(&[8, 16, 32, 64, 128], 24f64.log2()), 16);
    }

    #[test]
    fn tap_schedule_fires_merged_at_the_right_tick() {
        let mut t = TapScheduleController::new(
            Ratio::from_integer(1),
            vec![
                TapChange {
                    at_s: 2.0,
                    taps: vec![("creg1a".into(), 1.05)],
                },
                TapChange {
                    at_s: 1.5,
                    taps: vec![("creg1a".into(), 1.0), ("a".into(), 1.01)],
                },
            ],
        )
        .unwrap();
        let view = SimView {
            datacenters: &[],
            grid_state: None,
            grid: None,
        };
        let mut events = Events::default();
        let mut clock = SimulationClock::new(Ratio::from_integer(1)).unwrap();
        assert!(t.step(&clock, &view, &mut events).unwrap().is_empty()); // t = 0
        clock.advance();
        assert!(t.step(&clock, &view, &mut events).unwrap().is_empty()); // t = 1
        clock.advance();
        // t = 2: both entries fire, merged, the later (t = 2) value of creg1a wins.
        let cmds = t.step(&clock, &view, &mut events).unwrap();
        assert_eq!(
            cmds,
            vec![Command::Grid(GridCommand::SetTaps(vec![
                ("creg1a".into(), 1.05),
                ("a".into(), 1.01)
            ]))]
        );
        clock.advance();
        assert!(t.step(&clock, &view, &mut events).unwrap().is_empty());
        assert!(TapScheduleController::new(
            Ratio::from_integer(1),
            vec![TapChange {
                at_s: 1.0,
                taps: vec![("r".into(), 2.0)]
            }]
        )
        .is_err());
    }
}
