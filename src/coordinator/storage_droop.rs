//! Local-voltage storage droop (the peer's `LocalVoltageStorageDroopController`, GRID.md
//! "Storage droop"): per battery, the voltage at its bus (the lowest phase) reduced over the
//! grid states since the controller's last step (minimum, mean or latest); error = v_ref − v;
//! output = gain·sign(error)·(|error| − deadband) outside the deadband, 0 inside, gain =
//! limit / (full-output error − deadband) unless given, clamped to ±limit (and to ≥ 0 when
//! negative output is not allowed). Mode "qv" commands kvar (limit: the kVA rating), "pv" kW
//! (limit: the kW rating). A step with no grid state since the last one commands nothing.

use crate::error::{Error, Result};

use super::{
    Command, Component, Controller, EventSource, Events, GridCommand, GridState, Seconds, SimView,
    SimulationClock,
};

/// What the droop output sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DroopMode {
    /// Reactive power (kvar, + injecting).
    Qv,
    /// Real power (kW, + discharging).
    Pv,
}

/// How the window of grid states since the last step is reduced to one voltage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VoltageStatistic {
    Minimum,
    Mean,
    Latest,
}

/// The peer's `StorageDroopConfig` (its defaults in [`Default`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct DroopConfig {
    pub(crate) mode: DroopMode,
    pub(crate) v_ref: f64,
    pub(crate) deadband_pu: f64,
    pub(crate) full_output_voltage_error_pu: f64,
    /// Output per pu of error beyond the deadband (kW or kvar per pu); default from the limit.
    pub(crate) droop_gain_per_pu: Option<f64>,
    /// Output limit (kW or kvar), at most the rating.
    pub(crate) max_abs_output: Option<f64>,
    pub(crate) allow_negative_output: bool,
    pub(crate) voltage_statistic: VoltageStatistic,
}

impl Default for DroopConfig {
    fn default() -> Self {
        DroopConfig {
            mode: DroopMode::Qv,
            v_ref: 1.0,
            deadband_pu: 0.005,
            full_output_voltage_error_pu: 0.05,
            droop_gain_per_pu: None,
            max_abs_output: None,
            allow_negative_output: true,
            voltage_statistic: VoltageStatistic::Minimum,
        }
    }
}

/// A battery the droop drives: its name, bus and ratings.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DroopStorage {
    pub(crate) name: String,
    pub(crate) bus: String,
    pub(crate) kw_rated: f64,
    pub(crate) kva_rated: f64,
}

#[derive(Debug, Clone)]
struct Driven {
    storage: DroopStorage,
    limit: f64,
    gain: f64,
    /// The window's running reduction: (minimum, sum, count, latest) of the bus voltage.
    min_v: f64,
    sum_v: f64,
    count: usize,
    latest_v: f64,
}

/// The storage droop controller.
#[derive(Debug, Clone)]
pub(crate) struct StorageDroopController {
    dt_s: Seconds,
    cfg: DroopConfig,
    driven: Vec<Driven>,
    /// A grid state without the bus's voltage (reported at the next step).
    missing: Option<String>,
}

impl StorageDroopController {
    pub(crate) fn new(dt_s: Seconds, storage: Vec<DroopStorage>, cfg: DroopConfig) -> Result<Self> {
        check_config(&cfg)?;
        if storage.is_empty() {
            return Err(Error::config(
                "controllers.storage-droop",
                "no battery to drive (add [[grid.storage]])",
            ));
        }
        let driven = storage
            .into_iter()
            .map(|s| {
                let rating = match cfg.mode {
                    DroopMode::Qv => s.kva_rated,
                    DroopMode::Pv => s.kw_rated,
                };
                let limit = cfg.max_abs_output.map_or(rating, |m| m.min(rating));
                let gain = cfg
                    .droop_gain_per_pu
                    .unwrap_or(limit / (cfg.full_output_voltage_error_pu - cfg.deadband_pu));
                Driven {
                    storage: DroopStorage {
                        bus: s.bus.to_ascii_lowercase(),
                        ..s
                    },
                    limit,
                    gain,
                    min_v: f64::INFINITY,
                    sum_v: 0.0,
                    count: 0,
                    latest_v: f64::NAN,
                }
            })
            .collect();
        Ok(StorageDroopController {
            dt_s,
            cfg,
            driven,
            missing: None,
        })
    }

