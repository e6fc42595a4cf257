//! ML.ENERGY benchmark v3 (SPEC §2.1): the runs table `runs/llm.parquet` and each run's raw
//! `results.json`, from the Hugging Face Hub (dataset `ml-energy/benchmark-v3`, gated) or from
//! a local mirror folder of the same layout. Both end in the same code: a [`RunFiles`] turns a
//! relative path of the dataset into a local file, and everything after that is shared.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, HubError, Result};
use crate::spec::InferenceModelSpec;
use crate::table::ParquetTable;

/// Where the dataset's files come from.
trait RunFiles: Send + Sync {
    /// A local path for `rel` (a path relative to the dataset root), downloading if needed.
    fn fetch(&self, rel: &str) -> Result<PathBuf>;
    /// Human description for manifests and errors.
    fn describe(&self) -> String;
}

/// A local folder with the hub's layout.
struct MirrorFiles {
    pub(crate) root: PathBuf,
}

impl RunFiles for MirrorFiles {
    fn fetch(&self, rel: &str) -> Result<PathBuf> {
        let p = self.root.join(rel);
        if p.is_file() {
            Ok(p)
        } else {
            Err(Error::content(&p, "file not found in the mirror"))
        }
    }
    fn describe(&self) -> String {
        format!("mirror {}", self.root.display())
    }
}

/// How to reach the Hub.
#[derive(Debug, Clone, PartialEq)]
pub struct HubOptions {
    pub repo_id: String,
    /// Branch, tag or commit; `None` = `main`.
    pub revision: Option<String>,
    /// Hub cache folder; `None` = the standard cache (`$HF_HOME/hub` or `~/.cache/huggingface/hub`).
    pub cache_dir: Option<PathBuf>,
    /// Endpoint; `None` = `$HF_ENDPOINT` or https://huggingface.co.
    pub endpoint: Option<String>,
    /// Token; `None` = `$HF_TOKEN`, else the hub's token file.
    pub token: Option<String>,
    /// Use the cache only (also set by `HF_HUB_OFFLINE=1`).
    pub offline: bool,
}

impl HubOptions {
    pub fn new(repo_id: &str) -> Self {
        HubOptions {
            repo_id: repo_id.to_string(),
            revision: None,
            cache_dir: None,
            endpoint: None,
            token: None,
            offline: std::env::var("HF_HUB_OFFLINE")
                .is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")),
        }
    }
}

/// Files from the Hub through `hf-hub`, cached in the standard hub cache and reused.
struct HubFiles {
    opts: HubOptions,
    cache: hf_hub::Cache,
    repo: hf_hub::Repo,
    api: hf_hub::api::sync::Api,
    has_token: bool,
}

impl HubFiles {
    pub(crate) fn new(opts: HubOptions) -> Result<Self> {
        let cache = match &opts.cache_dir {
            Some(d) => hf_hub::Cache::new(d.clone()),
            None => hf_hub::Cache::from_env(),
        };
        let token = opts
            .token
            .clone()
            .or_else(|| {
                std::env::var("HF_TOKEN")
                    .ok()
                    .filter(|t| !t.trim().is_empty())
            })
            .or_else(|| cache.token());
        let has_token = token.is_some();
        let mut builder = hf_hub::api::sync::ApiBuilder::from_cache(cache.clone())
            .with_progress(false)
            .with_token(token)
            .with_retries(2);
        let endpoint = opts
            .endpoint
            .clone()
            .or_else(|| std::env::var("HF_ENDPOINT").ok());
        if let Some(e) = endpoint {
            builder = builder.with_endpoint(e);
        }
        let api = builder.build().map_err(|e| HubError::Other {
            repo_id: opts.repo_id.clone(),
            file: String::new(),
            what: e.to_string(),
        })?;
        let repo = hf_hub::Repo::with_revision(
            opts.repo_id.clone(),
            hf_hub::RepoType::Dataset,
            opts.revision.clone().unwrap_or_else(|| "main".to_string()),
        );
        Ok(HubFiles {
            opts,
            cache,
            repo,
            api,
            has_token,
        })
    }

