//! The embedded coordinator (SPEC §7, peer spec §4): datacenters, an optional grid and
//! controllers, each with its own timestep, stepped on one exact clock.
//!
//! One tick: (1) every due datacenter steps, in list order; (2) the grid, if there is one and
//! it is due, steps with every datacenter power sample since its last step; (3) every due
//! controller steps in registration order and its commands are applied to their target at
//! once (so they take effect at the datacenter's next step); (4) the tick's events are
//! recorded and the clock advances. Lifecycle: `reset` → `start` → ticks → `stop` (controllers
//! in reverse, then the grid, then datacenters). [`Coordinator::run`] streams every tick to a
//! [`RunSink`] (in memory or parquet on disk), so a long run holds no history;
//! [`Coordinator::step`] is the step-by-step API for drivers such as RL loops.
//!
//! Differences from the peer, on purpose: the grid is optional; a datacenter command naming
//! an unknown datacenter or model is an error, not silently ignored.

pub mod clock;
pub mod controllers;
pub mod grid_metrics;
pub(crate) mod load_shift;
pub mod merge;
pub(crate) mod ofo;
pub mod sink;
pub(crate) mod storage_droop;
pub(crate) mod voltage_control;

use serde::Serialize;

use crate::error::{Error, Result};
pub use clock::{Seconds, SimulationClock};

/// Power on the three phases (W).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ThreePhase {
    pub a: f64,
    pub b: f64,
    pub c: f64,
}

impl ThreePhase {
    pub fn total(&self) -> f64 {
        self.a + self.b + self.c
    }
}

/// What one model did in one datacenter step.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ModelState {
    /// GPU power of the model's servers (W, after amplitude and noise).
    pub power_w: f64,
    /// Replicas serving.
    pub active_replicas: u64,
    pub batch_size: u32,
    /// Observed mean inter-token latency over the replicas (s); NaN without ITL fits or replicas.
    pub observed_itl_s: f64,
}

/// A datacenter's state after one step.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DcState {
    pub time_s: f64,
    /// Per-phase power: base load + server power (GPU + non-GPU) + training overlay (W).
    pub power_w: ThreePhase,
    /// Facility power: base load + PUE × IT power (W).
    pub facility_power_w: f64,
    /// IT power per rack (W, GPU and non-GPU power of its servers), with a rack layout.
    pub rack_power_w: Vec<f64>,
    /// IT power per row of racks (W), with a rack layout.
    pub row_power_w: Vec<f64>,
    /// Training overlay power (W, all phases).
    pub training_power_w: f64,
    /// One entry per model, in the datacenter's model order.
    pub models: Vec<ModelState>,
}

/// A command to a datacenter (peer: `DatacenterCommand`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum DatacenterCommand {
    /// New batch sizes, effective at the next step. Ramp rates are rejected by the offline
    /// datacenter (its changes are immediate), as in the peer.
    SetBatchSize {
        batch_size_by_model: Vec<(String, u32)>,
        ramp_up_rate_by_model: Vec<(String, f64)>,
    },
    /// Adds (or removes, if negative) replicas of a model.
    ShiftReplicas { model: String, replica_delta: i64 },
}

/// A command to the grid.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum GridCommand {
    /// Regulator (RegControl name) → tap (per unit), applied before the grid's next solve.
    SetTaps(Vec<(String, f64)>),
    /// A battery's dispatch, kept until the next command: kW (+ discharging into the grid,
    /// − charging) and kvar (+ injecting).
    SetStoragePower {
        storage: String,
        power_kw: f64,
        reactive_power_kvar: f64,
    },
}

/// A command and its target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Command {
    Datacenter {
        target: String,
        command: DatacenterCommand,
    },
    Grid(GridCommand),
}

/// Who emitted an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum EventSource {
    Datacenter,
    Grid,
    Controller,
}

/// Something that fired (peer: `SimEvent`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimEvent {
    pub(crate) tick: u64,
    pub(crate) t_s: f64,
    pub(crate) source: EventSource,
    pub topic: String,
    pub(crate) data: serde_json::Value,
}

/// The event stream of one tick.
#[derive(Debug, Default)]
pub struct Events {
    tick: u64,
    t_s: f64,
    buf: Vec<SimEvent>,
}

