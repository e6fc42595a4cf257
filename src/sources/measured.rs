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
use crate::io::read_json;

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
    gpus_per_node: Option<u32>,
    pub(crate) server: ServerSettings,
    pub(crate) clock: ClockInfo,
    /// Model facts the run's manifest records (absent in older manifests).
    #[serde(default)]
    pub(crate) arch: Option<ModelArch>,
}

/// The `arch` block of a manifest: what kind of model was served.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct ModelArch {
    /// e.g. `dense-8b`, `moe-8b`.
    #[serde(default)]
    pub(crate) family: String,
    /// Parameters used per token.
    #[serde(default)]
    pub(crate) n_active: f64,
    #[serde(default)]
    pub(crate) n_experts: f64,
    /// Parameters of the transformer blocks (without embeddings and output head): the dense
    /// FLOPs of a prefilled token are twice this.
    #[serde(default)]
    pub(crate) transformer_active_params: f64,
    /// Hidden size (= query heads × head size in the models measured here).
    #[serde(default)]
    pub(crate) d_model: f64,
    /// Transformer layers, KV heads and head size: the KV cache's bytes per token.
    #[serde(default)]
    pub(crate) n_layers: f64,
    #[serde(default)]
    pub(crate) n_kv: f64,
    #[serde(default)]
    pub(crate) head_dim: f64,
    /// Sliding-window size and linear-attention layers (0: every layer attends to the whole
    /// context).
    #[serde(default)]
    pub(crate) swa_window: f64,
    #[serde(default)]
    pub(crate) linear_attention: f64,
}

impl ModelArch {
    /// Whether every layer attends to the whole context (no sliding window, no linear
    /// attention) and the manifest gives each of `shape` (finite and positive): what the
    /// context-proportional costs below need.
    fn full_attention_with(&self, shape: &[f64]) -> bool {
        shape.iter().all(|v| v.is_finite() && *v > 0.0)
            && self.swa_window == 0.0
            && self.linear_attention == 0.0
    }

    /// Bytes the KV cache holds per token of context (`kv_bytes_per_element`: 2 for BF16,
    /// 1 for an FP8 cache), when every layer attends to the whole context; `None` for
    /// sliding-window or linear-attention models (a step's reads then do not grow with the
    /// context alone) or when the manifest lacks the shape.
    pub(crate) fn kv_bytes_per_token(&self, kv_bytes_per_element: f64) -> Option<f64> {
        self.full_attention_with(&[self.n_layers, self.n_kv, self.head_dim])
            .then_some(2.0 * self.n_layers * self.n_kv * self.head_dim * kv_bytes_per_element)
    }

    /// Prefill attention FLOPs per 1,000 tokens of context before a token, as a share of the
    /// token's dense FLOPs: (QKᵀ and PV: 4 · layers · d_model per context token) ÷
    /// (2 · transformer parameters). `None` for sliding-window or linear-attention models or
    /// when the manifest lacks the shape.
    pub(crate) fn attention_flops_ratio_per_ktoken(&self) -> Option<f64> {
        let shape = [self.n_layers, self.d_model, self.transformer_active_params];
        self.full_attention_with(&shape).then(|| {
            1e3 * 4.0 * self.n_layers * self.d_model / (2.0 * self.transformer_active_params)
        })
    }
}

/// vLLM serving settings of a run.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct ServerSettings {
    pub(crate) max_num_seqs: u32,
    pub(crate) max_num_batched_tokens: u32,
    #[serde(default)]
    pub(crate) enable_chunked_prefill: bool,
    #[serde(default)]
    pub(crate) enable_prefix_caching: bool,
    /// GPUs whose power makes up the run's power; empty = the first `tp` GPUs.
    #[serde(default)]
    active_gpu_uuids: Vec<String>,
    /// vLLM's `kv_cache_dtype` (`auto`: the model's dtype; `fp8…`: one byte per element).
    #[serde(default)]
    pub(crate) kv_cache_dtype: String,
}