    fn map_error(&self, file: &str, e: hf_hub::api::sync::ApiError) -> HubError {
        use hf_hub::api::sync::ApiError;
        let repo_id = self.opts.repo_id.clone();
        let file = file.to_string();
        match e {
            ApiError::TooManyRetries(inner) => self.map_error(&file, *inner),
            ApiError::RequestError(boxed) => match *boxed {
                ureq_error @ ureq::Error::Status(..) => {
                    let status = match &ureq_error {
                        ureq::Error::Status(s, _) => *s,
                        _ => 0,
                    };
                    if matches!(status, 401 | 403 | 404) {
                        HubError::Gated {
                            repo_id,
                            file,
                            status,
                            token_note: if self.has_token {
                                " (a token was sent: check that it has been granted access)".into()
                            } else {
                                " (no token was found: HF_TOKEN is unset and there is no token file)".into()
                            },
                        }
                    } else {
                        HubError::Other {
                            repo_id,
                            file,
                            what: format!("HTTP {status}"),
                        }
                    }
                }
                other => HubError::Unreachable {
                    repo_id,
                    file,
                    what: other.to_string(),
                },
            },
            other => HubError::Other {
                repo_id,
                file,
                what: other.to_string(),
            },
        }
    }
}

impl RunFiles for HubFiles {
    fn fetch(&self, rel: &str) -> Result<PathBuf> {
        if let Some(p) = self.cache.repo(self.repo.clone()).get(rel) {
            tracing::debug!(file = rel, "hub file from the local cache");
            return Ok(p);
        }
        if self.opts.offline {
            return Err(HubError::NotCached {
                repo_id: self.opts.repo_id.clone(),
                file: rel.to_string(),
                cache: self.cache.path().clone(),
            }
            .into());
        }
        tracing::info!(file = rel, repo = %self.opts.repo_id, "downloading from the hub");
        self.api
            .repo(self.repo.clone())
            .get(rel)
            .map_err(|e| self.map_error(rel, e).into())
    }
    fn describe(&self) -> String {
        format!(
            "hub dataset {}@{}",
            self.opts.repo_id,
            self.opts.revision.as_deref().unwrap_or("main")
        )
    }
}

/// One row of `runs/llm.parquet`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub(crate) task: String,
    pub(crate) model_id: String,
    pub(crate) nickname: String,
    pub(crate) gpu_model: String,
    pub(crate) num_gpus: u32,
    pub(crate) max_num_seqs: u32,
    pub(crate) energy_per_token_j: f64,
    pub(crate) output_throughput_tps: f64,
    /// Mean steady-state power summed over the run's GPUs (W).
    pub(crate) avg_power_w: f64,
    pub(crate) mean_itl_s: f64,
    pub(crate) median_itl_s: f64,
    pub(crate) p90_itl_s: f64,
    pub(crate) p95_itl_s: f64,
    pub(crate) p99_itl_s: f64,
    pub(crate) is_stable: bool,
    /// Paths of the raw files, relative to the dataset root.
    pub(crate) results_path: String,
    prometheus_path: Option<String>,
}

/// The runs of the benchmark and where their raw files come from.
pub struct BenchmarkRuns {
    pub records: Vec<RunRecord>,
    /// The runs table that was read (for provenance).
    pub(crate) runs_table: PathBuf,
    files: Box<dyn RunFiles>,
}

/// Path of the runs table inside the dataset.
pub const RUNS_TABLE: &str = "runs/llm.parquet";

impl BenchmarkRuns {
    /// A local mirror: `root/runs/llm.parquet`, raw paths resolved against `root`.
    pub fn from_directory(root: &Path) -> Result<Self> {
        Self::from_files(Box::new(MirrorFiles {
            root: root.to_path_buf(),
        }))
    }

    /// The Hub (only `runs/llm.parquet` is fetched now; raw files on first use).
    pub fn from_hub(opts: HubOptions) -> Result<Self> {
        Self::from_files(Box::new(HubFiles::new(opts)?))
    }

    /// Any file provider; the runs table is read through it.
    fn from_files(files: Box<dyn RunFiles>) -> Result<Self> {
        let runs_table = files.fetch(RUNS_TABLE)?;
        let records = read_runs_table(&runs_table)?;
        Ok(BenchmarkRuns {
            records,
            runs_table,
            files,
        })
    }

    pub(crate) fn describe(&self) -> String {
        self.files.describe()
    }

