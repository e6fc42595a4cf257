//! Where a run goes: [`RunLog`] keeps every tick in memory (tests, small runs, RL episodes);
//! [`ParquetRunWriter`] streams per-step datacenter states to parquet in row groups and keeps
//! only the facility power series (8 bytes per step) for the facility metrics, so memory does
//! not grow with the number of GPUs or models. Output files (see docs/outputs.md):
//! one folder per table (`steps/`, `models/`, `rows/`, `racks/`, `facility/`, `commands/`,
//! `events/`, each `part-0.parquet` or, for a shard, `shard=I/part-0.parquet`) and
//! `facility_metrics.json`; each file appears whole at the end of a successful run or not at
//! all.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use super::grid_metrics::{GridMetricsAccumulator, GridOutputSpec};
use super::{Command, Datacenter, DcState, RunSink, SimEvent, TickOutput};
use crate::error::Result;
use crate::shard::Shard;
use crate::site::{facility_metrics_multi, FacilityMetrics};
use crate::synth::downsample_mean;
use crate::table::{write_parquet, Column, ParquetStream, Table};

/// A command as recorded: tick, time and JSON of the command.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordedCommand {
    pub tick: u64,
    pub(crate) t_s: f64,
    pub(crate) command: Command,
}

/// Appends a tick's commands (stamped with its tick and time) and events.
fn record_commands_and_events(
    tick: &TickOutput<'_>,
    commands: &mut Vec<RecordedCommand>,
    events: &mut Vec<SimEvent>,
) {
    commands.extend(tick.commands.iter().map(|c| RecordedCommand {
        tick: tick.tick,
        t_s: tick.t_s,
        command: c.clone(),
    }));
    events.extend(tick.events.iter().cloned());
}

/// A whole run in memory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunLog {
    /// Per datacenter (in coordinator order), its states in time order.
    pub dc_states: Vec<Vec<DcState>>,
    pub commands: Vec<RecordedCommand>,
    pub events: Vec<SimEvent>,
}

