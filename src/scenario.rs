//! Declarative simulation scenarios (`simulate --scenario FILE.toml`): models, where their
//! power templates and ITL fits come from, capacity, GPUs per server, replica schedules,
//! training overlay, controllers, duration, dt, seed and outputs. Parsing is pure; building
//! reads the files a scenario names (spec stores, measured runs), paths relative to the
//! scenario file. Every field is documented in docs/coordinator.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::shard::Shard;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use rand_pcg::Pcg64;
use serde::Deserialize;

use crate::coordinator::clock::{parse_seconds, seconds_from_f64, to_f64};
use crate::coordinator::controllers::{
    BatchSizeChange, BatchSizeSchedule, BatchSizeScheduleController, NoopController,
};
use crate::coordinator::grid_metrics::GridOutputSpec;
use crate::coordinator::load_shift::{LoadShiftController, ShiftModel, ShiftSite};
use crate::coordinator::ofo::{OfoConfig, OfoController, OfoModel};
use crate::coordinator::storage_droop::{
    DroopConfig, DroopMode, DroopStorage, StorageDroopController, VoltageStatistic,
};
use crate::coordinator::voltage_control::{
    RuleBasedConfig, RuleBasedController, RuleBasedModel, TapChange, TapScheduleController,
};
use crate::coordinator::Grid;
use crate::coordinator::{Controller, Coordinator, Datacenter, Seconds};
use crate::datacenter::{
    DatacenterConfig, ModelDeployment, OfflineDatacenter, ReplicaSchedule, TrainingRun,
    TrainingSchedule, TrainingTrace, TrainingTraceParams,
};
use crate::error::{Error, Result};
use crate::fits::itl_mixture::ItlMixture;
use crate::fits::logistic::LogisticFit;
use crate::grid::component::{BusProfile, FeederGrid, FeederGridConfig, ProfileKind};
use crate::grid::storage::StorageSpec;
use crate::traces::{build_template, interp, InferenceTrace, TemplateOptions};

/// A period: a number of seconds or exact text ("1/10").
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub(crate) enum Period {
    Number(f64),
    Text(String),
}

impl Period {
    pub(crate) fn exact(&self, field: &str) -> Result<Seconds> {
        match self {
            Period::Number(x) => seconds_from_f64(field, *x),
            Period::Text(t) => parse_seconds(field, t),
        }
    }
}

/// The whole scenario file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Simulated time (s): a whole number of ticks.
    pub(crate) duration_s: Period,
    #[serde(default)]
    pub(crate) seed: u64,
    pub datacenter: DatacenterSection,
    /// Several datacenters ("sites") sharing `[datacenter]`'s settings and the models, each
    /// on its own feeder bus; none: the one `[datacenter]`.
    #[serde(default)]
    pub(crate) sites: Vec<SiteSection>,
    pub models: Vec<ModelSection>,
    #[serde(default)]
    pub(crate) training: Vec<TrainingSection>,
    #[serde(default)]
    pub(crate) controllers: Vec<ControllerSection>,
    #[serde(default)]
    pub(crate) templates: TemplateSection,
    /// A distribution feeder the datacenters sit on (GRID.md); none by default.
    pub(crate) grid: Option<GridSection>,
    #[serde(default)]
    pub outputs: OutputSection,
}

/// `[grid]`: the feeder, its start and where each datacenter connects.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GridSection {
    /// The feeder's OpenDSS script, relative to the scenario file.
    pub(crate) feeder: PathBuf,
    pub(crate) dt_s: Period,
    /// The source's per-unit voltage (default: the script's).
    pub(crate) source_pu: Option<f64>,
    /// Datacenter power factor (lagging).
    #[serde(default = "default_pf")]
    pub(crate) pf: f64,
    /// Regulator (RegControl name) → initial tap steps of 0.00625.
    #[serde(default)]
    pub(crate) taps: BTreeMap<String, i32>,
    /// Datacenter name → bus (three single-phase loads, one per phase).
    pub(crate) datacenter_buses: BTreeMap<String, String>,
    /// Buses left out of the monitored set and the metrics.
    #[serde(default)]
    pub(crate) exclude_buses: Vec<String>,
    /// Voltage band of the grid metrics (pu).
    #[serde(default = "default_v_min")]
    pub(crate) v_min: f64,
    #[serde(default = "default_v_max")]
    pub(crate) v_max: f64,
    /// Power-flow tolerance: largest node-voltage change between iterations (pu).
    #[serde(default = "default_grid_tolerance")]
    pub(crate) tolerance_pu: f64,
    /// Generators (PV, wind, …) on feeder buses: each phase injects the profile's kW.
    #[serde(default)]
    generators: Vec<ProfileSection>,
    /// External loads on feeder buses: each phase draws the profile's kW.
    #[serde(default)]
    pub(crate) loads: Vec<ProfileSection>,
    /// Batteries on three-phase buses (OpenDSS `Storage`, external dispatch), idle until a
    /// `storage-droop` controller (or another `SetStoragePower`) dispatches them.
    #[serde(default)]
    pub(crate) storage: Vec<StorageSection>,
}

/// `[[sites]]`: one datacenter of a multi-site scenario.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SiteSection {
    pub(crate) name: String,
    /// GPUs of this site (default `[datacenter].total_gpu_capacity`).
    pub(crate) total_gpu_capacity: Option<u64>,
    /// Base load per phase (kW; default `[datacenter].base_kw_per_phase`).
    pub(crate) base_kw_per_phase: Option<f64>,
    /// Model label → replicas here (default: the model's `replicas`, or its capacity share of
    /// this site's GPUs, with its ramps); a model given 0 is served elsewhere only.
    #[serde(default)]
    pub(crate) replicas: BTreeMap<String, u64>,
}

/// `[[grid.storage]]`: the peer's `BatteryStorage` (its defaults).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StorageSection {
    pub(crate) name: String,
    pub(crate) bus: String,
    /// Largest charge or discharge power (kW).
    rated_power_kw: f64,
    /// Energy capacity (kWh).
    capacity_kwh: f64,
    /// Apparent-power rating (kVA; default the kW rating).
    apparent_power_kva: Option<f64>,
    #[serde(default = "half")]
    pub(crate) initial_soc: f64,
    #[serde(default)]
    pub(crate) reserve_soc: f64,
    #[serde(default = "one_f64")]
    pub(crate) charge_efficiency: f64,
    #[serde(default = "one_f64")]
    pub(crate) discharge_efficiency: f64,
    /// OpenDSS `%IdlingkW`: losses while connected, % of the kW rating.
    #[serde(default)]
    idle_loss_percent: f64,
}

fn half() -> f64 {
    0.5
}

/// `kind = "storage-droop"`: the peer's `StorageDroopConfig` (its defaults).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StorageDroopSection {
    pub(crate) dt_s: Period,
    /// Batteries it drives (default: every `[[grid.storage]]`).
    pub(crate) storage: Option<Vec<String>>,
    /// "qv" (kvar) or "pv" (kW).
    #[serde(default = "default_droop_mode")]
    pub(crate) mode: String,
    pub(crate) v_ref: Option<f64>,
    pub(crate) deadband_pu: Option<f64>,
    pub(crate) full_output_voltage_error_pu: Option<f64>,
    pub(crate) droop_gain_per_pu: Option<f64>,
    pub(crate) max_abs_output: Option<f64>,
    pub(crate) allow_negative_output: Option<bool>,
    /// "minimum", "mean" or "latest" of the bus voltage over the states since the last step.
    #[serde(default = "default_voltage_statistic")]
    pub(crate) voltage_statistic: String,
}

fn default_droop_mode() -> String {
    "qv".into()
}
fn default_voltage_statistic() -> String {
    "minimum".into()
}

/// A generator's or external load's power over time: one of `kw` (constant), `profile`
/// ((t_s, kW) points, linear, held beyond the ends) or `csv` (two columns time_s,kW with a
/// header row; relative to the scenario file).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProfileSection {
    pub(crate) bus: String,
    /// Power factor (default 1.0 for generators, 0.96 for loads, as the peer).
    pub(crate) pf: Option<f64>,
    pub(crate) kw: Option<f64>,
    pub(crate) profile: Option<Vec<(f64, f64)>>,
    pub(crate) csv: Option<PathBuf>,
}

fn default_pf() -> f64 {
    0.95
}
fn default_v_min() -> f64 {
    0.95
}
fn default_v_max() -> f64 {
    1.05
}
fn default_grid_tolerance() -> f64 {
    1e-5
}

