//! Measured runs (SPEC §2.3): what a user gets from measuring their own servers. One folder per
//! run with `manifest.json`, `power.csv` (nvidia-smi, local wall-clock time), `engine.csv`
//! (vLLM counters, unix time) and `requests.json` or `requests_summary.json`.
//!
//! Everything is put on the unix-epoch clock: power timestamps are local wall time, read as
//! UTC minus `clock.local_utc_offset_s`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use chrono::NaiveDateTime;
use serde::Deserialize;

use crate::error::{Error, Result};

/// The parts of `manifest.json` the toolkit uses.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RunManifest {
    #[serde(default)]
    pub run_id: String,
    /// Hugging Face model id.
    pub model: String,
    /// GPU model, e.g. `A100`.
    pub hardware: String,
    /// Tensor-parallel degree = GPUs of the replica.
    pub tp: u32,
    #[serde(default)]
    pub gpus_per_node: Option<u32>,
    pub server: ServerSettings,
    pub clock: ClockInfo,
}

/// vLLM serving settings of a run.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ServerSettings {
    pub max_num_seqs: u32,
    pub max_num_batched_tokens: u32,
    #[serde(default)]
    pub enable_chunked_prefill: bool,
    #[serde(default)]
    pub enable_prefix_caching: bool,
    /// GPUs whose power makes up the run's power; empty = the first `tp` GPUs.
    #[serde(default)]
    pub active_gpu_uuids: Vec<String>,
}

/// Clock facts needed to align power with requests.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ClockInfo {
    /// Local time minus UTC (s), e.g. −25200 for UTC−7.
    pub local_utc_offset_s: f64,
    /// The run's reference instant (unix s), used only to check the alignment.
    #[serde(default)]
    pub reference_epoch_s: Option<f64>,
}

/// Replica power over time on the unix clock.
#[derive(Debug, Clone, PartialEq)]
pub struct PowerSeries {
    /// Sample times, unix seconds, strictly increasing.
    pub t_s: Vec<f64>,
    /// Sum of `power.draw` over the run's active GPUs (W).
    pub power_w: Vec<f64>,
    /// Number of GPUs summed.
    pub gpus: u32,
}

/// A vLLM benchmark request log.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestLog {
    /// Arrival (send) times, unix seconds.
    pub request_timestamps: Vec<f64>,
    pub input_lens: Vec<u32>,
    pub output_lens: Vec<u32>,
    /// Measured time to first token (s), when logged.
    pub ttfts: Option<Vec<f64>>,
    /// Per-request inter-token latencies (s), only in a full `requests.json`.
    pub itls: Option<Vec<Vec<f64>>>,
    /// The file it was read from.
    pub path: PathBuf,
}

/// vLLM engine counters sampled over the run.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineCounters {
    pub t_s: Vec<f64>,
    pub num_requests_running: Vec<f64>,
    pub num_requests_waiting: Vec<f64>,
    /// Cumulative counters (NaN where the column is absent).
    pub prompt_tokens_total: Vec<f64>,
    pub generation_tokens_total: Vec<f64>,
    pub gpu_cache_usage_perc: Vec<f64>,
    /// Cumulative engine iterations and tokens scheduled over them (NaN where absent).
    pub iteration_tokens_total_count: Vec<f64>,
    pub iteration_tokens_total_sum: Vec<f64>,
}

/// One measured run, loaded and aligned.
#[derive(Debug, Clone, PartialEq)]
pub struct MeasuredRun {
    pub dir: PathBuf,
    pub manifest: RunManifest,
    pub power: PowerSeries,
    pub requests: RequestLog,
    pub engine: EngineCounters,
    /// First power sample minus `clock.reference_epoch_s` (s); a check of the clock alignment.
    pub clock_skew_s: Option<f64>,
}