impl RunSink for RunLog {
    fn begin(&mut self, datacenters: &[Box<dyn Datacenter>]) -> Result<()> {
        *self = RunLog {
            dc_states: vec![Vec::new(); datacenters.len()],
            ..RunLog::default()
        };
        Ok(())
    }
    fn record(&mut self, tick: &TickOutput<'_>) -> Result<()> {
        for (i, d) in tick.datacenters.iter().enumerate() {
            if tick.dc_stepped[i] {
                if let Some(s) = d.state() {
                    self.dc_states[i].push(s.clone());
                }
            }
        }
        record_commands_and_events(tick, &mut self.commands, &mut self.events);
        Ok(())
    }
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

const ROW_GROUP: usize = 65_536;

/// The tables of a run result, one folder each so that every folder holds one schema
/// (`read_parquet('out/steps/**/*.parquet')` works in DuckDB, polars and pandas).
pub const RUN_TABLES: [&str; 7] = [
    "steps", "models", "rows", "racks", "facility", "commands", "events",
];

/// Where shard I's record goes: `dir/shards/shard=I.json`.
pub(crate) fn shard_record_path(dir: &Path, shard: Shard) -> PathBuf {
    dir.join("shards")
        .join(format!("{}.json", shard.partition()))
}

/// Row buffers of one streamed table.
trait Rows {
    fn len(&self) -> usize;
    /// The buffered rows as a table (an empty one gives the schema); the buffers are emptied.
    fn take(&mut self) -> Table;
}

/// A table streamed to parquet in row groups; visible under its name only after `finish`.
struct Streamed<R: Rows> {
    rows: R,
    stream: ParquetStream,
}

impl<R: Rows> Streamed<R> {
    fn create(path: &Path, mut rows: R) -> Result<Self> {
        let schema = rows.take().columns;
        Ok(Streamed {
            stream: ParquetStream::create(path, &schema)?,
            rows,
        })
    }
    fn flush_if_full(&mut self) -> Result<()> {
        if self.rows.len() >= ROW_GROUP {
            self.stream.write(&self.rows.take())?;
        }
        Ok(())
    }
    fn finish(mut self) -> Result<()> {
        if self.rows.len() > 0 {
            self.stream.write(&self.rows.take())?;
        }
        self.stream.finish()
    }
}

/// The buffered values; the buffer keeps its capacity for the next row group (no regrowth).
fn take<T>(v: &mut Vec<T>) -> Vec<T> {
    let capacity = v.capacity();
    std::mem::replace(v, Vec::with_capacity(capacity))
}

/// `steps`: one row per datacenter step.
#[derive(Default)]
struct StepRows {
    names: Arc<[String]>,
    datacenter: Vec<u32>,
    tick: Vec<i64>,
    t_s: Vec<f64>,
    phase_w: [Vec<f64>; 3],
    facility_w: Vec<f64>,
    training_w: Vec<f64>,
}

impl Rows for StepRows {
    fn len(&self) -> usize {
        self.tick.len()
    }
    fn take(&mut self) -> Table {
        let [a, b, c] = &mut self.phase_w;
        let names = self.names.clone();
        Table::new()
            .with("datacenter", Column::Cat(take(&mut self.datacenter), names))
            .with("tick", Column::I64(take(&mut self.tick)))
            .with("t_s", Column::F64(take(&mut self.t_s)))
            .with("power_a_w", Column::F64(take(a)))
            .with("power_b_w", Column::F64(take(b)))
            .with("power_c_w", Column::F64(take(c)))
            .with("facility_power_w", Column::F64(take(&mut self.facility_w)))
            .with("training_power_w", Column::F64(take(&mut self.training_w)))
    }
}

/// `models`: one row per (datacenter step, model).
#[derive(Default)]
struct ModelRows {
    names: Arc<[String]>,
    /// Every datacenter's model labels, one after the other.
    labels: Arc<[String]>,
    datacenter: Vec<u32>,
    tick: Vec<i64>,
    t_s: Vec<f64>,
    model: Vec<u32>,
    power_w: Vec<f64>,
    active_replicas: Vec<i64>,
    batch_size: Vec<i64>,
    observed_itl_s: Vec<f64>,
}

impl Rows for ModelRows {
    fn len(&self) -> usize {
        self.tick.len()
    }
    fn take(&mut self) -> Table {
        let (names, labels) = (self.names.clone(), self.labels.clone());
        Table::new()
            .with("datacenter", Column::Cat(take(&mut self.datacenter), names))
            .with("tick", Column::I64(take(&mut self.tick)))
            .with("t_s", Column::F64(take(&mut self.t_s)))
            .with("model", Column::Cat(take(&mut self.model), labels))
            .with("power_w", Column::F64(take(&mut self.power_w)))
            .with(
                "active_replicas",
                Column::I64(take(&mut self.active_replicas)),
            )
            .with("batch_size", Column::I64(take(&mut self.batch_size)))
            .with(
                "observed_itl_s",
                Column::F64(take(&mut self.observed_itl_s)),
            )
    }
}

/// `rows` (one row per datacenter step and row of racks) and `racks` (one row per rack
/// window and rack): the same columns but the rack number.
#[derive(Default)]
struct LayoutRows {
    with_rack: bool,
    names: Arc<[String]>,
    datacenter: Vec<u32>,
    tick: Vec<i64>,
    t_s: Vec<f64>,
    rack: Vec<i64>,
    row: Vec<i64>,
    power_w: Vec<f64>,
}

impl Rows for LayoutRows {
    fn len(&self) -> usize {
        self.t_s.len()
    }
    fn take(&mut self) -> Table {
        let names = self.names.clone();
        let mut t = Table::new().with("datacenter", Column::Cat(take(&mut self.datacenter), names));
        if self.with_rack {
            t = t
                .with("t_s", Column::F64(take(&mut self.t_s)))
                .with("rack", Column::I64(take(&mut self.rack)));
        } else {
            t = t
                .with("tick", Column::I64(take(&mut self.tick)))
                .with("t_s", Column::F64(take(&mut self.t_s)));
        }
        t.with("row", Column::I64(take(&mut self.row)))
            .with("power_w", Column::F64(take(&mut self.power_w)))
    }
}

/// Per-rack mean power over fixed windows of one datacenter.
struct RackWindows {
    racks_per_row: usize,
    steps_per_window: usize,
    window_s: f64,
    sum_w: Vec<f64>,
    steps: usize,
    window: usize,
}

impl RackWindows {
    fn push(&mut self, dc: u32, rack_w: &[f64], out: &mut LayoutRows) {
        if self.sum_w.is_empty() {
            return;
        }
        for (a, v) in self.sum_w.iter_mut().zip(rack_w) {
            *a += v;
        }
        self.steps += 1;
        if self.steps == self.steps_per_window {
            for (r, a) in self.sum_w.iter_mut().enumerate() {
                out.datacenter.push(dc);
                out.t_s.push(self.window as f64 * self.window_s);
                out.rack.push(r as i64);
                out.row.push((r / self.racks_per_row.max(1)) as i64);
                out.power_w.push(*a / self.steps as f64);
                *a = 0.0;
            }
            self.steps = 0;
            self.window += 1;
        }
    }
}

/// What the writer keeps of one datacenter.
struct DcRun {
    name: String,
    models: Vec<String>,
    /// Code of its first model in the `models` table's label dictionary.
    model_offset: u32,
    dt_s: f64,
    racks: usize,
    racks_per_row: usize,
    /// Facility power of every step, for the facility metrics.
    facility_series_w: Vec<f64>,
    rack_windows: RackWindows,
}

/// Facility metrics of one datacenter at its step and at 1 s, 1 min, 15 min.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DcFacilitySummary {
    pub datacenter: String,
    pub(crate) steps: usize,
    pub mean_facility_power_w: f64,
    pub(crate) metrics: Vec<FacilityMetrics>,
}