/// `kind = "ofo"`: the OFO controller's settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OfoSection {
    pub(crate) dt_s: Period,
    /// The datacenter it steers (default: the scenario's).
    pub(crate) datacenter: Option<String>,
    /// Model label → mean-ITL deadline (s).
    pub(crate) itl_deadline_s: BTreeMap<String, f64>,
    /// Model label → per-replica logistic fits of power (W), mean ITL (s) and throughput.
    pub(crate) fits: BTreeMap<String, OfoFitsSection>,
    pub(crate) primal_step_size: Option<f64>,
    pub(crate) w_throughput: Option<f64>,
    pub(crate) w_switch: Option<f64>,
    pub(crate) voltage_gradient_scale: Option<f64>,
    pub(crate) v_min: Option<f64>,
    pub(crate) v_max: Option<f64>,
    pub(crate) voltage_dual_step_size: Option<f64>,
    pub(crate) latency_dual_step_size: Option<f64>,
    pub(crate) sensitivity_update_interval: Option<u64>,
    pub(crate) sensitivity_perturbation_kw: Option<f64>,
}

/// `kind = "rule-based"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleBasedSection {
    pub(crate) dt_s: Period,
    /// The datacenter it steers (default: the scenario's).
    pub(crate) datacenter: Option<String>,
    /// Model label → mean-ITL deadline (s) of the latency guard (a model not named has none).
    #[serde(default)]
    pub(crate) itl_deadline_s: BTreeMap<String, f64>,
    pub(crate) step_size: Option<f64>,
    pub(crate) v_min: Option<f64>,
    pub(crate) v_max: Option<f64>,
    pub(crate) deadband: Option<f64>,
    pub(crate) latency_guard: Option<bool>,
    /// Buses not looked at (default: the grid's exclude_buses).
    pub(crate) exclude_buses: Option<Vec<String>>,
    /// Only these buses (default: all).
    zone_buses: Option<Vec<String>>,
}

/// One tap-schedule entry: regulator (or a/b/c) → tap (pu) at `at_s`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TapChangeSection {
    pub(crate) at_s: f64,
    pub(crate) taps: BTreeMap<String, f64>,
}

/// A model's logistic fits for the OFO controller (the peer's `logistic_fit.json` shape).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OfoFitsSection {
    pub(crate) power: LogisticFit,
    pub(crate) latency: LogisticFit,
    pub(crate) throughput: LogisticFit,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatacenterSection {
    #[serde(default = "default_dc_name")]
    pub name: String,
    pub(crate) dt_s: Period,
    #[serde(default = "default_gpus_per_server")]
    pub(crate) gpus_per_server: u32,
    pub(crate) total_gpu_capacity: u64,
    #[serde(default)]
    pub(crate) base_kw_per_phase: f64,
    #[serde(default = "unit_range")]
    pub(crate) amplitude_scale_range: (f64, f64),
    #[serde(default)]
    pub(crate) noise_fraction: f64,
    #[serde(default)]
    pub(crate) non_gpu_w_per_server: f64,
    #[serde(default)]
    pub(crate) idle_w_per_gpu: f64,
    #[serde(default = "one_f64")]
    pub(crate) pue: f64,
    #[serde(default)]
    pub(crate) servers_per_rack: u32,
    #[serde(default)]
    pub(crate) racks_per_row: u32,
}

fn default_dc_name() -> String {
    "dc".into()
}
fn default_gpus_per_server() -> u32 {
    8
}
fn unit_range() -> (f64, f64) {
    (1.0, 1.0)
}
fn one_f64() -> f64 {
    1.0
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub label: String,
    pub(crate) gpus_per_replica: u32,
    pub(crate) initial_batch_size: u32,
    /// Initial replicas; or `capacity_share`.
    pub(crate) replicas: Option<u64>,
    /// Share of the datacenter's GPU capacity, rounded down to whole servers of whole replicas
    /// (a multiple of lcm(gpus_per_server, gpus_per_replica) GPUs, as the peer's bench does).
    capacity_share: Option<f64>,
    #[serde(default)]
    pub(crate) ramps: Vec<RampSection>,
    pub(crate) power: PowerSource,
    pub(crate) itl: Option<ItlSource>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RampSection {
    pub(crate) target: u64,
    pub(crate) t_start_s: f64,
    pub(crate) t_end_s: f64,
}

/// Where a model's per-GPU power templates come from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) enum PowerSource {
    /// A parametric trace per batch size (the peer bench's synthetic data): per-GPU level
    /// linear in log2(batch) from `level_w[0]` at the smallest to `level_w[1]` at the largest
    /// batch, plus sine ripples (amplitude W, period s), Gaussian noise, clipped; `trace_s` long
    /// at `trace_dt_s`, then replayed as templates.
    Parametric {
        batch_sizes: Vec<u32>,
        level_w: (f64, f64),
        #[serde(default)]
        ripples: Vec<(f64, f64)>,
        #[serde(default)]
        noise_sd_w: f64,
        clip_w: Option<(f64, f64)>,
        trace_s: f64,
        trace_dt_s: f64,
        #[serde(default)]
        seed: u64,
    },
    /// Median traces of a spec store built by `build-dataset` (peer layout), replayed.
    SpecStore {
        dir: PathBuf,
        spec: crate::spec::InferenceModelSpec,
    },
    /// State-transition synthesis (SPEC §6): learned from measured runs, driven by a
    /// Gamma-renewal workload per replica at `rate_per_s` with the training runs' token counts,
    /// one synthesized series per batch size (`max_num_seqs`), `series_s` long. With
    /// `leaderboard`, `model`/`hardware` may name a configuration no training run has (TP =
    /// the model's GPUs per replica): it is transferred from the best reference among the
    /// runs (docs/transfer.md), `stand_in` mapping models the leaderboard lacks.
    Synthesized {
        train: Vec<PathBuf>,
        batch_sizes: Vec<u32>,
        rate_per_s: f64,
        #[serde(default = "one_f64")]
        burstiness: f64,
        series_s: f64,
        #[serde(default)]
        seed: u64,
        /// The served model (Hugging Face id); default: the training runs'.
        #[serde(default)]
        model: Option<String>,
        /// The GPU model; default: the training runs'.
        #[serde(default)]
        hardware: Option<String>,
        /// ML.ENERGY leaderboard folder, or build-dataset compact fits (relative to the
        /// scenario file): what `synthesize --leaderboard` takes.
        #[serde(default)]
        leaderboard: Option<PathBuf>,
        #[serde(default)]
        leaderboard_task: Option<String>,
        /// Target model → leaderboard model standing in for it.
        #[serde(default)]
        stand_in: BTreeMap<String, String>,
    },
}

/// Where a model's ITL fits come from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) enum ItlSource {
    /// Two log-normals with scale_steady = scale_s · (1 + per_log2_batch · log2 b) and
    /// scale_stall = stall_factor · scale_steady (the peer bench's synthetic fits).
    Parametric {
        loc_s: f64,
        pi_steady: f64,
        sigma_steady: f64,
        sigma_stall: f64,
        scale_s: f64,
        per_log2_batch: f64,
        stall_factor: f64,
    },
    /// The spec store's `itl_fit.json` (with `power.kind = "spec-store"`).
    SpecStore,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TrainingSection {
    pub(crate) n_gpus: u64,
    pub(crate) t_start_s: f64,
    pub(crate) t_end_s: f64,
    #[serde(default = "default_peak")]
    pub(crate) target_peak_w_per_gpu: f64,
    #[serde(default)]
    pub(crate) trace: TrainingTraceParams,
}

fn default_peak() -> f64 {
    400.0
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) enum ControllerSection {
    Noop {
        dt_s: Period,
    },
    BatchSchedule {
        dt_s: Period,
        /// The site it steers (default: the only datacenter).
        datacenter: Option<String>,
        changes: Vec<ChangeSection>,
    },
    /// OFO batch-size control on the grid's voltages (GRID.md; defaults as the peer's).
    Ofo(Box<OfoSection>),
    /// Rule-based batch-size control on the worst voltage violation.
    RuleBased(Box<RuleBasedSection>),
    /// Regulator taps at scheduled times.
    TapSchedule {
        dt_s: Period,
        changes: Vec<TapChangeSection>,
    },
    /// Battery kvar (qv) or kW (pv) from the local voltage.
    StorageDroop(Box<StorageDroopSection>),
    /// Replicas moved between sites when batch control is exhausted at a violated bus.
    LoadShift {
        dt_s: Period,
        /// GPUs' worth of replicas moved per step (default 8, the peer's).
        #[serde(default = "default_gpus_per_shift")]
        gpus_per_shift: u32,
        /// Voltage band (default: the grid's v_min / v_max).
        v_min: Option<f64>,
        v_max: Option<f64>,
    },
}

