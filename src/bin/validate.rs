//! `validate`: synthesized against measured power, with baselines, for one target run or
//! leave-one-run-out over a folder of runs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;

use powersynth::learn::LearnOptions;
use powersynth::report::write_validation;
use powersynth::sources::leaderboard::LeaderboardConfig;
use powersynth::sources::measured::{discover_runs, load_run, MeasuredRun};
use powersynth::store::write_json;
use powersynth::transfer::{TransferErrors, TransferOptions, TRANSFER_ERRORS_SCHEMA};
use powersynth::validate::{
    leave_one_configuration_out, leave_one_out, time_split, transfer_cases, validate_run,
    validate_transfer, Draws, RunValidation,
};

/// Validate synthesized power against measured runs (SPEC §8).
///
/// With --target: learn from --train, synthesize for the target's request log and serving
/// settings (nothing else of the target is used), compare with its measured power, next to
/// the TDP, mean and two-level prefill/decode baselines. With --leave-one-out DIR: every run
/// below DIR is the target once, the others train. With --time-split RUN...: each run learns on
/// its first part and is validated on the rest. Writes DIR/metrics.parquet (per run and
/// median), power/<run>.parquet (measured, synthesized and baseline series) and report.html
/// (power over time, CDFs, ACFs, running requests); prints the table and, where a prefix
/// cache served hits, the simulated hit tokens against the measured `prefix_cache_hits_total`
/// increase. Its `measured_noise`
/// rows give each run's own resolution: the errors a resampled copy of the measured series
/// (bins redrawn within idle / prefill / decode) shows against it on ΔE, KS, P95 and P99;
/// differences below them are not resolved by that run.
///
/// Configurations nobody measured: with --leaderboard DIR, a --target whose model × GPU × TP
/// no --train run has is synthesized by transfer from the best reference configuration among
/// the training runs (docs/transfer.md); --leave-one-configuration-out DIR does this for every
/// configuration below DIR with the others as training, and writes DIR/transfer_errors.json
/// (the table `synthesize` quotes as a transfer's expected error).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Measured run folders to learn from (one model × GPU × TP).
    #[arg(long, num_args = 1..)]
    train: Vec<PathBuf>,
    /// The measured run to validate on.
    #[arg(long)]
    target: Option<PathBuf>,
    /// A folder of runs of one configuration: leave-one-run-out over all of them.
    #[arg(long, conflicts_with_all = ["train", "target"])]
    leave_one_out: Option<PathBuf>,
    /// A folder of runs of several configurations: each configuration's runs are synthesized
    /// by transfer from the other configurations' runs (needs --leaderboard).
    #[arg(long, requires = "leaderboard", conflicts_with_all = ["train", "target", "leave_one_out"])]
    leave_one_configuration_out: Option<PathBuf>,
    /// ML.ENERGY leaderboard folder (<task>.json files), or compact fits written by
    /// build-dataset (its output folder or fits/default_fits.json): lets a target
    /// configuration without training runs be synthesized by transfer.
    #[arg(long)]
    leaderboard: Option<PathBuf>,
    /// Leaderboard task whose power, ITL and throughput give the target's levels.
    #[arg(long, default_value = powersynth::transfer::DEFAULT_TASK)]
    leaderboard_task: String,
    /// TARGET_MODEL=LEADERBOARD_MODEL: a leaderboard model standing in for a target model the
    /// leaderboard lacks (repeatable).
    #[arg(long)]
    stand_in: Vec<String>,
    /// Measured runs each validated on itself split in time: learn on the first
    /// --train-fraction of the run, validate on the rest (for configurations measured once).
    #[arg(long, num_args = 1.., conflicts_with_all = ["train", "target", "leave_one_out"])]
    time_split: Vec<PathBuf>,
    /// Share of each --time-split run used for learning.
    #[arg(long, default_value_t = 0.5)]
    train_fraction: f64,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Seed of the power draws (realization r uses seed + r).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Synthesized realizations per target: the powersynth metrics are their medians, with their
    /// standard deviation in a `powersynth_sd` row (one realization is one random draw; its ACF
    /// R² and tail percentiles vary from seed to seed). The series written are realization 0.
    #[arg(long, default_value_t = 1)]
    realizations: usize,
    /// Grid step (s) of learning and comparison.
    #[arg(long, default_value_t = 0.25)]
    dt_s: f64,

    /// Print the results as one JSON object on stdout (per run: metrics of every method,
    /// measured noise, engine check, cache hits, transfer) instead of the text table.
    #[arg(long)]
    json: bool,

    /// The power meter's trailing window in grid steps (1: a point reading, as A100
    /// `power.draw`; 0: learn it from the training runs, 1–8 steps)
    #[arg(long, default_value_t = 1)]
    meter_window_bins: usize,
    #[command(flatten)]
    log: powersynth::cli::LogArgs,
}