/// One datacenter's facility power series (one value per datacenter step).
pub(crate) struct FacilitySeries<'a> {
    pub(crate) datacenter: &'a str,
    pub(crate) dt_s: f64,
    pub(crate) power_w: &'a [f64],
}

/// Writes `facility/part-0.parquet` (facility power at 1 s, 1 min and 15 min: the
/// resolutions that are whole multiples of the step and fit the run) and
/// `facility_metrics.json`; returns the summaries.
pub(crate) fn write_facility_outputs(
    dir: &Path,
    series: &[FacilitySeries<'_>],
) -> Result<Vec<DcFacilitySummary>> {
    let mut fac = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut summaries = Vec::new();
    for s in series {
        let (dt_s, w) = (s.dt_s, s.power_w);
        for target in [1.0, 60.0, 900.0] {
            let k = (target / dt_s).round();
            if target < dt_s || (k * dt_s - target).abs() > 1e-9 || k as usize > w.len() {
                continue;
            }
            for (j, v) in downsample_mean(w, k as usize).into_iter().enumerate() {
                fac.0.push(s.datacenter.to_string());
                fac.1.push(target);
                fac.2.push(j as f64 * target);
                fac.3.push(v);
            }
        }
        summaries.push(DcFacilitySummary {
            datacenter: s.datacenter.to_string(),
            steps: w.len(),
            mean_facility_power_w: w.iter().sum::<f64>() / w.len().max(1) as f64,
            metrics: if w.is_empty() {
                Vec::new()
            } else {
                facility_metrics_multi(w, dt_s)
            },
        });
    }
    write_parquet(
        &Shard::WHOLE.table_path(dir, "facility"),
        &Table::new()
            .with("datacenter", Column::Str(fac.0))
            .with("resolution_s", Column::F64(fac.1))
            .with("t_s", Column::F64(fac.2))
            .with("facility_power_w", Column::F64(fac.3)),
    )?;
    crate::store::write_json(&dir.join("facility_metrics.json"), &summaries)?;
    Ok(summaries)
}

/// A table with the `tick` and `t_s` columns of time-stamped records.
fn stamped(stamps: impl Iterator<Item = (u64, f64)>) -> Table {
    let (ticks, times): (Vec<i64>, Vec<f64>) = stamps.map(|(k, t)| (k as i64, t)).unzip();
    Table::new()
        .with("tick", Column::I64(ticks))
        .with("t_s", Column::F64(times))
}

/// What a shard of a run records for the merge (`shards/shard=I.json`).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub(crate) struct ShardRecord {
    pub(crate) schema: String,
    pub(crate) shard_index: u32,
    pub(crate) shard_count: u32,
    /// What the run was (scenario digest and overrides): shards of different runs do not merge.
    pub(crate) run_key: String,
    pub(crate) datacenters: Vec<ShardDatacenter>,
}

/// A datacenter as a shard saw it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub(crate) struct ShardDatacenter {
    pub(crate) name: String,
    pub(crate) dt_s: f64,
    pub(crate) models: Vec<String>,
    pub(crate) racks: usize,
    pub(crate) racks_per_row: usize,
    pub(crate) steps: usize,
}

pub(crate) const SHARD_RECORD_SCHEMA: &str = "powersynth.shard.v1";