impl MeasuredRun {
    /// The run restricted to [from_s, to_s) (unix s): power samples and engine counter rows in
    /// the window. The request log is kept whole: requests that arrived earlier still occupy
    /// the engine at the window's start, and simulations stop at the window's end.
    pub fn time_window(&self, from_s: f64, to_s: f64) -> Result<Self> {
        let keep = |t: &f64| (from_s..to_s).contains(t);
        let idx_p: Vec<usize> = (0..self.power.t_s.len())
            .filter(|&i| keep(&self.power.t_s[i]))
            .collect();
        let idx_e: Vec<usize> = (0..self.engine.t_s.len())
            .filter(|&i| keep(&self.engine.t_s[i]))
            .collect();
        if idx_p.len() < 5 || idx_e.len() < 2 {
            return Err(Error::content(
                &self.dir,
                format!(
                    "window [{from_s}, {to_s}) s holds {} power samples and {} engine rows (need ≥ 5 and ≥ 2)",
                    idx_p.len(),
                    idx_e.len()
                ),
            ));
        }
        let pick = |v: &[f64], idx: &[usize]| -> Vec<f64> { idx.iter().map(|&i| v[i]).collect() };
        let e = &self.engine;
        Ok(MeasuredRun {
            dir: self.dir.clone(),
            manifest: self.manifest.clone(),
            power: PowerSeries {
                t_s: pick(&self.power.t_s, &idx_p),
                power_w: pick(&self.power.power_w, &idx_p),
                gpus: self.power.gpus,
            },
            requests: self.requests.clone(),
            engine: EngineCounters {
                t_s: pick(&e.t_s, &idx_e),
                num_requests_running: pick(&e.num_requests_running, &idx_e),
                num_requests_waiting: pick(&e.num_requests_waiting, &idx_e),
                prompt_tokens_total: pick(&e.prompt_tokens_total, &idx_e),
                generation_tokens_total: pick(&e.generation_tokens_total, &idx_e),
                gpu_cache_usage_perc: pick(&e.gpu_cache_usage_perc, &idx_e),
                iteration_tokens_total_count: pick(&e.iteration_tokens_total_count, &idx_e),
                iteration_tokens_total_sum: pick(&e.iteration_tokens_total_sum, &idx_e),
            },
            clock_skew_s: self.clock_skew_s,
        })
    }

    /// The run's ITL samples (s) after the chunked-prefill rule, if its log has them.
    pub fn itl_samples(&self) -> Option<Vec<f64>> {
        let itls = self.requests.itls.as_ref()?;
        let mut out = Vec::new();
        for req in itls {
            super::mlenergy::smooth_itl(req, &mut out);
        }
        Some(out)
    }
}

/// Folders below `root` that hold a `manifest.json` (a run), sorted.
pub fn discover_runs(root: &Path) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) -> Result<()> {
        if dir.join("manifest.json").is_file() {
            out.push(dir.to_path_buf());
            return Ok(());
        }
        if depth == 0 {
            return Ok(());
        }
        for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let p = e.map_err(|e| Error::io(dir, e))?.path();
            if p.is_dir() {
                walk(&p, out, depth - 1)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, &mut out, 4)?;
    out.sort();
    if out.is_empty() {
        return Err(Error::content(
            root,
            "no measured runs (folders with manifest.json)",
        ));
    }
    Ok(out)
}

/// Loads one run folder.
pub fn load_run(dir: &Path) -> Result<MeasuredRun> {
    let manifest_path = dir.join("manifest.json");
    let manifest: RunManifest = read_json(&manifest_path)?;
    if manifest.tp < 1 {
        return Err(Error::content(&manifest_path, "field \"tp\" must be ≥ 1"));
    }
    let power = load_power(&dir.join("power.csv"), &manifest)?;
    let requests = load_requests(dir)?;
    let engine = load_engine(&dir.join("engine.csv"))?;
    let clock_skew_s = manifest.clock.reference_epoch_s.map(|r| power.t_s[0] - r);
    Ok(MeasuredRun {
        dir: dir.to_path_buf(),
        manifest,
        power,
        requests,
        engine,
        clock_skew_s,
    })
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    if text.trim().is_empty() {
        return Err(Error::content(path, "file is empty"));
    }
    serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}

fn csv_reader(path: &Path) -> Result<(csv::Reader<std::fs::File>, Vec<String>)> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(file);
    let headers: Vec<String> = rdr
        .headers()
        .map_err(|e| Error::content(path, format!("cannot read header: {e}")))?
        .iter()
        .map(|h| h.split(" [").next().unwrap_or(h).trim().to_string())
        .collect();
    if headers.iter().all(|h| h.is_empty()) {
        return Err(Error::content(path, "file is empty"));
    }
    Ok((rdr, headers))
}

fn column(path: &Path, headers: &[String], name: &str) -> Result<usize> {
    headers.iter().position(|h| h == name).ok_or_else(|| {
        Error::content(
            path,
            format!("missing column {name:?} (columns: {})", headers.join(", ")),
        )
    })
}

/// CSV line number (1 = header) of a record.
fn line_of(rec: &csv::StringRecord, fallback: usize) -> usize {
    rec.position().map_or(fallback, |p| p.line() as usize)
}

fn parse_f64(path: &Path, line: usize, name: &str, text: &str) -> Result<f64> {
    text.parse::<f64>().map_err(|_| {
        Error::row(
            path,
            line,
            format!("column {name:?}: {text:?} is not a number"),
        )
    })
}

