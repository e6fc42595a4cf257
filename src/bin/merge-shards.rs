//! `merge-shards`: sum the shards of a `simulate --shard I/N` run into one run result.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;

use powersynth::coordinator::merge::merge_shards;

/// Merge the shards of a sharded simulation (`simulate --shard I/N --out DIR`, for every I in
/// 0 … N − 1, on one machine or many) into the run result the unsplit run writes: the same
/// tables (power columns summed over the shards, the others checked equal), `facility/`,
/// `facility_metrics.json` and `report.html` (docs/outputs.md). Refuses shards of different
/// runs, a missing shard or a shard that did not finish, naming the file.
///
/// Prints one JSON line on stdout: shards, tables, mean facility power per datacenter (kW), out.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The shards' common output folder (holding `shards/shard=I.json` and the tables'
    /// `shard=I` partitions).
    dir: PathBuf,
    /// Folder for the merged run result (may not be DIR itself).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    log: powersynth::cli::LogArgs,
}

fn main() -> Result<()> {
    let args = Args::parse();
    args.log.init();
    if args.out == args.dir {
        anyhow::bail!(
            "--out {} is the shards' folder: give another folder for the merged result",
            args.out.display()
        );
    }
    let merged = merge_shards(&args.dir, &args.out)
        .with_context(|| format!("merging the shards in {}", args.dir.display()))?;
    let ps = &merged.per_second;
    let html = powersynth::report::simulation_report(
        &format!(
            "powersynth simulation: {} shards merged from {}",
            merged.shards,
            args.dir.display()
        ),
        &ps.facility_w,
        [&ps.phase_w[0], &ps.phase_w[1], &ps.phase_w[2]],
    );
    powersynth::report::write_html(&args.out.join("report.html"), &html)?;
    let mean_kw: serde_json::Map<String, serde_json::Value> = merged
        .summaries
        .iter()
        .map(|s| {
            (
                s.datacenter.clone(),
                serde_json::json!(s.mean_facility_power_w / 1000.0),
            )
        })
        .collect();
    let line = serde_json::json!({
        "shards": merged.shards,
        "tables": merged.tables,
        "mean_facility_power_kw": mean_kw,
        "out": args.out.display().to_string(),
    });
    println!("{line}");
    Ok(())
}
