//! Artifacts on disk (SPEC §5, §9): the per-spec fit cache, the trace store and templates, and
//! the helpers every writer uses. Every file is written to a temporary file in its folder and
//! renamed into place, so a crash or kill never leaves a half-written artifact.
//!
//! Per-spec layout (content-addressed by [`InferenceModelSpec::cache_hash`], as the peer):
//! `<root>/<hash>/logistic_fit.json`, `itl_fit.json`, `traces/` and `_manifest.json`, the last
//! written last: a spec folder is complete iff its manifest exists and names the same inputs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::fits::itl_mixture::ItlMixture;
use crate::fits::logistic::LogisticFit;
use crate::spec::InferenceModelSpec;
use crate::table::{write_parquet, Column, ParquetTable, Table};
use crate::traces::{InferenceTrace, TemplateOptions};

pub(crate) use crate::io::write_atomic;
pub use crate::io::write_json;

/// SHA-256 of a file, hex.
pub(crate) fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| Error::io(path, e))?;
    Ok(hex(&h.finalize()))
}

/// SHA-256 of bytes, hex.
pub(crate) fn sha256_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// ISO-8601 UTC time, seconds precision.
pub(crate) fn now_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%S+00:00").to_string())
        .unwrap_or_default()
}

/// The three logistic curves of one spec (`logistic_fit.json`, schema `logistic_v1`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct LogisticFits {
    /// Replica power (W, total over its GPUs).
    pub(crate) power: LogisticFit,
    /// Median (or mean) ITL (s).
    pub(crate) latency: LogisticFit,
    /// Output tokens/s of the replica.
    pub(crate) throughput: LogisticFit,
}

/// Everything stored for one spec.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct SpecArtifacts {
    pub(crate) logistic: Option<LogisticFits>,
    /// ITL mixture per batch size.
    pub(crate) itl: BTreeMap<u32, ItlMixture>,
    /// Replica power trace per batch size.
    pub(crate) traces: BTreeMap<u32, InferenceTrace>,
    /// Fit quality figures as the pipeline reports them (`fit_report.json`).
    pub(crate) report: Option<Value>,
}

/// The per-spec cache under one root folder.
#[derive(Debug, Clone)]
pub(crate) struct SpecStore {
    pub(crate) root: PathBuf,
}

const MANIFEST: &str = "_manifest.json";

impl SpecStore {
    pub(crate) fn new(root: impl Into<PathBuf>) -> Self {
        SpecStore { root: root.into() }
    }

    pub(crate) fn dir(&self, spec: &InferenceModelSpec) -> PathBuf {
        self.root.join(spec.cache_hash())
    }

