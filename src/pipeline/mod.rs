//! The `build-dataset` pipeline: a declarative TOML file (under `pipelines/`) names a source,
//! the fits to run and the outputs to write; [`run`] executes it into an output folder.
//!
//! Stages, in order: read the source → one group per (task, model, GPU model, GPU count) →
//! per group, "ensure" its spec folder (fit only what is missing or stale) → tables →
//! measured runs (optional) → templates (optional) → `manifest.json` of the folder.

pub mod shards;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::fits::itl_mixture::{self, ItlFitMode, ItlFitOptions, ItlMixture};
use crate::fits::{itl_percentiles, logistic};
use crate::progress::Progress;
use crate::shard::Shard;
use crate::sources::leaderboard::{self, LeaderboardConfig};
use crate::sources::measured;
use crate::sources::mlenergy::{BenchmarkRuns, HubOptions, PowerMetric, RunRecord};
use crate::spec::InferenceModelSpec;
use crate::store::{self, LogisticFits, SpecArtifacts, SpecStore, TemplateStore, TraceStore};
use crate::table::{write_parquet, Column, Table};
use crate::traces::{self, InferenceTrace, TemplateOptions};

/// A pipeline file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Seed of every random choice (ITL subsampling); `--seed` overrides it.
    #[serde(default)]
    pub seed: u64,
    pub source: SourceConfig,
    #[serde(default)]
    pub itl: ItlConfig,
    /// Explicit model specs (hub and mirror sources); empty = every group of the runs table.
    #[serde(default)]
    pub models: Vec<InferenceModelSpec>,
    /// Step of the median power traces built from benchmark timelines (s).
    #[serde(default = "default_trace_dt")]
    pub trace_dt_s: f64,
    /// Measured runs to load, summarise, fit ITL on and turn into traces.
    #[serde(default)]
    pub measured: Option<MeasuredConfig>,
    /// Templates to build from every trace.
    #[serde(default)]
    pub templates: Option<TemplateOptions>,
}

fn default_trace_dt() -> f64 {
    0.1
}

/// Where the benchmark numbers come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum SourceConfig {
    /// ML.ENERGY leaderboard task files (`<task>.json`).
    Leaderboard {
        path: PathBuf,
        #[serde(default)]
        tasks: Option<Vec<String>>,
    },
    /// The compact fitted parameters embedded in `data/` (works offline on a fresh clone).
    Embedded { path: PathBuf },
    /// A local folder with the Hub dataset's layout.
    Mirror {
        path: PathBuf,
        #[serde(default)]
        tasks: Option<Vec<String>>,
        #[serde(default)]
        stable_only: bool,
    },
    /// The Hugging Face Hub dataset.
    Hub {
        repo_id: String,
        #[serde(default)]
        revision: Option<String>,
        #[serde(default)]
        tasks: Option<Vec<String>>,
        #[serde(default)]
        stable_only: bool,
    },
}

/// ITL fitting options.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItlConfig {
    #[serde(default)]
    pub(crate) mode: ItlFitMode,
    #[serde(default = "default_cap")]
    pub(crate) max_samples: Option<usize>,
}

fn default_cap() -> Option<usize> {
    Some(2048)
}

impl Default for ItlConfig {
    fn default() -> Self {
        ItlConfig {
            mode: ItlFitMode::Robust,
            max_samples: default_cap(),
        }
    }
}

/// Measured runs to include.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeasuredConfig {
    pub(crate) path: PathBuf,
}

impl PipelineConfig {
    /// Reads and validates a pipeline file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: PipelineConfig = toml::from_str(&text)
            .map_err(|e| Error::content(path, format!("invalid pipeline: {e}")))?;
        cfg.validate()
            .map_err(|e| Error::content(path, e.to_string()))?;
        Ok(cfg)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if !(self.trace_dt_s > 0.0) {
            return Err(Error::config(
                "trace_dt_s",
                format!("{} (must be > 0)", self.trace_dt_s),
            ));
        }
        if let Some(t) = &self.templates {
            t.validate()?;
        }
        if self.itl.max_samples == Some(0) {
            return Err(Error::config(
                "itl.max_samples",
                "0 (must be ≥ 1, or omitted)",
            ));
        }
        let mut models = self.models.clone();
        for m in &mut models {
            m.validate()?;
        }
        crate::spec::check_unique_labels(&models)
    }
}

/// Run-time choices that are not part of the pipeline file.
pub struct RunOptions<'a> {
    pub out_dir: PathBuf,
    /// Rebuild every spec folder even when current.
    pub force: bool,
    /// Replaces the source's `path` (leaderboard, embedded, mirror).
    pub source_path: Option<PathBuf>,
    /// Replaces `measured.path`.
    pub measured_path: Option<PathBuf>,
    /// The pipeline file, for provenance.
    pub pipeline_file: Option<PathBuf>,
    pub progress: &'a dyn Progress,
    /// Run only this share of the groups (`build-dataset --shard I/N`; default: all).
    pub shard: Shard,
}

/// One fitted curve with its quality figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurveResult {
    #[serde(flatten)]
    pub fit: logistic::LogisticFit,
    pub(crate) n_points: usize,
    pub(crate) rmse: f64,
    pub(crate) r2: Option<f64>,
    pub(crate) sse: f64,
    pub(crate) grid_sse: f64,
    #[serde(default)]
    pub(crate) warnings: Vec<String>,
}

/// One batch size's ITL mixture with how it was fitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItlResult {
    #[serde(flatten)]
    pub mixture: ItlMixture,
    /// `percentiles` (§4.3) or `samples` (EM, §4.2).
    fitted_on: String,
    pub(crate) n_samples: usize,
    /// Log-quantile RMSE of the fit against what it was fitted on.
    pub(crate) log_quantile_rmse: f64,
}

/// Everything fitted for one (task, model, GPU model, GPU count).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupResult {
    pub(crate) task: String,
    pub model_id: String,
    pub(crate) gpu_model: String,
    pub(crate) num_gpus: u32,
    pub model_label: String,
    pub(crate) cache_hash: String,
    pub batch_sizes: Vec<u32>,
    /// metric (`power`, `latency`, `throughput`) → curve.
    pub logistic: BTreeMap<String, CurveResult>,
    /// batch size → ITL mixture.
    pub itl: BTreeMap<u32, ItlResult>,
}

