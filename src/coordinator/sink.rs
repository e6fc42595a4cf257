//! Where a run goes: [`RunLog`] keeps every tick in memory (tests, small runs, RL episodes);
//! [`ParquetRunWriter`] streams per-step datacenter states to parquet in row groups and keeps
//! only the facility power series (8 bytes per step) for the facility metrics, so memory does
//! not grow with the number of GPUs or models. Output files (see docs/outputs.md):
//! `dc_<name>.parquet`, `commands.parquet`, `events.parquet`, `facility.parquet`,
//! `facility_metrics.json`; each appears whole at the end of a successful run or not at all.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{Command, Datacenter, DcState, RunSink, SimEvent, TickOutput};
use crate::error::Result;
use crate::site::{facility_metrics_multi, FacilityMetrics};
use crate::synth::downsample_mean;
use crate::table::{write_parquet, Column, ParquetStream, Table};

/// A command as recorded: tick, time and JSON of the command.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordedCommand {
    pub tick: u64,
    pub t_s: f64,
    pub command: Command,
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

/// Column buffers of one datacenter's states.
struct DcColumns {
    stream: Option<ParquetStream>,
    models: Vec<String>,
    rows: usize,
    tick: Vec<i64>,
    t_s: Vec<f64>,
    phase: [Vec<f64>; 3],
    facility_w: Vec<f64>,
    training_w: Vec<f64>,
    row_w: Vec<Vec<f64>>,
    model_power_w: Vec<Vec<f64>>,
    model_replicas: Vec<Vec<i64>>,
    model_batch: Vec<Vec<i64>>,
    model_itl_s: Vec<Vec<f64>>,
    /// Facility power of every step, for the facility metrics.
    facility_series_w: Vec<f64>,
    dt_s: f64,
    racks: RackWindows,
}

/// Per-rack mean power over fixed windows, streamed to `racks.parquet`.
struct RackWindows {
    racks_per_row: usize,
    steps_per_window: usize,
    window_s: f64,
    sum_w: Vec<f64>,
    steps: usize,
    window: usize,
    out: (Vec<f64>, Vec<i64>, Vec<i64>, Vec<f64>),
}

impl RackWindows {
    fn push(&mut self, rack_w: &[f64]) {
        if self.sum_w.is_empty() {
            return;
        }
        for (a, v) in self.sum_w.iter_mut().zip(rack_w) {
            *a += v;
        }
        self.steps += 1;
        if self.steps == self.steps_per_window {
            for (r, a) in self.sum_w.iter_mut().enumerate() {
                self.out.0.push(self.window as f64 * self.window_s);
                self.out.1.push(r as i64);
                self.out.2.push((r / self.racks_per_row.max(1)) as i64);
                self.out.3.push(*a / self.steps as f64);
                *a = 0.0;
            }
            self.steps = 0;
            self.window += 1;
        }
    }
    fn table(&mut self) -> Table {
        Table::new()
            .with("t_s", Column::F64(std::mem::take(&mut self.out.0)))
            .with("rack", Column::I64(std::mem::take(&mut self.out.1)))
            .with("row", Column::I64(std::mem::take(&mut self.out.2)))
            .with("power_w", Column::F64(std::mem::take(&mut self.out.3)))
    }
}

impl DcColumns {
    fn table(&mut self) -> Table {
        let mut t = Table::new()
            .with("tick", Column::I64(std::mem::take(&mut self.tick)))
            .with("t_s", Column::F64(std::mem::take(&mut self.t_s)))
            .with("power_a_w", Column::F64(std::mem::take(&mut self.phase[0])))
            .with("power_b_w", Column::F64(std::mem::take(&mut self.phase[1])))
            .with("power_c_w", Column::F64(std::mem::take(&mut self.phase[2])))
            .with(
                "facility_power_w",
                Column::F64(std::mem::take(&mut self.facility_w)),
            )
            .with(
                "training_power_w",
                Column::F64(std::mem::take(&mut self.training_w)),
            );
        for (r, v) in self.row_w.iter_mut().enumerate() {
            t = t.with(&format!("row_{r}_power_w"), Column::F64(std::mem::take(v)));
        }
        for (m, label) in self.models.iter().enumerate() {
            t = t
                .with(
                    &format!("{label}__power_w"),
                    Column::F64(std::mem::take(&mut self.model_power_w[m])),
                )
                .with(
                    &format!("{label}__active_replicas"),
                    Column::I64(std::mem::take(&mut self.model_replicas[m])),
                )
                .with(
                    &format!("{label}__batch_size"),
                    Column::I64(std::mem::take(&mut self.model_batch[m])),
                )
                .with(
                    &format!("{label}__observed_itl_s"),
                    Column::F64(std::mem::take(&mut self.model_itl_s[m])),
                );
        }
        t
    }