    /// True when the spec's folder is complete and was built from `inputs_sha256`.
    fn is_current(&self, spec: &InferenceModelSpec, inputs_sha256: &str) -> bool {
        let p = self.dir(spec).join(MANIFEST);
        std::fs::read_to_string(p)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| {
                v.get("inputs_sha256")
                    .and_then(Value::as_str)
                    .map(|s| s == inputs_sha256)
            })
            .unwrap_or(false)
    }

    /// Writes the artifacts, then the manifest (the completion marker).
    pub(crate) fn save(
        &self,
        spec: &InferenceModelSpec,
        a: &SpecArtifacts,
        inputs_sha256: &str,
    ) -> Result<()> {
        let dir = self.dir(spec);
        if let Some(l) = &a.logistic {
            write_json(
                &dir.join("logistic_fit.json"),
                &json!({
                    "schema": "logistic_v1",
                    "model_label": spec.model_label,
                    "power": l.power,
                    "latency": l.latency,
                    "throughput": l.throughput,
                }),
            )?;
        }
        if !a.itl.is_empty() {
            let per_batch: BTreeMap<String, &ItlMixture> =
                a.itl.iter().map(|(b, m)| (b.to_string(), m)).collect();
            write_json(
                &dir.join("itl_fit.json"),
                &json!({
                    "schema": "itl_fit.lognormal_mixture_2",
                    "model_label": spec.model_label,
                    "per_batch": per_batch,
                }),
            )?;
        }
        if !a.traces.is_empty() {
            let entries: Vec<(String, u32, &InferenceTrace)> = a
                .traces
                .iter()
                .map(|(b, t)| (spec.model_label.clone(), *b, t))
                .collect();
            TraceStore::save(&dir.join("traces"), &entries)?;
        }
        if let Some(r) = &a.report {
            write_json(&dir.join("fit_report.json"), r)?;
        }
        write_json(
            &dir.join(MANIFEST),
            &json!({
                "schema_version": 3,
                "spec_hash": spec.cache_hash(),
                "spec": spec,
                "inputs_sha256": inputs_sha256,
                "powersynth_version": env!("CARGO_PKG_VERSION"),
                "written_utc": now_utc(),
                "artifacts": {
                    "logistic_fit": a.logistic.is_some(),
                    "itl_batches": a.itl.keys().collect::<Vec<_>>(),
                    "trace_batches": a.traces.keys().collect::<Vec<_>>(),
                },
            }),
        )
    }

    /// Loads what the spec's folder holds; a missing folder or manifest is an error naming it.
    pub(crate) fn load(&self, spec: &InferenceModelSpec) -> Result<SpecArtifacts> {
        let dir = self.dir(spec);
        let manifest = dir.join(MANIFEST);
        if !manifest.is_file() {
            return Err(Error::content(
                &manifest,
                format!("not found: spec {:?} has not been built", spec.model_label),
            ));
        }
        let mut a = SpecArtifacts::default();
        let lpath = dir.join("logistic_fit.json");
        if lpath.is_file() {
            a.logistic = Some(crate::io::read_json(&lpath)?);
        }
        let ipath = dir.join("itl_fit.json");
        if ipath.is_file() {
            #[derive(Deserialize)]
            struct ItlFile {
                per_batch: BTreeMap<String, ItlMixture>,
            }
            let f: ItlFile = crate::io::read_json(&ipath)?;
            for (k, m) in f.per_batch {
                let b = k.parse().map_err(|_| {
                    Error::content(&ipath, format!("per_batch key {k:?} is not a batch size"))
                })?;
                a.itl.insert(b, m);
            }
        }
        let rpath = dir.join("fit_report.json");
        if rpath.is_file() {
            a.report = Some(crate::io::read_json(&rpath)?);
        }
        let tdir = dir.join("traces");
        if tdir.join(TraceStore::MANIFEST).is_file() {
            for (_, b, t) in TraceStore::load(&tdir.join(TraceStore::MANIFEST))? {
                a.traces.insert(b, t);
            }
        }
        Ok(a)
    }

    /// "Ensure" semantics: load the spec's artifacts if they are current for `inputs_sha256`,
    /// else `build` them and save. Returns the artifacts and whether they were built.
    pub(crate) fn ensure(
        &self,
        spec: &InferenceModelSpec,
        inputs_sha256: &str,
        force: bool,
        build: impl FnOnce() -> Result<SpecArtifacts>,
    ) -> Result<(SpecArtifacts, bool)> {
        if !force && self.is_current(spec, inputs_sha256) {
            if let Ok(a) = self.load(spec) {
                return Ok((a, false));
            }
        }
        let a = build()?;
        self.save(spec, &a, inputs_sha256)?;
        Ok((a, true))
    }
}

/// A folder of traces: `manifest.parquet` (model_label, batch_size, measured_gpus, file,
/// duration_s, mean_power_w) and one parquet file per trace in `series/` (model_label,
/// batch_size, t_s, power_w: one schema for the folder), paths relative to the manifest's
/// folder (stores written before `series/` existed load too).
pub(crate) struct TraceStore;

impl TraceStore {
    const MANIFEST: &'static str = "manifest.parquet";