/// Streams a run to a folder, one folder per table (docs/outputs.md); a shard's tables go to
/// its hive partition and the facility outputs are left to the merge.
pub struct ParquetRunWriter {
    dir: PathBuf,
    shard: Shard,
    run_key: String,
    rack_window_s: f64,
    steps: Option<Streamed<StepRows>>,
    models: Option<Streamed<ModelRows>>,
    rows: Option<Streamed<LayoutRows>>,
    racks: Option<Streamed<LayoutRows>>,
    grid_spec: Option<GridOutputSpec>,
    grid: Option<GridOutput>,
    dcs: Vec<DcRun>,
    commands: Vec<RecordedCommand>,
    events: Vec<SimEvent>,
    summaries: Vec<DcFacilitySummary>,
}

impl ParquetRunWriter {
    pub fn new(dir: &Path) -> Self {
        ParquetRunWriter {
            dir: dir.to_path_buf(),
            shard: Shard::WHOLE,
            run_key: String::new(),
            rack_window_s: 60.0,
            steps: None,
            models: None,
            rows: None,
            racks: None,
            grid_spec: None,
            grid: None,
            dcs: Vec::new(),
            commands: Vec::new(),
            events: Vec::new(),
            summaries: Vec::new(),
        }
    }
    /// Window of the per-rack mean power in `racks/` (s; default 60, rounded to whole
    /// datacenter steps).
    pub fn with_rack_window_s(mut self, window_s: f64) -> Self {
        self.rack_window_s = window_s;
        self
    }

    /// Writes shard `shard` of a run: tables in their `shard=I` partitions and
    /// `shards/shard=I.json` with `run_key`, which every shard of one run must share.
    pub fn with_shard(mut self, shard: Shard, run_key: &str) -> Self {
        self.shard = shard;
        self.run_key = run_key.to_string();
        self
    }

    /// Writes the grid's monitored voltages (`grid/`), taps (`taps/`) and `grid_metrics.json`.
    pub fn with_grid(mut self, spec: GridOutputSpec) -> Self {
        self.grid_spec = Some(spec);
        self
    }

    fn dc_run(&self, d: &dyn Datacenter) -> DcRun {
        let (racks, racks_per_row) = d.rack_layout();
        let dt_s = super::clock::to_f64(d.dt_s());
        let steps = (self.rack_window_s / dt_s).round().max(1.0) as usize;
        DcRun {
            name: d.name().to_string(),
            models: d.model_labels().to_vec(),
            model_offset: 0,
            dt_s,
            racks,
            racks_per_row,
            facility_series_w: Vec::new(),
            rack_windows: RackWindows {
                racks_per_row,
                steps_per_window: steps,
                window_s: steps as f64 * dt_s,
                sum_w: vec![0.0; racks],
                steps: 0,
                window: 0,
            },
        }
    }

    fn push_state(&mut self, i: usize, tick: u64, s: &DcState) -> Result<()> {
        let dc = &mut self.dcs[i];
        let code = i as u32;
        if let Some(st) = &mut self.steps {
            let r = &mut st.rows;
            r.datacenter.push(code);
            r.tick.push(tick as i64);
            r.t_s.push(s.time_s);
            for (v, p) in r
                .phase_w
                .iter_mut()
                .zip([s.power_w.a, s.power_w.b, s.power_w.c])
            {
                v.push(p);
            }
            r.facility_w.push(s.facility_power_w);
            r.training_w.push(s.training_power_w);
            st.flush_if_full()?;
        }
        if let Some(st) = &mut self.models {
            let r = &mut st.rows;
            for (m, ms) in s.models.iter().enumerate().take(dc.models.len()) {
                r.datacenter.push(code);
                r.tick.push(tick as i64);
                r.t_s.push(s.time_s);
                r.model.push(dc.model_offset + m as u32);
                r.power_w.push(ms.power_w);
                r.active_replicas.push(ms.active_replicas as i64);
                r.batch_size.push(ms.batch_size as i64);
                r.observed_itl_s.push(ms.observed_itl_s);
            }
            st.flush_if_full()?;
        }
        if let Some(st) = &mut self.rows {
            let r = &mut st.rows;
            for (row, p) in s.row_power_w.iter().enumerate() {
                r.datacenter.push(code);
                r.tick.push(tick as i64);
                r.t_s.push(s.time_s);
                r.row.push(row as i64);
                r.power_w.push(*p);
            }
            st.flush_if_full()?;
        }
        if let Some(st) = &mut self.racks {
            dc.rack_windows.push(code, &s.rack_power_w, &mut st.rows);
            st.flush_if_full()?;
        }
        dc.facility_series_w.push(s.facility_power_w);
        Ok(())
    }

