//! `merge-shards`: the shards of a run (`simulate --shard I/N`, each in its `shard=I`
//! partitions) summed into the outputs the unsplit run writes.
//!
//! Rule: a column whose name ends in `_w` is power and is summed over the shards; every other
//! column (datacenter, tick, time, model, row, rack, replicas, batch size, observed ITL) is the
//! same in every shard and is checked to be. The facility tables and metrics are then computed
//! from the summed steps by the same code as an unsplit run's, so the merged folder equals the
//! unsplit run's within floating-point summation order. Each table is held in memory while it
//! is merged (its shards' files are read whole).

use std::path::Path;

use super::sink::{
    shard_record_path, write_facility_outputs, DcFacilitySummary, FacilitySeries, PerSecond,
    ShardRecord, SHARD_RECORD_SCHEMA,
};
use crate::error::{Error, Result};
use crate::shard::Shard;
use crate::table::{write_parquet, Column, ParquetTable, Table};

/// What a merge produced.
#[derive(Debug, Clone)]
pub struct MergeSummary {
    pub shards: u32,
    /// Tables written (folder names).
    pub tables: Vec<String>,
    pub summaries: Vec<DcFacilitySummary>,
    /// Facility and per-phase power per simulated second, over all datacenters (for the report).
    pub per_second: PerSecond,
}

/// Reads `dir/shards/shard=*.json` and checks that they are shards 0 … N − 1 of one run.
fn read_shard_records(dir: &Path) -> Result<Vec<ShardRecord>> {
    let folder = dir.join("shards");
    let entries = std::fs::read_dir(&folder).map_err(|e| {
        Error::io(
            &folder,
            std::io::Error::new(
                e.kind(),
                format!("{e} (is this the --out folder of `simulate --shard I/N` runs?)"),
            ),
        )
    })?;
    let mut records: Vec<ShardRecord> = Vec::new();
    for e in entries {
        let path = e.map_err(|e| Error::io(&folder, e))?.path();
        if path.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let r: ShardRecord = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        if r.schema != SHARD_RECORD_SCHEMA {
            return Err(Error::content(
                &path,
                format!("schema {:?}, expected {SHARD_RECORD_SCHEMA:?}", r.schema),
            ));
        }
        records.push(r);
    }
    let Some(first) = records.first().cloned() else {
        return Err(Error::content(&folder, "no shard records (shard=I.json)"));
    };
    records.sort_by_key(|r| r.shard_index);
    for r in &records {
        let path = shard_record_path(dir, Shard::new(r.shard_index, r.shard_count)?);
        if r.shard_count != first.shard_count {
            return Err(Error::content(
                &path,
                format!(
                    "shard {}/{} beside shards of {}: all shards of a run share N",
                    r.shard_index, r.shard_count, first.shard_count
                ),
            ));
        }
        if r.run_key != first.run_key || r.datacenters != first.datacenters {
            return Err(Error::content(
                &path,
                format!(
                    "shard {} is of another run than shard {} ({} vs {}): same scenario, \
                     seed and overrides are needed",
                    r.shard_index, first.shard_index, r.run_key, first.run_key
                ),
            ));
        }
    }
    let present: Vec<u32> = records.iter().map(|r| r.shard_index).collect();
    let missing: Vec<u32> = (0..first.shard_count)
        .filter(|i| !present.contains(i))
        .collect();
    if !missing.is_empty() || present.len() != first.shard_count as usize {
        return Err(Error::content(
            &folder,
            format!(
                "shards {missing:?} of {} are missing (have {present:?}): run them before merging",
                first.shard_count
            ),
        ));
    }
    Ok(records)
}