/// The compact, embeddable form of a pipeline's fits (`fits/default_fits.json`; the copy in
/// `data/default/fits.json` is what the default pipeline runs on).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompactFits {
    pub(crate) schema: String,
    pub derived_from: Value,
    pub groups: Vec<GroupResult>,
}

const COMPACT_SCHEMA: &str = "powersynth.compact_fits.v1";

impl CompactFits {
    /// Reads a compact fits file, checking its schema.
    pub fn read(path: &Path) -> Result<Self> {
        let compact: CompactFits = crate::io::read_json(path)?;
        if compact.schema != COMPACT_SCHEMA {
            return Err(Error::content(
                path,
                format!("schema {:?}, expected {COMPACT_SCHEMA:?}", compact.schema),
            ));
        }
        Ok(compact)
    }

    /// The fits as leaderboard configurations: one per group and batch size with power,
    /// median ITL and throughput read off the logistic curves (every ITL percentile = the
    /// median; no architecture facts or output lengths: NaN / empty).
    fn as_leaderboard_configs(&self) -> Vec<LeaderboardConfig> {
        let mut out = Vec::new();
        for g in &self.groups {
            let (Some(p), Some(l), Some(t)) = (
                g.logistic.get("power"),
                g.logistic.get("latency"),
                g.logistic.get("throughput"),
            ) else {
                continue;
            };
            for &b in &g.batch_sizes {
                let itl_s = l.fit.eval_batch(b);
                out.push(LeaderboardConfig {
                    task: g.task.clone(),
                    model_id: g.model_id.clone(),
                    nickname: g.model_label.clone(),
                    gpu_model: g.gpu_model.clone(),
                    num_gpus: g.num_gpus,
                    max_num_seqs: b,
                    avg_power_w: p.fit.eval_batch(b),
                    median_itl_s: itl_s,
                    p90_itl_s: itl_s,
                    p95_itl_s: itl_s,
                    p99_itl_s: itl_s,
                    output_throughput_tps: t.fit.eval_batch(b),
                    energy_per_token_j: f64::NAN,
                    avg_batch_size: b as f64,
                    architecture: String::new(),
                    active_params_b: f64::NAN,
                    avg_output_len: f64::NAN,
                });
            }
        }
        out
    }
}

/// [`leaderboard_configs`] for an optional path (a command's `--leaderboard`).
pub fn leaderboard_configs_opt(
    path: Option<&Path>,
) -> Result<Option<(String, Vec<LeaderboardConfig>)>> {
    path.map(leaderboard_configs).transpose()
}

/// Leaderboard configurations from what a user has: a leaderboard folder (`<task>.json`
/// files), a compact fits file (`fits/default_fits.json` of a `build-dataset` output, or the
/// embedded `data/default/fits.json`), or a `build-dataset` output folder holding one.
/// Returns a description of the source with the configurations.
pub fn leaderboard_configs(path: &Path) -> Result<(String, Vec<LeaderboardConfig>)> {
    let compact = if path.is_file() {
        Some(path.to_path_buf())
    } else {
        let f = path.join("fits").join("default_fits.json");
        f.is_file().then_some(f)
    };
    match compact {
        Some(f) => {
            let c = CompactFits::read(&f)?;
            Ok((
                format!("compact fits {} (logistic curves)", f.display()),
                c.as_leaderboard_configs(),
            ))
        }
        None => Ok((
            format!("leaderboard {}", path.display()),
            leaderboard::load_dir(path, None)?.1,
        )),
    }
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub pipeline: String,
    pub source: String,
    pub groups: usize,
    pub groups_built: usize,
    pub groups_loaded: usize,
    /// Groups whose refined logistic fits are strictly better than the grid on every metric
    /// with ≥ 3 points, out of groups with ≥ 3 points.
    pub refined_strictly_better: (usize, usize),
    pub warnings: Vec<String>,
    /// (file relative to the output folder, rows).
    pub outputs: Vec<(String, usize)>,
    pub measured_runs: usize,
    pub itl_quality: Vec<ItlQualityRow>,
}

/// ITL fit quality of one measured run for one mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItlQualityRow {
    pub run_id: String,
    pub mode: String,
    #[serde(flatten)]
    pub quality: itl_mixture::ItlFitQuality,
}

struct Group {
    spec: InferenceModelSpec,
    inputs: GroupInputs,
}

enum GroupInputs {
    Leaderboard(Vec<leaderboard::LeaderboardConfig>),
    Embedded(Box<GroupResult>),
    Runs(Vec<RunRecord>),
}

/// A group of the given configuration and inputs.
fn group(
    task: &str,
    model_id: &str,
    gpu_model: &str,
    num_gpus: u32,
    batch_sizes: Vec<u32>,
    inputs: GroupInputs,
) -> Result<Group> {
    Ok(Group {
        spec: spec_for(task, model_id, gpu_model, num_gpus, batch_sizes)?,
        inputs,
    })
}

fn spec_for(
    task: &str,
    model_id: &str,
    gpu_model: &str,
    num_gpus: u32,
    batch_sizes: Vec<u32>,
) -> Result<InferenceModelSpec> {
    InferenceModelSpec::builder(
        &format!("{task}/{model_id}/{gpu_model}x{num_gpus}"),
        model_id,
        gpu_model,
        task,
    )
    .gpus_per_replica(num_gpus)
    .tensor_parallel(num_gpus)
    .batch_sizes(batch_sizes)
    .build()
}