    fn write_log(&self) -> Result<()> {
        let cmd_json = |c: &Command| serde_json::to_string(c).unwrap_or_default();
        let commands = stamped(self.commands.iter().map(|c| (c.tick, c.t_s))).with(
            "command",
            Column::Str(self.commands.iter().map(|c| cmd_json(&c.command)).collect()),
        );
        write_parquet(&self.shard.table_path(&self.dir, "commands"), &commands)?;
        let events = stamped(self.events.iter().map(|e| (e.tick, e.t_s)))
            .with(
                "source",
                Column::Str(
                    self.events
                        .iter()
                        .map(|e| format!("{:?}", e.source).to_lowercase())
                        .collect(),
                ),
            )
            .with(
                "topic",
                Column::Str(self.events.iter().map(|e| e.topic.clone()).collect()),
            )
            .with(
                "data",
                Column::Str(self.events.iter().map(|e| e.data.to_string()).collect()),
            );
        write_parquet(&self.shard.table_path(&self.dir, "events"), &events)
    }
}

impl RunSink for ParquetRunWriter {
    fn begin(&mut self, datacenters: &[Box<dyn Datacenter>]) -> Result<()> {
        self.commands.clear();
        self.events.clear();
        self.summaries.clear();
        self.dcs = datacenters
            .iter()
            .map(|d| self.dc_run(d.as_ref()))
            .collect();
        let mut labels = Vec::new();
        for d in &mut self.dcs {
            d.model_offset = labels.len() as u32;
            labels.extend(d.models.iter().cloned());
        }
        let names: Arc<[String]> = self.dcs.iter().map(|d| d.name.clone()).collect();
        let path = |t: &str| self.shard.table_path(&self.dir, t);
        let steps = StepRows {
            names: names.clone(),
            ..StepRows::default()
        };
        self.steps = Some(Streamed::create(&path("steps"), steps)?);
        let models = ModelRows {
            names: names.clone(),
            labels: labels.into(),
            ..ModelRows::default()
        };
        self.models = Some(Streamed::create(&path("models"), models)?);
        let layout = self.dcs.iter().any(|d| d.racks > 0);
        self.rows = None;
        self.racks = None;
        if layout {
            let rows = LayoutRows {
                names: names.clone(),
                ..LayoutRows::default()
            };
            self.rows = Some(Streamed::create(&path("rows"), rows)?);
            let racks = LayoutRows {
                with_rack: true,
                names,
                ..LayoutRows::default()
            };
            self.racks = Some(Streamed::create(&path("racks"), racks)?);
        }
        self.grid = match &self.grid_spec {
            Some(spec) => Some(GridOutput::create(&self.dir, spec.clone())?),
            None => None,
        };
        Ok(())
    }

    fn record(&mut self, tick: &TickOutput<'_>) -> Result<()> {
        for (i, d) in tick.datacenters.iter().enumerate() {
            if tick.dc_stepped[i] {
                if let Some(s) = d.state() {
                    self.push_state(i, tick.tick, s)?;
                }
            }
        }
        if let (Some(g), Some(state)) = (&mut self.grid, tick.grid_state) {
            g.push(tick.tick, tick.t_s, state)?;
        }
        record_commands_and_events(tick, &mut self.commands, &mut self.events);
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        if let Some(g) = self.grid.take() {
            g.finish()?;
        }
        if let Some(s) = self.steps.take() {
            s.finish()?;
        }
        if let Some(s) = self.models.take() {
            s.finish()?;
        }
        if let Some(s) = self.rows.take() {
            s.finish()?;
        }
        if let Some(s) = self.racks.take() {
            s.finish()?;
        }
        self.write_log()?;
        if self.shard.is_whole() {
            let series: Vec<FacilitySeries<'_>> = self
                .dcs
                .iter()
                .map(|d| FacilitySeries {
                    datacenter: &d.name,
                    dt_s: d.dt_s,
                    power_w: &d.facility_series_w,
                })
                .collect();
            self.summaries = write_facility_outputs(&self.dir, &series)?;
        } else {
            let record = ShardRecord {
                schema: SHARD_RECORD_SCHEMA.to_string(),
                shard_index: self.shard.index,
                shard_count: self.shard.count,
                run_key: self.run_key.clone(),
                datacenters: self
                    .dcs
                    .iter()
                    .map(|d| ShardDatacenter {
                        name: d.name.clone(),
                        dt_s: d.dt_s,
                        models: d.models.clone(),
                        racks: d.racks,
                        racks_per_row: d.racks_per_row,
                        steps: d.facility_series_w.len(),
                    })
                    .collect(),
            };
            crate::store::write_json(&shard_record_path(&self.dir, self.shard), &record)?;
        }
        Ok(())
    }
}