/// Sums shard tables by the module's rule. `tables[i]` is shard i's, read from `paths[i]`.
fn merge_tables(tables: &[Table], paths: &[std::path::PathBuf]) -> Result<Table> {
    let mut out = tables[0].clone();
    let rows = out.num_rows();
    for (t, path) in tables.iter().zip(paths).skip(1) {
        let names = |t: &Table| t.columns.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        if names(t) != names(&out) || t.num_rows() != rows {
            return Err(Error::content(
                path,
                format!(
                    "{} rows with columns {:?}; shard 0 has {rows} rows with {:?}",
                    t.num_rows(),
                    names(t),
                    names(&out)
                ),
            ));
        }
        for ((name, acc), (_, col)) in out.columns.iter_mut().zip(&t.columns) {
            match (acc, col) {
                (Column::F64(a), Column::F64(b)) if name.ends_with("_w") => {
                    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                }
                (a, b) => {
                    if let Some(row) = first_difference(a, b) {
                        return Err(Error::row(
                            path,
                            row,
                            format!(
                                "column {name:?} differs from shard 0's: not shards of one run"
                            ),
                        ));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The first row where two columns differ (NaN equals NaN), if any.
fn first_difference(a: &Column, b: &Column) -> Option<usize> {
    fn first<T>(a: &[T], b: &[T], eq: impl Fn(&T, &T) -> bool) -> Option<usize> {
        a.iter().zip(b).position(|(x, y)| !eq(x, y))
    }
    match (a, b) {
        (Column::Str(a), Column::Str(b)) => first(a, b, |x, y| x == y),
        (Column::Cat(a, va), Column::Cat(b, vb)) => {
            first(a, b, |x, y| va[*x as usize] == vb[*y as usize])
        }
        (Column::I64(a), Column::I64(b)) => first(a, b, |x, y| x == y),
        (Column::F64(a), Column::F64(b)) => {
            first(a, b, |x, y| x == y || (x.is_nan() && y.is_nan()))
        }
        (Column::Bool(a), Column::Bool(b)) => first(a, b, |x, y| x == y),
        _ => Some(0),
    }
}

/// Merges one table over the shards; `None` when no shard wrote it.
fn merge_table(dir: &Path, name: &str, count: u32) -> Result<Option<Table>> {
    let paths: Vec<_> = (0..count)
        .map(|i| Shard { index: i, count }.table_path(dir, name))
        .collect();
    let exists: Vec<bool> = paths.iter().map(|p| p.exists()).collect();
    if exists.iter().all(|e| !e) {
        return Ok(None);
    }
    if let Some(i) = exists.iter().position(|e| !e) {
        return Err(Error::content(
            &paths[i],
            format!("missing: shard {i} did not finish (table {name} exists for other shards)"),
        ));
    }
    let tables = paths
        .iter()
        .map(|p| ParquetTable::read(p)?.to_table())
        .collect::<Result<Vec<_>>>()?;
    merge_tables(&tables, &paths).map(Some)
}

fn f64s<'a>(t: &'a Table, name: &str) -> &'a [f64] {
    match t.columns.iter().find(|(n, _)| n == name) {
        Some((_, Column::F64(v))) => v,
        _ => &[],
    }
}

/// Merges the shards of the run in `dir` into `out`: the tables, `facility/`,
/// `facility_metrics.json`. Errors name the shard file and row when shards disagree or one is
/// missing.
pub fn merge_shards(dir: &Path, out: &Path) -> Result<MergeSummary> {
    let records = read_shard_records(dir)?;
    let count = records[0].shard_count;
    tracing::info!(shards = count, dir = %dir.display(), "merging shards");
    let mut tables = Vec::new();
    let mut steps = None;
    for name in ["steps", "models", "rows", "racks", "commands", "events"] {
        if let Some(t) = merge_table(dir, name, count)? {
            tracing::debug!(table = name, rows = t.num_rows(), "merged");
            write_parquet(&Shard::WHOLE.table_path(out, name), &t)?;
            tables.push(name.to_string());
            if name == "steps" {
                steps = Some(t);
            }
        }
    }
    let steps = steps.ok_or_else(|| {
        Error::content(
            dir.join("steps"),
            "no steps tables: were the shards run without --no-output?",
        )
    })?;
    let names: Vec<&str> = match steps.columns.iter().find(|(n, _)| n == "datacenter") {
        Some((_, Column::Str(v))) => v.iter().map(String::as_str).collect(),
        Some((_, Column::Cat(codes, values))) => {
            codes.iter().map(|&c| values[c as usize].as_str()).collect()
        }
        _ => Vec::new(),
    };
    let (t_s, facility_w) = (f64s(&steps, "t_s"), f64s(&steps, "facility_power_w"));
    let phases = ["power_a_w", "power_b_w", "power_c_w"].map(|c| f64s(&steps, c));
    let mut per_second = PerSecond::default();
    for i in 0..t_s.len() {
        per_second.add_values(
            t_s[i],
            facility_w[i],
            [phases[0][i], phases[1][i], phases[2][i]],
        );
    }
    per_second.finish();
    let series_w: Vec<Vec<f64>> = records[0]
        .datacenters
        .iter()
        .map(|d| {
            names
                .iter()
                .zip(facility_w)
                .filter(|(n, _)| **n == d.name)
                .map(|(_, w)| *w)
                .collect()
        })
        .collect();
    let series: Vec<FacilitySeries<'_>> = records[0]
        .datacenters
        .iter()
        .zip(&series_w)
        .map(|(d, w)| FacilitySeries {
            datacenter: &d.name,
            dt_s: d.dt_s,
            power_w: w,
        })
        .collect();
    let summaries = write_facility_outputs(out, &series)?;
    tables.push("facility".to_string());
    Ok(MergeSummary {
        shards: count,
        tables,
        summaries,
        per_second,
    })
}
