//! `synthesize`: power of one replica for a request log that was never measured.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;

use powersynth::engine::ServingConfig;
use powersynth::learn::{LearnOptions, LearnedModel};
use powersynth::report::write_power_series;
use powersynth::sources::leaderboard::LeaderboardConfig;
use powersynth::sources::measured::load_run;
use powersynth::sources::measured::read_request_log;
use powersynth::store::write_json;
use powersynth::synth::{synthesis_warnings, synthesize};
use powersynth::transfer::{adapt, model_for, TransferErrors, TransferOptions, TransferReport};
use powersynth::workload::{SessionModel, Workload};
use rand::SeedableRng;
use rand_pcg::Pcg64;

/// Synthesize the power of one serving replica (its TP GPUs) for a request log.
///
/// Learns the engine timing and the per-state power model from the training runs (measured
/// runs of the same model × GPU × TP), simulates continuous batching of the requests with the
/// serving settings (with a prefix cache when they enable it), and draws power for each bin.
/// Only the request log's arrival times, token counts, sessions and declared prefixes are
/// read (docs/requests.md): nothing measured about the target run is used.
///
/// A configuration nobody measured (model × GPU × TP of --serving without a --train run):
/// with --leaderboard DIR the model is transferred from the best reference configuration
/// among the training runs (same GPU first, then architecture family and size), its levels
/// and speeds taken from the ML.ENERGY leaderboard (docs/transfer.md). stderr names the
/// reference and the ratios; stdout gives the transfer's expected error (measured by
/// leave-one-configuration-out); OUT.manifest.json records both.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Measured run folders to learn from (each with manifest.json, power.csv, engine.csv and a
    /// request log): the runs of the --serving configuration, or with --leaderboard runs of
    /// other configurations to transfer from.
    #[arg(long, num_args = 1.., required_unless_present = "model", conflicts_with = "model")]
    train: Vec<PathBuf>,
    /// A learned model written earlier by --model-out, used instead of learning from --train.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The serving settings: a SERVING.json (docs/serving.md) or a measured run's
    /// manifest.json.
    #[arg(long)]
    serving: PathBuf,
    /// REQUESTS.json with request_timestamps (unix s), input_lens and output_lens, and
    /// optionally session_ids, turn_idx, prefix_tokens (multi-turn sessions and the prefix
    /// cache); any order of requests. Every column in docs/requests.md.
    #[arg(long)]
    requests: PathBuf,
    /// Start of the output (unix s); row i is at t0 + i·dt.
    #[arg(long)]
    t0: f64,
    /// Length of the output (s).
    #[arg(long)]
    duration_s: f64,
    /// Output step (s): a whole multiple of the learning step (0.25 s).
    #[arg(long, default_value_t = 0.25)]
    dt_s: f64,
    /// Seed of the power draws (same inputs and seed → identical output bytes).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output file: .csv or .parquet with columns t_s (s since --t0), time_unix_s, power_w (W,
    /// total over the replica).
    #[arg(long)]
    out: PathBuf,
    /// Also write the learned model (JSON) here.
    #[arg(long)]
    model_out: Option<PathBuf>,
    /// Instead of replaying --requests as logged, learn its sessions (session_ids: turns,
    /// prompt growth, think times from post_gap_s or the logged latencies) and generate
    /// closed-loop traffic from this many clients over the output window: each client sends a
    /// turn, waits for the simulated answer, thinks, sends the next; sessions drawn with
    /// --seed.
    #[arg(long)]
    closed_loop_clients: Option<u32>,
    /// ML.ENERGY leaderboard folder (<task>.json files), or compact fits written by
    /// build-dataset (its output folder or fits/default_fits.json; data/default/fits.json is
    /// embedded): synthesize a configuration no training run has by transfer (levels, ITL and
    /// throughput from its leaderboard data).
    #[arg(long)]
    leaderboard: Option<PathBuf>,
    /// Leaderboard task whose fits give the target's levels.
    #[arg(long, default_value = powersynth::transfer::DEFAULT_TASK)]
    leaderboard_task: String,
    /// TARGET_MODEL=LEADERBOARD_MODEL: a leaderboard model standing in for a target model
    /// the leaderboard lacks, e.g. of the same family and active parameters (repeatable).
    #[arg(long)]
    stand_in: Vec<String>,
    #[command(flatten)]
    log: powersynth::cli::LogArgs,
}