/// Monitored voltages per grid step, long: (tick, t_s, bus, phase, v_pu).
#[derive(Default)]
struct GridRows {
    buses: Arc<[String]>,
    tick: Vec<i64>,
    t_s: Vec<f64>,
    bus: Vec<u32>,
    phase: Vec<i64>,
    v_pu: Vec<f64>,
}

impl Rows for GridRows {
    fn len(&self) -> usize {
        self.tick.len()
    }
    fn take(&mut self) -> Table {
        Table::new()
            .with("tick", Column::I64(take(&mut self.tick)))
            .with("t_s", Column::F64(take(&mut self.t_s)))
            .with("bus", Column::Cat(take(&mut self.bus), self.buses.clone()))
            .with("phase", Column::I64(take(&mut self.phase)))
            .with("v_pu", Column::F64(take(&mut self.v_pu)))
    }
}

/// Regulator taps per grid step, long: (tick, t_s, regulator, tap_pu).
#[derive(Default)]
struct TapRows {
    names: Arc<[String]>,
    tick: Vec<i64>,
    t_s: Vec<f64>,
    regulator: Vec<u32>,
    tap_pu: Vec<f64>,
}

impl Rows for TapRows {
    fn len(&self) -> usize {
        self.tick.len()
    }
    fn take(&mut self) -> Table {
        Table::new()
            .with("tick", Column::I64(take(&mut self.tick)))
            .with("t_s", Column::F64(take(&mut self.t_s)))
            .with(
                "regulator",
                Column::Cat(take(&mut self.regulator), self.names.clone()),
            )
            .with("tap_pu", Column::F64(take(&mut self.tap_pu)))
    }
}

/// Batteries per grid step, long: (tick, t_s, storage, soc, stored_kwh, power_kw,
/// reactive_power_kvar, mode).
#[derive(Default)]
struct StorageRows {
    names: Arc<[String]>,
    modes: Arc<[String]>,
    tick: Vec<i64>,
    t_s: Vec<f64>,
    storage: Vec<u32>,
    soc: Vec<f64>,
    stored_kwh: Vec<f64>,
    power_kw: Vec<f64>,
    reactive_power_kvar: Vec<f64>,
    mode: Vec<u32>,
}

impl Rows for StorageRows {
    fn len(&self) -> usize {
        self.tick.len()
    }
    fn take(&mut self) -> Table {
        Table::new()
            .with("tick", Column::I64(take(&mut self.tick)))
            .with("t_s", Column::F64(take(&mut self.t_s)))
            .with(
                "storage",
                Column::Cat(take(&mut self.storage), self.names.clone()),
            )
            .with("soc", Column::F64(take(&mut self.soc)))
            .with("stored_kwh", Column::F64(take(&mut self.stored_kwh)))
            .with("power_kw", Column::F64(take(&mut self.power_kw)))
            .with(
                "reactive_power_kvar",
                Column::F64(take(&mut self.reactive_power_kvar)),
            )
            .with(
                "mode",
                Column::Cat(take(&mut self.mode), self.modes.clone()),
            )
    }
}

impl StorageRows {
    fn push(&mut self, tick: u64, t_s: f64, readings: &[super::StorageReading]) {
        for (i, r) in readings.iter().enumerate() {
            self.tick.push(tick as i64);
            self.t_s.push(t_s);
            self.storage.push(i as u32);
            self.soc.push(r.soc);
            self.stored_kwh.push(r.stored_kwh);
            self.power_kw.push(r.power_kw);
            self.reactive_power_kvar.push(r.reactive_power_kvar);
            let mode = self.modes.iter().position(|m| m == r.mode).unwrap_or(0);
            self.mode.push(mode as u32);
        }
    }
}

/// The grid tables of a run being written, and its metrics.
struct GridOutput {
    dir: PathBuf,
    voltages: Streamed<GridRows>,
    taps: Option<Streamed<TapRows>>,
    storage: Option<Streamed<StorageRows>>,
    metrics: GridMetricsAccumulator,
    bus_code: Vec<u32>,
}