    /// The droop output (kW or kvar) for a local voltage `v_pu`, clamped to `limit`.
    pub(crate) fn output(&self, v_pu: f64, gain: f64, limit: f64) -> f64 {
        let error = self.cfg.v_ref - v_pu;
        let out = if error.abs() <= self.cfg.deadband_pu {
            0.0
        } else {
            gain * (error.abs() - self.cfg.deadband_pu).copysign(error)
        };
        let out = if self.cfg.allow_negative_output {
            out
        } else {
            out.max(0.0)
        };
        out.clamp(-limit, limit)
    }
}

fn check_config(cfg: &DroopConfig) -> Result<()> {
    let field = "controllers.storage-droop";
    if !(cfg.v_ref.is_finite() && cfg.v_ref > 0.0) {
        return Err(Error::config(
            field,
            format!("v_ref {} must be positive", cfg.v_ref),
        ));
    }
    if !(cfg.deadband_pu.is_finite() && cfg.deadband_pu >= 0.0) {
        return Err(Error::config(field, "deadband_pu must be ≥ 0"));
    }
    if !(cfg.full_output_voltage_error_pu.is_finite()
        && cfg.full_output_voltage_error_pu > cfg.deadband_pu)
    {
        return Err(Error::config(
            field,
            "full_output_voltage_error_pu must be finite and larger than deadband_pu",
        ));
    }
    for (name, v) in [
        ("droop_gain_per_pu", cfg.droop_gain_per_pu),
        ("max_abs_output", cfg.max_abs_output),
    ] {
        if let Some(v) = v {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::config(field, format!("{name} {v} must be positive")));
            }
        }
    }
    Ok(())
}

/// The lowest finite phase voltage of `bus` in a state.
fn bus_min_voltage(state: &GridState, bus: &str) -> Option<f64> {
    let (_, v) = state.voltages_pu.iter().find(|(b, _)| &**b == bus)?;
    v.iter().copied().filter(|x| x.is_finite()).reduce(f64::min)
}

impl Component for StorageDroopController {
    fn dt_s(&self) -> Seconds {
        self.dt_s
    }
    fn reset(&mut self) {
        for d in &mut self.driven {
            d.min_v = f64::INFINITY;
            d.sum_v = 0.0;
            d.count = 0;
            d.latest_v = f64::NAN;
        }
        self.missing = None;
    }
}

impl Controller for StorageDroopController {
    fn name(&self) -> &str {
        "storage-droop"
    }

    fn check(&self, view: &SimView<'_>) -> Result<()> {
        let Some(grid) = view.grid else {
            return Err(Error::config(
                "controllers.storage-droop",
                "needs a [grid] section",
            ));
        };
        let names = grid.storage_names();
        for d in &self.driven {
            if !names.contains(&d.storage.name) {
                return Err(Error::config(
                    "controllers.storage-droop",
                    format!(
                        "the grid has no battery named {:?} (it has: {names:?})",
                        d.storage.name
                    ),
                ));
            }
        }
        Ok(())
    }

    fn observe_grid(&mut self, state: &GridState) {
        for d in &mut self.driven {
            match bus_min_voltage(state, &d.storage.bus) {
                Some(v) => {
                    d.min_v = d.min_v.min(v);
                    d.sum_v += v;
                    d.count += 1;
                    d.latest_v = v;
                }
                None => self.missing = Some(d.storage.bus.clone()),
            }
        }
    }

