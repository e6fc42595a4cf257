//! ML.ENERGY leaderboard summaries (SPEC §2.2): one JSON file per task,
//! `{"task", "configurations": [...]}`, one configuration per benchmark run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};

/// One leaderboard configuration: a model on `num_gpus` GPUs at one `max_num_seqs`.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaderboardConfig {
    pub task: String,
    pub model_id: String,
    pub(crate) nickname: String,
    pub gpu_model: String,
    pub num_gpus: u32,
    pub max_num_seqs: u32,
    /// Mean steady-state power summed over the run's GPUs (W).
    pub avg_power_w: f64,
    pub median_itl_s: f64,
    pub p90_itl_s: f64,
    pub p95_itl_s: f64,
    pub p99_itl_s: f64,
    pub output_throughput_tps: f64,
    pub(crate) energy_per_token_j: f64,
    pub(crate) avg_batch_size: f64,
    /// `architecture` as the leaderboard writes it (`Dense Transformer`, `MoE`, …; empty when
    /// absent).
    pub architecture: String,
    /// Parameters used per token, billions (NaN when absent).
    pub active_params_b: f64,
    /// Mean output tokens per request (NaN when absent).
    pub(crate) avg_output_len: f64,
}

impl LeaderboardConfig {
    /// The batch size the run held: `avg_batch_size` where given, else `max_num_seqs`.
    pub fn batch_size(&self) -> f64 {
        if self.avg_batch_size.is_finite() && self.avg_batch_size >= 1.0 {
            self.avg_batch_size
        } else {
            self.max_num_seqs as f64
        }
    }

    /// Whether the leaderboard calls the model a mixture of experts.
    pub(crate) fn is_moe(&self) -> bool {
        self.architecture.to_ascii_lowercase().contains("moe")
            || self.architecture.to_ascii_lowercase().contains("mixture")
    }
}

/// All configurations of one (task, model, GPU model, GPU count), sorted by batch size.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaderboardGroup {
    pub task: String,
    pub model_id: String,
    pub gpu_model: String,
    pub num_gpus: u32,
    pub configs: Vec<LeaderboardConfig>,
}

/// Reads every `<task>.json` in `dir` (sorted by name), keeping only `tasks` when given.
/// Returns the files read with the configurations.
pub fn load_dir(
    dir: &Path,
    tasks: Option<&[String]>,
) -> Result<(Vec<PathBuf>, Vec<LeaderboardConfig>)> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter(|p| {
            tasks.is_none_or(|t| {
                p.file_stem()
                    .is_some_and(|s| t.iter().any(|t| s.to_string_lossy() == *t))
            })
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::content(
            dir,
            match tasks {
                Some(t) => format!("no leaderboard file for tasks {t:?} (expected <task>.json)"),
                None => "no leaderboard .json files".to_string(),
            },
        ));
    }
    if let Some(t) = tasks {
        for task in t {
            if !files
                .iter()
                .any(|p| p.file_stem().is_some_and(|s| s.to_string_lossy() == *task))
            {
                return Err(Error::content(
                    dir,
                    format!("no file {task}.json for task {task:?}"),
                ));
            }
        }
    }
    let mut all = Vec::new();
    for f in &files {
        all.extend(load_task_file(f)?);
    }
    Ok((files, all))
}

/// Reads one task file, validating every configuration.
fn load_task_file(path: &Path) -> Result<Vec<LeaderboardConfig>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    if text.trim().is_empty() {
        return Err(Error::content(path, "file is empty"));
    }
    let doc: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })?;
    let task = doc
        .get("task")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::content(path, "missing string field \"task\""))?
        .to_string();
    let configs = doc
        .get("configurations")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::content(path, "missing list field \"configurations\""))?;
    if configs.is_empty() {
        return Err(Error::content(path, "\"configurations\" is empty"));
    }
    configs
        .iter()
        .enumerate()
        .map(|(row, c)| parse_config(path, row, &task, c))
        .collect()
}