impl GridOutput {
    fn create(dir: &Path, spec: GridOutputSpec) -> Result<Self> {
        let mut buses: Vec<String> = Vec::new();
        let mut bus_code = Vec::with_capacity(spec.monitored.len());
        for (b, _) in &spec.monitored {
            let code = match buses.iter().position(|x| x == b) {
                Some(i) => i,
                None => {
                    buses.push(b.clone());
                    buses.len() - 1
                }
            };
            bus_code.push(code as u32);
        }
        let rows = GridRows {
            buses: buses.into(),
            ..GridRows::default()
        };
        Ok(GridOutput {
            dir: dir.to_path_buf(),
            voltages: Streamed::create(&Shard::WHOLE.table_path(dir, "grid"), rows)?,
            taps: None,
            storage: None,
            metrics: GridMetricsAccumulator::new(spec),
            bus_code,
        })
    }

    fn push(&mut self, tick: u64, t_s: f64, state: &super::GridState) -> Result<()> {
        let v = self.metrics.monitored_voltages(state);
        self.metrics.add(state);
        let spec = self.metrics.spec();
        let r = &mut self.voltages.rows;
        for (k, x) in v.iter().enumerate() {
            r.tick.push(tick as i64);
            r.t_s.push(t_s);
            r.bus.push(self.bus_code[k]);
            r.phase.push(spec.monitored[k].1 as i64);
            r.v_pu.push(*x);
        }
        self.voltages.flush_if_full()?;
        if self.taps.is_none() && !state.tap_positions.is_empty() {
            let names: Arc<[String]> = state.tap_positions.iter().map(|(n, _)| n.clone()).collect();
            let rows = TapRows {
                names,
                ..TapRows::default()
            };
            let path = Shard::WHOLE.table_path(&self.dir, "taps");
            self.taps = Some(Streamed::create(&path, rows)?);
        }
        if let Some(t) = &mut self.taps {
            for (i, (_, tap)) in state.tap_positions.iter().enumerate() {
                t.rows.tick.push(tick as i64);
                t.rows.t_s.push(t_s);
                t.rows.regulator.push(i as u32);
                t.rows.tap_pu.push(*tap);
            }
            t.flush_if_full()?;
        }
        if self.storage.is_none() && !state.storage.is_empty() {
            let rows = StorageRows {
                names: state.storage.iter().map(|r| r.name.clone()).collect(),
                modes: ["idling", "charging", "discharging"]
                    .map(String::from)
                    .into(),
                ..StorageRows::default()
            };
            let path = Shard::WHOLE.table_path(&self.dir, "storage");
            self.storage = Some(Streamed::create(&path, rows)?);
        }
        if let Some(t) = &mut self.storage {
            t.rows.push(tick, t_s, &state.storage);
            t.flush_if_full()?;
        }
        Ok(())
    }

    fn finish(self) -> Result<()> {
        self.voltages.finish()?;
        if let Some(t) = self.taps {
            t.finish()?;
        }
        if let Some(t) = self.storage {
            t.finish()?;
        }
        crate::store::write_json(&self.dir.join("grid_metrics.json"), &self.metrics.metrics())
    }
}

/// Running totals of a run (facility power of every datacenter step), passed on to an
/// optional inner sink; `on_tick` is called every `every` ticks (progress bars).
pub struct StatsSink<'a> {
    inner: Option<&'a mut dyn RunSink>,
    every: u64,
    on_tick: Box<dyn FnMut(u64) + 'a>,
    pub(crate) dc_steps: u64,
    facility_sum_w: f64,
    pub facility_min_w: f64,
    pub facility_max_w: f64,
    /// Facility and per-phase power per second of simulated time, over all datacenters.
    pub per_second: PerSecond,
    /// Grid metrics, with [`StatsSink::with_grid`].
    pub grid: Option<GridMetricsAccumulator>,
}

/// Power per second of simulated time (mean of the datacenter steps in each second; a second
/// without a step repeats the one before). 32 bytes per simulated second.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PerSecond {
    pub facility_w: Vec<f64>,
    /// Phases A, B, C.
    pub phase_w: [Vec<f64>; 3],
    counts: Vec<u32>,
}

impl PerSecond {
    fn add(&mut self, s: &DcState) {
        self.add_values(
            s.time_s,
            s.facility_power_w,
            [s.power_w.a, s.power_w.b, s.power_w.c],
        );
    }