/// Executes a pipeline (or, with `opts.shard`, shard I of N of it: see [`shards`]).
pub fn run(cfg: &PipelineConfig, opts: &RunOptions) -> Result<Summary> {
    cfg.validate()?;
    let out = &opts.out_dir;
    let shard = opts.shard;
    let mut inputs: Vec<PathBuf> = Vec::new();
    // 1. Source → groups (this shard's contiguous share of them).
    let (source, groups, benchmark) = source_groups(cfg, opts, &mut inputs)?;
    let groups = groups_of_shard(groups, shard);
    // Measured runs are read and checked before anything is written (the last shard's);
    // their files join the inputs only at step 5, so the compact fits (derived from the
    // source alone) name the same inputs whole or sharded.
    let mut measured_inputs = Vec::new();
    let measured_loaded = load_measured_of_shard(cfg, opts, &mut measured_inputs)?;
    open_output(out, shard)?;
    // 2. Per group: ensure the spec folder.
    let itl_opts = ItlFitOptions {
        mode: cfg.itl.mode,
        max_samples: cfg.itl.max_samples,
        seed: cfg.seed,
    };
    let results = fit_groups(&groups, benchmark.as_ref(), cfg, opts, &itl_opts)?;
    let built = results.iter().filter(|r| r.2).count();
    // 3. Tables.
    let mut outputs = Vec::new();
    let group_results: Vec<GroupResult> = results.iter().map(|r| r.0.clone()).collect();
    write_fit_tables(out, shard, &group_results, &mut outputs)?;
    let derived_from = json!({"pipeline": cfg.name, "source_kind": source_kind(&cfg.source), "inputs": file_hashes(&inputs)?});
    if shard.is_whole() {
        write_compact_fits(out, &derived_from, group_results.clone(), &mut outputs)?;
    }
    let (strictly, warnings) = fit_quality(&group_results);
    // 4. Traces of benchmark groups.
    let mut all_traces: Vec<(String, u32, InferenceTrace)> = results
        .iter()
        .flat_map(|(g, art, _)| {
            art.traces
                .iter()
                .map(|(b, t)| (g.model_label.clone(), *b, t.clone()))
        })
        .collect();
    // 5. Measured runs: the last shard's (so the templates keep the unsplit order).
    let mut itl_quality = Vec::new();
    let mut measured_runs = 0;
    if let Some(runs) = measured_loaded {
        inputs.append(&mut measured_inputs);
        let (n, quality, traces) = measured_stage(runs, out, &itl_opts, &mut outputs)?;
        measured_runs = n;
        itl_quality = quality;
        all_traces.extend(traces);
    }
    // 6. Templates.
    if let Some(t) = &cfg.templates {
        if !all_traces.is_empty() {
            templates_stage(&all_traces, t, out, shard, opts, &mut outputs)?;
        }
    }
    let summary = Summary {
        pipeline: cfg.name.clone(),
        source,
        groups: results.len(),
        groups_built: built,
        groups_loaded: results.len() - built,
        refined_strictly_better: strictly,
        warnings,
        outputs,
        measured_runs,
        itl_quality,
    };
    // 7. Folder manifest (written last), or this shard's record for the merge.
    if shard.is_whole() {
        write_manifest(cfg, opts, &summary, &inputs)?;
    } else {
        shards::write_record(cfg, opts, &summary, &group_results, &derived_from, &inputs)?;
    }
    Ok(summary)
}

/// This shard's contiguous share of the groups.
fn groups_of_shard(groups: Vec<Group>, shard: Shard) -> Vec<Group> {
    let total_groups = groups.len();
    let range = shard.range(total_groups);
    let groups: Vec<Group> = groups
        .into_iter()
        .skip(range.start)
        .take(range.len())
        .collect();
    tracing::debug!(%shard, groups = groups.len(), of = total_groups, "groups of this run");
    groups
}

/// The measured runs the pipeline names, read and checked, on the last shard only (so the
/// templates keep the unsplit order); their files go to `measured_inputs`.
fn load_measured_of_shard(
    cfg: &PipelineConfig,
    opts: &RunOptions,
    measured_inputs: &mut Vec<PathBuf>,
) -> Result<Option<Vec<measured::MeasuredRun>>> {
    match (&cfg.measured, opts.shard.index + 1 == opts.shard.count) {
        (Some(m), true) => {
            let root = opts.measured_path.clone().unwrap_or_else(|| m.path.clone());
            Ok(Some(load_measured(&root, opts, measured_inputs)?))
        }
        _ => Ok(None),
    }
}

/// Creates the output folder once every input has been read (a run that fails on its inputs
/// leaves no empty folder) and, for a whole run, removes a previous manifest first: a run
/// killed while writing leaves a folder without one (incomplete), never an old manifest
/// beside new files.
fn open_output(out: &Path, shard: Shard) -> Result<()> {
    {
        let _gate = crate::io::write_gate()?;
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    }
    if shard.is_whole() {
        let old = out.join("manifest.json");
        if old.exists() {
            std::fs::remove_file(&old).map_err(|e| Error::io(&old, e))?;
        }
    }
    Ok(())
}

/// Step 1: reads the source into model groups (an error when it yields none).
fn source_groups(
    cfg: &PipelineConfig,
    opts: &RunOptions,
    inputs: &mut Vec<PathBuf>,
) -> Result<(String, Vec<Group>, Option<BenchmarkRuns>)> {
    let pick = |p: &PathBuf| opts.source_path.clone().unwrap_or_else(|| p.clone());
    let mut benchmark = None;
    // A benchmark source (mirror or Hub): its runs table is the input, its runs stay for step 2.
    let mut from_runs = |runs: BenchmarkRuns, tasks: &Option<Vec<String>>, stable_only: bool| {
        let groups = benchmark_groups(&runs, cfg, tasks.as_deref(), stable_only)?;
        inputs.push(runs.runs_table.clone());
        let d = runs.describe();
        benchmark = Some(runs);
        Ok::<_, Error>((d, groups))
    };
    let (source, groups): (String, Vec<Group>) = match &cfg.source {
        SourceConfig::Leaderboard { path, tasks } => {
            leaderboard_groups(&pick(path), tasks.as_deref(), inputs)?
        }
        SourceConfig::Embedded { path } => embedded_groups(&pick(path), inputs)?,
        SourceConfig::Mirror {
            path,
            tasks,
            stable_only,
        } => from_runs(
            BenchmarkRuns::from_directory(&pick(path))?,
            tasks,
            *stable_only,
        )?,
        SourceConfig::Hub {
            repo_id,
            revision,
            tasks,
            stable_only,
        } => {
            let mut h = HubOptions::new(repo_id);
            h.revision = revision.clone();
            from_runs(BenchmarkRuns::from_hub(h)?, tasks, *stable_only)?
        }
    };
    if groups.is_empty() {
        return Err(Error::data(format!(
            "the source {source} yields no model groups"
        )));
    }
    Ok((source, groups, benchmark))
}