fn default_gpus_per_shift() -> u32 {
    8
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChangeSection {
    pub(crate) model: String,
    pub(crate) at_s: f64,
    pub(crate) batch_size: u32,
    #[serde(default)]
    pub(crate) ramp_up_rate: f64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TemplateSection {
    /// Template length (s); default: the simulated duration (the peer's 600 s default makes
    /// templates wrap with a seam every 600 s of a longer run).
    pub(crate) duration_s: Option<f64>,
    #[serde(default)]
    pub(crate) steady_skip_s: f64,
    /// Keep one period of each template when the trace span is a whole number of steps (same
    /// values, far less memory; no seam where a full-length template would wrap). Default true;
    /// false gives the peer's full-length templates.
    #[serde(default = "yes")]
    pub(crate) periodic: bool,
}

fn yes() -> bool {
    true
}

impl Default for TemplateSection {
    fn default() -> Self {
        TemplateSection {
            duration_s: None,
            steady_skip_s: 0.0,
            periodic: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    /// Run result folder (relative to the scenario file); the command line can override it.
    pub dir: Option<PathBuf>,
    /// Window of the per-rack mean power written with a rack layout (s, default 60).
    pub rack_window_s: Option<f64>,
}

/// Command-line overrides of a scenario.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub gpus: Option<u64>,
    pub duration_s: Option<f64>,
    pub seed: Option<u64>,
    /// Simulate only this share of the facility (`simulate --shard I/N`).
    pub shard: Option<Shard>,
}

impl Overrides {
    /// What identifies a run of the scenario file at `path` with these overrides (its SHA-256
    /// and the overrides, the shard aside): every shard of one run shares it.
    pub fn run_key(&self, path: &Path) -> Result<String> {
        let digest = crate::store::sha256_file(path)?;
        Ok(format!(
            "scenario sha256 {}, gpus {:?}, duration_s {:?}, seed {:?}",
            &digest[..16],
            self.gpus,
            self.duration_s,
            self.seed
        ))
    }
}

impl Scenario {
    /// Parses a scenario; errors name the file and TOML's line and column.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        toml::from_str(&text).map_err(|e| Error::content(path, format!("invalid scenario: {e}")))
    }
}

/// A scenario ready to run.
pub struct Built {
    pub coordinator: Coordinator,
    /// The grid's monitored bus-phases and metric band, with a `[grid]`.
    pub grid: Option<GridOutputSpec>,
    pub duration: Seconds,
    pub dc_dt: Seconds,
    pub gpus_used: u64,
    pub servers: usize,
}

fn log2_level(b: u32, bmin: u32, bmax: u32, lo: f64, hi: f64) -> f64 {
    if bmax == bmin {
        return lo;
    }
    let f =
        ((b as f64).log2() - (bmin as f64).log2()) / ((bmax as f64).log2() - (bmin as f64).log2());
    lo + (hi - lo) * f
}

/// A datacenter of the run: `[datacenter]` itself, or one `[[sites]]` entry.
struct SitePlan<'a> {
    name: &'a str,
    capacity: u64,
    base_kw_per_phase: f64,
    /// Per-model replica overrides of a `[[sites]]` entry.
    replicas: Option<&'a BTreeMap<String, u64>>,
}

/// The run's datacenters, checked: unique names, known models, no `--gpus` or shard with
/// several sites.
fn site_plans<'a>(sc: &'a Scenario, ov: &Overrides) -> Result<Vec<SitePlan<'a>>> {
    let d = &sc.datacenter;
    if sc.sites.is_empty() {
        return Ok(vec![SitePlan {
            name: &d.name,
            capacity: ov.gpus.unwrap_or(d.total_gpu_capacity),
            base_kw_per_phase: d.base_kw_per_phase,
            replicas: None,
        }]);
    }
    if ov.gpus.is_some() || !ov.shard.unwrap_or_default().is_whole() {
        return Err(Error::config(
            "sites",
            "--gpus and --shard apply to a single datacenter; give each site's \
             total_gpu_capacity instead",
        ));
    }
    let mut plans: Vec<SitePlan<'a>> = Vec::with_capacity(sc.sites.len());
    for (i, site) in sc.sites.iter().enumerate() {
        let field = format!("sites[{i}]");
        if site.name.is_empty() || plans.iter().any(|p| p.name == site.name) {
            return Err(Error::config(
                format!("{field}.name"),
                format!("{:?}: each site needs its own non-empty name", site.name),
            ));
        }
        if let Some(l) = site
            .replicas
            .keys()
            .find(|l| !sc.models.iter().any(|m| &m.label == *l))
        {
            return Err(Error::config(
                format!("{field}.replicas"),
                format!("model {l:?} is not in [[models]]"),
            ));
        }
        plans.push(SitePlan {
            name: &site.name,
            capacity: site.total_gpu_capacity.unwrap_or(d.total_gpu_capacity),
            base_kw_per_phase: site.base_kw_per_phase.unwrap_or(d.base_kw_per_phase),
            replicas: Some(&site.replicas),
        });
    }
    Ok(plans)
}

/// Builds the coordinator: templates for the simulated duration at the datacenter's dt (once
/// per model, shared by every site).
pub fn build(sc: &Scenario, base_dir: &Path, ov: &Overrides) -> Result<Built> {
    let duration = match ov.duration_s {
        Some(d) => seconds_from_f64("--duration-s", d)?,
        None => sc.duration_s.exact("duration_s")?,
    };
    let seed = ov.seed.unwrap_or(sc.seed);
    let dc_dt = sc.datacenter.dt_s.exact("datacenter.dt_s")?;
    let d = &sc.datacenter;
    if d.gpus_per_server == 0 {
        return Err(Error::config("datacenter.gpus_per_server", "0 (need ≥ 1)"));
    }
    let plans = site_plans(sc, ov)?;
    let topts = TemplateOptions {
        duration_s: sc.templates.duration_s.unwrap_or(to_f64(duration)),
        dt_s: to_f64(dc_dt),
        steady_skip_s: sc.templates.steady_skip_s,
    };
    topts.validate()?;
    let mut deployments = Vec::new();
    for m in &sc.models {
        deployments.push(deployment(
            m,
            sc,
            base_dir,
            &topts,
            plans[0].capacity,
            seed,
        )?);
    }
    let model_batches: Vec<(String, Vec<u32>, u32)> = deployments
        .iter()
        .map(|m| {
            (
                m.label.clone(),
                m.templates.keys().copied().collect(),
                m.initial_batch_size,
            )
        })
        .collect();
    let sites = build_sites(sc, ov, &plans, &deployments, dc_dt, seed)?;
    let names: Vec<&str> = plans.iter().map(|p| p.name).collect();
    let controllers = build_controllers(sc, &model_batches, &names)?;
    let (grid, grid_outputs) = match grid_of(sc, ov, &names, base_dir)? {
        Some((grid, outputs)) => (Some(grid), Some(outputs)),
        None => (None, None),
    };
    let coordinator = Coordinator::new(sites.datacenters, grid, controllers, duration)?;
    Ok(Built {
        coordinator,
        grid: grid_outputs,
        duration,
        dc_dt,
        gpus_used: sites.gpus_used,
        servers: sites.servers,
    })
}

/// The datacenters of a scenario's sites, and the GPUs and servers they hold at the start.
struct Sites {
    datacenters: Vec<Box<dyn Datacenter>>,
    gpus_used: u64,
    servers: usize,
}

/// One `OfflineDatacenter` per site plan: the models' deployments with the site's replica
/// overrides, the training overlay at the first site, seed + site index.
fn build_sites(
    sc: &Scenario,
    ov: &Overrides,
    plans: &[SitePlan],
    deployments: &[ModelDeployment],
    dc_dt: Seconds,
    seed: u64,
) -> Result<Sites> {
    let d = &sc.datacenter;
    let (mut gpus_used, mut servers) = (0, 0);
    let mut datacenters: Vec<Box<dyn Datacenter>> = Vec::with_capacity(plans.len());
    for (k, plan) in plans.iter().enumerate() {
        let mut site = deployments.to_vec();
        if let Some(overrides) = plan.replicas {
            for (dep, m) in site.iter_mut().zip(&sc.models) {
                dep.schedule = match overrides.get(&m.label) {
                    Some(&r) => ReplicaSchedule::new(r),
                    None => replica_schedule(m, plan.capacity, d.gpus_per_server)?,
                };
            }
        }
        for (dep, m) in site.iter().zip(&sc.models) {
            gpus_used += dep.schedule.initial * m.gpus_per_replica as u64;
        }
        let cfg = datacenter_config(d, plan, ov);
        // The training overlay runs at the first site.
        let training = if k == 0 {
            training_schedule(sc)?
        } else {
            TrainingSchedule::default()
        };
        let site_seed = seed.wrapping_add(k as u64);
        let dc = OfflineDatacenter::new(plan.name, dc_dt, cfg, site, training, site_seed)?;
        servers += dc.pool().servers();
        datacenters.push(Box::new(dc));
    }
    Ok(Sites {
        datacenters,
        gpus_used,
        servers,
    })
}