fn parse_config(path: &Path, row: usize, task: &str, c: &Value) -> Result<LeaderboardConfig> {
    let f = ConfigFields { path, row, c };
    let gpu_model = f.text("gpu_model")?;
    let num_gpus = f.count("num_gpus")?;
    let avg_power_w = f.avg_power_w(&gpu_model, num_gpus)?;
    let cfg = LeaderboardConfig {
        task: task.to_string(),
        model_id: f.text("model_id")?,
        nickname: f.optional_text("nickname"),
        gpu_model,
        num_gpus,
        max_num_seqs: f.count("max_num_seqs")?,
        avg_power_w,
        median_itl_s: f.ms("median_itl_ms")?,
        p90_itl_s: f.ms("p90_itl_ms")?,
        p95_itl_s: f.ms("p95_itl_ms")?,
        p99_itl_s: f.ms("p99_itl_ms")?,
        output_throughput_tps: f.bounded("output_throughput_tokens_per_sec", 1e7)?,
        energy_per_token_j: f.bounded("energy_per_token_joules", 1e4)?,
        avg_batch_size: f.num("avg_batch_size").unwrap_or(f64::NAN),
        architecture: f.optional_text("architecture"),
        active_params_b: f.positive("activated_params_billions").unwrap_or(f64::NAN),
        avg_output_len: f.positive("avg_output_len").unwrap_or(f64::NAN),
    };
    f.check_itl_order(&cfg)?;
    Ok(cfg)
}

/// One configuration object of a task file and where it is: typed field readers whose errors
/// name the file, the row and the field.
struct ConfigFields<'a> {
    path: &'a Path,
    row: usize,
    c: &'a Value,
}

impl ConfigFields<'_> {
    fn err(&self, what: String) -> Error {
        Error::row(
            self.path,
            self.row,
            format!("configurations[{}]: {what}", self.row),
        )
    }

    fn text(&self, k: &str) -> Result<String> {
        self.c
            .get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| self.err(format!("field {k:?} missing or not a string")))
    }

    /// A string field, empty when absent.
    fn optional_text(&self, k: &str) -> String {
        self.c
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    }

    fn num(&self, k: &str) -> Result<f64> {
        let v = self
            .c
            .get(k)
            .ok_or_else(|| self.err(format!("field {k:?} missing")))?;
        let x = v
            .as_f64()
            .ok_or_else(|| self.err(format!("field {k:?} = {v} is not a number")))?;
        if !x.is_finite() {
            return Err(self.err(format!("field {k:?} = {x} is not finite")));
        }
        Ok(x)
    }

    fn positive(&self, k: &str) -> Result<f64> {
        let x = self.num(k)?;
        if x <= 0.0 {
            return Err(self.err(format!("field {k:?} = {x} must be > 0")));
        }
        Ok(x)
    }

    fn count(&self, k: &str) -> Result<u32> {
        let x = self.num(k)?;
        if x < 1.0 || x.fract() != 0.0 || x > u32::MAX as f64 {
            return Err(self.err(format!("field {k:?} = {x} must be a positive integer")));
        }
        Ok(x as u32)
    }

    /// A positive field at most `max`: upper bounds far beyond any real configuration keep
    /// the fits finite (a value of 1e308 was accepted and wrote nulls downstream).
    fn bounded(&self, k: &str, max: f64) -> Result<f64> {
        let x = self.positive(k)?;
        if x > max {
            return Err(self.err(format!("field {k:?} = {x} is absurd (> {max})")));
        }
        Ok(x)
    }

    /// A latency in ms (at most a minute), returned in s.
    fn ms(&self, k: &str) -> Result<f64> {
        self.bounded(k, 60_000.0).map(|v| v / 1000.0)
    }

    /// `avg_power_watts`, at most twice the board limit of the run's GPUs.
    fn avg_power_w(&self, gpu_model: &str, num_gpus: u32) -> Result<f64> {
        let avg_power_w = self.positive("avg_power_watts")?;
        let limit = 2.0 * super::board_limit_w(gpu_model) * num_gpus as f64;
        if avg_power_w > limit {
            return Err(self.err(format!(
                "field \"avg_power_watts\" = {avg_power_w} W is absurd for {num_gpus} × {gpu_model} (> 2 × board limit = {limit} W)"
            )));
        }
        Ok(avg_power_w)
    }

    fn check_itl_order(&self, cfg: &LeaderboardConfig) -> Result<()> {
        if !(cfg.median_itl_s <= cfg.p90_itl_s
            && cfg.p90_itl_s <= cfg.p95_itl_s
            && cfg.p95_itl_s <= cfg.p99_itl_s)
        {
            return Err(self.err(format!(
                "ITL percentiles not increasing: p50 {} ≤ p90 {} ≤ p95 {} ≤ p99 {} ms fails",
                cfg.median_itl_s * 1e3,
                cfg.p90_itl_s * 1e3,
                cfg.p95_itl_s * 1e3,
                cfg.p99_itl_s * 1e3
            )));
        }
        Ok(())
    }
}