/// The leaderboard's groups (one per task × model × GPU × GPU count); its files are inputs.
fn leaderboard_groups(
    path: &Path,
    tasks: Option<&[String]>,
    inputs: &mut Vec<PathBuf>,
) -> Result<(String, Vec<Group>)> {
    let (files, configs) = leaderboard::load_dir(path, tasks)?;
    inputs.extend(files);
    let groups = leaderboard::groups(&configs)
        .into_iter()
        .map(|g| {
            let batches = g.batch_sizes();
            let group_inputs = GroupInputs::Leaderboard(g.configs);
            group(
                &g.task,
                &g.model_id,
                &g.gpu_model,
                g.num_gpus,
                batches,
                group_inputs,
            )
        })
        .collect::<Result<_>>()?;
    Ok((format!("leaderboard {}", path.display()), groups))
}

/// The groups of a compact fits file (already fitted); the file is the input.
fn embedded_groups(path: &Path, inputs: &mut Vec<PathBuf>) -> Result<(String, Vec<Group>)> {
    let compact = CompactFits::read(path)?;
    inputs.push(path.to_path_buf());
    let groups = compact
        .groups
        .into_iter()
        .map(|g| {
            let spec = spec_for(
                &g.task,
                &g.model_id,
                &g.gpu_model,
                g.num_gpus,
                g.batch_sizes.clone(),
            )?;
            Ok(Group {
                spec,
                inputs: GroupInputs::Embedded(Box::new(g)),
            })
        })
        .collect::<Result<_>>()?;
    Ok((format!("embedded {}", path.display()), groups))
}

/// Step 2: per group, its spec folder: loaded when current, fitted (rayon) when not.
fn fit_groups(
    groups: &[Group],
    benchmark: Option<&BenchmarkRuns>,
    cfg: &PipelineConfig,
    opts: &RunOptions,
    itl_opts: &ItlFitOptions,
) -> Result<Vec<(GroupResult, SpecArtifacts, bool)>> {
    let store = SpecStore::new(opts.out_dir.join("specs"));
    opts.progress.begin("fit groups", groups.len() as u64);
    let results: Vec<(GroupResult, SpecArtifacts, bool)> = groups
        .par_iter()
        .map(|g| {
            let key = json!({
                "inputs": group_inputs_json(&g.inputs),
                "itl": itl_opts,
                "trace_dt_s": cfg.trace_dt_s,
                "version": env!("CARGO_PKG_VERSION"),
            });
            let inputs_sha = store::sha256_bytes(key.to_string().as_bytes());
            let (art, built) = store.ensure(&g.spec, &inputs_sha, opts.force, || {
                build_group(g, benchmark, cfg, itl_opts)
            })?;
            let report = art
                .report
                .clone()
                .ok_or_else(|| Error::content(store.dir(&g.spec), "fit_report.json missing"))?;
            let result: GroupResult =
                serde_json::from_value(report).map_err(|source| Error::Json {
                    path: store.dir(&g.spec).join("fit_report.json"),
                    source,
                })?;
            opts.progress.advance(1);
            Ok((result, art, built))
        })
        .collect::<Result<_>>()?;
    let built = results.iter().filter(|r| r.2).count();
    opts.progress.end(&format!(
        "{} groups ({built} fitted, {} from cache)",
        results.len(),
        results.len() - built
    ));
    Ok(results)
}

/// Step 3: `fits/logistic_fits/` and `fits/itl_mixtures/` (in the shard's partition).
fn write_fit_tables(
    out: &Path,
    shard: Shard,
    groups: &[GroupResult],
    outputs: &mut Vec<(String, usize)>,
) -> Result<()> {
    let (lt, it) = fit_tables(groups);
    for (name, t) in [("logistic_fits", &lt), ("itl_mixtures", &it)] {
        let path = shard.table_path(&out.join("fits"), name);
        write_parquet(&path, t)?;
        outputs.push((relative(out, &path), t.num_rows()));
    }
    Ok(())
}

/// `fits/default_fits.json`: the groups' results with what they were derived from.
fn write_compact_fits(
    out: &Path,
    derived_from: &Value,
    groups: Vec<GroupResult>,
    outputs: &mut Vec<(String, usize)>,
) -> Result<()> {
    let compact = CompactFits {
        schema: COMPACT_SCHEMA.to_string(),
        derived_from: derived_from.clone(),
        groups,
    };
    store::write_json(&out.join("fits").join("default_fits.json"), &compact)?;
    outputs.push(("fits/default_fits.json".to_string(), compact.groups.len()));
    Ok(())
}

/// How many groups' refined fits beat the grid everywhere (of those with ≥ 3 points), and the
/// fits' warnings.
fn fit_quality(groups: &[GroupResult]) -> ((usize, usize), Vec<String>) {
    let mut warnings = Vec::new();
    let mut strictly = (0, 0);
    for g in groups {
        let curves: Vec<&CurveResult> = g.logistic.values().filter(|c| c.n_points >= 3).collect();
        if !curves.is_empty() {
            strictly.1 += 1;
            if curves.iter().all(|c| c.sse < c.grid_sse) {
                strictly.0 += 1;
            }
        }
        for (metric, c) in &g.logistic {
            for w in &c.warnings {
                warnings.push(format!("{} {metric}: {w}", g.model_label));
            }
        }
    }
    (strictly, warnings)
}

/// Step 5: the measured runs under `root` → `measured/` tables and trace store; returns the
/// number of runs, the ITL fit quality and their traces.
/// Reads and checks every measured run under `root` (before anything is written).
fn load_measured(
    root: &Path,
    opts: &RunOptions,
    inputs: &mut Vec<PathBuf>,
) -> Result<Vec<measured::MeasuredRun>> {
    let dirs = measured::discover_runs(root)?;
    opts.progress.begin("measured runs", dirs.len() as u64);
    let runs: Vec<measured::MeasuredRun> = dirs
        .par_iter()
        .map(|d| {
            let r = measured::load_run(d);
            opts.progress.advance(1);
            r
        })
        .collect::<Result<_>>()?;
    for r in &runs {
        for f in [
            "manifest.json",
            "power.csv",
            "engine.csv",
            "requests.json",
            "requests_summary.json",
        ] {
            let p = r.dir.join(f);
            if p.is_file() {
                inputs.push(p);
            }
        }
    }
    opts.progress.end(&format!("{} measured runs", runs.len()));
    Ok(runs)
}