/// The scenario's feeder, when it has a `[grid]` (refused for a sharded run: the feeder needs
/// the whole datacenter's power).
fn grid_of(
    sc: &Scenario,
    ov: &Overrides,
    sites: &[&str],
    base_dir: &Path,
) -> Result<Option<(Box<dyn Grid>, GridOutputSpec)>> {
    match &sc.grid {
        Some(_) if !ov.shard.unwrap_or_default().is_whole() => Err(Error::config(
            "grid",
            "a run with a [grid] cannot be sharded (the feeder needs the whole datacenter's power)",
        )),
        Some(g) => build_grid(g, sites, base_dir).map(Some),
        None => Ok(None),
    }
}

fn datacenter_config(
    d: &DatacenterSection,
    plan: &SitePlan<'_>,
    ov: &Overrides,
) -> DatacenterConfig {
    DatacenterConfig {
        gpus_per_server: d.gpus_per_server,
        total_gpu_capacity: plan.capacity,
        base_kw_per_phase: plan.base_kw_per_phase,
        amplitude_scale_range: d.amplitude_scale_range,
        noise_fraction: d.noise_fraction,
        non_gpu_w_per_server: d.non_gpu_w_per_server,
        idle_w_per_gpu: d.idle_w_per_gpu,
        pue: d.pue,
        servers_per_rack: d.servers_per_rack,
        racks_per_row: d.racks_per_row,
        shard: ov.shard.unwrap_or_default(),
    }
}

/// A model's replicas over time at a site of `capacity` GPUs: its `replicas`, or its capacity
/// share in whole servers of whole replicas; then its ramps.
fn replica_schedule(
    m: &ModelSection,
    capacity: u64,
    gpus_per_server: u32,
) -> Result<ReplicaSchedule> {
    let field = format!("models.{}", m.label);
    let replicas = match (m.replicas, m.capacity_share) {
        (Some(r), None) => r,
        (None, Some(share)) => {
            if !(0.0..=1.0).contains(&share) {
                return Err(Error::config(
                    format!("{field}.capacity_share"),
                    format!("{share} (need 0…1)"),
                ));
            }
            let g = m.gpus_per_replica.max(1) as u64;
            let step = num_integer::lcm(gpus_per_server as u64, g);
            ((capacity as f64 * share) as u64 / step) * step / g
        }
        _ => {
            return Err(Error::config(
                &field,
                "give exactly one of replicas and capacity_share",
            ));
        }
    };
    let mut schedule = ReplicaSchedule::new(replicas);
    for r in &m.ramps {
        schedule = schedule
            .ramp_to(r.target, r.t_start_s, r.t_end_s)
            .map_err(|e| Error::config(format!("{field}.ramps"), e.to_string()))?;
    }
    Ok(schedule)
}

/// One model's deployment: replicas (or its capacity share in whole servers of whole
/// replicas), replica ramps, templates and ITL fits.
fn deployment(
    m: &ModelSection,
    sc: &Scenario,
    base_dir: &Path,
    topts: &TemplateOptions,
    capacity: u64,
    seed: u64,
) -> Result<ModelDeployment> {
    let field = format!("models.{}", m.label);
    let schedule = replica_schedule(m, capacity, sc.datacenter.gpus_per_server)?;
    let (templates, store_itl) = templates_for(m, base_dir, topts, sc.templates.periodic, seed)?;
    let itl_fits = itl_fits(m, &field, &templates, store_itl)?;
    Ok(ModelDeployment {
        label: m.label.clone(),
        gpus_per_replica: m.gpus_per_replica,
        initial_batch_size: m.initial_batch_size,
        schedule,
        templates,
        itl_fits,
    })
}

/// A model's ITL fits per batch size: none, the spec store's, or the parametric family.
fn itl_fits(
    m: &ModelSection,
    field: &str,
    templates: &Templates,
    store_itl: Option<BTreeMap<u32, ItlMixture>>,
) -> Result<Option<BTreeMap<u32, ItlMixture>>> {
    Ok(match &m.itl {
        None => None,
        Some(ItlSource::SpecStore) => Some(store_itl.ok_or_else(|| {
            Error::config(
                format!("{field}.itl"),
                "kind = \"spec-store\" needs power.kind = \"spec-store\"",
            )
        })?),
        Some(ItlSource::Parametric {
            loc_s,
            pi_steady,
            sigma_steady,
            sigma_stall,
            scale_s,
            per_log2_batch,
            stall_factor,
        }) => Some(
            templates
                .keys()
                .map(|&b| {
                    let scale = scale_s * (1.0 + per_log2_batch * (b as f64).log2());
                    (
                        b,
                        ItlMixture {
                            loc: *loc_s,
                            pi_steady: *pi_steady,
                            sigma_steady: *sigma_steady,
                            scale_steady: scale,
                            pi_stall: 1.0 - pi_steady,
                            sigma_stall: *sigma_stall,
                            scale_stall: scale * stall_factor,
                        },
                    )
                })
                .collect(),
        ),
    })
}

/// The training overlay of every `[[training]]` entry.
fn training_schedule(sc: &Scenario) -> Result<TrainingSchedule> {
    let mut training = TrainingSchedule::default();
    for (i, t) in sc.training.iter().enumerate() {
        let trace = TrainingTrace::generate(&t.trace)?;
        let run = TrainingRun::new(t.n_gpus, &trace, t.target_peak_w_per_gpu)
            .map_err(|e| Error::config(format!("training[{i}]"), e.to_string()))?;
        training = training.with(run, t.t_start_s, t.t_end_s)?;
    }
    Ok(training)
}

/// (label, feasible batch sizes, initial batch size) of each model.
type ModelBatches = [(String, Vec<u32>, u32)];

/// The datacenter a controller steers: its own `datacenter`, else the only one.
fn target_datacenter<'a>(
    given: Option<&'a str>,
    sites: &[&'a str],
    field: &str,
) -> Result<&'a str> {
    match (given, sites) {
        (Some(name), _) => Ok(name),
        (None, [only]) => Ok(only),
        (None, _) => Err(Error::config(
            format!("{field}.datacenter"),
            format!("this scenario has several sites ({sites:?}): name the one to steer"),
        )),
    }
}

fn build_controllers(
    sc: &Scenario,
    models: &ModelBatches,
    sites: &[&str],
) -> Result<Vec<Box<dyn Controller>>> {
    let mut controllers: Vec<Box<dyn Controller>> = Vec::new();
    let grid_exclude = || {
        sc.grid
            .as_ref()
            .map(|g| g.exclude_buses.clone())
            .unwrap_or_default()
    };
    for (i, c) in sc.controllers.iter().enumerate() {
        let field = format!("controllers[{i}]");
        let dt = |dt_s: &Period| dt_s.exact(&format!("{field}.dt_s"));
        let c: Box<dyn Controller> = match c {
            ControllerSection::Noop { dt_s } => Box::new(NoopController { dt_s: dt(dt_s)? }),
            ControllerSection::BatchSchedule {
                dt_s,
                datacenter,
                changes,
            } => Box::new(BatchSizeScheduleController::new(
                dt(dt_s)?,
                target_datacenter(datacenter.as_deref(), sites, &field)?,
                batch_schedules(changes, &field)?,
            )),
            ControllerSection::Ofo(o) => {
                let dc = target_datacenter(o.datacenter.as_deref(), sites, &field)?;
                Box::new(build_ofo(o, &field, dc, models)?)
            }
            ControllerSection::RuleBased(r) => {
                let dc = target_datacenter(r.datacenter.as_deref(), sites, &field)?;
                let exclude = r.exclude_buses.clone().unwrap_or_else(grid_exclude);
                Box::new(build_rule_based(r, &field, dc, models, exclude)?)
            }
            ControllerSection::TapSchedule { dt_s, changes } => {
                let entries = changes
                    .iter()
                    .map(|c| TapChange {
                        at_s: c.at_s,
                        taps: c.taps.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                    })
                    .collect();
                Box::new(TapScheduleController::new(dt(dt_s)?, entries)?)
            }
            ControllerSection::StorageDroop(sd) => Box::new(build_storage_droop(sd, &field, sc)?),
            ControllerSection::LoadShift {
                dt_s,
                gpus_per_shift,
                v_min,
                v_max,
            } => Box::new(build_load_shift(
                sc,
                models,
                sites,
                dt(dt_s)?,
                *gpus_per_shift,
                (*v_min, *v_max),
            )?),
        };
        controllers.push(c);
    }
    Ok(controllers)
}

/// Per model, the schedule of a batch-schedule controller's changes.
fn batch_schedules(
    changes: &[ChangeSection],
    field: &str,
) -> Result<BTreeMap<String, BatchSizeSchedule>> {
    let mut per_model: BTreeMap<String, Vec<BatchSizeChange>> = BTreeMap::new();
    for ch in changes {
        per_model
            .entry(ch.model.clone())
            .or_default()
            .push(BatchSizeChange {
                at_s: ch.at_s,
                batch_size: ch.batch_size,
                ramp_up_rate: ch.ramp_up_rate,
            });
    }
    per_model
        .into_iter()
        .map(|(m, v)| {
            Ok((
                m.clone(),
                BatchSizeSchedule::new(&format!("{field}.changes for {m}"), v)?,
            ))
        })
        .collect()
}