impl Events {
    pub(crate) fn emit(&mut self, source: EventSource, topic: &str, data: serde_json::Value) {
        self.buf.push(SimEvent {
            tick: self.tick,
            t_s: self.t_s,
            source,
            topic: topic.to_string(),
            data,
        });
    }
    pub(crate) fn as_slice(&self) -> &[SimEvent] {
        &self.buf
    }
}

/// What every component shares: its period and its lifecycle (reset → start → steps → stop).
pub trait Component: Send {
    fn dt_s(&self) -> Seconds;
    /// Back to the initial state, RNGs re-seeded: a second run is bit-identical.
    fn reset(&mut self);
    fn start(&mut self) -> Result<()> {
        Ok(())
    }
    fn stop(&mut self) {}
}

/// A datacenter backend.
pub trait Datacenter: Component {
    fn name(&self) -> &str;
    /// Model labels, in the order of [`DcState::models`].
    fn model_labels(&self) -> &[String];
    /// (racks, racks per row) of [`DcState::rack_power_w`] and [`DcState::row_power_w`];
    /// (0, 0) without a rack layout.
    fn rack_layout(&self) -> (usize, usize) {
        (0, 0)
    }
    /// One step at `clock.time_s()`; the new state is then [`Datacenter::state`].
    fn step(&mut self, clock: &SimulationClock, events: &mut Events) -> Result<()>;
    /// The last state; `None` before the first step.
    fn state(&self) -> Option<&DcState>;
    /// Per model, the share of its servers on phases A, B, C (the peer's
    /// `phase_share_by_model`); 1/3 each unless the backend knows its allocation.
    fn phase_share(&self) -> Vec<[f64; 3]> {
        vec![[1.0 / 3.0; 3]; self.model_labels().len()]
    }
    fn apply_control(&mut self, command: &DatacenterCommand, events: &mut Events) -> Result<()>;
    /// GPUs not serving any model's replicas at the last step (`None`: the backend cannot
    /// tell, so no replicas are shifted to it).
    fn available_gpu_capacity(&self) -> Option<u64> {
        None
    }
}

/// Voltages of a grid snapshot: (bus, per-phase pu, NaN for absent phases), and taps.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GridState {
    pub(crate) time_s: f64,
    /// Bus names are shared with the grid (no copy per step).
    pub(crate) voltages_pu: Vec<(std::sync::Arc<str>, [f64; 3])>,
    /// Regulator (RegControl name) → tap (per unit).
    pub(crate) tap_positions: Vec<(String, f64)>,
    /// Every battery after the step, in the grid's storage order.
    pub storage: Vec<StorageReading>,
}

/// A battery after a grid step (the peer's `StorageState`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StorageReading {
    pub(crate) name: String,
    /// Stored energy after the step's integration (kWh) and as a fraction of the rating.
    pub(crate) stored_kwh: f64,
    pub soc: f64,
    /// Terminal power during the step: kW injected (+ discharging, − charging or idling
    /// losses) and kvar injected.
    pub power_kw: f64,
    pub reactive_power_kvar: f64,
    /// "charging", "discharging" or "idling" (after the step: a battery that reached its
    /// reserve or its rating idles).
    pub mode: &'static str,
}

impl GridState {
    /// The voltage of `bus` phase `phase` (1-based), if the snapshot has it.
    pub fn voltage(&self, bus: &str, phase: usize) -> Option<f64> {
        self.voltages_pu
            .iter()
            .find(|(b, _)| &**b == bus)
            .map(|(_, v)| v[phase - 1])
            .filter(|v| v.is_finite())
    }
}

/// dV/dP of the monitored bus-phases for one datacenter (pu per kW per phase).
#[derive(Debug, Clone, PartialEq)]
pub struct VoltageSensitivity {
    /// (bus, phase 1..3) of each row.
    pub(crate) rows: Vec<(String, usize)>,
    /// One row per monitored bus-phase, one column per datacenter phase.
    pub(crate) h: Vec<[f64; 3]>,
}