/// Step 5: the measured runs' tables and traces.
fn measured_stage(
    runs: Vec<measured::MeasuredRun>,
    out: &Path,
    itl_opts: &ItlFitOptions,
    outputs: &mut Vec<(String, usize)>,
) -> Result<(usize, Vec<ItlQualityRow>, Vec<MeasuredTrace>)> {
    let (table, quality, traces) = measured_outputs(&runs, itl_opts)?;
    let measured_dir = out.join("measured");
    let path = Shard::WHOLE.table_path(&measured_dir, "runs");
    write_parquet(&path, &table)?;
    outputs.push((relative(out, &path), table.num_rows()));
    let qt = itl_quality_table(&quality);
    let path = Shard::WHOLE.table_path(&measured_dir, "itl_fit_quality");
    write_parquet(&path, &qt)?;
    outputs.push((relative(out, &path), qt.num_rows()));
    let entries: Vec<(String, u32, &InferenceTrace)> =
        traces.iter().map(|(l, b, t)| (l.clone(), *b, t)).collect();
    TraceStore::save(&measured_dir.join("traces"), &entries)?;
    outputs.push((
        "measured/traces/manifest.parquet".to_string(),
        entries.len(),
    ));
    Ok((runs.len(), quality, traces))
}

/// `measured/itl_fit_quality`: one row per run and mode.
fn itl_quality_table(q: &[ItlQualityRow]) -> Table {
    let quality_col = |f: fn(&itl_mixture::ItlFitQuality) -> f64| {
        Column::F64(q.iter().map(|r| f(&r.quality)).collect())
    };
    Table::new()
        .with(
            "run_id",
            Column::Str(q.iter().map(|r| r.run_id.clone()).collect()),
        )
        .with(
            "mode",
            Column::Str(q.iter().map(|r| r.mode.clone()).collect()),
        )
        .with(
            "n_samples",
            Column::I64(q.iter().map(|r| r.quality.n_samples as i64).collect()),
        )
        .with("sample_mean_s", quality_col(|q| q.sample_mean_s))
        .with("fit_mean_s", quality_col(|q| q.fit_mean_s))
        .with("mean_err_pct", quality_col(|q| q.mean_err_pct))
        .with("p50_err_pct", quality_col(|q| q.p50_err_pct))
        .with("p90_err_pct", quality_col(|q| q.p90_err_pct))
        .with("p99_err_pct", quality_col(|q| q.p99_err_pct))
}

/// Where a shard's templates go: `templates/templates.parquet`, or in its partition
/// `templates/shard=I/templates.parquet`.
pub(crate) fn templates_path(out: &Path, shard: Shard) -> PathBuf {
    let mut p = out.join("templates");
    if !shard.is_whole() {
        p = p.join(shard.partition());
    }
    p.join("templates.parquet")
}

/// Step 6: the simulation templates of every trace.
fn templates_stage(
    traces: &[(String, u32, InferenceTrace)],
    t: &TemplateOptions,
    out: &Path,
    shard: Shard,
    opts: &RunOptions,
    outputs: &mut Vec<(String, usize)>,
) -> Result<()> {
    opts.progress.begin("templates", traces.len() as u64);
    let ts = TemplateStore::build(traces, *t)?;
    let path = templates_path(out, shard);
    ts.save(&path)?;
    outputs.push((relative(out, &path), ts.templates.len() * t.len()));
    opts.progress.end(&format!(
        "{} templates × {} samples",
        ts.templates.len(),
        t.len()
    ));
    Ok(())
}

/// `path` relative to `out`, with `/` separators (as the manifest lists outputs).
fn relative(out: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(out).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// `[{file, sha256}]` of the source inputs (what compact fits are derived from).
fn file_hashes(inputs: &[PathBuf]) -> Result<Vec<Value>> {
    inputs
        .iter()
        .map(|p| Ok(json!({"file": p.file_name().map(|f| f.to_string_lossy().to_string()), "sha256": store::sha256_file(p)?})))
        .collect()
}

/// Step 7: the folder's `manifest.json` (written last): what was run on what, and every
/// output with its SHA-256.
pub(crate) fn write_manifest(
    cfg: &PipelineConfig,
    opts: &RunOptions,
    summary: &Summary,
    inputs: &[PathBuf],
) -> Result<()> {
    let out = &opts.out_dir;
    let output_hashes: Vec<Value> = summary
        .outputs
        .iter()
        .map(|(f, rows)| {
            Ok(json!({"file": f, "rows": rows, "sha256": store::sha256_file(&out.join(f))?}))
        })
        .collect::<Result<_>>()?;
    let input_hashes: Vec<Value> = inputs
        .iter()
        .map(|p| Ok(json!({"path": p.display().to_string(), "sha256": store::sha256_file(p)?, "bytes": std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)})))
        .collect::<Result<_>>()?;
    let pipeline_file = match &opts.pipeline_file {
        Some(p) => json!({"path": p.display().to_string(), "sha256": store::sha256_file(p)?}),
        None => Value::Null,
    };
    store::write_json(
        &out.join("manifest.json"),
        &json!({
            "tool": "powersynth",
            "version": env!("CARGO_PKG_VERSION"),
            "pipeline": cfg.name,
            "pipeline_file": pipeline_file,
            "parameters": cfg,
            "seed": cfg.seed,
            "source": summary.source,
            "force": opts.force,
            "inputs": input_hashes,
            "outputs": output_hashes,
            "written_utc": store::now_utc(),
        }),
    )
}

fn source_kind(s: &SourceConfig) -> &'static str {
    match s {
        SourceConfig::Leaderboard { .. } => "leaderboard",
        SourceConfig::Embedded { .. } => "embedded",
        SourceConfig::Mirror { .. } => "mirror",
        SourceConfig::Hub { .. } => "hub",
    }
}

fn group_inputs_json(i: &GroupInputs) -> Value {
    match i {
        GroupInputs::Leaderboard(c) => Value::Array(
            c.iter()
                .map(|c| {
                    json!([
                        c.max_num_seqs,
                        c.avg_power_w,
                        c.median_itl_s,
                        c.p90_itl_s,
                        c.p95_itl_s,
                        c.p99_itl_s,
                        c.output_throughput_tps
                    ])
                })
                .collect(),
        ),
        GroupInputs::Embedded(g) => serde_json::to_value(g).unwrap_or(Value::Null),
        GroupInputs::Runs(r) => Value::Array(
            r.iter()
                .map(|r| {
                    json!([
                        r.max_num_seqs,
                        r.avg_power_w,
                        r.median_itl_s,
                        r.mean_itl_s,
                        r.output_throughput_tps,
                        r.results_path
                    ])
                })
                .collect(),
        ),
    }
}