    fn push(&mut self, tick: u64, s: &DcState) -> Result<()> {
        self.tick.push(tick as i64);
        self.t_s.push(s.time_s);
        self.phase[0].push(s.power_w.a);
        self.phase[1].push(s.power_w.b);
        self.phase[2].push(s.power_w.c);
        self.facility_w.push(s.facility_power_w);
        self.training_w.push(s.training_power_w);
        self.facility_series_w.push(s.facility_power_w);
        self.racks.push(&s.rack_power_w);
        for (r, v) in self.row_w.iter_mut().enumerate() {
            v.push(s.row_power_w.get(r).copied().unwrap_or(0.0));
        }
        for (m, ms) in s.models.iter().enumerate() {
            self.model_power_w[m].push(ms.power_w);
            self.model_replicas[m].push(ms.active_replicas as i64);
            self.model_batch[m].push(ms.batch_size as i64);
            self.model_itl_s[m].push(ms.observed_itl_s);
        }
        self.rows += 1;
        if self.rows == ROW_GROUP {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.rows > 0 {
            let t = self.table();
            if let Some(s) = &mut self.stream {
                s.write(&t)?;
            }
            self.rows = 0;
        }
        Ok(())
    }
}

/// Facility metrics of one datacenter at its step and at 1 s, 1 min, 15 min.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DcFacilitySummary {
    pub datacenter: String,
    pub steps: usize,
    pub mean_facility_power_w: f64,
    pub metrics: Vec<FacilityMetrics>,
}

/// A table with the `tick` and `t_s` columns of time-stamped records.
fn stamped(stamps: impl Iterator<Item = (u64, f64)>) -> Table {
    let (ticks, times): (Vec<i64>, Vec<f64>) = stamps.map(|(k, t)| (k as i64, t)).unzip();
    Table::new()
        .with("tick", Column::I64(ticks))
        .with("t_s", Column::F64(times))
}

/// Streams a run to a folder.
pub struct ParquetRunWriter {
    dir: PathBuf,
    rack_window_s: f64,
    rack_streams: Vec<Option<ParquetStream>>,
    dcs: Vec<(String, DcColumns)>,
    commands: Vec<RecordedCommand>,
    events: Vec<SimEvent>,
    summaries: Vec<DcFacilitySummary>,
}

impl ParquetRunWriter {
    pub fn new(dir: &Path) -> Self {
        ParquetRunWriter {
            dir: dir.to_path_buf(),
            rack_window_s: 60.0,
            rack_streams: Vec::new(),
            dcs: Vec::new(),
            commands: Vec::new(),
            events: Vec::new(),
            summaries: Vec::new(),
        }
    }
    /// Window of the per-rack mean power in `racks_<dc>.parquet` (s; default 60, rounded to
    /// whole datacenter steps).
    pub fn with_rack_window_s(mut self, window_s: f64) -> Self {
        self.rack_window_s = window_s;
        self
    }

    /// Facility summaries, after [`RunSink::finish`].
    pub fn summaries(&self) -> &[DcFacilitySummary] {
        &self.summaries
    }
}

impl RunSink for ParquetRunWriter {
    fn begin(&mut self, datacenters: &[Box<dyn Datacenter>]) -> Result<()> {
        self.dcs.clear();
        self.commands.clear();
        self.events.clear();
        self.summaries.clear();
        self.rack_streams.clear();
        for d in datacenters {
            let models: Vec<String> = d.model_labels().to_vec();
            let n = models.len();
            let mut cols = DcColumns {
                stream: None,
                models,
                rows: 0,
                tick: Vec::new(),
                t_s: Vec::new(),
                phase: Default::default(),
                facility_w: Vec::new(),
                training_w: Vec::new(),
                row_w: Vec::new(),
                model_power_w: vec![Vec::new(); n],
                model_replicas: vec![Vec::new(); n],
                model_batch: vec![Vec::new(); n],
                model_itl_s: vec![Vec::new(); n],
                facility_series_w: Vec::new(),
                dt_s: super::clock::to_f64(d.dt_s()),
                racks: RackWindows {
                    racks_per_row: 0,
                    steps_per_window: 1,
                    window_s: 0.0,
                    sum_w: Vec::new(),
                    steps: 0,
                    window: 0,
                    out: Default::default(),
                },
            };
            let (racks, racks_per_row) = d.rack_layout();
            cols.row_w = vec![Vec::new(); racks.div_ceil(racks_per_row.max(1))];
            let dt_s = super::clock::to_f64(d.dt_s());
            let steps = (self.rack_window_s / dt_s).round().max(1.0) as usize;
            cols.racks = RackWindows {
                racks_per_row,
                steps_per_window: steps,
                window_s: steps as f64 * dt_s,
                sum_w: vec![0.0; racks],
                steps: 0,
                window: 0,
                out: Default::default(),
            };
            self.rack_streams.push(if racks > 0 {
                Some(ParquetStream::create(
                    &self.dir.join(format!("racks_{}.parquet", d.name())),
                    &cols.racks.table().columns,
                )?)
            } else {
                None
            });
            let schema = cols.table().columns;
            cols.stream = Some(ParquetStream::create(
                &self.dir.join(format!("dc_{}.parquet", d.name())),
                &schema,
            )?);
            self.dcs.push((d.name().to_string(), cols));
        }
        Ok(())
    }