fn main() -> Result<()> {
    let args = Args::parse();
    args.log.init();
    let serving = ServingConfig::from_file(&args.serving)?;
    let topts = TransferOptions::from_flags(&args.leaderboard_task, &args.stand_in)?;
    let workload = workload(&args)?;
    let leaderboard = powersynth::pipeline::leaderboard_configs_opt(args.leaderboard.as_deref())?
        .map(|(what, configs)| {
            tracing::info!("leaderboard data: {what}, {} configurations", configs.len());
            configs
        });
    let (model, report) = model(&args, &serving, leaderboard.as_deref(), &topts)?;
    let expected = report.as_ref().map(|r| {
        tracing::info!("{}", r.summary().trim_end());
        let e = TransferErrors::embedded().expected(&r.kind());
        println!("expected error of this transfer: {e}");
        e
    });
    for w in synthesis_warnings(&model, &workload, args.t0, args.duration_s) {
        tracing::warn!("{w}");
    }
    let (series, _) = synthesize(
        &model,
        &serving,
        &workload,
        args.t0,
        args.duration_s,
        args.dt_s,
        args.seed,
    )?;
    write_power_series(&args.out, series.t0_s, series.dt_s, &series.power_w)?;
    if let Some(p) = &args.model_out {
        write_json(p, &model)?;
    }
    write_json(
        &args.out.with_extension("manifest.json"),
        &serde_json::json!({
            "output": args.out,
            "configuration": model.configuration,
            "serving": serving,
            "seed": args.seed,
            "t0_s": series.t0_s,
            "dt_s": series.dt_s,
            "bins": series.power_w.len(),
            "training_runs": model.training_runs,
            "transfer": report,
            "expected_error": expected,
        }),
    )?;
    let mean_w = series.power_w.iter().sum::<f64>() / series.power_w.len() as f64;
    tracing::info!(
        "{}: {} bins of {} s, mean {:.1} W, energy {:.3} kWh → {}",
        model.configuration,
        series.power_w.len(),
        series.dt_s,
        mean_w,
        mean_w * series.power_w.len() as f64 * series.dt_s / 3.6e6,
        args.out.display()
    );
    Ok(())
}

/// The requests to serve: the log replayed, or its sessions from closed-loop clients.
fn workload(args: &Args) -> Result<Workload> {
    let Some(clients) = args.closed_loop_clients else {
        return Ok(Workload::from_request_log(&args.requests)?);
    };
    let log = read_request_log(&args.requests)?;
    let sessions = SessionModel::from_log(&log)?;
    let mut rng = Pcg64::seed_from_u64(args.seed);
    let w = sessions.closed_loop(clients, args.t0, args.duration_s, &mut rng)?;
    tracing::info!(
        "closed loop: {clients} clients replaying {} sessions of {}",
        sessions.sessions.len(),
        args.requests.display()
    );
    Ok(w)
}

/// The model: read (--model) or learned from --train, transferred when the serving
/// configuration has no training run and a leaderboard is given.
fn model(
    args: &Args,
    serving: &ServingConfig,
    leaderboard: Option<&[LeaderboardConfig]>,
    topts: &TransferOptions,
) -> Result<(LearnedModel, Option<TransferReport>)> {
    if let Some(p) = &args.model {
        let model = LearnedModel::read_json(p)?;
        let source = format!("--model {}", p.display());
        return Ok(adapt(model, &source, serving, leaderboard, topts)?);
    }
    let runs = args
        .train
        .iter()
        .map(|d| load_run(d).with_context(|| format!("loading training run {}", d.display())))
        .collect::<Result<Vec<_>>>()?;
    Ok(model_for(
        serving,
        &runs,
        leaderboard,
        topts,
        &LearnOptions::default(),
    )?)
}