fn benchmark_groups(
    runs: &BenchmarkRuns,
    cfg: &PipelineConfig,
    tasks: Option<&[String]>,
    stable_only: bool,
) -> Result<Vec<Group>> {
    let specs: Vec<InferenceModelSpec> = if cfg.models.is_empty() {
        let mut map: BTreeMap<(String, String, String, u32), Vec<u32>> = BTreeMap::new();
        for r in &runs.records {
            if tasks.is_some_and(|t| !t.contains(&r.task)) || (stable_only && !r.is_stable) {
                continue;
            }
            let e = map
                .entry((
                    r.task.clone(),
                    r.model_id.clone(),
                    r.gpu_model.clone(),
                    r.num_gpus,
                ))
                .or_default();
            if !e.contains(&r.max_num_seqs) {
                e.push(r.max_num_seqs);
            }
        }
        map.into_iter()
            .map(|((t, m, g, n), mut b)| {
                b.sort_unstable();
                spec_for(&t, &m, &g, n, b)
            })
            .collect::<Result<_>>()?
    } else {
        let mut m = cfg.models.clone();
        for s in &mut m {
            s.validate()?;
        }
        m
    };
    specs
        .into_iter()
        .map(|spec| {
            let recs = runs
                .select(&spec, stable_only)?
                .into_iter()
                .cloned()
                .collect();
            Ok(Group {
                spec,
                inputs: GroupInputs::Runs(recs),
            })
        })
        .collect()
}

fn curve(x: &[f64], y: &[f64]) -> CurveResult {
    let r = logistic::fit(x, y);
    CurveResult {
        fit: r.fit,
        n_points: r.n_points,
        rmse: r.rmse,
        r2: r.r2.is_finite().then_some(r.r2),
        sse: r.sse,
        grid_sse: r.grid_sse,
        warnings: r.warnings,
    }
}

fn curves(
    spec: &InferenceModelSpec,
    samples: &[(u32, f64, f64, f64)],
) -> BTreeMap<String, CurveResult> {
    let ex = &spec.fit_exclude_batch_sizes;
    let pick = |f: fn(&(u32, f64, f64, f64)) -> f64| -> Vec<(u32, f64)> {
        samples.iter().map(|s| (s.0, f(s))).collect()
    };
    let mut out = BTreeMap::new();
    for (name, pts) in [
        ("power", pick(|s| s.1)),
        ("latency", pick(|s| s.2)),
        ("throughput", pick(|s| s.3)),
    ] {
        let (x, y) = logistic::points_per_batch(&pts, ex);
        if !x.is_empty() {
            out.insert(name.to_string(), curve(&x, &y));
        }
    }
    out
}

/// A group's fits: logistic curves per metric, ITL mixtures and median traces per batch size.
type GroupFits = (
    BTreeMap<String, CurveResult>,
    BTreeMap<u32, ItlResult>,
    BTreeMap<u32, InferenceTrace>,
);

fn build_group(
    g: &Group,
    runs: Option<&BenchmarkRuns>,
    cfg: &PipelineConfig,
    itl_opts: &ItlFitOptions,
) -> Result<SpecArtifacts> {
    let spec = &g.spec;
    let (logistic, itl, traces_by_batch) = match &g.inputs {
        GroupInputs::Embedded(r) => (r.logistic.clone(), r.itl.clone(), BTreeMap::new()),
        GroupInputs::Leaderboard(configs) => {
            let (logistic, itl) = leaderboard_group_fits(spec, configs);
            (logistic, itl, BTreeMap::new())
        }
        GroupInputs::Runs(records) => {
            let runs = runs.expect("benchmark groups come with their runs");
            runs_group_fits(spec, records, runs, cfg, itl_opts)?
        }
    };
    let result = group_result(spec, &logistic, &itl);
    Ok(SpecArtifacts {
        logistic: logistic_fits(&logistic),
        itl: itl.iter().map(|(b, r)| (*b, r.mixture)).collect(),
        traces: traces_by_batch,
        report: Some(serde_json::to_value(&result).map_err(|source| Error::Json {
            path: PathBuf::from("fit_report.json"),
            source,
        })?),
    })
}

/// A leaderboard group's curves and its ITL mixtures fitted on the median percentiles.
fn leaderboard_group_fits(
    spec: &InferenceModelSpec,
    configs: &[LeaderboardConfig],
) -> (BTreeMap<String, CurveResult>, BTreeMap<u32, ItlResult>) {
    let samples: Vec<(u32, f64, f64, f64)> = configs
        .iter()
        .map(|c| {
            (
                c.max_num_seqs,
                c.avg_power_w,
                c.median_itl_s,
                c.output_throughput_tps,
            )
        })
        .collect();
    let itl = percentile_itl_fits(configs);
    (curves(spec, &samples), itl)
}

/// Per batch size, the ITL mixture fitted on the median (over configurations) p50/p90/p95/p99.
fn percentile_itl_fits(configs: &[LeaderboardConfig]) -> BTreeMap<u32, ItlResult> {
    let mut itl = BTreeMap::new();
    let mut by_batch: BTreeMap<u32, Vec<&leaderboard::LeaderboardConfig>> = BTreeMap::new();
    for c in configs {
        by_batch.entry(c.max_num_seqs).or_default().push(c);
    }
    for (b, cs) in by_batch {
        let med = |f: fn(&leaderboard::LeaderboardConfig) -> f64| {
            crate::fits::median(&cs.iter().map(|c| f(c)).collect::<Vec<_>>())
        };
        let pts = [
            (0.5, med(|c| c.median_itl_s)),
            (0.9, med(|c| c.p90_itl_s)),
            (0.95, med(|c| c.p95_itl_s)),
            (0.99, med(|c| c.p99_itl_s)),
        ];
        if let Some(f) = itl_percentiles::fit(&pts) {
            itl.insert(
                b,
                ItlResult {
                    mixture: f.mixture,
                    fitted_on: "percentiles".into(),
                    n_samples: pts.len(),
                    log_quantile_rmse: f.log_quantile_rmse,
                },
            );
        }
    }
    itl
}

