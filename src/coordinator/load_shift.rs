//! Cross-site load shifting (the peer's `LoadShiftController`, GRID.md "Load shift"): when a
//! site's bus violates the voltage band and batch-size control is exhausted there (every model
//! at its smallest feasible batch for an under-voltage, its largest for an over-voltage),
//! replicas move between sites that serve the same model.
//!
//! Per step, from the latest grid state (monitored bus-phases only), each site in order:
//! - under-voltage (its bus's lowest phase < v_min), batch saturated at the minimum: the
//!   destination is the other site sharing a model, with at least `gpus_per_shift` free GPUs,
//!   whose bus has the highest lowest phase; `gpus_per_shift / gpus_per_replica` replicas (at
//!   least 1) of the shared model with the most GPUs per replica move there, if the site has
//!   that many running;
//! - over-voltage (highest phase > v_max), batch saturated at the maximum, at least
//!   `gpus_per_shift` free GPUs here: replicas move here from the sharing site whose bus has the
//!   lowest highest phase.
//!
//! Differences from the peer, on purpose: ties between models with as many GPUs per replica go
//! to the first label in sorted order (the peer picks from a Python set, whose order changes
//! between interpreter runs); a site whose bus has no monitored phase counts as 1.0 pu for its
//! own violation and as the worst candidate otherwise, as in the peer.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

use super::{
    Command, Component, Controller, DatacenterCommand, EventSource, Events, GridState, Seconds,
    SimView, SimulationClock,
};

/// A site the controller may shift between: its datacenter name, bus and models.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ShiftSite {
    pub(crate) datacenter: String,
    pub(crate) bus: String,
    pub(crate) models: Vec<String>,
}

/// A model's GPUs per replica and feasible batch sizes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ShiftModel {
    pub(crate) gpus_per_replica: u32,
    pub(crate) feasible_batch_sizes: Vec<u32>,
}

/// The load-shift controller.
#[derive(Debug, Clone)]
pub(crate) struct LoadShiftController {
    dt_s: Seconds,
    sites: Vec<ShiftSite>,
    models: BTreeMap<String, ShiftModel>,
    gpus_per_shift: u32,
    v_min: f64,
    v_max: f64,
}

/// A site's bus voltages in the latest state: (lowest, highest) monitored phase.
type Extremes = Option<(f64, f64)>;

impl LoadShiftController {
    pub(crate) fn new(
        dt_s: Seconds,
        sites: Vec<ShiftSite>,
        models: BTreeMap<String, ShiftModel>,
        gpus_per_shift: u32,
        v_min: f64,
        v_max: f64,
    ) -> Result<Self> {
        let field = "controllers.load-shift";
        if sites.len() < 2 {
            return Err(Error::config(
                field,
                "needs at least two sites ([[sites]] on grid.datacenter_buses)",
            ));
        }
        if gpus_per_shift == 0 || !(v_min < v_max) {
            return Err(Error::config(
                field,
                "needs gpus_per_shift ≥ 1 and v_min < v_max",
            ));
        }
        for s in &sites {
            if let Some(m) = s.models.iter().find(|m| !models.contains_key(*m)) {
                return Err(Error::config(
                    field,
                    format!(
                        "site {} serves {m:?}, which has no model entry",
                        s.datacenter
                    ),
                ));
            }
        }
        let sites = sites
            .into_iter()
            .map(|s| ShiftSite {
                bus: s.bus.to_ascii_lowercase(),
                ..s
            })
            .collect();
        Ok(LoadShiftController {
            dt_s,
            sites,
            models,
            gpus_per_shift,
            v_min,
            v_max,
        })
    }

    /// Each site's (lowest, highest) voltage over the monitored phases of its bus.
    fn extremes(&self, state: &GridState, monitored: &[(String, usize)]) -> Vec<Extremes> {
        self.sites
            .iter()
            .map(|s| {
                monitored
                    .iter()
                    .filter(|(b, _)| *b == s.bus)
                    .filter_map(|(b, p)| state.voltage(b, *p))
                    .fold(None, |acc: Extremes, v| match acc {
                        None => Some((v, v)),
                        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
                    })
            })
            .collect()
    }