fn main() -> Result<()> {
    let args = Args::parse();
    args.log.init();
    let opts = LearnOptions {
        dt_s: args.dt_s,
        meter_window_bins: (args.meter_window_bins > 0).then_some(args.meter_window_bins),
        ..LearnOptions::default()
    };
    let draws = Draws {
        seed: args.seed,
        realizations: args.realizations,
    };
    let topts = TransferOptions::from_flags(&args.leaderboard_task, &args.stand_in)?;
    let leaderboard = powersynth::pipeline::leaderboard_configs_opt(args.leaderboard.as_deref())?
        .map(|(what, configs)| {
            tracing::info!("leaderboard data: {what}, {} configurations", configs.len());
            configs
        });
    let (results, skipped) = validations(&args, &opts, draws, &topts, leaderboard.as_deref())?;
    for v in &results {
        if let Some(t) = &v.transfer {
            tracing::info!("{}: {}", v.run_id, t.summary().trim_end());
        }
    }
    for s in &skipped {
        tracing::warn!("skipped (no transfer possible): {s}");
    }
    // Built beside --out and renamed onto it: a failed or interrupted run leaves --out as it was.
    let staged = powersynth::io::StagedDir::begin(&args.out, "metrics.parquet")?;
    write_transfer_outputs(staged.path(), &results)?;
    let table = write_validation(staged.path(), &results)?;
    staged.commit()?;
    if args.json {
        println!("{}", powersynth::validate::results_json(&results));
    } else {
        print!("{table}");
        print!("{}", powersynth::report::format_cache_hits(&results));
    }
    tracing::info!("wrote {}", args.out.join("report.html").display());
    Ok(())
}

fn load(d: impl AsRef<Path>) -> Result<MeasuredRun> {
    let d = d.as_ref();
    load_run(d).with_context(|| format!("loading run {}", d.display()))
}

fn runs_bar(n: usize) -> indicatif::ProgressBar {
    indicatif::ProgressBar::new(n as u64).with_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} runs {msg}")
            .expect("static template"),
    )
}

/// The validations the flags ask for, and the runs leave-one-configuration-out skipped.
fn validations(
    args: &Args,
    opts: &LearnOptions,
    draws: Draws,
    topts: &TransferOptions,
    leaderboard: Option<&[LeaderboardConfig]>,
) -> Result<(Vec<RunValidation>, Vec<String>)> {
    let tick = |bar: &indicatif::ProgressBar, v: &RunValidation| {
        bar.set_message(v.run_id.clone());
        bar.inc(1);
    };
    if let Some(dir) = &args.leave_one_configuration_out {
        let runs = discover_runs(dir)?
            .iter()
            .map(load)
            .collect::<Result<Vec<_>>>()?;
        let lb = leaderboard.expect("clap requires --leaderboard");
        let bar = runs_bar(runs.len());
        let out = leave_one_configuration_out(&runs, lb, topts, opts, draws, |v| tick(&bar, v))?;
        bar.finish_and_clear();
        return Ok(out);
    }
    if let Some(dir) = &args.leave_one_out {
        let runs = discover_runs(dir)?
            .iter()
            .map(load)
            .collect::<Result<Vec<_>>>()?;
        let bar = runs_bar(runs.len());
        let out = leave_one_out(&runs, opts, draws, |v| tick(&bar, v))?;
        bar.finish_and_clear();
        return Ok((out, vec![]));
    }
    if !args.time_split.is_empty() {
        let out = args
            .time_split
            .iter()
            .map(|d| Ok(time_split(&load(d)?, args.train_fraction, opts, draws)?))
            .collect::<Result<Vec<_>>>()?;
        return Ok((out, vec![]));
    }
    let Some(target) = &args.target else {
        bail!("give --target RUN_DIR with --train RUN_DIR..., --leave-one-out DIR, --leave-one-configuration-out DIR or --time-split RUN_DIR...");
    };
    if args.train.is_empty() {
        bail!("--target needs --train RUN_DIR...");
    }
    let train = args.train.iter().map(load).collect::<Result<Vec<_>>>()?;
    let v = match leaderboard {
        Some(lb) => validate_transfer(&train, &load(target)?, lb, topts, opts, draws)?,
        None => validate_run(&train, &load(target)?, opts, draws)?,
    };
    Ok((vec![v], vec![]))
}

/// `transfer_reports.json` and `transfer_errors.json` where a run was transferred.
fn write_transfer_outputs(out: &Path, results: &[RunValidation]) -> Result<()> {
    let cases = transfer_cases(results);
    if cases.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let reports: Vec<_> = results.iter().filter_map(|v| v.transfer.as_ref()).collect();
    write_json(&out.join("transfer_reports.json"), &reports)?;
    write_json(
        &out.join("transfer_errors.json"),
        &TransferErrors {
            schema: TRANSFER_ERRORS_SCHEMA.into(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            cases,
        },
    )?;
    Ok(())
}