/// Clock facts needed to align power with requests.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct ClockInfo {
    /// Local time minus UTC (s), e.g. −25200 for UTC−7.
    pub(crate) local_utc_offset_s: f64,
    /// The run's reference instant (unix s), used only to check the alignment.
    #[serde(default)]
    reference_epoch_s: Option<f64>,
}

/// Replica power over time on the unix clock.
#[derive(Debug, Clone, PartialEq)]
pub struct PowerSeries {
    /// Sample times, unix seconds, strictly increasing.
    pub t_s: Vec<f64>,
    /// Sum of `power.draw` over the run's active GPUs (W).
    pub power_w: Vec<f64>,
    /// Mean `temperature.gpu` over the active GPUs (°C; NaN where the column is absent or
    /// not a number).
    pub(crate) temperature_c: Vec<f64>,
    /// Number of GPUs summed.
    pub gpus: u32,
}

/// A vLLM benchmark request log, in arrival order.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestLog {
    /// Arrival (send) times, unix seconds.
    pub request_timestamps: Vec<f64>,
    pub input_lens: Vec<u32>,
    pub output_lens: Vec<u32>,
    /// Measured time to first token (s), when logged.
    pub(crate) ttfts: Option<Vec<f64>>,
    /// Per-request inter-token latencies (s), only in a full `requests.json`.
    pub itls: Option<Itls>,
    /// Per request, the agent or chat session it belongs to (trace replays).
    pub(crate) session_ids: Option<Vec<String>>,
    /// Per request, its turn within its session (0 first).
    pub turn_idx: Option<Vec<u32>>,
    /// Per request, leading prompt tokens that repeat the session's earlier context (declared
    /// by the load generator; 0 where the log does not know).
    pub(crate) prefix_tokens: Option<Vec<u32>>,
    /// Per request, prompt tokens the server served from its prefix cache (measured; used
    /// only to score a simulation, never to drive one).
    pub cached_prompt_tokens: Option<Vec<u32>>,
    /// Per request, the client's pause after its answer before the session's next turn (s;
    /// agent replays log it as `post_gap_s`).
    pub(crate) post_gap_s: Option<Vec<f64>>,
    /// The file it was read from.
    pub path: PathBuf,
}

/// vLLM engine counters sampled over the run.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineCounters {
    pub t_s: Vec<f64>,
    pub(crate) num_requests_running: Vec<f64>,
    pub(crate) num_requests_waiting: Vec<f64>,
    /// Cumulative counters (NaN where the column is absent).
    pub(crate) prompt_tokens_total: Vec<f64>,
    pub(crate) generation_tokens_total: Vec<f64>,
    pub(crate) gpu_cache_usage_perc: Vec<f64>,
    /// Cumulative engine iterations and tokens scheduled over them (NaN where absent).
    pub(crate) iteration_tokens_total_count: Vec<f64>,
    iteration_tokens_total_sum: Vec<f64>,
    /// Cumulative prompt tokens looked up in / served from the prefix cache (NaN where absent).
    prefix_cache_queries_total: Vec<f64>,
    pub prefix_cache_hits_total: Vec<f64>,
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
                temperature_c: pick(&self.power.temperature_c, &idx_p),
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
                prefix_cache_queries_total: pick(&e.prefix_cache_queries_total, &idx_e),
                prefix_cache_hits_total: pick(&e.prefix_cache_hits_total, &idx_e),
            },
            clock_skew_s: self.clock_skew_s,
        })
    }

    /// The run's ITL samples (s) after the chunked-prefill rule, if its log has them.
    pub fn itl_samples(&self) -> Option<Vec<f64>> {
        let Some(Itls::PerToken(itls)) = self.requests.itls.as_ref() else {
            return None;
        };
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
    check_requests_in_power_window(dir, &requests, &power)?;
    let engine = load_engine(&dir.join("engine.csv"))?;
    let clock_skew_s = manifest.clock.reference_epoch_s.map(|r| power.t_s[0] - r);
    tracing::debug!(
        run = %dir.display(),
        power_samples = power.t_s.len(),
        requests = requests.request_timestamps.len(),
        engine_rows = engine.t_s.len(),
        clock_skew_s,
        "loaded measured run"
    );
    Ok(MeasuredRun {
        dir: dir.to_path_buf(),
        manifest,
        power,
        requests,
        engine,
        clock_skew_s,
    })
}