    fn step(
        &mut self,
        clock: &SimulationClock,
        _view: &SimView<'_>,
        events: &mut Events,
    ) -> Result<Vec<Command>> {
        if let Some(bus) = self.missing.take() {
            return Err(Error::data(format!(
                "storage droop: bus {bus} has no finite phase voltage in the grid state"
            )));
        }
        let mut commands = Vec::new();
        for i in 0..self.driven.len() {
            let d = &self.driven[i];
            if d.count == 0 {
                continue;
            }
            let v = match self.cfg.voltage_statistic {
                VoltageStatistic::Minimum => d.min_v,
                VoltageStatistic::Mean => d.sum_v / d.count as f64,
                VoltageStatistic::Latest => d.latest_v,
            };
            let output = self.output(v, d.gain, d.limit);
            let (power_kw, reactive_power_kvar) = match self.cfg.mode {
                DroopMode::Qv => (0.0, output),
                DroopMode::Pv => (output, 0.0),
            };
            events.emit(
                EventSource::Controller,
                "controller.storage_droop.step",
                serde_json::json!({
                    "time_s": clock.time_s(),
                    "storage": d.storage.name,
                    "bus": d.storage.bus,
                    "local_voltage_pu": v,
                    "window_size": d.count,
                    "output": output,
                    "output_limit": d.limit,
                }),
            );
            commands.push(Command::Grid(GridCommand::SetStoragePower {
                storage: d.storage.name.clone(),
                power_kw,
                reactive_power_kvar,
            }));
            let d = &mut self.driven[i];
            d.min_v = f64::INFINITY;
            d.sum_v = 0.0;
            d.count = 0;
        }
        Ok(commands)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn droop(cfg: DroopConfig) -> StorageDroopController {
        StorageDroopController::new(
            Seconds::from_integer(1),
            vec![DroopStorage {
                name: "bess".into(),
                bus: "671".into(),
                kw_rated: 450.0,
                kva_rated: 500.0,
            }],
            cfg,
        )
        .unwrap()
    }

    fn state(v: [f64; 3]) -> GridState {
        GridState {
            voltages_pu: vec![("671".into(), v)],
            ..GridState::default()
        }
    }

    fn run(c: &mut StorageDroopController, states: &[[f64; 3]]) -> Vec<Command> {
        for s in states {
            c.observe_grid(&state(*s));
        }
        let view = SimView {
            datacenters: &[],
            grid_state: None,
            grid: None,
        };
        let clock = SimulationClock::new(Seconds::from_integer(1)).unwrap();
        c.step(&clock, &view, &mut Events::default()).unwrap()
    }

    fn kvar(cmds: &[Command]) -> f64 {
        match &cmds[0] {
            Command::Grid(GridCommand::SetStoragePower {
                reactive_power_kvar,
                power_kw,
                ..
            }) => {
                assert_eq!(*power_kw, 0.0);
                *reactive_power_kvar
            }
            c => panic!("{c:?}"),
        }
    }

    /// Hand-computed: qv, limit 500 kvar, gain 500 / (0.05 − 0.005) = 11111.1 kvar/pu.
    #[test]
    fn output_on_each_side_of_the_deadband() {
        let mut c = droop(DroopConfig::default());
        // Window minimum of the lowest phase: 0.97 → error 0.03 → (0.03 − 0.005)·11111.1.
        let q = kvar(&run(&mut c, &[[0.99, 0.98, 1.0], [0.97, 1.0, 1.0]]));
        assert!((q - 0.025 * 500.0 / 0.045).abs() < 1e-9, "{q}");
        // Inside the deadband: 0.996 → 0.
        assert_eq!(kvar(&run(&mut c, &[[0.996, 1.001, 1.0]])), 0.0);
        // Over-voltage 1.02 → −(0.015)·11111.1 absorbs.
        let q = kvar(&run(&mut c, &[[1.02, 1.03, 1.025]]));
        assert!((q + 0.015 * 500.0 / 0.045).abs() < 1e-9, "{q}");
        // Far below: clamped to the kVA rating.
        assert_eq!(kvar(&run(&mut c, &[[0.9, 0.9, 0.9]])), 500.0);
        // No state since the last step: nothing.
        assert!(run(&mut c, &[]).is_empty());
    }

    #[test]
    fn pv_mode_mean_statistic_and_no_negative_output() {
        let mut c = droop(DroopConfig {
            mode: DroopMode::Pv,
            voltage_statistic: VoltageStatistic::Mean,
            allow_negative_output: false,
            max_abs_output: Some(300.0),
            ..DroopConfig::default()
        });
        // Mean of the lowest phases 0.96 and 0.98 = 0.97; gain 300 / 0.045.
        let cmds = run(&mut c, &[[0.96, 1.0, 1.0], [0.98, 1.0, 1.0]]);
        let Command::Grid(GridCommand::SetStoragePower { power_kw, .. }) = &cmds[0] else {
            panic!()
        };
        assert!((power_kw - 0.025 * 300.0 / 0.045).abs() < 1e-9);
        // Over-voltage would charge; not allowed → 0.
        let cmds = run(&mut c, &[[1.04, 1.04, 1.04]]);
        let Command::Grid(GridCommand::SetStoragePower { power_kw, .. }) = &cmds[0] else {
            panic!()
        };
        assert_eq!(*power_kw, 0.0);
    }

    #[test]
    fn bad_settings_are_refused() {
        let bad = DroopConfig {
            deadband_pu: 0.06,
            ..DroopConfig::default()
        };
        assert!(StorageDroopController::new(Seconds::from_integer(1), vec![], bad).is_err());
        assert!(StorageDroopController::new(
            Seconds::from_integer(1),
            vec![],
            DroopConfig::default()
        )
        .is_err());
    }
}