    /// The runs of a spec: its task, model, GPU model, `num_gpus = gpus_per_replica` and
    /// `max_num_seqs ∈ batch_sizes` (the peer does not filter by task per spec; we do).
    /// Zero matches is an error naming the query.
    pub fn select(&self, spec: &InferenceModelSpec, stable_only: bool) -> Result<Vec<&RunRecord>> {
        let out: Vec<&RunRecord> = self
            .records
            .iter()
            .filter(|r| {
                r.task == spec.task
                    && r.model_id == spec.model_id
                    && r.gpu_model == spec.gpu_model
                    && r.num_gpus == spec.gpus_per_replica
                    && spec.batch_sizes.contains(&r.max_num_seqs)
                    && (!stable_only || r.is_stable)
            })
            .collect();
        if out.is_empty() {
            return Err(Error::NoMatch {
                query: format!(
                    "task={}, model_id={}, gpu_model={}, num_gpus={}, batch_sizes={:?}, stable_only={stable_only} in {}",
                    spec.task,
                    spec.model_id,
                    spec.gpu_model,
                    spec.gpus_per_replica,
                    spec.batch_sizes,
                    self.describe()
                ),
            });
        }
        Ok(out)
    }

    /// Fetches and parses a run's `results.json`.
    pub fn results(&self, run: &RunRecord) -> Result<RunResults> {
        let path = self.files.fetch(&run.results_path)?;
        RunResults::read(&path)
    }
}

fn read_runs_table(path: &Path) -> Result<Vec<RunRecord>> {
    let t = ParquetTable::read(path)?;
    let cols = RunColumns::read(&RunsTable { t: &t, path })?;
    let mut out = (0..t.num_rows())
        .map(|i| cols.record(path, i))
        .collect::<Result<Vec<_>>>()?;
    // Sorted like mlenergy-data: (task, model_id, gpu_model, num_gpus, max_num_seqs), stable.
    out.sort_by(|a, b| {
        (
            &a.task,
            &a.model_id,
            &a.gpu_model,
            a.num_gpus,
            a.max_num_seqs,
        )
            .cmp(&(
                &b.task,
                &b.model_id,
                &b.gpu_model,
                b.num_gpus,
                b.max_num_seqs,
            ))
    });
    Ok(out)
}

/// The runs table with typed column readers (errors name the file, the row and the column;
/// optional columns absent → None / NaN / true).
struct RunsTable<'a> {
    t: &'a ParquetTable,
    path: &'a Path,
}

impl RunsTable<'_> {
    fn strings(&self, name: &str) -> Result<Vec<String>> {
        self.t
            .strings(name)?
            .into_iter()
            .enumerate()
            .map(|(row, v)| {
                v.ok_or_else(|| Error::row(self.path, row, format!("column {name:?} is null")))
            })
            .collect()
    }

    fn opt_strings(&self, name: &str) -> Result<Vec<Option<String>>> {
        if self.t.has_column(name) {
            self.t.strings(name)
        } else {
            Ok(vec![None; self.t.num_rows()])
        }
    }

    fn opt_floats(&self, name: &str) -> Result<Vec<f64>> {
        if self.t.has_column(name) {
            self.t.floats(name)
        } else {
            Ok(vec![f64::NAN; self.t.num_rows()])
        }
    }

    fn counts(&self, name: &str) -> Result<Vec<u32>> {
        self.t
            .integers(name)?
            .into_iter()
            .enumerate()
            .map(|(row, v)| {
                u32::try_from(v).ok().filter(|&v| v >= 1).ok_or_else(|| {
                    Error::row(self.path, row, format!("column {name:?} = {v} must be ≥ 1"))
                })
            })
            .collect()
    }

    fn opt_bools(&self, name: &str) -> Result<Vec<bool>> {
        if self.t.has_column(name) {
            self.t.bools(name, true)
        } else {
            Ok(vec![true; self.t.num_rows()])
        }
    }
}