/// The load-shift controller over every site (each serving the scenario's models) on its
/// `grid.datacenter_buses` bus.
fn build_load_shift(
    sc: &Scenario,
    models: &ModelBatches,
    sites: &[&str],
    dt_s: Seconds,
    gpus_per_shift: u32,
    (v_min, v_max): (Option<f64>, Option<f64>),
) -> Result<LoadShiftController> {
    let g = sc.grid.as_ref().ok_or_else(|| {
        Error::config(
            "controllers.load-shift",
            "needs a [grid] with the sites' buses",
        )
    })?;
    let shift_sites = sites
        .iter()
        .map(|name| ShiftSite {
            datacenter: name.to_string(),
            bus: g.datacenter_buses.get(*name).cloned().unwrap_or_default(),
            models: sc.models.iter().map(|m| m.label.clone()).collect(),
        })
        .collect();
    let shift_models = sc
        .models
        .iter()
        .zip(models)
        .map(|(m, (label, batches, _))| {
            (
                label.clone(),
                ShiftModel {
                    gpus_per_replica: m.gpus_per_replica,
                    feasible_batch_sizes: batches.clone(),
                },
            )
        })
        .collect();
    LoadShiftController::new(
        dt_s,
        shift_sites,
        shift_models,
        gpus_per_shift,
        v_min.unwrap_or(g.v_min),
        v_max.unwrap_or(g.v_max),
    )
}

fn build_storage_droop(
    sd: &StorageDroopSection,
    field: &str,
    sc: &Scenario,
) -> Result<StorageDroopController> {
    let batteries = sc.grid.as_ref().map(|g| &g.storage[..]).unwrap_or(&[]);
    let names = sd
        .storage
        .clone()
        .unwrap_or_else(|| batteries.iter().map(|b| b.name.clone()).collect());
    let mut storage = Vec::with_capacity(names.len());
    for name in &names {
        let b = batteries.iter().find(|b| &b.name == name).ok_or_else(|| {
            Error::config(
                format!("{field}.storage"),
                format!("no [[grid.storage]] named {name:?}"),
            )
        })?;
        storage.push(DroopStorage {
            name: b.name.clone(),
            bus: b.bus.clone(),
            kw_rated: b.rated_power_kw,
            kva_rated: b.apparent_power_kva.unwrap_or(b.rated_power_kw),
        });
    }
    let mode = match sd.mode.as_str() {
        "qv" => DroopMode::Qv,
        "pv" => DroopMode::Pv,
        m => {
            return Err(Error::config(
                format!("{field}.mode"),
                format!("{m:?}: give \"qv\" (kvar) or \"pv\" (kW)"),
            ))
        }
    };
    let voltage_statistic = match sd.voltage_statistic.as_str() {
        "minimum" => VoltageStatistic::Minimum,
        "mean" => VoltageStatistic::Mean,
        "latest" => VoltageStatistic::Latest,
        m => {
            return Err(Error::config(
                format!("{field}.voltage_statistic"),
                format!("{m:?}: give \"minimum\", \"mean\" or \"latest\""),
            ))
        }
    };
    let d = DroopConfig::default();
    let cfg = DroopConfig {
        mode,
        v_ref: sd.v_ref.unwrap_or(d.v_ref),
        deadband_pu: sd.deadband_pu.unwrap_or(d.deadband_pu),
        full_output_voltage_error_pu: sd
            .full_output_voltage_error_pu
            .unwrap_or(d.full_output_voltage_error_pu),
        droop_gain_per_pu: sd.droop_gain_per_pu,
        max_abs_output: sd.max_abs_output,
        allow_negative_output: sd.allow_negative_output.unwrap_or(d.allow_negative_output),
        voltage_statistic,
    };
    StorageDroopController::new(sd.dt_s.exact(&format!("{field}.dt_s"))?, storage, cfg)
        .map_err(|e| Error::config(field, e.to_string()))
}

fn build_ofo(
    o: &OfoSection,
    field: &str,
    default_dc: &str,
    models: &ModelBatches,
) -> Result<OfoController> {
    let cfg = ofo_config(o);
    for label in o.fits.keys().chain(o.itl_deadline_s.keys()) {
        if !models.iter().any(|(l, _, _)| l == label) {
            return Err(Error::config(
                field.to_string(),
                format!("model {label:?} is not in [[models]]"),
            ));
        }
    }
    let mut ofo_models = Vec::new();
    for (label, batches, initial) in models {
        ofo_models.push(ofo_model(o, field, label, batches, *initial)?);
    }
    OfoController::new(
        o.dt_s.exact(&format!("{field}.dt_s"))?,
        o.datacenter.as_deref().unwrap_or(default_dc),
        ofo_models,
        cfg,
    )
}

/// The OFO settings, each from the section or the default.
fn ofo_config(o: &OfoSection) -> OfoConfig {
    // Destructured so a new field of the section is not forgotten; the first four are read by
    // `build_ofo` and `ofo_model`.
    let OfoSection {
        dt_s: _,
        datacenter: _,
        itl_deadline_s: _,
        fits: _,
        primal_step_size,
        w_throughput,
        w_switch,
        voltage_gradient_scale,
        v_min,
        v_max,
        voltage_dual_step_size,
        latency_dual_step_size,
        sensitivity_update_interval,
        sensitivity_perturbation_kw,
    } = o;
    let d = OfoConfig::default();
    OfoConfig {
        primal_step_size: primal_step_size.unwrap_or(d.primal_step_size),
        w_throughput: w_throughput.unwrap_or(d.w_throughput),
        w_switch: w_switch.unwrap_or(d.w_switch),
        voltage_gradient_scale: voltage_gradient_scale.unwrap_or(d.voltage_gradient_scale),
        v_min: v_min.unwrap_or(d.v_min),
        v_max: v_max.unwrap_or(d.v_max),
        voltage_dual_step_size: voltage_dual_step_size.unwrap_or(d.voltage_dual_step_size),
        latency_dual_step_size: latency_dual_step_size.unwrap_or(d.latency_dual_step_size),
        sensitivity_update_interval: sensitivity_update_interval
            .unwrap_or(d.sensitivity_update_interval),
        sensitivity_perturbation_kw: sensitivity_perturbation_kw
            .unwrap_or(d.sensitivity_perturbation_kw),
    }
}

/// One model as the OFO controller sees it: its fits and ITL deadline (both required, the
/// deadline > 0), its feasible and initial batch sizes.
fn ofo_model(
    o: &OfoSection,
    field: &str,
    label: &str,
    batches: &[u32],
    initial_batch_size: u32,
) -> Result<OfoModel> {
    let f = o.fits.get(label).ok_or_else(|| {
        Error::config(
            format!("{field}.fits"),
            format!("no fits for model {label:?}"),
        )
    })?;
    let deadline = *o.itl_deadline_s.get(label).ok_or_else(|| {
        Error::config(
            format!("{field}.itl_deadline_s"),
            format!("no deadline for model {label:?}"),
        )
    })?;
    if !(deadline > 0.0) {
        return Err(Error::config(
            format!("{field}.itl_deadline_s.{label}"),
            format!("{deadline} (need > 0)"),
        ));
    }
    Ok(OfoModel {
        label: label.to_string(),
        power_w: f.power,
        latency_s: f.latency,
        throughput: f.throughput,
        itl_deadline_s: deadline,
        feasible_batch_sizes: batches.to_vec(),
        initial_batch_size,
    })
}

fn build_rule_based(
    r: &RuleBasedSection,
    field: &str,
    default_dc: &str,
    models: &ModelBatches,
    exclude: Vec<String>,
) -> Result<RuleBasedController> {
    for label in r.itl_deadline_s.keys() {
        if !models.iter().any(|(l, _, _)| l == label) {
            return Err(Error::config(
                format!("{field}.itl_deadline_s"),
                format!("model {label:?} is not in [[models]]"),
            ));
        }
    }
    let d = RuleBasedConfig::default();
    let cfg = RuleBasedConfig {
        step_size: r.step_size.unwrap_or(d.step_size),
        v_min: r.v_min.unwrap_or(d.v_min),
        v_max: r.v_max.unwrap_or(d.v_max),
        deadband: r.deadband.unwrap_or(d.deadband),
        latency_guard: r.latency_guard.unwrap_or(d.latency_guard),
    };
    let rb_models = models
        .iter()
        .map(|(label, batches, initial)| RuleBasedModel {
            label: label.clone(),
            feasible_batch_sizes: batches.clone(),
            itl_deadline_s: r
                .itl_deadline_s
                .get(label)
                .copied()
                .unwrap_or(f64::INFINITY),
            initial_batch_size: *initial,
        })
        .collect();
    RuleBasedController::new(
        r.dt_s.exact(&format!("{field}.dt_s"))?,
        r.datacenter.as_deref().unwrap_or(default_dc),
        rb_models,
        cfg,
        exclude,
        r.zone_buses.clone(),
    )
}