/// Groups configurations by (task, model_id, gpu_model, num_gpus), sorted by those keys; each
/// group's configurations sorted by batch size (ties keep file order).
pub fn groups(configs: &[LeaderboardConfig]) -> Vec<LeaderboardGroup> {
    let mut map: BTreeMap<(String, String, String, u32), Vec<LeaderboardConfig>> = BTreeMap::new();
    for c in configs {
        map.entry((
            c.task.clone(),
            c.model_id.clone(),
            c.gpu_model.clone(),
            c.num_gpus,
        ))
        .or_default()
        .push(c.clone());
    }
    map.into_iter()
        .map(|((task, model_id, gpu_model, num_gpus), mut configs)| {
            configs.sort_by_key(|c| c.max_num_seqs);
            LeaderboardGroup {
                task,
                model_id,
                gpu_model,
                num_gpus,
                configs,
            }
        })
        .collect()
}

impl LeaderboardGroup {
    /// A stable label: `<task>/<model_id>/<gpu_model>x<num_gpus>`.
    pub fn label(&self) -> String {
        format!(
            "{}/{}/{}x{}",
            self.task, self.model_id, self.gpu_model, self.num_gpus
        )
    }
    /// Distinct batch sizes, ascending.
    pub(crate) fn batch_sizes(&self) -> Vec<u32> {
        let mut b: Vec<u32> = self.configs.iter().map(|c| c.max_num_seqs).collect();
        b.dedup();
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_json(power: &str) -> String {
        format!(
            r#"{{"task":"t","configurations":[{{"model_id":"o/m","nickname":"M","gpu_model":"H100",
            "num_gpus":1,"max_num_seqs":8,"avg_power_watts":{power},"median_itl_ms":10,
            "p90_itl_ms":12,"p95_itl_ms":13,"p99_itl_ms":20,"output_throughput_tokens_per_sec":500,
            "energy_per_token_joules":0.5,"avg_batch_size":7.9}}]}}"#
        )
    }

    fn load(text: &str) -> Result<Vec<LeaderboardConfig>> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.json");
        std::fs::write(&p, text).unwrap();
        load_task_file(&p)
    }

    #[test]
    fn parses_a_valid_file() {
        let c = load(&config_json("400.5")).unwrap();
        assert_eq!(c[0].avg_power_w, 400.5);
        assert!((c[0].p99_itl_s - 0.020).abs() < 1e-15);
    }

    #[test]
    fn rejects_bad_values_with_row_and_field() {
        for (power, needle) in [
            ("-5", "must be > 0"),
            ("2000", "absurd"),
            ("\"x\"", "is not a number"),
        ] {
            let e = load(&config_json(power)).unwrap_err().to_string();
            assert!(
                e.contains("t.json, row 0") && e.contains("avg_power_watts") && e.contains(needle),
                "{e}"
            );
        }
        let e = load("").unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let e = load(&config_json("400")[..80]).unwrap_err().to_string();
        assert!(e.contains("invalid JSON") && e.contains("line"), "{e}");
        let e = load(&config_json("NaN")).unwrap_err().to_string();
        assert!(e.contains("invalid JSON"), "{e}");
        // 1e308 where a latency or throughput goes: refused at the row, not nulls downstream.
        for (from, to, field) in [
            ("\"p99_itl_ms\":20", "\"p99_itl_ms\":1e308", "p99_itl_ms"),
            (
                "\"output_throughput_tokens_per_sec\":500",
                "\"output_throughput_tokens_per_sec\":1e308",
                "output_throughput_tokens_per_sec",
            ),
        ] {
            let e = load(&config_json("400").replace(from, to))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("row 0") && e.contains(field) && e.contains("absurd"),
                "{e}"
            );
        }
    }
}