/// A benchmark-runs group's curves, ITL mixtures fitted on the samples, and median traces.
fn runs_group_fits(
    spec: &InferenceModelSpec,
    records: &[RunRecord],
    runs: &BenchmarkRuns,
    cfg: &PipelineConfig,
    itl_opts: &ItlFitOptions,
) -> Result<GroupFits> {
    let samples: Vec<(u32, f64, f64, f64)> = records
        .iter()
        .map(|r| {
            let lat = if r.median_itl_s.is_finite() {
                r.median_itl_s
            } else {
                r.mean_itl_s
            };
            (r.max_num_seqs, r.avg_power_w, lat, r.output_throughput_tps)
        })
        .collect();
    let (itl_samples, timelines) = run_samples_by_batch(records, runs)?;
    let mut itl = BTreeMap::new();
    for (b, x) in &itl_samples {
        itl.insert(*b, sample_itl_fit(x, itl_opts));
    }
    let mut traces_by_batch = BTreeMap::new();
    for (b, runs) in &timelines {
        traces_by_batch.insert(
            *b,
            traces::median_trace(runs, cfg.trace_dt_s, spec.gpus_per_replica)?,
        );
    }
    Ok((curves(spec, &samples), itl, traces_by_batch))
}

/// Power timelines (relative time, power) of a group's runs.
type Timelines = Vec<(Vec<f64>, Vec<f64>)>;

/// The runs' ITL samples and device power timelines, per batch size (`max_num_seqs`).
fn run_samples_by_batch(
    records: &[RunRecord],
    runs: &BenchmarkRuns,
) -> Result<(BTreeMap<u32, Vec<f64>>, BTreeMap<u32, Timelines>)> {
    let mut itl_samples: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
    let mut timelines: BTreeMap<u32, Timelines> = BTreeMap::new();
    for r in records {
        let res = runs.results(r)?;
        itl_samples
            .entry(r.max_num_seqs)
            .or_default()
            .extend(res.itl_samples()?);
        let tl = res.power_timeline(PowerMetric::DeviceInstant)?;
        timelines
            .entry(r.max_num_seqs)
            .or_default()
            .push((tl.relative_time_s, tl.power_w));
    }
    Ok((itl_samples, timelines))
}

/// The ITL mixture fitted (EM) on one batch size's samples, with its log-quantile RMSE at
/// p50/p90/p95/p99 against the samples.
fn sample_itl_fit(x: &[f64], itl_opts: &ItlFitOptions) -> ItlResult {
    let m = itl_mixture::fit(x, itl_opts);
    let mut sorted = x.to_vec();
    sorted.sort_by(f64::total_cmp);
    let probs = [0.5, 0.9, 0.95, 0.99];
    let rmse = (probs
        .iter()
        .map(|&p| (m.quantile(p).ln() - crate::fits::quantile_sorted(&sorted, p).ln()).powi(2))
        .sum::<f64>()
        / probs.len() as f64)
        .sqrt();
    ItlResult {
        mixture: m,
        fitted_on: "samples".into(),
        n_samples: x.len(),
        log_quantile_rmse: rmse,
    }
}

/// The group's report (`fit_report.json`).
fn group_result(
    spec: &InferenceModelSpec,
    logistic: &BTreeMap<String, CurveResult>,
    itl: &BTreeMap<u32, ItlResult>,
) -> GroupResult {
    GroupResult {
        task: spec.task.clone(),
        model_id: spec.model_id.clone(),
        gpu_model: spec.gpu_model.clone(),
        num_gpus: spec.gpus_per_replica,
        model_label: spec.model_label.clone(),
        cache_hash: spec.cache_hash(),
        batch_sizes: spec.batch_sizes.clone(),
        logistic: logistic.clone(),
        itl: itl.clone(),
    }
}

/// The three logistic fits, when all of power, latency and throughput were fitted.
fn logistic_fits(logistic: &BTreeMap<String, CurveResult>) -> Option<LogisticFits> {
    match (
        logistic.get("power"),
        logistic.get("latency"),
        logistic.get("throughput"),
    ) {
        (Some(p), Some(l), Some(t)) => Some(LogisticFits {
            power: p.fit,
            latency: l.fit,
            throughput: t.fit,
        }),
        _ => None,
    }
}

fn fit_tables(groups: &[GroupResult]) -> (Table, Table) {
    (logistic_table(groups), itl_table(groups))
}

/// One row per (group, fitted metric).
fn logistic_table(groups: &[GroupResult]) -> Table {
    let (mut task, mut model, mut gpu, mut ng, mut metric) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut l, mut x0, mut k, mut b0, mut np, mut rmse, mut r2, mut gsse, mut sse, mut warn) = (
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
    );
    for g in groups {
        for m in ["power", "latency", "throughput"] {
            let Some(c) = g.logistic.get(m) else { continue };
            task.push(g.task.clone());
            model.push(g.model_id.clone());
            gpu.push(g.gpu_model.clone());
            ng.push(g.num_gpus as i64);
            metric.push(m.to_string());
            l.push(c.fit.l);
            x0.push(c.fit.x0);
            k.push(c.fit.k);
            b0.push(c.fit.b0);
            np.push(c.n_points as i64);
            rmse.push(c.rmse);
            r2.push(c.r2.unwrap_or(f64::NAN));
            sse.push(c.sse);
            gsse.push(c.grid_sse);
            warn.push(c.warnings.join("; "));
        }
    }
    Table::new()
        .with("task", Column::Str(task))
        .with("model_id", Column::Str(model))
        .with("gpu_model", Column::Str(gpu))
        .with("num_gpus", Column::I64(ng))
        .with("metric", Column::Str(metric))
        .with("L", Column::F64(l))
        .with("x0", Column::F64(x0))
        .with("k", Column::F64(k))
        .with("b0", Column::F64(b0))
        .with("n_points", Column::I64(np))
        .with("rmse", Column::F64(rmse))
        .with("r2", Column::F64(r2))
        .with("sse", Column::F64(sse))
        .with("grid_sse", Column::F64(gsse))
        .with("warnings", Column::Str(warn))
}