    pub(crate) fn save(dir: &Path, entries: &[(String, u32, &InferenceTrace)]) -> Result<()> {
        let mut files = Vec::new();
        for (label, batch, trace) in entries {
            let file = format!("series/{}_batch_{batch}.parquet", sanitize(label));
            let n = trace.t_s.len();
            write_parquet(
                &dir.join(&file),
                &Table::new()
                    .with("model_label", Column::Str(vec![label.clone(); n]))
                    .with("batch_size", Column::I64(vec![*batch as i64; n]))
                    .with("t_s", Column::F64(trace.t_s.clone()))
                    .with("power_w", Column::F64(trace.power_w.clone())),
            )?;
            files.push(file);
        }
        write_parquet(
            &dir.join(Self::MANIFEST),
            &Table::new()
                .with(
                    "model_label",
                    Column::Str(entries.iter().map(|e| e.0.clone()).collect()),
                )
                .with(
                    "batch_size",
                    Column::I64(entries.iter().map(|e| e.1 as i64).collect()),
                )
                .with(
                    "measured_gpus",
                    Column::I64(entries.iter().map(|e| e.2.measured_gpus as i64).collect()),
                )
                .with("file", Column::Str(files))
                .with(
                    "duration_s",
                    Column::F64(entries.iter().map(|e| e.2.duration_s()).collect()),
                )
                .with(
                    "mean_power_w",
                    Column::F64(entries.iter().map(|e| e.2.mean_power_w()).collect()),
                ),
        )
    }

    pub(crate) fn load(manifest: &Path) -> Result<Vec<(String, u32, InferenceTrace)>> {
        let base = manifest.parent().unwrap_or(Path::new("."));
        let t = ParquetTable::read(manifest)?;
        let labels = t.strings("model_label")?;
        let batches = t.integers("batch_size")?;
        let gpus = t.integers("measured_gpus")?;
        let files = t.strings("file")?;
        let mut out = Vec::new();
        for i in 0..t.num_rows() {
            let file = files[i]
                .clone()
                .ok_or_else(|| Error::row(manifest, i, "file is null"))?;
            let path = base.join(&file);
            let tr = ParquetTable::read(&path)?;
            let trace = InferenceTrace::new(
                tr.floats("t_s")?,
                tr.floats("power_w")?,
                gpus[i].max(0) as u32,
            )
            .map_err(|e| Error::content(&path, e.to_string()))?;
            out.push((
                labels[i].clone().unwrap_or_default(),
                batches[i].max(0) as u32,
                trace,
            ));
        }
        Ok(out)
    }
}

/// Per-GPU templates of a set of traces for one simulation grid.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TemplateStore {
    pub(crate) options: TemplateOptions,
    /// (model_label, batch_size) → per-GPU power (W) at i·dt.
    pub(crate) templates: BTreeMap<(String, u32), Vec<f64>>,
}

impl TemplateStore {
    /// Builds every template.
    pub(crate) fn build(
        traces: &[(String, u32, InferenceTrace)],
        options: TemplateOptions,
    ) -> Result<Self> {
        options.validate()?;
        let mut templates = BTreeMap::new();
        for (label, batch, trace) in traces {
            let t = crate::traces::build_template(trace, &options)
                .map_err(|e| Error::data(format!("template {label} batch {batch}: {e}")))?;
            templates.insert((label.clone(), *batch), t);
        }
        Ok(TemplateStore { options, templates })
    }

