//! Controllers that need no grid: [`NoopController`] and [`BatchSizeScheduleController`]
//! (peer: `BatchSizeChange(b, ramp_up_rate).at(t) | …`).

use std::collections::BTreeMap;

use super::{
    Command, Component, Controller, DatacenterCommand, EventSource, Events, Seconds, SimView,
    SimulationClock,
};
use crate::error::{Error, Result};

/// Does nothing (a baseline, and a tick source).
#[derive(Debug, Clone)]
pub struct NoopController {
    pub dt_s: Seconds,
}

impl Component for NoopController {
    fn dt_s(&self) -> Seconds {
        self.dt_s
    }
    fn reset(&mut self) {}
}

impl Controller for NoopController {
    fn name(&self) -> &str {
        "noop"
    }
    fn check(&self, _: &SimView<'_>) -> Result<()> {
        Ok(())
    }
    fn step(
        &mut self,
        _: &SimulationClock,
        _: &SimView<'_>,
        _: &mut Events,
    ) -> Result<Vec<Command>> {
        Ok(Vec::new())
    }
}

/// One scheduled batch-size change.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchSizeChange {
    pub at_s: f64,
    pub batch_size: u32,
    /// Ramp rate (batch sizes per second); 0 = immediate. The offline datacenter only accepts 0.
    pub ramp_up_rate: f64,
}

/// A model's schedule: changes sorted by time, no two at the same time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchSizeSchedule {
    changes: Vec<BatchSizeChange>,
}

impl BatchSizeSchedule {
    /// Validates and sorts: batch > 0, ramp ≥ 0, finite times ≥ 0, no duplicate time.
    pub fn new(field: &str, mut changes: Vec<BatchSizeChange>) -> Result<Self> {
        for c in &changes {
            if c.batch_size == 0 {
                return Err(Error::config(
                    field,
                    format!("batch size 0 at t = {} s (need > 0)", c.at_s),
                ));
            }
            if !(c.ramp_up_rate >= 0.0 && c.ramp_up_rate.is_finite()) {
                return Err(Error::config(
                    field,
                    format!(
                        "ramp_up_rate {} at t = {} s (need ≥ 0)",
                        c.ramp_up_rate, c.at_s
                    ),
                ));
            }
            if !(c.at_s >= 0.0 && c.at_s.is_finite()) {
                return Err(Error::config(
                    field,
                    format!("time {} s (need ≥ 0)", c.at_s),
                ));
            }
        }
        changes.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
        if let Some(w) = changes.windows(2).find(|w| w[0].at_s == w[1].at_s) {
            return Err(Error::config(
                field,
                format!(
                    "two changes at the same time t = {} s (batch {} and {})",
                    w[0].at_s, w[0].batch_size, w[1].batch_size
                ),
            ));
        }
        Ok(BatchSizeSchedule { changes })
    }
    pub fn changes(&self) -> &[BatchSizeChange] {
        &self.changes
    }
}

/// Fires each model's scheduled batch sizes when due (all entries with t ≤ now + 1e-12 not yet
/// fired; the last wins) as one `SetBatchSize` to its datacenter.
#[derive(Debug, Clone)]
pub struct BatchSizeScheduleController {
    pub(crate) dt_s: Seconds,
    pub(crate) datacenter: String,
    schedules: BTreeMap<String, BatchSizeSchedule>,
    next: BTreeMap<String, usize>,
}

impl BatchSizeScheduleController {
    pub fn new(
        dt_s: Seconds,
        datacenter: &str,
        schedules: BTreeMap<String, BatchSizeSchedule>,
    ) -> Self {
        let next = schedules.keys().map(|k| (k.clone(), 0)).collect();
        BatchSizeScheduleController {
            dt_s,
            datacenter: datacenter.to_string(),
            schedules,
            next,
        }
    }
}

impl Component for BatchSizeScheduleController {
    fn dt_s(&self) -> Seconds {
        self.dt_s
    }
    fn reset(&mut self) {
        for v in self.next.values_mut() {
            *v = 0;
        }
    }
}

impl Controller for BatchSizeScheduleController {
    fn name(&self) -> &str {
        "batch-schedule"
    }
    fn check(&self, view: &SimView<'_>) -> Result<()> {
        let dc = view.datacenter(&self.datacenter).ok_or_else(|| {
            Error::config(
                "controllers.batch-schedule.datacenter",
                format!("no datacenter named {:?}", self.datacenter),
            )
        })?;
        for label in self.schedules.keys() {
            if !dc.model_labels().iter().any(|l| l == label) {
                return Err(Error::config(
                    "controllers.batch-schedule",
                    format!(
                        "model {label:?} is not served by datacenter {:?}",
                        self.datacenter
                    ),
                ));
            }
        }
        Ok(())
    }
    fn step(
        &mut self,
        clock: &SimulationClock,
        _: &SimView<'_>,
        events: &mut Events,
    ) -> Result<Vec<Command>> {
        let now = clock.time_s() + 1e-12;
        let mut batch = Vec::new();
        let mut ramp = Vec::new();
        for (label, schedule) in &self.schedules {
            let i = self.next.get_mut(label).expect("one cursor per schedule");
            let mut fired = None;
            while *i < schedule.changes.len() && schedule.changes[*i].at_s <= now {
                fired = Some(schedule.changes[*i]);
                *i += 1;
            }
            if let Some(c) = fired {
                batch.push((label.clone(), c.batch_size));
                if c.ramp_up_rate > 0.0 {
                    ramp.push((label.clone(), c.ramp_up_rate));
                }
            }
        }
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        events.emit(
            EventSource::Controller,
            "controller.batch_schedule.fired",
            serde_json::json!({ "batch_size_by_model": batch.iter().cloned().collect::<BTreeMap<_, _>>() }),
        );
        Ok(vec![Command::Datacenter {
            target: self.datacenter.clone(),
            command: DatacenterCommand::SetBatchSize {
                batch_size_by_model: batch,
                ramp_up_rate_by_model: ramp,
            },
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_rejects_duplicate_times_and_bad_values() {
        let c = |t, b| BatchSizeChange {
            at_s: t,
            batch_size: b,
            ramp_up_rate: 0.0,
        };
        let err =
            BatchSizeSchedule::new("s", vec![c(10.0, 64), c(5.0, 32), c(10.0, 128)]).unwrap_err();
        assert!(err.to_string().contains("same time t = 10 s"), "{err}");
        assert!(BatchSizeSchedule::new("s", vec![c(1.0, 0)]).is_err());
        assert!(BatchSizeSchedule::new(
            "s",
            vec![BatchSizeChange {
                ramp_up_rate: -1.0,
                ..c(1.0, 8)
            }]
        )
        .is_err());
        let s = BatchSizeSchedule::new("s", vec![c(10.0, 64), c(5.0, 32)]).unwrap();
        assert_eq!(s.changes()[0].at_s, 5.0);
    }
}