/// A profile's (t_s, kW) points from whichever of `kw`, `profile`, `csv` it gives.
fn profile_points(p: &ProfileSection, field: &str, base_dir: &Path) -> Result<Vec<(f64, f64)>> {
    match (p.kw, &p.profile, &p.csv) {
        (Some(kw), None, None) => Ok(vec![(0.0, kw)]),
        (None, Some(points), None) => Ok(points.clone()),
        (None, None, Some(csv)) => {
            let path = base_dir.join(csv);
            let mut reader =
                csv::Reader::from_path(&path).map_err(|e| Error::content(&path, e.to_string()))?;
            let mut points = Vec::new();
            for (i, rec) in reader.records().enumerate() {
                let rec = rec.map_err(|e| Error::row(&path, i + 2, e.to_string()))?;
                let num = |k: usize| -> Result<f64> {
                    rec.get(k)
                        .and_then(|v| v.trim().parse::<f64>().ok())
                        .filter(|v| v.is_finite())
                        .ok_or_else(|| {
                            Error::row(
                                &path,
                                i + 2,
                                format!("column {} is not a finite number", k + 1),
                            )
                        })
                };
                points.push((num(0)?, num(1)?));
            }
            Ok(points)
        }
        _ => Err(Error::config(
            field,
            "give exactly one of kw, profile and csv",
        )),
    }
}

fn build_grid(
    g: &GridSection,
    sites: &[&str],
    base_dir: &Path,
) -> Result<(Box<dyn Grid>, GridOutputSpec)> {
    let datacenters = datacenter_buses(g, sites)?;
    if !(g.v_min < g.v_max) {
        return Err(Error::config("grid.v_min", "must be below grid.v_max"));
    }
    let dt = g.dt_s.exact("grid.dt_s")?;
    let profiles = bus_profiles(g, base_dir)?;
    let grid = FeederGrid::new(FeederGridConfig {
        feeder: base_dir.join(&g.feeder),
        dt_s: dt,
        source_pu: g.source_pu,
        taps: g.taps.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        datacenters,
        pf: g.pf,
        excluded_buses: g.exclude_buses.clone(),
        tolerance_pu: g.tolerance_pu,
        profiles,
        storage: g.storage.iter().map(storage_spec).collect(),
    })?;
    let outputs = GridOutputSpec {
        monitored: grid.monitored(),
        v_min: g.v_min,
        v_max: g.v_max,
        dt_s: to_f64(dt),
    };
    Ok((Box::new(grid), outputs))
}

/// (datacenter, bus) in the coordinator's datacenter order: every site on a bus, every bus
/// named for a site.
fn datacenter_buses(g: &GridSection, sites: &[&str]) -> Result<Vec<(String, String)>> {
    if let Some(name) = g
        .datacenter_buses
        .keys()
        .find(|n| !sites.contains(&n.as_str()))
    {
        return Err(Error::config(
            "grid.datacenter_buses",
            format!("no datacenter named {name:?} (the scenario has {sites:?})"),
        ));
    }
    let mut datacenters = Vec::with_capacity(sites.len());
    for name in sites {
        let bus = g.datacenter_buses.get(*name).ok_or_else(|| {
            Error::config(
                "grid.datacenter_buses",
                format!("no bus for datacenter {name:?}: give {name} = \"BUS\""),
            )
        })?;
        datacenters.push((name.to_string(), bus.clone()));
    }
    Ok(datacenters)
}

/// The grid's generator profiles (power factor 1 unless given), then its load profiles (0.96).
fn bus_profiles(g: &GridSection, base_dir: &Path) -> Result<Vec<BusProfile>> {
    let mut profiles = Vec::new();
    for (kind, list, field, pf) in [
        (
            ProfileKind::Generator,
            &g.generators,
            "grid.generators",
            1.0,
        ),
        (ProfileKind::Load, &g.loads, "grid.loads", 0.96),
    ] {
        for (i, p) in list.iter().enumerate() {
            profiles.push(BusProfile {
                kind,
                bus: p.bus.clone(),
                pf: p.pf.unwrap_or(pf),
                points: profile_points(p, &format!("{field}[{i}]"), base_dir)?,
            });
        }
    }
    Ok(profiles)
}

/// A `[[grid.storage]]` battery as the grid's storage element (apparent power defaults to the
/// rated power).
fn storage_spec(b: &StorageSection) -> StorageSpec {
    StorageSpec {
        name: b.name.clone(),
        bus: b.bus.clone(),
        kw_rated: b.rated_power_kw,
        kva_rated: b.apparent_power_kva.unwrap_or(b.rated_power_kw),
        kwh_rated: b.capacity_kwh,
        initial_soc: b.initial_soc,
        reserve_soc: b.reserve_soc,
        charge_efficiency: b.charge_efficiency,
        discharge_efficiency: b.discharge_efficiency,
        idling_percent: b.idle_loss_percent,
    }
}

type Templates = BTreeMap<u32, Arc<[f64]>>;

/// A trace's template. With `periodic`, when the trace's span is a whole number M of steps
/// shorter than the template, only one period (M samples) is kept: the same values (the
/// template is the trace repeated with that period), indexed modulo M, so a day-long run holds
/// 600 samples per 60 s trace instead of 864 001 and reads them from cache. Otherwise (and
/// always for the peer's exact layout) the full ceil(duration / dt) + 1 samples.
fn template(trace: &InferenceTrace, topts: &TemplateOptions, periodic: bool) -> Result<Vec<f64>> {
    if periodic {
        let mut start = 0;
        if topts.steady_skip_s > 0.0 {
            let cut = trace.t_s[0] + topts.steady_skip_s;
            let i0 = trace.t_s.partition_point(|&t| t < cut);
            if i0 + 5 < trace.t_s.len() {
                start = i0;
            }
        }
        let steps = (trace.t_s[trace.t_s.len() - 1] - trace.t_s[start]) / topts.dt_s;
        let m = steps.round();
        if m >= 2.0 && (steps - m).abs() < 1e-6 && (m as usize) < topts.len() {
            // ceil((m − 1)·dt / dt) + 1 = m samples: the first period of the full template.
            let one_period = TemplateOptions {
                duration_s: (m - 1.0) * topts.dt_s,
                ..*topts
            };
            let mut t = build_template(trace, &one_period)?;
            t.truncate(m as usize);
            return Ok(t);
        }
    }
    build_template(trace, topts)
}

/// A model's templates per batch size, and its ITL fits when the power source carries them.
type SourceTemplates = (Templates, Option<BTreeMap<u32, ItlMixture>>);

/// What every power source's templates are built with.
struct TemplateContext<'a> {
    /// `models.<label>.power`: the field errors name.
    field: String,
    /// GPUs per replica.
    gpus: u32,
    base_dir: &'a Path,
    topts: &'a TemplateOptions,
    periodic: bool,
    seed: u64,
}

fn templates_for(
    m: &ModelSection,
    base_dir: &Path,
    topts: &TemplateOptions,
    periodic: bool,
    seed: u64,
) -> Result<SourceTemplates> {
    let ctx = TemplateContext {
        field: format!("models.{}.power", m.label),
        gpus: m.gpus_per_replica,
        base_dir,
        topts,
        periodic,
        seed,
    };
    match &m.power {
        PowerSource::Parametric {
            batch_sizes,
            level_w,
            ripples,
            noise_sd_w,
            clip_w,
            trace_s,
            trace_dt_s,
            seed: trace_seed,
        } => {
            let source = ParametricSource {
                batch_sizes,
                level_w: *level_w,
                ripples,
                noise_sd_w: *noise_sd_w,
                clip_w: *clip_w,
                trace_s: *trace_s,
                trace_dt_s: *trace_dt_s,
                trace_seed: *trace_seed,
            };
            Ok((source.templates(&ctx)?, None))
        }
        PowerSource::SpecStore { dir, spec } => spec_store_templates(&ctx, dir, spec),
        PowerSource::Synthesized {
            train,
            batch_sizes,
            rate_per_s,
            burstiness,
            series_s,
            seed: series_seed,
            model: served_model,
            hardware,
            leaderboard,
            leaderboard_task,
            stand_in,
        } => {
            let source = SynthesizedSource {
                train,
                batch_sizes,
                rate_per_s: *rate_per_s,
                burstiness: *burstiness,
                series_s: *series_s,
                series_seed: *series_seed,
                served_model,
                hardware,
                leaderboard,
                leaderboard_task,
                stand_in,
            };
            Ok((source.templates(&ctx)?, None))
        }
    }
}