/// The runs table's columns, read and checked column by column.
struct RunColumns {
    task: Vec<String>,
    model_id: Vec<String>,
    nickname: Vec<Option<String>>,
    gpu_model: Vec<String>,
    num_gpus: Vec<u32>,
    max_num_seqs: Vec<u32>,
    energy_per_token_j: Vec<f64>,
    output_throughput_tps: Vec<f64>,
    avg_power_w: Vec<f64>,
    mean_itl_ms: Vec<f64>,
    median_itl_ms: Vec<f64>,
    p90_itl_ms: Vec<f64>,
    p95_itl_ms: Vec<f64>,
    p99_itl_ms: Vec<f64>,
    is_stable: Vec<bool>,
    results_path: Vec<String>,
    prometheus_path: Vec<Option<String>>,
}

impl RunColumns {
    fn read(t: &RunsTable) -> Result<RunColumns> {
        Ok(RunColumns {
            task: t.strings("task")?,
            model_id: t.strings("model_id")?,
            nickname: t.opt_strings("nickname")?,
            gpu_model: t.strings("gpu_model")?,
            num_gpus: t.counts("num_gpus")?,
            max_num_seqs: t.counts("max_num_seqs")?,
            energy_per_token_j: t.opt_floats("energy_per_token_joules")?,
            output_throughput_tps: t.opt_floats("output_throughput_tokens_per_sec")?,
            avg_power_w: t.t.floats("avg_power_watts")?,
            mean_itl_ms: t.opt_floats("mean_itl_ms")?,
            median_itl_ms: t.opt_floats("median_itl_ms")?,
            p90_itl_ms: t.opt_floats("p90_itl_ms")?,
            p95_itl_ms: t.opt_floats("p95_itl_ms")?,
            p99_itl_ms: t.opt_floats("p99_itl_ms")?,
            is_stable: t.opt_bools("is_stable")?,
            results_path: t.strings("results_path")?,
            prometheus_path: t.opt_strings("prometheus_path")?,
        })
    }

    /// Row `i` as a record; its power must be positive and at most twice the board limit.
    fn record(&self, path: &Path, i: usize) -> Result<RunRecord> {
        let p = self.avg_power_w[i];
        let (gpu_model, num_gpus) = (&self.gpu_model[i], self.num_gpus[i]);
        let limit = 2.0 * super::board_limit_w(gpu_model) * num_gpus as f64;
        if !(p.is_finite() && p > 0.0 && p <= limit) {
            return Err(Error::row(
                path,
                i,
                format!(
                    "avg_power_watts = {p} is invalid for {num_gpus} × {gpu_model} (expected 0 < P ≤ {limit} W)"
                ),
            ));
        }
        Ok(RunRecord {
            task: self.task[i].clone(),
            model_id: self.model_id[i].clone(),
            nickname: self.nickname[i].clone().unwrap_or_default(),
            gpu_model: gpu_model.clone(),
            num_gpus,
            max_num_seqs: self.max_num_seqs[i],
            energy_per_token_j: self.energy_per_token_j[i],
            output_throughput_tps: self.output_throughput_tps[i],
            avg_power_w: p,
            mean_itl_s: self.mean_itl_ms[i] / 1000.0,
            median_itl_s: self.median_itl_ms[i] / 1000.0,
            p90_itl_s: self.p90_itl_ms[i] / 1000.0,
            p95_itl_s: self.p95_itl_ms[i] / 1000.0,
            p99_itl_s: self.p99_itl_ms[i] / 1000.0,
            is_stable: self.is_stable[i],
            results_path: self.results_path[i].clone(),
            prometheus_path: self.prometheus_path[i].clone(),
        })
    }
}

#[derive(Debug, Deserialize)]
struct RawResults {
    #[serde(default)]
    results: Vec<RawRequest>,
    #[serde(default)]
    timeline: Option<RawTimeline>,
}

#[derive(Debug, Deserialize)]
struct RawRequest {
    #[serde(default = "yes")]
    success: bool,
    #[serde(default)]
    itl: Vec<f64>,
    #[serde(default, alias = "output_tokens", alias = "output_length")]
    output_len: Option<f64>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
struct RawTimeline {
    #[serde(default)]
    steady_state_start_time: Option<f64>,
    #[serde(default)]
    steady_state_end_time: Option<f64>,
    #[serde(default)]
    power: BTreeMap<String, BTreeMap<String, Vec<[f64; 2]>>>,
}

/// A parsed `results.json`.
#[derive(Debug)]
pub struct RunResults {
    pub(crate) path: PathBuf,
    raw: RawResults,
}

/// Which power timeline to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerMetric {
    DeviceInstant,
    DeviceAverage,
}