/// At least half of a run's requests arrive while its power was recorded (±5 s): otherwise
/// the request log and the power trace are on different clocks, or of different runs, and
/// everything learned or scored from the pair would be idle power against requests that never
/// ran.
fn check_requests_in_power_window(dir: &Path, log: &RequestLog, power: &PowerSeries) -> Result<()> {
    let (first, last) = (power.t_s[0] - 5.0, power.t_s[power.t_s.len() - 1] + 5.0);
    let ts = &log.request_timestamps;
    let inside = ts.iter().filter(|&&t| (first..=last).contains(&t)).count();
    if !ts.is_empty() && 2 * inside < ts.len() {
        let (lo, hi) = (ts[0], ts[ts.len() - 1]);
        let full = dir.join("requests.json");
        let file = if full.is_file() {
            full
        } else {
            dir.join("requests_summary.json")
        };
        return Err(Error::content(
            file,
            format!(
                "{inside} of {} requests arrive while power was recorded: requests span \
                 [{lo:.3}, {hi:.3}] s, power [{:.3}, {:.3}] s (unix); the request log and \
                 power.csv are on different clocks or of different runs (see manifest.json's clock)",
                ts.len(),
                power.t_s[0],
                power.t_s[power.t_s.len() - 1]
            ),
        ));
    }
    Ok(())
}

/// A CSV reader over the file with CRLF line ends made LF first (csv's record positions count
/// a CRLF file's lines one short), and its header names (units like ` [W]` dropped).
fn csv_reader(path: &Path) -> Result<(csv::Reader<std::io::Cursor<Vec<u8>>>, Vec<String>)> {
    let mut bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.contains(&b'\r') {
        bytes.retain(|&b| b != b'\r');
    }
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(std::io::Cursor::new(bytes));
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

/// A finite number (NaN and infinities are refused: a measured column never holds them).
fn parse_f64(path: &Path, line: usize, name: &str, text: &str) -> Result<f64> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(Error::row(
            path,
            line,
            format!("column {name:?}: {text:?} is not a finite number"),
        )),
    }
}

/// A counter or gauge of the engine: finite, ≥ 0 and below 10¹⁵ (no vLLM counter reaches it).
fn parse_count(path: &Path, line: usize, name: &str, text: &str) -> Result<f64> {
    let v = parse_f64(path, line, name, text)?;
    if !(0.0..1e15).contains(&v) {
        return Err(Error::row(
            path,
            line,
            format!("column {name:?}: {v} (an engine counter or gauge is ≥ 0 and below 1e15)"),
        ));
    }
    Ok(v)
}

/// Parses nvidia-smi power rows and sums the active GPUs per sample instant.
fn load_power(path: &Path, m: &RunManifest) -> Result<PowerSeries> {
    let (mut rdr, headers) = csv_reader(path)?;
    let cols = PowerColumns::find(path, &headers)?;
    let limit = 2.0 * super::board_limit_w(&m.hardware);
    // Rows of one sample share a timestamp text; group consecutive rows.
    let mut groups: Vec<PowerSample> = Vec::new();
    let mut last_text = String::new();
    for (i, rec) in rdr.records().enumerate() {
        let (rec, line) = checked_record(path, &headers, i, rec)?;
        let ts_text = &rec[cols.ts];
        let watts = parse_watts(path, line, &rec[cols.pw], limit, &m.hardware)?;
        let index = parse_gpu_index(path, line, &rec[cols.idx])?;
        if ts_text != last_text {
            let t = sample_time(path, line, ts_text, m.clock.local_utc_offset_s)?;
            check_sample_order(path, line, ts_text, t, groups.last())?;
            groups.push((line, t, Vec::new()));
            last_text = ts_text.to_string();
        }
        let group = &mut groups.last_mut().expect("pushed above").2;
        let uuid = &rec[cols.uuid];
        if group.iter().any(|(u, _, _, _)| u == uuid) {
            return Err(Error::row(
                path,
                line,
                format!("GPU {uuid} appears twice at {ts_text}"),
            ));
        }
        group.push((uuid.to_string(), index, watts, cols.temperature_c(&rec)));
    }
    sum_active_gpus(path, m, &groups)
}

