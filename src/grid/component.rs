//! The feeder as the coordinator's grid ([`crate::coordinator::Grid`]): each grid step sets
//! every datacenter's three single-phase loads to its last power sample (W/1000 kW per phase,
//! kvar from the power factor; the previous power when no sample came), solves warm-started
//! from the previous step, and reports every bus's per-phase voltage and the regulator taps.
//! Taps change by command; H comes from [`super::sensitivity::analytic`] (no re-solve).

use std::path::PathBuf;

use crate::coordinator::{
    Component, Events, Grid, GridCommand, GridState, Seconds, SimulationClock, StorageReading,
    ThreePhase, VoltageSensitivity,
};
use crate::error::{Error, Result};

use super::feeder::Feeder;
use super::sensitivity::{analytic, monitored_nodes};
use super::setup::{GridSetup, PreparedGrid};
use super::storage::{StorageSpec, StorageUnit};
use super::GridError;

impl From<GridError> for Error {
    fn from(e: GridError) -> Self {
        Error::Data {
            what: format!("grid: {e}"),
        }
    }
}

/// How a feeder joins a run.
#[derive(Debug, Clone)]
pub struct FeederGridConfig {
    pub feeder: PathBuf,
    pub dt_s: Seconds,
    pub source_pu: Option<f64>,
    /// Regulator (RegControl name) → initial tap steps.
    pub taps: Vec<(String, i32)>,
    /// (datacenter name, bus), in the coordinator's datacenter order.
    pub datacenters: Vec<(String, String)>,
    /// Power factor of the datacenter loads (lagging).
    pub pf: f64,
    /// Buses left out of the monitored set (and of the metrics).
    pub excluded_buses: Vec<String>,
    /// Power-flow tolerance (pu change between iterations).
    pub tolerance_pu: f64,
    /// Generators and external loads with their power profiles.
    pub profiles: Vec<BusProfile>,
    /// Batteries (three-phase buses), idle until a `SetStoragePower` command.
    pub storage: Vec<StorageSpec>,
}

/// What a profile attachment is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProfileKind {
    /// Injects power (a negative load on each phase).
    Generator,
    /// Draws power.
    Load,
}

/// A generator or external load: each phase gets the profile's full kW (the peer's rule).
#[derive(Debug, Clone, PartialEq)]
pub struct BusProfile {
    pub(crate) kind: ProfileKind,
    pub(crate) bus: String,
    pub(crate) pf: f64,
    /// (t_s, kW) points, increasing in time; linear between, held beyond the ends.
    pub(crate) points: Vec<(f64, f64)>,
}

impl BusProfile {
    /// kW at `t_s` (numpy's `interp`).
    fn kw_at(&self, t_s: f64) -> f64 {
        let p = &self.points;
        let i = p.partition_point(|(t, _)| *t <= t_s);
        match i {
            0 => p[0].1,
            i if i == p.len() => p[p.len() - 1].1,
            i => {
                let (t0, y0) = p[i - 1];
                let (t1, y1) = p[i];
                y0 + (y1 - y0) * (t_s - t0) / (t1 - t0)
            }
        }
    }
}

/// A feeder stepped by the coordinator.
pub struct FeederGrid {
    cfg: FeederGridConfig,
    feeder: Feeder,
    grid: PreparedGrid,
    monitored: Vec<usize>,
    last_kw: Vec<[f64; 3]>,
    /// Every bus with its phase-1..3 node indices (the snapshot's layout, found once).
    bus_nodes: Vec<(std::sync::Arc<str>, [Option<usize>; 3])>,
    /// The regulator on phase a, b, c (`None`: none or several, so the shorthand is refused).
    phase_regulator: [Option<String>; 3],
    /// Each battery and its load index in the power flow.
    storage: Vec<(StorageUnit, usize)>,
}