    /// Reads the templates of a `templates.parquet` into `self` (rows of a template in step
    /// order; a template already present is replaced, as a later trace replaces it in
    /// [`TemplateStore::build`]).
    pub(crate) fn extend_from_file(&mut self, path: &Path) -> Result<()> {
        let t = ParquetTable::read(path)?;
        let labels = t.strings("model_label")?;
        let batches = t.integers("batch_size")?;
        let steps = t.integers("step")?;
        let power = t.floats("power_w_per_gpu")?;
        let mut read: BTreeMap<(String, u32), Vec<f64>> = BTreeMap::new();
        for i in 0..t.num_rows() {
            let key = (
                labels[i].clone().unwrap_or_default(),
                batches[i].max(0) as u32,
            );
            let v = read.entry(key).or_default();
            if steps[i] != v.len() as i64 {
                return Err(Error::row(
                    path,
                    i,
                    format!("step {} out of order (expected {})", steps[i], v.len()),
                ));
            }
            v.push(power[i]);
        }
        self.templates.extend(read);
        Ok(())
    }

    /// `templates.parquet`: model_label, batch_size, step, t_s, power_w_per_gpu.
    pub(crate) fn save(&self, path: &Path) -> Result<()> {
        let (mut label, mut batch, mut step, mut t, mut p) =
            (vec![], vec![], vec![], vec![], vec![]);
        for ((l, b), values) in &self.templates {
            for (i, v) in values.iter().enumerate() {
                label.push(l.clone());
                batch.push(*b as i64);
                step.push(i as i64);
                t.push(i as f64 * self.options.dt_s);
                p.push(*v);
            }
        }
        write_parquet(
            path,
            &Table::new()
                .with("model_label", Column::Str(label))
                .with("batch_size", Column::I64(batch))
                .with("step", Column::I64(step))
                .with("t_s", Column::F64(t))
                .with("power_w_per_gpu", Column::F64(p)),
        )
    }
}

/// A label as a file-name part: letters, digits, `-`, `_`, `.`; anything else becomes `_`.
pub(crate) fn sanitize(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn spec() -> InferenceModelSpec {
        InferenceModelSpec::builder("m", "org/m", "H100", "lm-arena-chat")
            .batch_sizes(vec![8, 16])
            .build()
            .unwrap()
    }

    #[test]
    fn atomic_write_leaves_nothing_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.json");
        let r = write_atomic(&p, |f| {
            f.write_all(b"partial").unwrap();
            Err(Error::data("boom"))
        });
        assert!(r.is_err());
        assert!(!p.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn ensure_builds_once_then_loads() {
        let dir = tempfile::tempdir().unwrap();
        let store = SpecStore::new(dir.path());
        let s = spec();
        let fit = LogisticFit {
            l: 1.0,
            x0: 4.0,
            k: 1.0,
            b0: 2.0,
        };
        let trace =
            InferenceTrace::new((0..6).map(|i| i as f64).collect(), vec![300.0; 6], 1).unwrap();
        let build = || {
            Ok(SpecArtifacts {
                logistic: Some(LogisticFits {
                    power: fit,
                    latency: fit,
                    throughput: fit,
                }),
                itl: BTreeMap::from([(8, ItlMixture::EMPTY)]),
                traces: BTreeMap::from([(8, trace.clone())]),
                report: Some(json!({"n": 1})),
            })
        };
        let (a, built) = store.ensure(&s, "h1", false, build).unwrap();
        assert!(built);
        let (b, built) = store
            .ensure(&s, "h1", false, || panic!("must not rebuild"))
            .unwrap();
        assert!(!built);
        assert_eq!(a, b);
        let (_, built) = store.ensure(&s, "h2", false, build).unwrap();
        assert!(built, "changed inputs must rebuild");
        let (_, built) = store.ensure(&s, "h2", true, build).unwrap();
        assert!(built, "force must rebuild");
        let text = std::fs::read_to_string(store.dir(&s).join("logistic_fit.json")).unwrap();
        assert!(
            text.contains("\"schema\": \"logistic_v1\"") && text.contains("\"L\": 1.0"),
            "{text}"
        );
    }

    #[test]
    fn missing_spec_names_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let e = SpecStore::new(dir.path())
            .load(&spec())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("_manifest.json") && e.contains("has not been built"),
            "{e}"
        );
    }
}