    fn record(&mut self, tick: &TickOutput<'_>) -> Result<()> {
        for (i, d) in tick.datacenters.iter().enumerate() {
            if tick.dc_stepped[i] {
                if let Some(s) = d.state() {
                    let cols = &mut self.dcs[i].1;
                    cols.push(tick.tick, s)?;
                    if cols.racks.out.0.len() >= ROW_GROUP {
                        if let Some(st) = &mut self.rack_streams[i] {
                            st.write(&cols.racks.table())?;
                        }
                    }
                }
            }
        }
        record_commands_and_events(tick, &mut self.commands, &mut self.events);
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        let mut fac = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let rack_streams = std::mem::take(&mut self.rack_streams);
        for ((name, mut cols), rack_stream) in
            std::mem::take(&mut self.dcs).into_iter().zip(rack_streams)
        {
            cols.flush()?;
            if let Some(mut st) = rack_stream {
                st.write(&cols.racks.table())?;
                st.finish()?;
            }
            let series = std::mem::take(&mut cols.facility_series_w);
            let dt_s = cols.dt_s;
            for target in [1.0, 60.0, 900.0] {
                let k = (target / dt_s).round();
                if target < dt_s || (k * dt_s - target).abs() > 1e-9 || k as usize > series.len() {
                    continue;
                }
                for (j, w) in downsample_mean(&series, k as usize).into_iter().enumerate() {
                    fac.0.push(name.clone());
                    fac.1.push(target);
                    fac.2.push(j as f64 * target);
                    fac.3.push(w);
                }
            }
            let mean = series.iter().sum::<f64>() / series.len().max(1) as f64;
            self.summaries.push(DcFacilitySummary {
                datacenter: name,
                steps: series.len(),
                mean_facility_power_w: mean,
                metrics: if series.is_empty() {
                    Vec::new()
                } else {
                    facility_metrics_multi(&series, dt_s)
                },
            });
            if let Some(s) = cols.stream.take() {
                s.finish()?;
            }
        }
        write_parquet(
            &self.dir.join("facility.parquet"),
            &Table::new()
                .with("datacenter", Column::Str(fac.0))
                .with("resolution_s", Column::F64(fac.1))
                .with("t_s", Column::F64(fac.2))
                .with("facility_power_w", Column::F64(fac.3)),
        )?;
        let cmd_json = |c: &Command| serde_json::to_string(c).unwrap_or_default();
        let commands = stamped(self.commands.iter().map(|c| (c.tick, c.t_s))).with(
            "command",
            Column::Str(self.commands.iter().map(|c| cmd_json(&c.command)).collect()),
        );
        write_parquet(&self.dir.join("commands.parquet"), &commands)?;
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
        write_parquet(&self.dir.join("events.parquet"), &events)?;
        crate::store::write_json(&self.dir.join("facility_metrics.json"), &self.summaries)?;
        Ok(())
    }
}

/// Running totals of a run (facility power of every datacenter step), passed on to an
/// optional inner sink; `on_tick` is called every `every` ticks (progress bars).
pub struct StatsSink<'a> {
    inner: Option<&'a mut dyn RunSink>,
    every: u64,
    on_tick: Box<dyn FnMut(u64) + 'a>,
    pub dc_steps: u64,
    pub facility_sum_w: f64,
    pub facility_min_w: f64,
    pub facility_max_w: f64,
    /// Facility and per-phase power per second of simulated time, over all datacenters.
    pub per_second: PerSecond,
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
        let k = s.time_s.max(0.0).floor() as usize;
        if k >= self.counts.len() {
            self.counts.resize(k + 1, 0);
            self.facility_w.resize(k + 1, 0.0);
            for p in &mut self.phase_w {
                p.resize(k + 1, 0.0);
            }
        }
        self.counts[k] += 1;
        self.facility_w[k] += s.facility_power_w;
        for (p, v) in self
            .phase_w
            .iter_mut()
            .zip([s.power_w.a, s.power_w.b, s.power_w.c])
        {
            p[k] += v;
        }
    }

    /// The means (sums ÷ steps), gaps filled with the second before. Once: the step counts
    /// are spent.
    pub fn finish(&mut self) {
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
        }
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