impl FeederGrid {
    /// Reads the feeder, attaches the datacenters and checks every name (buses, regulators,
    /// excluded buses) before the run starts.
    pub fn new(cfg: FeederGridConfig) -> Result<FeederGrid> {
        if !(cfg.pf > 0.0 && cfg.pf <= 1.0) {
            return Err(Error::config(
                "grid.pf",
                format!("{} is outside (0, 1]", cfg.pf),
            ));
        }
        if !(cfg.tolerance_pu > 0.0 && cfg.tolerance_pu < 0.1) {
            return Err(Error::config(
                "grid.tolerance_pu",
                format!("{} is outside (0, 0.1)", cfg.tolerance_pu),
            ));
        }
        for (i, p) in cfg.profiles.iter().enumerate() {
            let ok_time = p.points.windows(2).all(|w| w[0].0 < w[1].0);
            if p.points.is_empty()
                || !ok_time
                || p.points
                    .iter()
                    .any(|(t, kw)| !t.is_finite() || !kw.is_finite() || *kw < 0.0)
                || !(p.pf > 0.0 && p.pf <= 1.0)
            {
                return Err(Error::config(
                    format!("grid profile {i} at bus {}", p.bus),
                    "needs ≥ 1 point, strictly increasing times, finite kW ≥ 0 and pf in (0, 1]",
                ));
            }
        }
        let feeder = Feeder::read(&cfg.feeder)?;
        let (grid, storage) = prepare(&feeder, &cfg)?;
        for bus in &cfg.excluded_buses {
            if !grid.flow.network().has_bus(bus) {
                return Err(
                    super::setup::unknown_bus(&grid.flow, bus, "grid.exclude_buses").into(),
                );
            }
        }
        let monitored = monitored_nodes(&grid.flow, &cfg.excluded_buses);
        let n = cfg.datacenters.len();
        let net = grid.flow.network();
        let bus_nodes = net
            .bus_names()
            .into_iter()
            .map(|bus| {
                let nodes = [1, 2, 3].map(|p| net.node(&bus, p));
                (bus.into(), nodes)
            })
            .collect();
        let phase_regulator = phase_regulators(&feeder);
        Ok(FeederGrid {
            cfg,
            feeder,
            grid,
            monitored,
            last_kw: vec![[0.0; 3]; n],
            bus_nodes,
            phase_regulator,
            storage,
        })
    }

    /// A regulator name, or a/b/c for the one regulator on that phase.
    fn resolve_regulator(&self, name: &str) -> Result<String> {
        let lower = name.to_ascii_lowercase();
        let phase = match lower.as_str() {
            "a" => Some(0),
            "b" => Some(1),
            "c" => Some(2),
            _ => None,
        };
        match phase {
            Some(p) => self.phase_regulator[p].clone().ok_or_else(|| {
                Error::config(
                    "tap",
                    format!(
                        "phase shorthand {name:?}: the feeder has no single regulator on that \
                         phase; name the regulator (RegControl) instead"
                    ),
                )
            }),
            None => Ok(lower),
        }
    }

    fn state(&self, time_s: f64) -> GridState {
        let net = self.grid.flow.network();
        let v = self.grid.flow.voltages();
        let base = self.grid.flow.node_base_v();
        let voltages_pu = self
            .bus_nodes
            .iter()
            .map(|(bus, nodes)| {
                let abc = nodes
                    .map(|n| n.map_or(f64::NAN, |n| super::powerflow::magnitude(v[n]) / base[n]));
                (bus.clone(), abc)
            })
            .collect();
        let tap_positions = self
            .feeder
            .regulators
            .iter()
            .map(|r| (r.name.clone(), net.tap(&r.transformer).unwrap_or(1.0)))
            .collect();
        let storage = self
            .storage
            .iter()
            .map(|(u, load)| {
                let (kw, kvar) = self.grid.flow.load_power_kw(*load);
                StorageReading {
                    name: u.spec.name.clone(),
                    stored_kwh: u.stored_kwh,
                    soc: u.soc(),
                    power_kw: -kw,
                    reactive_power_kvar: -kvar,
                    mode: u.mode.as_str(),
                }
            })
            .collect();
        GridState {
            time_s,
            voltages_pu,
            tap_positions,
            storage,
        }
    }