/// A `parametric` power source's fields.
struct ParametricSource<'a> {
    batch_sizes: &'a [u32],
    level_w: (f64, f64),
    ripples: &'a [(f64, f64)],
    noise_sd_w: f64,
    clip_w: Option<(f64, f64)>,
    trace_s: f64,
    trace_dt_s: f64,
    trace_seed: u64,
}

impl ParametricSource<'_> {
    /// One template per batch size, each from its parametric trace (the batch sizes in order,
    /// drawing from one noise stream).
    fn templates(&self, ctx: &TemplateContext) -> Result<Templates> {
        let field = ctx.field.as_str();
        self.validate(field)?;
        let bmin = *self.batch_sizes.iter().min().unwrap_or(&1);
        let bmax = *self.batch_sizes.iter().max().unwrap_or(&1);
        let noise = Normal::new(0.0, self.noise_sd_w.max(0.0))
            .map_err(|e| Error::config(field, e.to_string()))?;
        let mut rng =
            Pcg64::seed_from_u64(ctx.seed ^ self.trace_seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let t = self.sample_times(field)?;
        let mut out = BTreeMap::new();
        for &b in self.batch_sizes {
            let level = log2_level(b, bmin, bmax, self.level_w.0, self.level_w.1);
            let trace = self.trace(&t, level, &noise, &mut rng, ctx.gpus)?;
            out.insert(b, Arc::from(template(&trace, ctx.topts, ctx.periodic)?));
        }
        Ok(out)
    }

    fn validate(&self, field: &str) -> Result<()> {
        let (trace_s, trace_dt_s) = (self.trace_s, self.trace_dt_s);
        if self.batch_sizes.is_empty()
            || !(trace_dt_s > 0.0 && trace_s > trace_dt_s && trace_s.is_finite())
        {
            return Err(Error::config(
                field,
                "need batch_sizes and trace_s > trace_dt_s > 0",
            ));
        }
        if let Some((lo, hi)) = self.clip_w {
            if !(lo >= 0.0 && lo <= hi && hi.is_finite()) {
                return Err(Error::config(
                    format!("{field}.clip_w"),
                    format!("[{lo}, {hi}] (need 0 ≤ lo ≤ hi, finite)"),
                ));
            }
        }
        let finite = [self.level_w.0, self.level_w.1, self.noise_sd_w]
            .into_iter()
            .chain(self.ripples.iter().flat_map(|r| [r.0, r.1]))
            .all(f64::is_finite);
        if !finite || self.ripples.iter().any(|r| !(r.1 > 0.0)) {
            return Err(Error::config(
                field,
                "level_w, ripples (amplitude, period > 0) and noise_sd_w must be finite",
            ));
        }
        Ok(())
    }

    /// The trace's sample times: 0, trace_dt_s, … up to trace_s.
    fn sample_times(&self, field: &str) -> Result<Vec<f64>> {
        let samples = self.trace_s / self.trace_dt_s;
        if samples > crate::traces::MAX_TEMPLATE_SAMPLES as f64 {
            return Err(Error::config(
                field,
                format!(
                    "trace_s / trace_dt_s = {samples:.3e} samples, over {}: shorten trace_s",
                    crate::traces::MAX_TEMPLATE_SAMPLES
                ),
            ));
        }
        let n = (samples + 1e-9).floor() as usize + 1;
        Ok((0..n).map(|i| i as f64 * self.trace_dt_s).collect())
    }

    /// One batch size's trace for `gpus` GPUs: per GPU, `level` plus the ripples plus noise,
    /// clipped.
    fn trace(
        &self,
        t: &[f64],
        level: f64,
        noise: &Normal<f64>,
        rng: &mut Pcg64,
        gpus: u32,
    ) -> Result<InferenceTrace> {
        let per_gpu: Vec<f64> = t
            .iter()
            .map(|&ti| {
                let mut p = level;
                for (amp, period) in self.ripples {
                    p += amp * (2.0 * std::f64::consts::PI * ti / period).sin();
                }
                p += noise.sample(rng);
                match self.clip_w {
                    Some((lo, hi)) => p.clamp(lo, hi),
                    None => p.max(0.0),
                }
            })
            .collect();
        let total = per_gpu.iter().map(|p| p * gpus as f64).collect();
        InferenceTrace::new(t.to_vec(), total, gpus)
    }
}

/// A spec store's median traces and ITL fits, for the batch sizes a controller may choose.
fn spec_store_templates(
    ctx: &TemplateContext,
    dir: &Path,
    spec: &crate::spec::InferenceModelSpec,
) -> Result<SourceTemplates> {
    let field = ctx.field.as_str();
    let store = crate::store::SpecStore::new(ctx.base_dir.join(dir));
    let art = store.load(spec)?;
    if art.traces.is_empty() {
        return Err(Error::config(
            field,
            format!(
                "spec store {} holds no traces for {:?}",
                dir.display(),
                spec.model_label
            ),
        ));
    }
    // Only the batch sizes a controller may choose (`feasible_batch_sizes`, default
    // every built one) get templates and ITL fits: a command to another is refused.
    let mut spec = spec.clone();
    spec.validate()
        .map_err(|e| Error::config(field, e.to_string()))?;
    let feasible = |b: &u32| spec.feasible_batch_sizes.contains(b);
    let mut out = BTreeMap::new();
    for (b, tr) in art.traces.iter().filter(|(b, _)| feasible(b)) {
        out.insert(*b, Arc::from(template(tr, ctx.topts, ctx.periodic)?));
    }
    let itl = art.itl.into_iter().filter(|(b, _)| feasible(b)).collect();
    Ok((out, Some(itl)))
}

/// A `synthesized` power source's fields.
struct SynthesizedSource<'a> {
    train: &'a [PathBuf],
    batch_sizes: &'a [u32],
    rate_per_s: f64,
    burstiness: f64,
    series_s: f64,
    series_seed: u64,
    served_model: &'a Option<String>,
    hardware: &'a Option<String>,
    leaderboard: &'a Option<PathBuf>,
    leaderboard_task: &'a Option<String>,
    stand_in: &'a BTreeMap<String, String>,
}

/// The leaderboard configurations a synthesized source transfers with.
type LeaderboardConfigs = Vec<crate::sources::leaderboard::LeaderboardConfig>;

impl SynthesizedSource<'_> {
    /// One template per batch size (`max_num_seqs`), from a series synthesized by the model
    /// learned (or transferred) from the training runs.
    fn templates(&self, ctx: &TemplateContext) -> Result<Templates> {
        let (runs, mut serving, lb) = self.serving(ctx)?;
        let model = self.learned_model(ctx, &serving, &runs, lb.as_deref())?;
        let tokens = training_tokens(&runs)?;
        let mut out = BTreeMap::new();
        for &b in self.batch_sizes {
            serving.max_num_seqs = b;
            let tpl = self.batch_template(ctx, &model, &serving, &tokens, b)?;
            out.insert(b, Arc::from(tpl));
        }
        Ok(out)
    }

    /// The training runs, the serving configuration to synthesize (the first run's, with
    /// `model` and `hardware` overridden, TP = GPUs per replica) and the leaderboard
    /// configurations. Without a leaderboard the runs' TP must be the model's.
    fn serving(
        &self,
        ctx: &TemplateContext,
    ) -> Result<(
        Vec<crate::sources::measured::MeasuredRun>,
        crate::engine::ServingConfig,
        Option<LeaderboardConfigs>,
    )> {
        let field = ctx.field.as_str();
        let g = ctx.gpus;
        let runs = self
            .train
            .iter()
            .map(|p| crate::sources::measured::load_run(&ctx.base_dir.join(p)))
            .collect::<Result<Vec<_>>>()?;
        let first = runs
            .first()
            .ok_or_else(|| Error::config(field, "train: need ≥ 1 measured run"))?;
        let mut serving = crate::engine::ServingConfig::from_manifest(&first.manifest);
        serving.model = self.served_model.clone().unwrap_or(serving.model);
        serving.hardware = self.hardware.clone().unwrap_or(serving.hardware);
        let lb = match self.leaderboard {
            Some(d) => Some(crate::pipeline::leaderboard_configs(&ctx.base_dir.join(d))?.1),
            None => None,
        };
        if lb.is_some() {
            serving.tp = g;
        } else if serving.tp != g {
            return Err(Error::config(
                field,
                format!(
                    "training runs have TP {}, the model has {g} GPUs per replica (give \
                     `leaderboard` to transfer)",
                    serving.tp
                ),
            ));
        }
        Ok((runs, serving, lb))
    }

    /// The state-transition model for `serving`: learned from the runs, or transferred
    /// through the leaderboard.
    fn learned_model(
        &self,
        ctx: &TemplateContext,
        serving: &crate::engine::ServingConfig,
        runs: &[crate::sources::measured::MeasuredRun],
        lb: Option<&[crate::sources::leaderboard::LeaderboardConfig]>,
    ) -> Result<crate::learn::LearnedModel> {
        let transfer_opts = crate::transfer::TransferOptions {
            task: self.leaderboard_task.clone().unwrap_or_default(),
            stand_ins: self.stand_in.clone(),
        };
        let (model, _) = crate::transfer::model_for(
            serving,
            runs,
            lb,
            &transfer_opts,
            &crate::learn::LearnOptions::default(),
        )
        .map_err(|e| Error::config(&ctx.field, e.to_string()))?;
        Ok(model)
    }

    /// Batch size `b`'s template: a series synthesized under a Gamma-renewal workload with the
    /// runs' token counts, per GPU, sampled every template step modulo the series' span.
    fn batch_template(
        &self,
        ctx: &TemplateContext,
        model: &crate::learn::LearnedModel,
        serving: &crate::engine::ServingConfig,
        tokens: &crate::workload::EmpiricalTokens,
        b: u32,
    ) -> Result<Vec<f64>> {
        let g = ctx.gpus;
        let mut rng = Pcg64::seed_from_u64(
            ctx.seed
                ^ self
                    .series_seed
                    .wrapping_add(b as u64)
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let w = crate::workload::Workload::gamma_renewal(
            self.rate_per_s,
            self.burstiness,
            0.0,
            self.series_s,
            tokens,
            &mut rng,
        )?;
        let (series, _) = crate::synth::synthesize(
            model,
            serving,
            &w,
            0.0,
            self.series_s,
            model.dt_s,
            rng_seed(ctx.seed, b),
        )?;
        let ts: Vec<f64> = (0..series.power_w.len()).map(|i| series.t_s(i)).collect();
        let per_gpu: Vec<f64> = series.power_w.iter().map(|p| p / g as f64).collect();
        let period = ts[ts.len() - 1];
        let topts = ctx.topts;
        Ok((0..topts.len())
            .map(|i| interp(&ts, &per_gpu, (i as f64 * topts.dt_s) % period).max(0.0))
            .collect())
    }
}