/// Where the nvidia-smi columns are (temperature optional).
struct PowerColumns {
    ts: usize,
    idx: usize,
    uuid: usize,
    pw: usize,
    temp: Option<usize>,
}

impl PowerColumns {
    fn find(path: &Path, headers: &[String]) -> Result<PowerColumns> {
        Ok(PowerColumns {
            ts: column(path, headers, "timestamp")?,
            idx: column(path, headers, "index")?,
            uuid: column(path, headers, "uuid")?,
            pw: column(path, headers, "power.draw")?,
            temp: headers.iter().position(|h| h == "temperature.gpu"),
        })
    }

    /// Temperature is optional context (idle power rises with it): unparseable → NaN.
    fn temperature_c(&self, rec: &csv::StringRecord) -> f64 {
        self.temp
            .and_then(|c| rec[c].trim().parse::<f64>().ok())
            .filter(|t| t.is_finite() && (-50.0..=150.0).contains(t))
            .unwrap_or(f64::NAN)
    }
}

/// The `i`-th data record with its CSV line, refused when unreadable or of the wrong width.
fn checked_record(
    path: &Path,
    headers: &[String],
    i: usize,
    rec: csv::Result<csv::StringRecord>,
) -> Result<(csv::StringRecord, usize)> {
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
    Ok((rec, line))
}

/// A `power.draw` reading: 0 … `limit_w` (twice the board limit of `hardware`).
fn parse_watts(path: &Path, line: usize, text: &str, limit_w: f64, hardware: &str) -> Result<f64> {
    let watts = parse_f64(path, line, "power.draw", text)?;
    if !watts.is_finite() || watts < 0.0 || watts > limit_w {
        return Err(Error::row(
            path,
            line,
            format!(
                "power.draw = {watts} W is invalid for a {hardware} (expected 0 … {limit_w} W, 2 × board limit)"
            ),
        ));
    }
    Ok(watts)
}

fn parse_gpu_index(path: &Path, line: usize, text: &str) -> Result<u32> {
    text.parse()
        .map_err(|_| Error::row(path, line, format!("index {text:?} is not an integer")))
}

/// Unix time (s) of an nvidia-smi local timestamp, `offset_s` being the local UTC offset.
fn sample_time(path: &Path, line: usize, ts_text: &str, offset_s: f64) -> Result<f64> {
    let local = NaiveDateTime::parse_from_str(ts_text, "%Y/%m/%d %H:%M:%S%.f").map_err(|e| {
        Error::row(
            path,
            line,
            format!("timestamp {ts_text:?} is not YYYY/MM/DD HH:MM:SS.mmm: {e}"),
        )
    })?;
    Ok(local.and_utc().timestamp_micros() as f64 / 1e6 - offset_s)
}

/// A new sample instant must come after the previous one.
fn check_sample_order(
    path: &Path,
    line: usize,
    ts_text: &str,
    t: f64,
    previous: Option<&PowerSample>,
) -> Result<()> {
    if let Some((prev_line, prev_t, _)) = previous {
        if t <= *prev_t {
            return Err(Error::row(
                path,
                line,
                format!(
                    "timestamp {ts_text:?} does not increase (line {prev_line} is at or after it)"
                ),
            ));
        }
    }
    Ok(())
}

/// One nvidia-smi sample instant: (CSV line, unix time, per GPU (uuid, index, W, °C)).
type PowerSample = (usize, f64, Vec<(String, u32, f64, f64)>);

/// Samples in a row an active GPU may miss before its readings stop being carried forward.
const MAX_MISSED_SAMPLES: usize = 4;