    /// Sets each battery's terminal power for the coming solve.
    fn dispatch_storage(&mut self) {
        for (unit, load) in &mut self.storage {
            let (kw, kvar) = unit.prepare_solve();
            self.grid.flow.set_load_power(*load, -kw, -kvar);
        }
    }

    fn set_storage_power(&mut self, name: &str, kw: f64, kvar: f64) -> Result<()> {
        let Some((unit, _)) = self.storage.iter_mut().find(|(u, _)| u.spec.name == name) else {
            let known: Vec<&str> = self
                .storage
                .iter()
                .map(|(u, _)| u.spec.name.as_str())
                .collect();
            return Err(Error::config(
                "grid command",
                format!("no storage named {name:?} (the grid has: {known:?})"),
            ));
        };
        Ok(unit.set_dispatch(kw, kvar)?)
    }
}

/// The regulator each phase's a/b/c shorthand names: the one whose transformer's first
/// written node is that phase; none when several regulators share the phase (the peer's rule).
fn phase_regulators(feeder: &Feeder) -> [Option<String>; 3] {
    let mut out: [Option<String>; 3] = [None, None, None];
    let mut seen = [0usize; 3];
    for r in &feeder.regulators {
        let Some(t) = feeder.transformers.iter().find(|t| t.name == r.transformer) else {
            continue;
        };
        let phase = t
            .windings
            .iter()
            .find_map(|w| w.bus.nodes.first().copied().filter(|p| (1..=3).contains(p)));
        if let Some(p) = phase {
            seen[p - 1] += 1;
            out[p - 1] = Some(r.name.clone());
        }
    }
    for (slot, n) in out.iter_mut().zip(seen) {
        if n != 1 {
            *slot = None;
        }
    }
    out
}

/// The feeder with the setup, the profiles' attachments and the batteries (idle, at their
/// initial charge).
fn prepare(
    feeder: &Feeder,
    cfg: &FeederGridConfig,
) -> Result<(PreparedGrid, Vec<(StorageUnit, usize)>)> {
    let setup = GridSetup {
        source_pu: cfg.source_pu,
        taps: cfg.taps.clone(),
        datacenter_buses: cfg.datacenters.iter().map(|(_, b)| b.clone()).collect(),
    };
    let mut grid = PreparedGrid::new(feeder.clone(), &setup)?;
    for (i, p) in cfg.profiles.iter().enumerate() {
        let name = match p.kind {
            ProfileKind::Generator => format!("gen_{i}"),
            ProfileKind::Load => format!("extload_{i}"),
        };
        grid.attach_extra(&p.bus, &name)?;
    }
    let mut storage = Vec::with_capacity(cfg.storage.len());
    for (i, spec) in cfg.storage.iter().enumerate() {
        if cfg.storage[..i].iter().any(|s| s.name == spec.name) {
            return Err(Error::config(
                "grid.storage",
                format!("two batteries named {:?}", spec.name),
            ));
        }
        let load = grid.attach_storage(&spec.bus, &spec.name)?;
        storage.push((StorageUnit::new(spec.clone())?, load));
    }
    grid.flow.options.tolerance_pu = cfg.tolerance_pu;
    Ok((grid, storage))
}

impl Component for FeederGrid {
    fn dt_s(&self) -> Seconds {
        self.cfg.dt_s
    }
    fn reset(&mut self) {
        // Re-reading nothing: the feeder is kept; taps and voltages go back to the start.
        if let Ok((grid, storage)) = prepare(&self.feeder, &self.cfg) {
            self.grid = grid;
            self.storage = storage;
        }
        self.last_kw = vec![[0.0; 3]; self.cfg.datacenters.len()];
    }
}