/// A grid backend (see `crate::grid::component` for the feeder power flow).
pub trait Grid: Component {
    /// `samples[i]`: datacenter i's power samples since the grid's previous step.
    fn step(
        &mut self,
        clock: &SimulationClock,
        samples: &[Vec<ThreePhase>],
        events: &mut Events,
    ) -> Result<GridState>;
    fn apply_control(&mut self, command: &GridCommand, events: &mut Events) -> Result<()>;
    /// The monitored bus-phases (bus, phase 1..3), in the order of [`VoltageSensitivity`]
    /// rows and of the grid metrics.
    fn monitored(&self) -> Vec<(String, usize)> {
        Vec::new()
    }
    /// The batteries a `SetStoragePower` command may name.
    fn storage_names(&self) -> Vec<String> {
        Vec::new()
    }
    /// H of the monitored bus-phases for a datacenter at the present solution, as the slope
    /// over a step of `step_kw` per phase; `None` when the backend cannot tell.
    fn voltage_sensitivity(
        &self,
        _datacenter: &str,
        _step_kw: f64,
    ) -> Result<Option<VoltageSensitivity>> {
        Ok(None)
    }
}

/// What controllers see: every datacenter, the grid and its last state.
pub struct SimView<'a> {
    pub(crate) datacenters: &'a [Box<dyn Datacenter>],
    pub(crate) grid_state: Option<&'a GridState>,
    pub(crate) grid: Option<&'a dyn Grid>,
}

impl SimView<'_> {
    pub(crate) fn datacenter(&self, name: &str) -> Option<&dyn Datacenter> {
        self.datacenters
            .iter()
            .find(|d| d.name() == name)
            .map(|d| d.as_ref())
    }
}

/// A controller (schedules, and the voltage controllers of [`ofo`], [`voltage_control`] and
/// [`storage_droop`]); `check` is where a controller rejects a setup it cannot drive (the
/// peer's `TypeError` at construction).
pub trait Controller: Component {
    fn name(&self) -> &str;
    fn check(&self, view: &SimView<'_>) -> Result<()>;
    /// Every grid state as the grid produces it (before the controllers of that tick step):
    /// for controllers that act on the states since their last step (the peer's grid
    /// history window). Nothing by default.
    fn observe_grid(&mut self, _state: &GridState) {}
    fn step(
        &mut self,
        clock: &SimulationClock,
        view: &SimView<'_>,
        events: &mut Events,
    ) -> Result<Vec<Command>>;
}

/// One tick, as seen by a driver or a sink.
pub struct TickOutput<'a> {
    pub(crate) tick: u64,
    pub(crate) t_s: f64,
    /// Which datacenters stepped at this tick (their new state is in `datacenters`).
    pub(crate) dc_stepped: &'a [bool],
    pub datacenters: &'a [Box<dyn Datacenter>],
    /// The grid state, when the grid stepped at this tick.
    pub(crate) grid_state: Option<&'a GridState>,
    pub(crate) commands: &'a [Command],
    pub(crate) events: &'a [SimEvent],
}

/// Receives a run tick by tick (see [`sink`]).
pub trait RunSink {
    fn begin(&mut self, datacenters: &[Box<dyn Datacenter>]) -> Result<()>;
    fn record(&mut self, tick: &TickOutput<'_>) -> Result<()>;
    fn finish(&mut self) -> Result<()>;
}

/// Counts of a finished run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RunCounts {
    pub ticks: u64,
    pub dc_steps: u64,
    pub(crate) grid_steps: u64,
    controller_steps: u64,
    pub commands: u64,
    pub events: u64,
}

/// The most ticks a run may take (a tick costs at least a few ns even when nothing is due).
const MAX_TICKS: u64 = 10_000_000_000;

/// Ticks of `tick` in `duration`: a whole number, at most [`MAX_TICKS`].
fn tick_count(duration: Seconds, tick: Seconds) -> Result<u64> {
    let q = duration / tick;
    if !q.is_integer() {
        return Err(Error::config(
            "duration_s",
            format!("{duration} s is not a whole number of ticks of {tick} s"),
        ));
    }
    if q.to_integer() > MAX_TICKS {
        return Err(Error::config(
            "periods",
            format!(
                "the clock's tick (the greatest common divisor of every dt_s) is {tick} s: \
                 {} ticks for {duration} s, over {MAX_TICKS}; give periods whose ratio is a \
                 simple fraction (\"1/10\", 0.25, 1) or a shorter duration",
                q.to_integer()
            ),
        ));
    }
    Ok(q.to_integer())
}