/// One row per (group, batch size with an ITL mixture).
fn itl_table(groups: &[GroupResult]) -> Table {
    let mut rows: Vec<(&GroupResult, u32, &ItlResult)> = Vec::new();
    for g in groups {
        for (b, r) in &g.itl {
            rows.push((g, *b, r));
        }
    }
    let s = |f: fn(&(&GroupResult, u32, &ItlResult)) -> String| {
        Column::Str(rows.iter().map(f).collect())
    };
    let fl =
        |f: fn(&ItlMixture) -> f64| Column::F64(rows.iter().map(|r| f(&r.2.mixture)).collect());
    Table::new()
        .with("task", s(|r| r.0.task.clone()))
        .with("model_id", s(|r| r.0.model_id.clone()))
        .with("gpu_model", s(|r| r.0.gpu_model.clone()))
        .with(
            "num_gpus",
            Column::I64(rows.iter().map(|r| r.0.num_gpus as i64).collect()),
        )
        .with(
            "max_num_seqs",
            Column::I64(rows.iter().map(|r| r.1 as i64).collect()),
        )
        .with("loc", fl(|m| m.loc))
        .with("pi_steady", fl(|m| m.pi_steady))
        .with("sigma_steady", fl(|m| m.sigma_steady))
        .with("scale_steady", fl(|m| m.scale_steady))
        .with("pi_stall", fl(|m| m.pi_stall))
        .with("sigma_stall", fl(|m| m.sigma_stall))
        .with("scale_stall", fl(|m| m.scale_stall))
        .with(
            "log_quantile_rmse",
            Column::F64(rows.iter().map(|r| r.2.log_quantile_rmse).collect()),
        )
        .with("fitted_on", s(|r| r.2.fitted_on.clone()))
        .with(
            "n_samples",
            Column::I64(rows.iter().map(|r| r.2.n_samples as i64).collect()),
        )
}

type MeasuredTrace = (String, u32, InferenceTrace);

fn measured_outputs(
    runs: &[measured::MeasuredRun],
    itl_opts: &ItlFitOptions,
) -> Result<(Table, Vec<ItlQualityRow>, Vec<MeasuredTrace>)> {
    let mut quality = Vec::new();
    let mut traces = Vec::new();
    let mut summary = MeasuredSummary::default();
    for r in runs {
        let run_id = measured_run_id(r);
        let samples = r.itl_samples();
        summary.push(r, &run_id, samples.is_some());
        if let Some(x) = samples {
            quality.extend(itl_quality_rows(&run_id, &x, itl_opts));
        }
        traces.push(measured_trace(r, &run_id)?);
    }
    Ok((summary.table(), quality, traces))
}

/// The run's `run_id`, or its folder's name when the manifest leaves it empty.
fn measured_run_id(r: &measured::MeasuredRun) -> String {
    if r.manifest.run_id.is_empty() {
        r.dir
            .file_name()
            .map(|f| f.to_string_lossy().to_string())
            .unwrap_or_default()
    } else {
        r.manifest.run_id.clone()
    }
}

/// The quality of a compatible and of a robust ITL fit on a run's samples.
fn itl_quality_rows(run_id: &str, x: &[f64], itl_opts: &ItlFitOptions) -> Vec<ItlQualityRow> {
    let mut rows = Vec::new();
    for mode in [ItlFitMode::Compatible, ItlFitMode::Robust] {
        let m = itl_mixture::fit(x, &ItlFitOptions { mode, ..*itl_opts });
        rows.push(ItlQualityRow {
            run_id: run_id.to_string(),
            mode: format!("{mode:?}").to_lowercase(),
            quality: itl_mixture::quality(&m, x),
        });
    }
    rows
}

/// The run's power as a trace starting at t = 0, named `measured/<run_id>`.
fn measured_trace(r: &measured::MeasuredRun, run_id: &str) -> Result<MeasuredTrace> {
    let p = &r.power;
    let t0 = p.t_s[0];
    let trace = InferenceTrace::new(
        p.t_s.iter().map(|t| t - t0).collect(),
        p.power_w.clone(),
        p.gpus,
    )
    .map_err(|e| Error::content(r.dir.join("power.csv"), e.to_string()))?;
    Ok((
        format!("measured/{run_id}"),
        r.manifest.server.max_num_seqs,
        trace,
    ))
}

/// The columns of the measured-runs summary table, one row per run.
#[derive(Default)]
struct MeasuredSummary {
    id: Vec<String>,
    model: Vec<String>,
    hw: Vec<String>,
    tp: Vec<i64>,
    mns: Vec<i64>,
    n: Vec<i64>,
    dur: Vec<f64>,
    mean: Vec<f64>,
    energy: Vec<f64>,
    skew: Vec<f64>,
    nreq: Vec<i64>,
    has_itl: Vec<bool>,
}

impl MeasuredSummary {
    fn push(&mut self, r: &measured::MeasuredRun, run_id: &str, has_itl: bool) {
        let p = &r.power;
        let span = p.t_s[p.t_s.len() - 1] - p.t_s[0];
        let e: f64 = p
            .t_s
            .windows(2)
            .zip(&p.power_w)
            .map(|(w, pw)| (w[1] - w[0]) * pw)
            .sum();
        self.id.push(run_id.to_string());
        self.model.push(r.manifest.model.clone());
        self.hw.push(r.manifest.hardware.clone());
        self.tp.push(r.manifest.tp as i64);
        self.mns.push(r.manifest.server.max_num_seqs as i64);
        self.n.push(p.t_s.len() as i64);
        self.dur.push(span);
        self.mean
            .push(p.power_w.iter().sum::<f64>() / p.power_w.len() as f64);
        self.energy.push(e);
        self.skew.push(r.clock_skew_s.unwrap_or(f64::NAN));
        self.nreq.push(r.requests.request_timestamps.len() as i64);
        self.has_itl.push(has_itl);
    }

    fn table(self) -> Table {
        Table::new()
            .with("run_id", Column::Str(self.id))
            .with("model", Column::Str(self.model))
            .with("hardware", Column::Str(self.hw))
            .with("tp", Column::I64(self.tp))
            .with("max_num_seqs", Column::I64(self.mns))
            .with("power_samples", Column::I64(self.n))
            .with("duration_s", Column::F64(self.dur))
            .with("mean_power_w", Column::F64(self.mean))
            .with("energy_j", Column::F64(self.energy))
            .with("clock_skew_s", Column::F64(self.skew))
            .with("requests", Column::I64(self.nreq))
            .with("has_itl_samples", Column::Bool(self.has_itl))
    }
}