impl Grid for FeederGrid {
    fn step(
        &mut self,
        clock: &SimulationClock,
        samples: &[Vec<ThreePhase>],
        _events: &mut Events,
    ) -> Result<GridState> {
        for (i, last) in self.last_kw.iter_mut().enumerate() {
            if let Some(p) = samples.get(i).and_then(|s| s.last()) {
                *last = [p.a / 1000.0, p.b / 1000.0, p.c / 1000.0];
            }
        }
        for (i, kw) in self.last_kw.clone().into_iter().enumerate() {
            self.grid.set_datacenter_kw(i, kw, self.cfg.pf);
        }
        let first = self.cfg.datacenters.len();
        for (k, p) in self.cfg.profiles.iter().enumerate() {
            let kw = p.kw_at(clock.time_s());
            let signed = match p.kind {
                ProfileKind::Generator => -kw,
                ProfileKind::Load => kw,
            };
            self.grid.set_datacenter_kw(first + k, [signed; 3], p.pf);
        }
        self.dispatch_storage();
        self.grid
            .flow
            .solve()
            .map_err(|e| Error::data(format!("grid step at t = {} s: {e}", clock.time_s())))?;
        let dt_s = crate::coordinator::clock::to_f64(self.cfg.dt_s);
        for (unit, load) in &mut self.storage {
            let (drawn_kw, _) = self.grid.flow.load_power_kw(*load);
            unit.advance(dt_s, -drawn_kw);
        }
        Ok(self.state(clock.time_s()))
    }

    fn apply_control(&mut self, command: &GridCommand, events: &mut Events) -> Result<()> {
        match command {
            GridCommand::SetTaps(taps) => {
                let mut changes = Vec::with_capacity(taps.len());
                for (name, tap) in taps {
                    let reg = self.resolve_regulator(name)?;
                    let reg = reg.as_str();
                    let tap = &((tap * 1e6).round() / 1e6);
                    if !(*tap > 0.5 && *tap < 1.5) {
                        return Err(Error::config(
                            format!("tap of {reg}"),
                            format!("{tap} pu is outside (0.5, 1.5)"),
                        ));
                    }
                    let t = self.feeder.regulator_transformer(reg)?;
                    changes.push((self.feeder.transformers[t].name.clone(), *tap));
                }
                self.grid.flow.set_taps(&changes)?;
                events.emit(
                    crate::coordinator::EventSource::Grid,
                    "grid.taps",
                    serde_json::json!(taps),
                );
                Ok(())
            }
            GridCommand::SetStoragePower {
                storage,
                power_kw,
                reactive_power_kvar,
            } => {
                self.set_storage_power(storage, *power_kw, *reactive_power_kvar)?;
                events.emit(
                    crate::coordinator::EventSource::Grid,
                    "grid.storage",
                    serde_json::json!({
                        "storage": storage,
                        "power_kw": power_kw,
                        "reactive_power_kvar": reactive_power_kvar,
                    }),
                );
                Ok(())
            }
        }
    }

    fn monitored(&self) -> Vec<(String, usize)> {
        let nodes = &self.grid.flow.network().nodes;
        self.monitored
            .iter()
            .map(|&n| (nodes[n].bus.clone(), nodes[n].phase))
            .collect()
    }

    fn storage_names(&self) -> Vec<String> {
        self.storage
            .iter()
            .map(|(u, _)| u.spec.name.clone())
            .collect()
    }

    fn voltage_sensitivity(
        &self,
        datacenter: &str,
        step_kw: f64,
    ) -> Result<Option<VoltageSensitivity>> {
        let Some(a) = self
            .cfg
            .datacenters
            .iter()
            .position(|(d, _)| d == datacenter)
        else {
            return Ok(None);
        };
        let s = analytic(&self.grid, a, self.cfg.pf, step_kw, &self.monitored)?;
        Ok(Some(VoltageSensitivity {
            rows: self.monitored(),
            h: s.h,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_interpolates_and_holds_at_the_ends() {
        let p = BusProfile {
            kind: ProfileKind::Generator,
            bus: "x".into(),
            pf: 1.0,
            points: vec![(10.0, 100.0), (20.0, 300.0)],
        };
        assert_eq!(p.kw_at(0.0), 100.0);
        assert_eq!(p.kw_at(15.0), 200.0);
        assert_eq!(p.kw_at(20.0), 300.0);
        assert_eq!(p.kw_at(99.0), 300.0);
    }
}
