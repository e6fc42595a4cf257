//! A pipeline over many groups split into shards (`build-dataset --shard I/N`) and merged
//! (`build-dataset --merge-shards`), in one output folder.
//!
//! Shard I fits its contiguous share of the groups into the common spec store (`specs/`), writes
//! its fit tables in `shard=I` partitions (`fits/logistic_fits/shard=I/part-0.parquet`, …) and
//! its templates in `templates/shard=I/`; the last shard also runs the measured stage (its
//! tables are whole). Each shard records its group results in `shards/shard=I.json`. The merge
//! checks that shards 0 … N − 1 of one pipeline run are all there, writes what the unsplit run
//! writes (fit tables and `fits/default_fits.json` from the groups in order, templates, the
//! folder's `manifest.json`) and removes the partitions and records.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    fit_quality, templates_path, write_compact_fits, write_fit_tables, write_manifest, GroupResult,
    ItlQualityRow, PipelineConfig, RunOptions, Summary,
};
use crate::error::{Error, Result};
use crate::shard::Shard;
use crate::store::{self, TemplateStore};

const SCHEMA: &str = "powersynth.dataset_shard.v1";

/// What a shard of a pipeline run leaves for the merge.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DatasetShardRecord {
    schema: String,
    shard_index: u32,
    shard_count: u32,
    /// The pipeline as parsed, the source and measured paths and the seed: shards of other
    /// runs do not merge.
    run_key: String,
    source: String,
    derived_from: Value,
    groups: Vec<GroupResult>,
    groups_built: usize,
    outputs: Vec<(String, usize)>,
    inputs: Vec<PathBuf>,
    measured_runs: usize,
    itl_quality: Vec<ItlQualityRow>,
}

fn run_key(cfg: &PipelineConfig, opts: &RunOptions) -> String {
    let parsed = serde_json::to_string(cfg).unwrap_or_default();
    format!(
        "pipeline {} sha256 {}, source path {:?}, measured path {:?}",
        cfg.name,
        &store::sha256_bytes(parsed.as_bytes())[..16],
        opts.source_path,
        opts.measured_path
    )
}

fn record_path(out: &Path, shard: Shard) -> PathBuf {
    out.join("shards")
        .join(format!("{}.json", shard.partition()))
}

/// Writes shard `opts.shard`'s record (the last file a shard writes).
pub(super) fn write_record(
    cfg: &PipelineConfig,
    opts: &RunOptions,
    summary: &Summary,
    groups: &[GroupResult],
    derived_from: &Value,
    inputs: &[PathBuf],
) -> Result<()> {
    let r = DatasetShardRecord {
        schema: SCHEMA.into(),
        shard_index: opts.shard.index,
        shard_count: opts.shard.count,
        run_key: run_key(cfg, opts),
        source: summary.source.clone(),
        derived_from: derived_from.clone(),
        groups: groups.to_vec(),
        groups_built: summary.groups_built,
        outputs: summary.outputs.clone(),
        inputs: inputs.to_vec(),
        measured_runs: summary.measured_runs,
        itl_quality: summary.itl_quality.clone(),
    };
    store::write_json(&record_path(&opts.out_dir, opts.shard), &r)
}