/// The run's power per sample instant: the sum over its active GPUs (the manifest's active
/// UUIDs, else the first `tp` indices) and their mean temperature.
fn sum_active_gpus(path: &Path, m: &RunManifest, groups: &[PowerSample]) -> Result<PowerSeries> {
    // Which GPUs count: the manifest's active UUIDs, else the first `tp` indices.
    let active: Vec<String> = if m.server.active_gpu_uuids.is_empty() {
        let mut seen: Vec<(u32, String)> = groups
            .iter()
            .flat_map(|g| g.2.iter().map(|(u, i, _, _)| (*i, u.clone())))
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
    let mut last: HashMap<&str, (f64, f64, usize)> = HashMap::new();
    let mut t_s = Vec::with_capacity(groups.len());
    let mut power_w = Vec::with_capacity(groups.len());
    let mut temperature_c = Vec::with_capacity(groups.len());
    for (k, (line, t, rows)) in groups.iter().enumerate() {
        for (u, _, w, temp) in rows {
            if active.iter().any(|a| a == u) {
                last.insert(u.as_str(), (*w, *temp, k));
            }
        }
        // Forward fill bridges a missed sample or two, never a GPU that stopped reporting
        // (its last reading would be repeated for the rest of the run).
        if let Some((u, _)) = last.iter().find(|(_, v)| k - v.2 > MAX_MISSED_SAMPLES) {
            let others: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
            return Err(Error::row(
                path,
                *line,
                format!(
                    "active GPU {u} has not reported for {} samples (this sample has {}): \
                     a GPU changed or dropped out mid-run; fix the manifest's \
                     server.active_gpu_uuids or cut the file",
                    k - last[u].2,
                    others.join(", ")
                ),
            ));
        }
        // A sample counts once every active GPU has reported; a GPU missing from one sample
        // keeps its previous reading (forward fill).
        if last.len() == active.len() {
            t_s.push(*t);
            power_w.push(last.values().map(|v| v.0).sum());
            temperature_c.push(last.values().map(|v| v.1).sum::<f64>() / last.len() as f64);
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
        temperature_c,
        gpus: active.len() as u32,
    })
}

/// Inter-token latencies of a request log, in either form vLLM benchmark tools write.
#[derive(Debug, Clone, PartialEq)]
pub enum Itls {
    /// Per request, the list of its inter-token latencies (s): real ITL samples.
    PerToken(Vec<Vec<f64>>),
    /// Per request, one number: the mean of its inter-token latencies (s). Not samples of
    /// the ITL distribution (the fits refuse them), but still a per-request latency.
    MeanPerRequest(Vec<f64>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawItl {
    List(Vec<f64>),
    Mean(f64),
}

#[derive(Deserialize)]
struct RawRequests {
    request_timestamps: Vec<f64>,
    input_lens: Vec<f64>,
    output_lens: Vec<f64>,
    #[serde(default)]
    ttfts: Option<Vec<Option<f64>>>,
    #[serde(default)]
    itls: Option<Vec<Option<RawItl>>>,
    #[serde(default)]
    session_ids: Option<Vec<String>>,
    #[serde(default)]
    turn_idx: Option<Vec<f64>>,
    #[serde(default)]
    prefix_tokens: Option<Vec<f64>>,
    #[serde(default)]
    new_input_tokens: Option<Vec<f64>>,
    #[serde(default)]
    cached_prompt_tokens: Option<Vec<f64>>,
    #[serde(default)]
    post_gap_s: Option<Vec<f64>>,
}

/// `requests.json` when present (it has per-token ITLs), else `requests_summary.json`.
fn load_requests(dir: &Path) -> Result<RequestLog> {
    let full = dir.join("requests.json");
    let path = if full.is_file() {
        full
    } else {
        dir.join("requests_summary.json")
    };
    read_request_log(&path)
}

/// Reads a vLLM benchmark request log (`requests.json` or `requests_summary.json` form) and
/// puts its requests in arrival order: a log listed session by session is sorted by
/// `request_timestamps` (stable, every column permuted alike). Checks that every column has
/// one entry per request, token counts are non-negative integers, `prefix_tokens` and
/// `cached_prompt_tokens` fit in the prompt, `prefix_tokens + new_input_tokens ≤ input_lens`,
/// and `turn_idx` increases within each session in arrival order.
pub fn read_request_log(path: &Path) -> Result<RequestLog> {
    let raw: RawRequests = read_json(path)?;
    check_request_columns(path, &raw)?;
    // Arrival order (stable): logs listed session by session are reordered.
    let order = arrival_order(&raw.request_timestamps);
    let tokens = |name: &str, v: &[f64]| token_column(path, name, v, &order);
    let opt_tokens = |name: &str, v: &Option<Vec<f64>>| -> Result<Option<Vec<u32>>> {
        v.as_ref().map(|v| tokens(name, v)).transpose()
    };
    let pick = |v: &[f64]| -> Vec<f64> { order.iter().map(|&i| v[i]).collect() };
    let new_input_tokens = opt_tokens("new_input_tokens", &raw.new_input_tokens)?;
    let log = RequestLog {
        request_timestamps: pick(&raw.request_timestamps),
        input_lens: tokens("input_lens", &raw.input_lens)?,
        output_lens: tokens("output_lens", &raw.output_lens)?,
        turn_idx: opt_tokens("turn_idx", &raw.turn_idx)?,
        prefix_tokens: opt_tokens("prefix_tokens", &raw.prefix_tokens)?,
        cached_prompt_tokens: opt_tokens("cached_prompt_tokens", &raw.cached_prompt_tokens)?,
        session_ids: raw
            .session_ids
            .map(|s| order.iter().map(|&i| s[i].clone()).collect()),
        ttfts: raw
            .ttfts
            .map(|v| order.iter().map(|&i| v[i].unwrap_or(f64::NAN)).collect()),
        itls: raw
            .itls
            .map(|v| itls_in_order(path, v, &order))
            .transpose()?,
        post_gap_s: raw.post_gap_s.as_deref().map(pick),
        path: path.to_path_buf(),
    };
    check_prompt_parts(&log, new_input_tokens.as_deref(), &order)?;
    check_turn_order(&log, &order)?;
    Ok(log)
}

/// Every column has one entry per request; `turn_idx` comes with `session_ids`; timestamps
/// are times and pauses are pauses.
fn check_request_columns(path: &Path, raw: &RawRequests) -> Result<()> {
    let n = raw.request_timestamps.len();
    if n == 0 {
        return Err(Error::content(path, "\"request_timestamps\" is empty"));
    }
    let lens = [
        ("input_lens", Some(raw.input_lens.len())),
        ("output_lens", Some(raw.output_lens.len())),
        ("ttfts", raw.ttfts.as_ref().map(Vec::len)),
        ("itls", raw.itls.as_ref().map(Vec::len)),
        ("session_ids", raw.session_ids.as_ref().map(Vec::len)),
        ("turn_idx", raw.turn_idx.as_ref().map(Vec::len)),
        ("prefix_tokens", raw.prefix_tokens.as_ref().map(Vec::len)),
        (
            "new_input_tokens",
            raw.new_input_tokens.as_ref().map(Vec::len),
        ),
        (
            "cached_prompt_tokens",
            raw.cached_prompt_tokens.as_ref().map(Vec::len),
        ),
        ("post_gap_s", raw.post_gap_s.as_ref().map(Vec::len)),
    ];
    for (name, len) in lens {
        if let Some(len) = len.filter(|&len| len != n) {
            return Err(Error::content(
                path,
                format!("{name:?} has {len} entries, request_timestamps has {n}"),
            ));
        }
    }
    if raw.turn_idx.is_some() && raw.session_ids.is_none() {
        return Err(Error::content(
            path,
            "\"turn_idx\" is given without \"session_ids\" (a turn belongs to a session)",
        ));
    }
    let t = &raw.request_timestamps;
    if let Some(i) = t.iter().position(|t| !t.is_finite()) {
        return Err(Error::row(
            path,
            i,
            format!("request_timestamps[{i}] = {} is not a time", t[i]),
        ));
    }
    if let Some(g) = &raw.post_gap_s {
        if let Some(i) = g.iter().position(|x| !(x.is_finite() && *x >= 0.0)) {
            return Err(Error::row(
                path,
                i,
                format!("post_gap_s[{i}] = {} is not a pause (s ≥ 0)", g[i]),
            ));
        }
    }
    Ok(())
}

/// Row indices in arrival order (stable: equal times keep the file's order).
fn arrival_order(request_timestamps: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..request_timestamps.len()).collect();
    order.sort_by(|&a, &b| request_timestamps[a].total_cmp(&request_timestamps[b]));
    order
}

/// A token-count column in `order`, each entry a non-negative integer (the error names the
/// row in the file).
fn token_column(path: &Path, name: &str, v: &[f64], order: &[usize]) -> Result<Vec<u32>> {
    order
        .iter()
        .map(|&i| {
            let x = v[i];
            if x.is_finite() && x >= 0.0 && x.fract() == 0.0 && x <= u32::MAX as f64 {
                Ok(x as u32)
            } else {
                Err(Error::row(
                    path,
                    i,
                    format!("{name}[{i}] = {x} is not a token count"),
                ))
            }
        })
        .collect()
}

/// The `itls` column in arrival order, in whichever form the file uses (one form per file).
fn itls_in_order(path: &Path, raw: Vec<Option<RawItl>>, order: &[usize]) -> Result<Itls> {
    let lists = raw
        .iter()
        .filter(|x| matches!(x, Some(RawItl::List(_))))
        .count();
    let means = raw
        .iter()
        .filter(|x| matches!(x, Some(RawItl::Mean(_))))
        .count();
    if lists > 0 && means > 0 {
        return Err(Error::content(
            path,
            format!(
                "\"itls\" mixes {lists} per-token lists with {means} per-request means; \
                 use one form per file"
            ),
        ));
    }
    if means > 0 {
        let v = order
            .iter()
            .map(|&i| match &raw[i] {
                Some(RawItl::Mean(m)) if m.is_finite() && *m >= 0.0 => Ok(*m),
                Some(RawItl::Mean(m)) => Err(Error::row(
                    path,
                    i,
                    format!("itls[{i}] = {m} is not a latency"),
                )),
                _ => Ok(f64::NAN),
            })
            .collect::<Result<Vec<f64>>>()?;
        return Ok(Itls::MeanPerRequest(v));
    }
    let mut raw = raw;
    Ok(Itls::PerToken(
        order
            .iter()
            .map(|&i| match raw[i].take() {
                Some(RawItl::List(l)) => l,
                _ => Vec::new(),
            })
            .collect(),
    ))
}

/// `prefix_tokens` and `cached_prompt_tokens` fit in the prompt; with `new_input_tokens`,
/// prefix + new fit in it too (the rest is the chat template's tokens: the agentic run's
/// prompts are 8 tokens longer than prefix + new).
fn check_prompt_parts(log: &RequestLog, new_input: Option<&[u32]>, order: &[usize]) -> Result<()> {
    let path = &log.path;
    for (k, &input) in log.input_lens.iter().enumerate() {
        let row = order[k];
        for (name, col) in [
            ("prefix_tokens", &log.prefix_tokens),
            ("cached_prompt_tokens", &log.cached_prompt_tokens),
        ] {
            if let Some(v) = col.as_ref().map(|c| c[k]).filter(|&v| v > input) {
                return Err(Error::row(
                    path,
                    row,
                    format!("{name}[{row}] = {v} is longer than the prompt (input_lens = {input})"),
                ));
            }
        }
        if let (Some(prefix), Some(new)) = (&log.prefix_tokens, new_input) {
            if prefix[k] as u64 + new[k] as u64 > input as u64 {
                return Err(Error::row(
                    path,
                    row,
                    format!(
                        "prefix_tokens {} + new_input_tokens {} is more than input_lens {input}",
                        prefix[k], new[k]
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Within a session, turns arrive in increasing `turn_idx`.
fn check_turn_order(log: &RequestLog, order: &[usize]) -> Result<()> {
    let (Some(ids), Some(turns)) = (&log.session_ids, &log.turn_idx) else {
        return Ok(());
    };
    let mut last: HashMap<&str, u32> = HashMap::new();
    for (k, (id, &turn)) in ids.iter().zip(turns).enumerate() {
        if let Some(&prev) = last.get(id.as_str()) {
            if turn <= prev {
                let row = order[k];
                return Err(Error::row(
                    &log.path,
                    row,
                    format!(
                        "session {id:?}: turn_idx {turn} arrives after turn {prev} \
                         (turns of a session must arrive in increasing order)"
                    ),
                ));
            }
        }
        last.insert(id.as_str(), turn);
    }
    Ok(())
}

fn load_engine(path: &Path) -> Result<EngineCounters> {
    let (mut rdr, headers) = csv_reader(path)?;
    let cols = EngineColumns::find(path, &headers)?;
    let mut e = EngineCounters {
        t_s: Vec::new(),
        num_requests_running: Vec::new(),
        num_requests_waiting: Vec::new(),
        prompt_tokens_total: Vec::new(),
        generation_tokens_total: Vec::new(),
        gpu_cache_usage_perc: Vec::new(),
        iteration_tokens_total_count: Vec::new(),
        iteration_tokens_total_sum: Vec::new(),
        prefix_cache_queries_total: Vec::new(),
        prefix_cache_hits_total: Vec::new(),
    };
    for (i, rec) in rdr.records().enumerate() {
        let (rec, line) = checked_record(path, &headers, i, rec)?;
        let t = parse_f64(path, line, "timestamp", &rec[cols.ts])?;
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
        cols.push_counts(path, line, &rec, &mut e)?;
    }
    if e.t_s.is_empty() {
        return Err(Error::content(path, "no rows"));
    }
    Ok(e)
}

/// The engine counters a file may lack (NaN where absent), in [`optional_counters`] order.
const OPTIONAL_COUNTERS: [&str; 7] = [
    "prompt_tokens_total",
    "generation_tokens_total",
    "gpu_cache_usage_perc",
    "iteration_tokens_total_count",
    "iteration_tokens_total_sum",
    "prefix_cache_queries_total",
    "prefix_cache_hits_total",
];

/// The series of [`OPTIONAL_COUNTERS`], in that order.
fn optional_counters(e: &mut EngineCounters) -> [&mut Vec<f64>; 7] {
    [
        &mut e.prompt_tokens_total,
        &mut e.generation_tokens_total,
        &mut e.gpu_cache_usage_perc,
        &mut e.iteration_tokens_total_count,
        &mut e.iteration_tokens_total_sum,
        &mut e.prefix_cache_queries_total,
        &mut e.prefix_cache_hits_total,
    ]
}

/// Where the engine counters are in `engine.csv`.
struct EngineColumns {
    ts: usize,
    running: usize,
    waiting: usize,
    optional: [Option<usize>; 7],
}

impl EngineColumns {
    fn find(path: &Path, headers: &[String]) -> Result<EngineColumns> {
        Ok(EngineColumns {
            ts: column(path, headers, "timestamp")?,
            running: column(path, headers, "num_requests_running")?,
            waiting: column(path, headers, "num_requests_waiting")?,
            optional: OPTIONAL_COUNTERS.map(|name| headers.iter().position(|h| h == name)),
        })
    }

    /// Appends one row's gauges and counters (all but the timestamp) to `e`.
    fn push_counts(
        &self,
        path: &Path,
        line: usize,
        rec: &csv::StringRecord,
        e: &mut EngineCounters,
    ) -> Result<()> {
        e.num_requests_running.push(parse_count(
            path,
            line,
            "num_requests_running",
            &rec[self.running],
        )?);
        e.num_requests_waiting.push(parse_count(
            path,
            line,
            "num_requests_waiting",
            &rec[self.waiting],
        )?);
        let columns = self.optional.iter().zip(OPTIONAL_COUNTERS);
        for ((c, name), series) in columns.zip(optional_counters(e)) {
            series.push(c.map_or(Ok(f64::NAN), |c| parse_count(path, line, name, &rec[c]))?);
        }
        Ok(())
    }
}