impl PowerMetric {
    fn key(self) -> &'static str {
        match self {
            PowerMetric::DeviceInstant => "device_instant",
            PowerMetric::DeviceAverage => "device_average",
        }
    }
}

/// A run's steady-state power, summed over its GPUs.
#[derive(Debug, Clone, PartialEq)]
pub struct PowerTimeline {
    /// Seconds from the steady-state start (not from the first sample).
    pub relative_time_s: Vec<f64>,
    /// Total over the run's GPUs (W).
    pub power_w: Vec<f64>,
    pub devices: u32,
}

impl RunResults {
    pub fn read(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let raw: RawResults =
            serde_json::from_reader(std::io::BufReader::new(file)).map_err(|source| {
                Error::Json {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
        Ok(RunResults {
            path: path.to_path_buf(),
            raw,
        })
    }

    /// Steady-state power timeline: every device restricted to
    /// [steady_state_start_time, steady_state_end_time] on the axis of the lowest-numbered
    /// device; each other device contributes its last reading at or before each axis time
    /// (its first reading before it has one). With identical timestamps this is the peer's
    /// exact-match-then-forward-fill; with offset clocks the peer adds 0 W, we do not.
    pub fn power_timeline(&self, metric: PowerMetric) -> Result<PowerTimeline> {
        let tl = self
            .raw
            .timeline
            .as_ref()
            .ok_or_else(|| Error::content(&self.path, "no \"timeline\" object"))?;
        let (start, end) = self.steady_state(tl)?;
        let ids = self.device_series(tl, metric)?;
        let axis: Vec<f64> = ids[0]
            .1
            .iter()
            .map(|s| s[0])
            .filter(|&t| t >= start && t <= end)
            .collect();
        if axis.is_empty() {
            return Err(Error::content(
                &self.path,
                format!(
                    "device {} has no sample in the steady state [{start}, {end}]",
                    ids[0].0
                ),
            ));
        }
        Ok(PowerTimeline {
            relative_time_s: axis.iter().map(|t| t - start).collect(),
            power_w: sum_on_axis(&axis, &ids),
            devices: ids.len() as u32,
        })
    }

    /// The timeline's steady-state window [start, end] (s), non-empty.
    fn steady_state(&self, tl: &RawTimeline) -> Result<(f64, f64)> {
        match (tl.steady_state_start_time, tl.steady_state_end_time) {
            (Some(s), Some(e)) if s.is_finite() && e.is_finite() && e > s => Ok((s, e)),
            (Some(s), Some(e)) => Err(Error::content(
                &self.path,
                format!("timeline steady state [{s}, {e}] is empty"),
            )),
            _ => Err(Error::content(
                &self.path,
                "timeline lacks steady_state_start_time / steady_state_end_time",
            )),
        }
    }

    /// The devices of one power metric, checked and sorted by number (non-numeric ids last, by
    /// name): at least one, each with increasing timestamps and valid power.
    fn device_series<'t>(
        &self,
        tl: &'t RawTimeline,
        metric: PowerMetric,
    ) -> Result<Vec<DeviceSeries<'t>>> {
        let devices = tl.power.get(metric.key()).ok_or_else(|| {
            Error::content(
                &self.path,
                format!("no timeline.power.{} series", metric.key()),
            )
        })?;
        let mut ids: Vec<DeviceSeries> = devices.iter().collect();
        if ids.is_empty() {
            return Err(Error::content(
                &self.path,
                format!("timeline.power.{} has no devices", metric.key()),
            ));
        }
        ids.sort_by_key(|(id, _)| (id.parse::<u64>().unwrap_or(u64::MAX), (*id).clone()));
        for (id, series) in &ids {
            self.check_device_series(metric, id, series)?;
        }
        Ok(ids)
    }

    /// One device's `[t, W]` readings: non-empty, increasing timestamps, finite power ≥ 0.
    fn check_device_series(
        &self,
        metric: PowerMetric,
        id: &str,
        series: &[[f64; 2]],
    ) -> Result<()> {
        if series.is_empty() {
            return Err(Error::content(
                &self.path,
                format!("timeline.power.{}[{id}] is empty", metric.key()),
            ));
        }
        for (row, w) in series.windows(2).enumerate() {
            if w[1][0] <= w[0][0] {
                return Err(Error::row(
                    &self.path,
                    row + 1,
                    format!(
                        "timeline.power.{}[{id}]: timestamp {} does not increase",
                        metric.key(),
                        w[1][0]
                    ),
                ));
            }
        }
        for (row, s) in series.iter().enumerate() {
            if !s[1].is_finite() || s[1] < 0.0 {
                return Err(Error::row(
                    &self.path,
                    row,
                    format!(
                        "timeline.power.{}[{id}]: power {} W is invalid",
                        metric.key(),
                        s[1]
                    ),
                ));
            }
        }
        Ok(())
    }

    /// ITL samples (s) of the successful requests after the chunked-prefill rule
    /// ([`smooth_itl`]); an error when no positive finite sample is left.
    pub fn itl_samples(&self) -> Result<Vec<f64>> {
        let mut out = Vec::new();
        for r in self.raw.results.iter().filter(|r| r.success) {
            smooth_itl(&r.itl, &mut out);
        }
        out.retain(|v| v.is_finite() && *v > 0.0);
        if out.is_empty() {
            return Err(Error::content(
                &self.path,
                "no valid ITL samples in any successful request",
            ));
        }
        Ok(out)
    }

    /// Output lengths (tokens) of successful requests that report one.
    pub fn output_lengths(&self) -> Vec<u32> {
        self.raw
            .results
            .iter()
            .filter(|r| r.success)
            .filter_map(|r| r.output_len)
            .filter(|v| v.is_finite() && *v >= 0.0)
            .map(|v| v as u32)
            .collect()
    }
}

/// A device of a power timeline: its id and `[t, W]` readings.
type DeviceSeries<'t> = (&'t String, &'t Vec<[f64; 2]>);

/// Total power at each axis time: every device's last reading at or before it (its first
/// reading before it has one).
fn sum_on_axis(axis: &[f64], ids: &[DeviceSeries]) -> Vec<f64> {
    let mut power_w = vec![0.0; axis.len()];
    for (_, series) in ids {
        let mut j = 0;
        for (i, &t) in axis.iter().enumerate() {
            while j + 1 < series.len() && series[j + 1][0] <= t {
                j += 1;
            }
            power_w[i] += series[j][1];
        }
    }
    power_w
}

/// The chunked-prefill rule: drop entries before the first positive one; then a positive `ℓ`
/// followed by k exact zeros becomes k+1 samples of ℓ/(k+1); other non-positive entries are
/// dropped. `[0, 0, .05, 0, 0, .02, .03, -1, 0, .04] → [.05/3 ×3, .02, .03, .04]`.
pub(crate) fn smooth_itl(itl: &[f64], out: &mut Vec<f64>) {
    let Some(first) = itl.iter().position(|&v| v > 0.0) else {
        return;
    };
    let rest = &itl[first..];
    let mut i = 0;
    while i < rest.len() {
        let v = rest[i];
        if v > 0.0 {
            let zeros = rest[i + 1..].iter().take_while(|&&z| z == 0.0).count();
            let share = v / (zeros + 1) as f64;
            out.extend(std::iter::repeat_n(share, zeros + 1));
            i += zeros + 1;
        } else {
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smooth(v: &[f64]) -> Vec<f64> {
        let mut out = Vec::new();
        smooth_itl(v, &mut out);
        out
    }

    #[test]
    fn chunked_prefill_rule() {
        let got = smooth(&[0.0, 0.0, 0.05, 0.0, 0.0, 0.02, 0.03, -1.0, 0.0, 0.04]);
        let want = [0.05 / 3.0, 0.05 / 3.0, 0.05 / 3.0, 0.02, 0.03, 0.04];
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-15);
        }
        assert!(smooth(&[0.0, 0.0]).is_empty());
        assert!(smooth(&[]).is_empty());
        assert_eq!(smooth(&[0.04, 0.0]), vec![0.02, 0.02]);
        assert_eq!(smooth(&[0.0, 0.01, 0.02]), vec![0.01, 0.02]);
    }
}