/// The token counts (input, output) of every request of the runs.
fn training_tokens(
    runs: &[crate::sources::measured::MeasuredRun],
) -> Result<crate::workload::EmpiricalTokens> {
    let mut all = crate::workload::Workload::default();
    for r in runs {
        let w = crate::workload::Workload::from_log(&r.requests)?;
        all.requests.extend(w.requests);
    }
    crate::workload::EmpiricalTokens::from_workload(&all)
}

fn rng_seed(seed: u64, b: u32) -> u64 {
    seed.wrapping_mul(31).wrapping_add(b as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_template_is_the_first_period_of_the_full_one() {
        let t: Vec<f64> = (0..=600).map(|i| i as f64 * 0.1).collect();
        let p: Vec<f64> = t
            .iter()
            .map(|x| 2.0 * (300.0 + 40.0 * (x * 0.7).sin()))
            .collect();
        let trace = InferenceTrace::new(t, p, 2).unwrap();
        let topts = TemplateOptions {
            duration_s: 3600.0,
            dt_s: 0.1,
            steady_skip_s: 0.0,
        };
        let full = template(&trace, &topts, false).unwrap();
        let one = template(&trace, &topts, true).unwrap();
        assert_eq!(full.len(), 36_001);
        assert_eq!(one.len(), 600);
        for (i, v) in one.iter().enumerate() {
            assert!((v - full[i]).abs() < 1e-9, "{i}");
            // The full template repeats with that period.
            assert!((full[i + 600 * 7] - v).abs() < 1e-6, "{i}");
        }
        // A span that is not a whole number of steps keeps the full template.
        let short = TemplateOptions { dt_s: 0.7, ..topts };
        assert_eq!(template(&trace, &short, true).unwrap().len(), short.len());
    }

    /// One model on 16 GPUs for 60 s in 1/10 s steps: the scenario the parsing tests vary.
    const SMALL: &str = r#"
            duration_s = 60
            [datacenter]
            dt_s = "1/10"
            total_gpu_capacity = 16
            [[models]]
            label = "A"
            gpus_per_replica = 1
            initial_batch_size = 8
            replicas = 8
            power = { kind = "parametric", batch_sizes = [8], level_w = [300, 300], trace_s = 10, trace_dt_s = 0.1 }
        "#;

    /// `build`'s error message on `text` ("" when it builds).
    fn build_error(text: &str, overrides: &Overrides) -> String {
        let sc: Scenario = toml::from_str(text).unwrap();
        build(&sc, Path::new("."), overrides)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn parses_fractional_periods() {
        let sc: Scenario = toml::from_str(SMALL).unwrap();
        assert_eq!(
            sc.datacenter.dt_s.exact("dt").unwrap(),
            num_rational::Ratio::new(1, 10)
        );
        let b = build(&sc, Path::new("."), &Overrides::default()).unwrap();
        assert_eq!(b.coordinator.total_ticks(), 600);
    }

    #[test]
    fn rejects_unknown_fields() {
        let bad = SMALL.replace("replicas = 8", "replicas = 8\nreplicaz = 1");
        let err = toml::from_str::<Scenario>(&bad).unwrap_err().to_string();
        assert!(err.contains("replicaz"), "{err}");
    }

    #[test]
    fn values_that_used_to_panic_are_errors_naming_the_field() {
        // Reversed or NaN clip limits, ripples with a zero period, no GPUs per server.
        for (from, to, field) in [
            (
                "trace_dt_s = 0.1 }",
                "trace_dt_s = 0.1, clip_w = [600, 280] }",
                "clip_w",
            ),
            (
                "trace_dt_s = 0.1 }",
                "trace_dt_s = 0.1, clip_w = [0, nan] }",
                "clip_w",
            ),
            (
                "trace_dt_s = 0.1 }",
                "trace_dt_s = 0.1, ripples = [[5, 0]] }",
                "power",
            ),
            (
                "total_gpu_capacity = 16",
                "total_gpu_capacity = 16\ngpus_per_server = 0",
                "gpus_per_server",
            ),
        ] {
            let err = build_error(&SMALL.replace(from, to), &Overrides::default());
            assert!(err.contains(field), "{to}: {err}");
        }
    }

    #[test]
    fn unbounded_sizes_are_refused_saying_what_to_change() {
        // Sizes that used to allocate without bound or run without end are refused before
        // anything is allocated.
        for (from, to, needle) in [
            ("trace_s = 10,", "trace_s = 1e12,", "shorten trace_s"),
            (
                "duration_s = 60",
                "duration_s = 60\n[templates]\nduration_s = 1e12",
                "per template",
            ),
            ("dt_s = \"1/10\"", "dt_s = 0.123456789", "simple fraction"),
            ("dt_s = \"1/10\"", "dt_s = 1e-9", "per template"),
            (
                "total_gpu_capacity = 16",
                "total_gpu_capacity = 16\nbase_kw_per_phase = 1e308",
                "base_kw_per_phase",
            ),
            (
                "trace_dt_s = 0.1 }",
                "trace_dt_s = 0.1 }\n[[training]]\nn_gpus = 4\nt_start_s = 0\nt_end_s = 10\ntarget_peak_w_per_gpu = nan\ntrace = { seed = 2 }",
                "target_peak_w_per_gpu",
            ),
            (
                "trace_dt_s = 0.1 }",
                "trace_dt_s = 0.1 }\nitl = { kind = \"parametric\", loc_s = 0.002, pi_steady = 1.2, sigma_steady = 0.15, sigma_stall = 0.5, scale_s = 0.012, per_log2_batch = 0.1, stall_factor = 3 }",
                "pi_steady 1.2",
            ),
            (
                "trace_dt_s = 0.1 }",
                "trace_dt_s = 0.1 }\nitl = { kind = \"parametric\", loc_s = 0.002, pi_steady = 0.9, sigma_steady = -0.15, sigma_stall = 0.5, scale_s = 0.012, per_log2_batch = 0.1, stall_factor = 3 }",
                "sigma_steady -0.15",
            ),
        ] {
            let noop = "\n[[controllers]]\nkind = \"noop\"\ndt_s = 1\n";
            let changed = SMALL.replace(from, to) + noop;
            assert!(SMALL.contains(from), "{from}");
            let err = build_error(&changed, &Overrides::default());
            assert!(err.contains(needle), "{to}: {err}");
        }
    }

    #[test]
    fn more_gpus_than_servers_can_hold_is_refused() {
        let huge = Overrides {
            gpus: Some(100_000_000_000),
            ..Overrides::default()
        };
        let err = build_error(SMALL, &huge);
        assert!(err.contains("servers, over"), "{err}");
    }
}