/// Runs datacenters, an optional grid and controllers on one clock.
pub struct Coordinator {
    datacenters: Vec<Box<dyn Datacenter>>,
    grid: Option<Box<dyn Grid>>,
    controllers: Vec<Box<dyn Controller>>,
    clock: SimulationClock,
    dc_every: Vec<u64>,
    grid_every: u64,
    controller_every: Vec<u64>,
    total_ticks: u64,
    started: bool,
    dc_stepped: Vec<bool>,
    grid_buffers: Vec<Vec<ThreePhase>>,
    grid_state: Option<GridState>,
    grid_stepped: bool,
    commands: Vec<Command>,
    events: Events,
    counts: RunCounts,
}

impl Coordinator {
    /// Checks names and periods and computes the common tick. `duration` must be a whole
    /// number of ticks.
    pub fn new(
        datacenters: Vec<Box<dyn Datacenter>>,
        grid: Option<Box<dyn Grid>>,
        controllers: Vec<Box<dyn Controller>>,
        duration: Seconds,
    ) -> Result<Self> {
        if datacenters.is_empty() {
            return Err(Error::config("coordinator.datacenters", "none (need ≥ 1)"));
        }
        let mut names: Vec<&str> = datacenters.iter().map(|d| d.name()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::config(
                "coordinator.datacenters",
                format!("duplicate datacenter name {:?}", w[0]),
            ));
        }
        let mut tick = datacenters[0].dt_s();
        for p in datacenters
            .iter()
            .map(|d| d.dt_s())
            .chain(grid.iter().map(|g| g.dt_s()))
        {
            tick = clock::gcd(tick, p)?;
        }
        for c in &controllers {
            tick = clock::gcd(tick, c.dt_s())?;
        }
        let clock = SimulationClock::new(tick)?;
        let dc_every = datacenters
            .iter()
            .map(|d| clock.ticks_per(&format!("datacenter {} dt_s", d.name()), d.dt_s()))
            .collect::<Result<Vec<_>>>()?;
        let grid_every = match &grid {
            Some(g) => clock.ticks_per("grid dt_s", g.dt_s())?,
            None => 1,
        };
        let controller_every = controllers
            .iter()
            .map(|c| clock.ticks_per(&format!("controller {} dt_s", c.name()), c.dt_s()))
            .collect::<Result<Vec<_>>>()?;
        let total_ticks = tick_count(duration, tick)?;
        let view = SimView {
            datacenters: &datacenters,
            grid_state: None,
            grid: grid.as_deref(),
        };
        for c in &controllers {
            c.check(&view)?;
        }
        let n = datacenters.len();
        Ok(Coordinator {
            datacenters,
            grid,
            controllers,
            clock,
            dc_every,
            grid_every,
            controller_every,
            total_ticks,
            started: false,
            dc_stepped: vec![false; n],
            grid_buffers: vec![Vec::new(); n],
            grid_state: None,
            grid_stepped: false,
            commands: Vec::new(),
            events: Events::default(),
            counts: RunCounts::default(),
        })
    }

    pub fn total_ticks(&self) -> u64 {
        self.total_ticks
    }

    /// Clock to 0, every component reset.
    pub fn reset(&mut self) {
        self.clock.reset();
        for d in &mut self.datacenters {
            d.reset();
        }
        if let Some(g) = &mut self.grid {
            g.reset();
        }
        for c in &mut self.controllers {
            c.reset();
        }
        self.grid_state = None;
        for b in &mut self.grid_buffers {
            b.clear();
        }
        self.counts = RunCounts::default();
        self.started = false;
    }

    /// Starts datacenters, the grid, then controllers.
    pub fn start(&mut self) -> Result<()> {
        for d in &mut self.datacenters {
            d.start()?;
        }
        if let Some(g) = &mut self.grid {
            g.start()?;
        }
        for c in &mut self.controllers {
            c.start()?;
        }
        self.events = Events::default();
        self.started = true;
        Ok(())
    }

    /// Stops controllers in reverse order, then the grid, then datacenters.
    pub fn stop(&mut self) {
        for c in self.controllers.iter_mut().rev() {
            c.stop();
        }
        if let Some(g) = &mut self.grid {
            g.stop();
        }
        for d in &mut self.datacenters {
            d.stop();
        }
        self.started = false;
    }

    /// Applies commands to their targets now (RL drivers inject actions between steps).
    pub fn dispatch(&mut self, commands: &[Command]) -> Result<()> {
        for cmd in commands {
            route(&mut self.datacenters, &mut self.grid, cmd, &mut self.events)?;
        }
        Ok(())
    }

    /// One tick. Errors before [`Coordinator::start`].
    pub fn step(&mut self) -> Result<TickOutput<'_>> {
        if !self.started {
            return Err(Error::config("coordinator", "step() before start()"));
        }
        let tick = self.clock.tick();
        let t_s = self.clock.time_s();
        self.events.tick = tick;
        self.events.t_s = t_s;
        self.events.buf.clear();
        self.commands.clear();
        let has_grid = self.grid.is_some();
        for (i, d) in self.datacenters.iter_mut().enumerate() {
            let due = self.clock.is_due(self.dc_every[i]);
            self.dc_stepped[i] = due;
            if due {
                d.step(&self.clock, &mut self.events)?;
                self.counts.dc_steps += 1;
                if has_grid {
                    if let Some(s) = d.state() {
                        self.grid_buffers[i].push(s.power_w);
                    }
                }
            }
        }
        self.grid_stepped = false;
        if let Some(g) = &mut self.grid {
            if self.clock.is_due(self.grid_every) {
                let state = g.step(&self.clock, &self.grid_buffers, &mut self.events)?;
                for c in &mut self.controllers {
                    c.observe_grid(&state);
                }
                self.grid_state = Some(state);
                for b in &mut self.grid_buffers {
                    b.clear();
                }
                self.grid_stepped = true;
                self.counts.grid_steps += 1;
            }
        }
        for (i, c) in self.controllers.iter_mut().enumerate() {
            if !self.clock.is_due(self.controller_every[i]) {
                continue;
            }
            let view = SimView {
                datacenters: &self.datacenters,
                grid_state: self.grid_state.as_ref(),
                grid: self.grid.as_deref(),
            };
            let cmds = c.step(&self.clock, &view, &mut self.events)?;
            self.counts.controller_steps += 1;
            for cmd in &cmds {
                route(&mut self.datacenters, &mut self.grid, cmd, &mut self.events)?;
            }
            self.commands.extend(cmds);
        }
        self.counts.ticks += 1;
        self.counts.commands += self.commands.len() as u64;
        self.counts.events += self.events.buf.len() as u64;
        self.clock.advance();
        Ok(TickOutput {
            tick,
            t_s,
            dc_stepped: &self.dc_stepped,
            datacenters: &self.datacenters,
            grid_state: if self.grid_stepped {
                self.grid_state.as_ref()
            } else {
                None
            },
            commands: &self.commands,
            events: self.events.as_slice(),
        })
    }

    /// reset → start → every tick to `sink` → stop (also on error). The sink is finished only
    /// when the run succeeds, so a failed run leaves no result behind.
    pub fn run(&mut self, sink: &mut dyn RunSink) -> Result<RunCounts> {
        self.reset();
        let out = self.run_started(sink);
        self.stop();
        out?;
        sink.finish()?;
        Ok(self.counts)
    }

    fn run_started(&mut self, sink: &mut dyn RunSink) -> Result<()> {
        self.start()?;
        sink.begin(&self.datacenters)?;
        for _ in 0..self.total_ticks {
            let out = self.step()?;
            sink.record(&out)?;
        }
        Ok(())
    }
}

fn route(
    datacenters: &mut [Box<dyn Datacenter>],
    grid: &mut Option<Box<dyn Grid>>,
    cmd: &Command,
    events: &mut Events,
) -> Result<()> {
    match cmd {
        Command::Datacenter { target, command } => {
            let dc = datacenters
                .iter_mut()
                .find(|d| d.name() == target)
                .ok_or_else(|| {
                    Error::config("command.target", format!("no datacenter named {target:?}"))
                })?;
            dc.apply_control(command, events)
        }
        Command::Grid(g) => match grid {
            Some(grid) => grid.apply_control(g, events),
            None => Err(Error::config(
                "command",
                format!("{g:?} needs a grid, and this simulation has none"),
            )),
        },
    }
}