/// Parses nvidia-smi power rows and sums the active GPUs per sample instant.
fn load_power(path: &Path, m: &RunManifest) -> Result<PowerSeries> {
    let (mut rdr, headers) = csv_reader(path)?;
    let c_ts = column(path, &headers, "timestamp")?;
    let c_idx = column(path, &headers, "index")?;
    let c_uuid = column(path, &headers, "uuid")?;
    let c_pw = column(path, &headers, "power.draw")?;
    let limit = 2.0 * super::board_limit_w(&m.hardware);
    let offset = m.clock.local_utc_offset_s;
    // Rows of one sample share a timestamp text; group consecutive rows.
    let mut groups: Vec<(usize, f64, Vec<(String, u32, f64)>)> = Vec::new();
    let mut last_text = String::new();
    for (i, rec) in rdr.records().enumerate() {
        let line = i + 2;
        let rec = rec.map_err(|e| Error::row(path, line, format!("bad CSV row: {e}")))?;
        let line = line_of(&rec, line);
        if rec.len() != headers.len() {
            return Err(Error::row(
                path,
                line,
                format!("{} columns, expected {}", rec.len(), headers.len()),
            ));
        }
        let ts_text = &rec[c_ts];
        let watts = parse_f64(path, line, "power.draw", &rec[c_pw])?;
        if !watts.is_finite() || watts < 0.0 || watts > limit {
            return Err(Error::row(
                path,
                line,
                format!(
                    "power.draw = {watts} W is invalid for a {} (expected 0 … {limit} W, 2 × board limit)",
                    m.hardware
                ),
            ));
        }
        let index: u32 = rec[c_idx].parse().map_err(|_| {
            Error::row(
                path,
                line,
                format!("index {:?} is not an integer", &rec[c_idx]),
            )
        })?;
        if ts_text != last_text {
            let local =
                NaiveDateTime::parse_from_str(ts_text, "%Y/%m/%d %H:%M:%S%.f").map_err(|e| {
                    Error::row(
                        path,
                        line,
                        format!("timestamp {ts_text:?} is not YYYY/MM/DD HH:MM:SS.mmm: {e}"),
                    )
                })?;
            let t = local.and_utc().timestamp_micros() as f64 / 1e6 - offset;
            if let Some((prev_line, prev_t, _)) = groups.last() {
                if t <= *prev_t {
                    return Err(Error::row(
                        path,
                        line,
                        format!("timestamp {ts_text:?} does not increase (line {prev_line} is at or after it)"),
                    ));
                }
            }
            groups.push((line, t, Vec::new()));
            last_text = ts_text.to_string();
        }
        let group = &mut groups.last_mut().expect("pushed above").2;
        if group.iter().any(|(u, _, _)| u == &rec[c_uuid]) {
            return Err(Error::row(
                path,
                line,
                format!("GPU {} appears twice at {ts_text}", &rec[c_uuid]),
            ));
        }
        group.push((rec[c_uuid].to_string(), index, watts));
    }
    // Which GPUs count: the manifest's active UUIDs, else the first `tp` indices.
    let active: Vec<String> = if m.server.active_gpu_uuids.is_empty() {
        let mut seen: Vec<(u32, String)> = groups
            .iter()
            .flat_map(|g| g.2.iter().map(|(u, i, _)| (*i, u.clone())))
            .collect();
        seen.sort();
        seen.dedup();
        seen.into_iter()
            .take(m.tp as usize)
            .map(|(_, u)| u)
            .collect()
    } else {
        m.server.active_gpu_uuids.clone()
    };
    let mut last: HashMap<&str, f64> = HashMap::new();
    let mut t_s = Vec::with_capacity(groups.len());
    let mut power_w = Vec::with_capacity(groups.len());
    for (_, t, rows) in &groups {
        for (u, _, w) in rows {
            if active.iter().any(|a| a == u) {
                last.insert(u.as_str(), *w);
            }
        }
        // A sample counts once every active GPU has reported; a GPU missing from one sample
        // keeps its previous reading (forward fill).
        if last.len() == active.len() {
            t_s.push(*t);
            power_w.push(last.values().sum());
        }
    }
    if t_s.len() < 5 {
        return Err(Error::content(
            path,
            format!(
                "only {} samples with all active GPUs ({}) reporting; need ≥ 5",
                t_s.len(),
                active.join(", ")
            ),
        ));
    }
    Ok(PowerSeries {
        t_s,
        power_w,
        gpus: active.len() as u32,
    })
}

#[derive(Deserialize)]
struct RawRequests {
    request_timestamps: Vec<f64>,
    input_lens: Vec<f64>,
    output_lens: Vec<f64>,
    #[serde(default)]
    ttfts: Option<Vec<Option<f64>>>,
    #[serde(default)]
    itls: Option<Vec<Vec<f64>>>,
}