    /// Adds one datacenter step at `time_s` (facility and per-phase power, W).
    pub(crate) fn add_values(&mut self, time_s: f64, facility_w: f64, phase_w: [f64; 3]) {
        let k = time_s.max(0.0).floor() as usize;
        if k >= self.counts.len() {
            self.counts.resize(k + 1, 0);
            self.facility_w.resize(k + 1, 0.0);
            for p in &mut self.phase_w {
                p.resize(k + 1, 0.0);
            }
        }
        self.counts[k] += 1;
        self.facility_w[k] += facility_w;
        for (p, v) in self.phase_w.iter_mut().zip(phase_w) {
            p[k] += v;
        }
    }

    /// The means (sums ÷ steps), gaps filled with the second before. Once: the step counts
    /// are spent.
    pub(crate) fn finish(&mut self) {
        let counts = std::mem::take(&mut self.counts);
        for v in std::iter::once(&mut self.facility_w).chain(self.phase_w.iter_mut()) {
            let mut last = 0.0;
            for (x, &n) in v.iter_mut().zip(&counts) {
                if n > 0 {
                    *x /= n as f64;
                    last = *x;
                } else {
                    *x = last;
                }
            }
        }
    }
}

impl<'a> StatsSink<'a> {
    pub fn new(
        inner: Option<&'a mut dyn RunSink>,
        every: u64,
        on_tick: impl FnMut(u64) + 'a,
    ) -> Self {
        StatsSink {
            inner,
            every: every.max(1),
            on_tick: Box::new(on_tick),
            dc_steps: 0,
            facility_sum_w: 0.0,
            facility_min_w: f64::INFINITY,
            facility_max_w: f64::NEG_INFINITY,
            per_second: PerSecond::default(),
            grid: None,
        }
    }
    /// Also accumulates grid metrics over the run's grid snapshots.
    pub fn with_grid(mut self, spec: GridOutputSpec) -> Self {
        self.grid = Some(GridMetricsAccumulator::new(spec));
        self
    }
    /// Mean facility power over all datacenter steps (W).
    pub fn mean_facility_power_w(&self) -> f64 {
        self.facility_sum_w / self.dc_steps.max(1) as f64
    }
}

impl RunSink for StatsSink<'_> {
    fn begin(&mut self, datacenters: &[Box<dyn Datacenter>]) -> Result<()> {
        self.dc_steps = 0;
        self.facility_sum_w = 0.0;
        self.facility_min_w = f64::INFINITY;
        self.facility_max_w = f64::NEG_INFINITY;
        self.per_second = PerSecond::default();
        if let Some(g) = &mut self.grid {
            *g = GridMetricsAccumulator::new(g.spec().clone());
        }
        match &mut self.inner {
            Some(s) => s.begin(datacenters),
            None => Ok(()),
        }
    }
    fn record(&mut self, tick: &TickOutput<'_>) -> Result<()> {
        for (i, d) in tick.datacenters.iter().enumerate() {
            if tick.dc_stepped[i] {
                if let Some(s) = d.state() {
                    self.dc_steps += 1;
                    self.facility_sum_w += s.facility_power_w;
                    self.facility_min_w = self.facility_min_w.min(s.facility_power_w);
                    self.facility_max_w = self.facility_max_w.max(s.facility_power_w);
                    self.per_second.add(s);
                }
            }
        }
        if let (Some(g), Some(state)) = (&mut self.grid, tick.grid_state) {
            g.add(state);
        }
        if (tick.tick + 1).is_multiple_of(self.every) {
            (self.on_tick)(tick.tick + 1);
        }
        match &mut self.inner {
            Some(s) => s.record(tick),
            None => Ok(()),
        }
    }
    fn finish(&mut self) -> Result<()> {
        self.per_second.finish();
        match &mut self.inner {
            Some(s) => s.finish(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod per_second_tests {
    use super::*;

    #[test]
    fn per_second_means_fill_gaps_with_the_second_before() {
        use super::super::ThreePhase;
        let st = |t: f64, w: f64| DcState {
            time_s: t,
            power_w: ThreePhase {
                a: w,
                b: 2.0 * w,
                c: 3.0 * w,
            },
            facility_power_w: w,
            ..Default::default()
        };
        let mut p = PerSecond::default();
        for (t, w) in [(0.0, 10.0), (0.5, 20.0), (2.25, 40.0)] {
            p.add(&st(t, w));
        }
        p.finish();
        assert_eq!(p.facility_w, vec![15.0, 15.0, 40.0]);
        assert_eq!(p.phase_w[2], vec![45.0, 45.0, 120.0]);
    }
}