    /// Every model of the site at its smallest (`at_min`) or largest feasible batch.
    fn batch_saturated(&self, view: &SimView<'_>, site: usize, at_min: bool) -> bool {
        let s = &self.sites[site];
        let Some(dc) = view.datacenter(&s.datacenter) else {
            return false;
        };
        let Some(state) = dc.state() else {
            return false;
        };
        for (label, m) in dc.model_labels().iter().zip(&state.models) {
            let Some(model) = self.models.get(label) else {
                continue;
            };
            let f = &model.feasible_batch_sizes;
            let (Some(lo), Some(hi)) = (f.iter().min(), f.iter().max()) else {
                continue;
            };
            if (at_min && m.batch_size > *lo) || (!at_min && m.batch_size < *hi) {
                return false;
            }
        }
        true
    }

    /// The shared model with the most GPUs per replica (ties: first label).
    fn pick_model(&self, a: usize, b: usize) -> Option<&str> {
        let other = &self.sites[b].models;
        let mut shared: Vec<&String> = self.sites[a]
            .models
            .iter()
            .filter(|m| other.contains(m))
            .collect();
        shared.sort();
        shared
            .into_iter()
            .rev()
            .max_by_key(|m| self.models[*m].gpus_per_replica)
            .map(String::as_str)
    }

    fn shares_model(&self, a: usize, b: usize) -> bool {
        self.sites[a]
            .models
            .iter()
            .any(|m| self.sites[b].models.contains(m))
    }

    fn free_gpus(&self, view: &SimView<'_>, site: usize) -> u64 {
        view.datacenter(&self.sites[site].datacenter)
            .and_then(|d| d.available_gpu_capacity())
            .unwrap_or(0)
    }

    fn running(&self, view: &SimView<'_>, site: usize, model: &str) -> u64 {
        let Some(dc) = view.datacenter(&self.sites[site].datacenter) else {
            return 0;
        };
        let i = dc.model_labels().iter().position(|l| l == model);
        match (i, dc.state()) {
            (Some(i), Some(s)) => s.models[i].active_replicas,
            _ => 0,
        }
    }

    /// The (source, destination, model, replicas) of a shift for `site`'s violation, if any.
    fn plan(
        &self,
        view: &SimView<'_>,
        site: usize,
        ext: &[Extremes],
    ) -> Option<(usize, usize, String, u64)> {
        let (vmin, vmax) = ext[site].unwrap_or((1.0, 1.0));
        let under = vmin < self.v_min;
        if !under && vmax <= self.v_max {
            return None;
        }
        if !self.batch_saturated(view, site, under) {
            return None;
        }
        let shift = self.gpus_per_shift as u64;
        let others = (0..self.sites.len()).filter(|&o| o != site && self.shares_model(site, o));
        let (src, dst) = if under {
            let mut best: Option<(usize, f64)> = None;
            for o in others.filter(|&o| self.free_gpus(view, o) >= shift) {
                let v = ext[o].map_or(0.0, |e| e.0);
                if best.is_none_or(|(_, bv)| v > bv) {
                    best = Some((o, v));
                }
            }
            (site, best?.0)
        } else {
            if self.free_gpus(view, site) < shift {
                return None;
            }
            let mut best: Option<(usize, f64)> = None;
            for o in others {
                let v = ext[o].map_or(2.0, |e| e.1);
                if best.map_or(v < 2.0, |(_, bv)| v < bv) {
                    best = Some((o, v));
                }
            }
            (best?.0, site)
        };
        let model = self.pick_model(site, if under { dst } else { src })?;
        let replicas = (shift / self.models[model].gpus_per_replica.max(1) as u64).max(1);
        if self.running(view, src, model) < replicas {
            return None;
        }
        Some((src, dst, model.to_string(), replicas))
    }
}

impl Component for LoadShiftController {
    fn dt_s(&self) -> Seconds {
        self.dt_s
    }
    fn reset(&mut self) {}
}

impl Controller for LoadShiftController {
    fn name(&self) -> &str {
        "load-shift"
    }