/// `requests.json` when present (it has per-token ITLs), else `requests_summary.json`.
pub fn load_requests(dir: &Path) -> Result<RequestLog> {
    let full = dir.join("requests.json");
    let path = if full.is_file() {
        full
    } else {
        dir.join("requests_summary.json")
    };
    let raw: RawRequests = read_json(&path)?;
    let n = raw.request_timestamps.len();
    if n == 0 {
        return Err(Error::content(&path, "\"request_timestamps\" is empty"));
    }
    let check_len = |name: &str, len: usize| {
        if len != n {
            Err(Error::content(
                &path,
                format!("{name:?} has {len} entries, request_timestamps has {n}"),
            ))
        } else {
            Ok(())
        }
    };
    check_len("input_lens", raw.input_lens.len())?;
    check_len("output_lens", raw.output_lens.len())?;
    if let Some(t) = &raw.ttfts {
        check_len("ttfts", t.len())?;
    }
    if let Some(t) = &raw.itls {
        check_len("itls", t.len())?;
    }
    for (i, w) in raw.request_timestamps.windows(2).enumerate() {
        if !w[1].is_finite() || w[1] < w[0] {
            return Err(Error::row(
                &path,
                i + 1,
                format!(
                    "request_timestamps[{}] = {} is before the previous {}",
                    i + 1,
                    w[1],
                    w[0]
                ),
            ));
        }
    }
    let tokens = |name: &str, v: &[f64]| -> Result<Vec<u32>> {
        v.iter()
            .enumerate()
            .map(|(i, &x)| {
                if x.is_finite() && x >= 0.0 && x.fract() == 0.0 && x <= u32::MAX as f64 {
                    Ok(x as u32)
                } else {
                    Err(Error::row(
                        &path,
                        i,
                        format!("{name}[{i}] = {x} is not a token count"),
                    ))
                }
            })
            .collect()
    };
    Ok(RequestLog {
        input_lens: tokens("input_lens", &raw.input_lens)?,
        output_lens: tokens("output_lens", &raw.output_lens)?,
        request_timestamps: raw.request_timestamps,
        ttfts: raw
            .ttfts
            .map(|v| v.into_iter().map(|x| x.unwrap_or(f64::NAN)).collect()),
        itls: raw.itls,
        path,
    })
}

fn load_engine(path: &Path) -> Result<EngineCounters> {
    let (mut rdr, headers) = csv_reader(path)?;
    let c_ts = column(path, &headers, "timestamp")?;
    let c_run = column(path, &headers, "num_requests_running")?;
    let c_wait = column(path, &headers, "num_requests_waiting")?;
    let optional = |name: &str| headers.iter().position(|h| h == name);
    let c_prompt = optional("prompt_tokens_total");
    let c_gen = optional("generation_tokens_total");
    let c_kv = optional("gpu_cache_usage_perc");
    let c_iter_count = optional("iteration_tokens_total_count");
    let c_iter_sum = optional("iteration_tokens_total_sum");
    let mut e = EngineCounters {
        t_s: Vec::new(),
        num_requests_running: Vec::new(),
        num_requests_waiting: Vec::new(),
        prompt_tokens_total: Vec::new(),
        generation_tokens_total: Vec::new(),
        gpu_cache_usage_perc: Vec::new(),
        iteration_tokens_total_count: Vec::new(),
        iteration_tokens_total_sum: Vec::new(),
    };
    for (i, rec) in rdr.records().enumerate() {
        let line = i + 2;
        let rec = rec.map_err(|err| Error::row(path, line, format!("bad CSV row: {err}")))?;
        let line = line_of(&rec, line);
        if rec.len() != headers.len() {
            return Err(Error::row(
                path,
                line,
                format!("{} columns, expected {}", rec.len(), headers.len()),
            ));
        }
        let t = parse_f64(path, line, "timestamp", &rec[c_ts])?;
        if let Some(&prev) = e.t_s.last() {
            if t <= prev {
                return Err(Error::row(
                    path,
                    line,
                    format!("timestamp {t} does not increase (previous {prev})"),
                ));
            }
        }
        e.t_s.push(t);
        e.num_requests_running
            .push(parse_f64(path, line, "num_requests_running", &rec[c_run])?);
        e.num_requests_waiting
            .push(parse_f64(path, line, "num_requests_waiting", &rec[c_wait])?);
        let opt = |c: Option<usize>, name: &str| -> Result<f64> {
            c.map_or(Ok(f64::NAN), |c| parse_f64(path, line, name, &rec[c]))
        };
        e.prompt_tokens_total
            .push(opt(c_prompt, "prompt_tokens_total")?);
        e.generation_tokens_total
            .push(opt(c_gen, "generation_tokens_total")?);
        e.gpu_cache_usage_perc
            .push(opt(c_kv, "gpu_cache_usage_perc")?);
        e.iteration_tokens_total_count
            .push(opt(c_iter_count, "iteration_tokens_total_count")?);
        e.iteration_tokens_total_sum
            .push(opt(c_iter_sum, "iteration_tokens_total_sum")?);
    }
    if e.t_s.is_empty() {
        return Err(Error::content(path, "no rows"));
    }
    Ok(e)
}