/// Reads the records and checks they are shards 0 … N − 1 of this pipeline run.
fn read_records(cfg: &PipelineConfig, opts: &RunOptions) -> Result<Vec<DatasetShardRecord>> {
    let folder = opts.out_dir.join("shards");
    let entries = std::fs::read_dir(&folder).map_err(|e| Error::io(&folder, e))?;
    let mut records = Vec::new();
    for e in entries {
        let path = e.map_err(|e| Error::io(&folder, e))?.path();
        if path.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let r: DatasetShardRecord = crate::io::read_json(&path)?;
        if r.schema != SCHEMA {
            return Err(Error::content(
                &path,
                format!("schema {:?}, expected {SCHEMA:?}", r.schema),
            ));
        }
        if r.run_key != run_key(cfg, opts) {
            return Err(Error::content(
                &path,
                format!(
                    "a shard of another run ({}); this merge is {}: same pipeline file, \
                     --source-path and --measured-path are needed",
                    r.run_key,
                    run_key(cfg, opts)
                ),
            ));
        }
        records.push(r);
    }
    records.sort_by_key(|r| r.shard_index);
    let n = records.first().map_or(0, |r| r.shard_count);
    let present: Vec<u32> = records.iter().map(|r| r.shard_index).collect();
    let missing: Vec<u32> = (0..n).filter(|i| !present.contains(i)).collect();
    if n == 0 || !missing.is_empty() || records.iter().any(|r| r.shard_count != n) {
        return Err(Error::content(
            &folder,
            format!(
                "shards {missing:?} of {n} are missing or disagree on N (have {present:?}): \
                 run every `--shard I/{n}` before merging"
            ),
        ));
    }
    Ok(records)
}

/// Merges the shards in `opts.out_dir` (see the module doc); returns the unsplit run's summary.
pub fn merge(cfg: &PipelineConfig, opts: &RunOptions) -> Result<Summary> {
    cfg.validate()?;
    let out = &opts.out_dir;
    let records = read_records(cfg, opts)?;
    let n = records[0].shard_count;
    tracing::info!(shards = n, out = %out.display(), "merging dataset shards");
    let groups: Vec<GroupResult> = records.iter().flat_map(|r| r.groups.clone()).collect();
    let mut outputs = Vec::new();
    write_fit_tables(out, Shard::WHOLE, &groups, &mut outputs)?;
    write_compact_fits(out, &records[0].derived_from, groups.clone(), &mut outputs)?;
    let last = records.last().expect("records checked non-empty");
    outputs.extend(
        last.outputs
            .iter()
            .filter(|(f, _)| f.starts_with("measured/"))
            .cloned(),
    );
    if let Some(t) = &cfg.templates {
        let mut store = TemplateStore {
            options: *t,
            templates: Default::default(),
        };
        for r in &records {
            let p = templates_path(out, Shard::new(r.shard_index, n)?);
            if p.is_file() {
                store.extend_from_file(&p)?;
            }
        }
        if !store.templates.is_empty() {
            store.save(&templates_path(out, Shard::WHOLE))?;
            outputs.push((
                "templates/templates.parquet".into(),
                store.templates.len() * t.len(),
            ));
        }
    }
    let mut inputs: Vec<PathBuf> = Vec::new();
    for p in records.iter().flat_map(|r| r.inputs.iter()) {
        if !inputs.contains(p) {
            inputs.push(p.clone());
        }
    }
    let (strictly, warnings) = fit_quality(&groups);
    let built: usize = records.iter().map(|r| r.groups_built).sum();
    let summary = Summary {
        pipeline: cfg.name.clone(),
        source: records[0].source.clone(),
        groups: groups.len(),
        groups_built: built,
        groups_loaded: groups.len() - built,
        refined_strictly_better: strictly,
        warnings,
        outputs,
        measured_runs: last.measured_runs,
        itl_quality: last.itl_quality.clone(),
    };
    write_manifest(cfg, opts, &summary, &inputs)?;
    remove_partitions(out, n)?;
    Ok(summary)
}

/// Removes the shards' partitions and records once the merged files are in place.
fn remove_partitions(out: &Path, n: u32) -> Result<()> {
    for i in 0..n {
        let part = Shard { index: i, count: n }.partition();
        for dir in [
            out.join("fits/logistic_fits").join(&part),
            out.join("fits/itl_mixtures").join(&part),
            out.join("templates").join(&part),
        ] {
            if dir.is_dir() {
                std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            }
        }
    }
    let records = out.join("shards");
    std::fs::remove_dir_all(&records).map_err(|e| Error::io(&records, e))
}