    fn check(&self, view: &SimView<'_>) -> Result<()> {
        if view.grid.is_none() {
            return Err(Error::config(
                "controllers.load-shift",
                "needs a [grid] section",
            ));
        }
        for s in &self.sites {
            let dc = view.datacenter(&s.datacenter).ok_or_else(|| {
                Error::config(
                    "controllers.load-shift",
                    format!("no datacenter named {:?}", s.datacenter),
                )
            })?;
            if let Some(m) = s.models.iter().find(|m| !dc.model_labels().contains(m)) {
                return Err(Error::config(
                    "controllers.load-shift",
                    format!("datacenter {} serves no model {m:?}", s.datacenter),
                ));
            }
        }
        Ok(())
    }

    fn step(
        &mut self,
        _clock: &SimulationClock,
        view: &SimView<'_>,
        events: &mut Events,
    ) -> Result<Vec<Command>> {
        let (Some(state), Some(grid)) = (view.grid_state, view.grid) else {
            return Ok(Vec::new());
        };
        let ext = self.extremes(state, &grid.monitored());
        let mut commands = Vec::new();
        for site in 0..self.sites.len() {
            let Some((src, dst, model, replicas)) = self.plan(view, site, &ext) else {
                continue;
            };
            let (from, to) = (&self.sites[src].datacenter, &self.sites[dst].datacenter);
            events.emit(
                EventSource::Controller,
                "controller.load_shift",
                serde_json::json!({
                    "violated": self.sites[site].datacenter,
                    "from": from, "to": to, "model": model, "replicas": replicas,
                }),
            );
            for (target, delta) in [(from, -(replicas as i64)), (to, replicas as i64)] {
                commands.push(Command::Datacenter {
                    target: target.clone(),
                    command: DatacenterCommand::ShiftReplicas {
                        model: model.clone(),
                        replica_delta: delta,
                    },
                });
            }
        }
        Ok(commands)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::{DcState, Grid, ModelState, SimulationClock, ThreePhase};

    /// A site's datacenter as the controller sees it.
    struct Site {
        name: String,
        labels: Vec<String>,
        state: DcState,
        free: u64,
    }

    impl Component for Site {
        fn dt_s(&self) -> Seconds {
            Seconds::from_integer(1)
        }
        fn reset(&mut self) {}
    }

    impl crate::coordinator::Datacenter for Site {
        fn name(&self) -> &str {
            &self.name
        }
        fn model_labels(&self) -> &[String] {
            &self.labels
        }
        fn step(&mut self, _: &SimulationClock, _: &mut Events) -> Result<()> {
            Ok(())
        }
        fn state(&self) -> Option<&DcState> {
            Some(&self.state)
        }
        fn apply_control(&mut self, _: &DatacenterCommand, _: &mut Events) -> Result<()> {
            Ok(())
        }
        fn available_gpu_capacity(&self) -> Option<u64> {
            Some(self.free)
        }
    }

    struct Feeder;
    impl Component for Feeder {
        fn dt_s(&self) -> Seconds {
            Seconds::from_integer(1)
        }
        fn reset(&mut self) {}
    }
    impl Grid for Feeder {
        fn step(
            &mut self,
            _: &SimulationClock,
            _: &[Vec<ThreePhase>],
            _: &mut Events,
        ) -> Result<GridState> {
            Ok(GridState::default())
        }
        fn apply_control(&mut self, _: &super::super::GridCommand, _: &mut Events) -> Result<()> {
            Ok(())
        }
        fn monitored(&self) -> Vec<(String, usize)> {
            ["b1", "b2", "b3"]
                .iter()
                .flat_map(|b| (1..=3).map(move |p| (b.to_string(), p)))
                .collect()
        }
    }

    /// Sites x, y, z on buses b1..b3; models "big" (8 GPUs/replica) and "small" (1).
    fn sites(batches: [u32; 3], free: [u64; 3]) -> Vec<Box<dyn crate::coordinator::Datacenter>> {
        ["x", "y", "z"]
            .iter()
            .zip(batches)
            .zip(free)
            .map(|((n, b), free)| {
                let model = |_| ModelState {
                    batch_size: b,
                    active_replicas: 40,
                    ..ModelState::default()
                };
                Box::new(Site {
                    name: n.to_string(),
                    labels: vec!["big".into(), "small".into()],
                    state: DcState {
                        models: (0..2).map(model).collect(),
                        ..DcState::default()
                    },
                    free,
                }) as Box<dyn crate::coordinator::Datacenter>
            })
            .collect()
    }

    fn controller() -> LoadShiftController {
        let models = [("big", 8), ("small", 1)]
            .iter()
            .map(|(l, g)| {
                (
                    l.to_string(),
                    ShiftModel {
                        gpus_per_replica: *g,
                        feasible_batch_sizes: vec![8, 16, 32, 64],
                    },
                )
            })
            .collect();
        let sites = [("x", "B1"), ("y", "b2"), ("z", "b3")]
            .iter()
            .map(|(d, b)| ShiftSite {
                datacenter: d.to_string(),
                bus: b.to_string(),
                models: vec!["big".into(), "small".into()],
            })
            .collect();
        LoadShiftController::new(Seconds::from_integer(1), sites, models, 16, 0.95, 1.05).unwrap()
    }

    fn state(v: [[f64; 3]; 3]) -> GridState {
        GridState {
            voltages_pu: ["b1", "b2", "b3"]
                .iter()
                .zip(v)
                .map(|(b, v)| ((*b).into(), v))
                .collect(),
            ..GridState::default()
        }
    }

    fn shifts(
        c: &mut LoadShiftController,
        dcs: &[Box<dyn crate::coordinator::Datacenter>],
        v: [[f64; 3]; 3],
    ) -> Vec<(String, String, i64)> {
        let st = state(v);
        let view = SimView {
            datacenters: dcs,
            grid_state: Some(&st),
            grid: Some(&Feeder),
        };
        let clock = SimulationClock::new(Seconds::from_integer(1)).unwrap();
        c.step(&clock, &view, &mut Events::default())
            .unwrap()
            .into_iter()
            .map(|cmd| match cmd {
                Command::Datacenter {
                    target,
                    command:
                        DatacenterCommand::ShiftReplicas {
                            model,
                            replica_delta,
                        },
                } => (target, model, replica_delta),
                c => panic!("{c:?}"),
            })
            .collect()
    }

    const OK: [f64; 3] = [1.0, 1.0, 1.0];

    #[test]
    fn under_voltage_moves_the_biggest_model_to_the_highest_site() {
        let mut c = controller();
        // x sags (0.94) at the smallest batch; y's lowest phase 0.97, z's 0.99: z receives
        // 16 / 8 = 2 replicas of "big" (8 GPUs per replica beats 1).
        let dcs = sites([8, 8, 8], [100, 100, 100]);
        let got = shifts(
            &mut c,
            &dcs,
            [[0.94, 1.0, 1.0], [0.97, 1.0, 1.0], [0.99, 1.0, 1.0]],
        );
        assert_eq!(
            got,
            vec![
                ("x".into(), "big".into(), -2),
                ("z".into(), "big".into(), 2)
            ]
        );
        // z without 16 free GPUs: y instead.
        let dcs = sites([8, 8, 8], [100, 100, 15]);
        let got = shifts(
            &mut c,
            &dcs,
            [[0.94, 1.0, 1.0], [0.97, 1.0, 1.0], [0.99, 1.0, 1.0]],
        );
        assert_eq!(got[1].0, "y");
        // Batch not at its minimum at x: the batch controller still has room, nothing moves.
        let dcs = sites([16, 8, 8], [100, 100, 100]);
        assert!(shifts(&mut c, &dcs, [[0.94, 1.0, 1.0], OK, OK]).is_empty());
        // No violation: nothing.
        let dcs = sites([8, 8, 8], [100, 100, 100]);
        assert!(shifts(&mut c, &dcs, [OK, OK, OK]).is_empty());
    }

    #[test]
    fn over_voltage_pulls_from_the_lowest_site() {
        let mut c = controller();
        // y over 1.06 at the largest batch with room: pulls from the site whose highest phase
        // is lowest (x 1.01 vs z 1.03).
        let dcs = sites([64, 64, 64], [100, 100, 100]);
        let got = shifts(
            &mut c,
            &dcs,
            [[1.0, 1.01, 1.0], [1.0, 1.06, 1.0], [1.03, 1.0, 1.0]],
        );
        assert_eq!(
            got,
            vec![
                ("x".into(), "big".into(), -2),
                ("y".into(), "big".into(), 2)
            ]
        );
        // y without room: nothing.
        let dcs = sites([64, 64, 64], [100, 10, 100]);
        assert!(shifts(&mut c, &dcs, [OK, [1.0, 1.06, 1.0], OK]).is_empty());
    }
}
