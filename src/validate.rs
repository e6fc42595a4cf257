//! Validation against measured runs (SPEC §8): learn on training runs, synthesize for a
//! target run from its request log and serving settings only, compare with its measured power,
//! next to the baselines on the same grid; and leave-one-run-out over a set of runs.

use crate::engine::EngineTrace;
use crate::error::{Error, Result};
use crate::learn::{
    align, correlation, learn, mean_abs_error, running_as_counted, simulate_run, two_level_classes,
    LearnOptions, LearnedModel,
};
use crate::metrics::{compare, median_of, resampling_noise, sd_of, Metrics, NOISE_RESAMPLES};
use crate::sources::leaderboard::LeaderboardConfig;
use crate::sources::measured::MeasuredRun;
use crate::synth::{baselines, power_from_engine};
use crate::transfer::{model_for, TransferCase, TransferOptions, TransferReport};

/// Names of the series compared with the measurement, in report order.
pub(crate) const METHODS: [&str; 4] = ["powersynth", "tdp", "mean", "two_level"];

/// Which power draws a validation compares: `realizations` synthesized series with seeds
/// `seed`, `seed + 1`, …; the synthesized metrics are their medians (one realization is a
/// single random draw: its ACF R² and tail percentiles vary from seed to seed, and ACF R² has
/// no lower bound, so a mean would follow its worst draw).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Draws {
    pub seed: u64,
    pub realizations: usize,
}

impl Draws {
    /// One realization with `seed`.
    pub fn one(seed: u64) -> Self {
        Draws {
            seed,
            realizations: 1,
        }
    }
}

/// One target run's validation.
#[derive(Debug, Clone)]
pub struct RunValidation {
    pub run_id: String,
    pub(crate) configuration: String,
    /// Grid start (unix s) and step.
    pub t0_s: f64,
    pub(crate) dt_s: f64,
    pub(crate) measured_w: Vec<f64>,
    /// Series per method, in [`METHODS`] order.
    pub(crate) series_w: Vec<Vec<f64>>,
    /// Metrics per method, in [`METHODS`] order (powersynth: median over the realizations).
    pub metrics: Vec<Metrics>,
    /// Realizations of the synthesized series, and the standard deviation of its metrics
    /// across them (zeros for one).
    pub(crate) realizations: usize,
    pub powersynth_sd: Metrics,
    /// The measured series' own sampling noise ([`resampling_noise`] within the two-level
    /// classes idle / prefill / decode of the measured counters, seeded with the draws' seed):
    /// errors below it on ΔE, KS, P95 and P99 cannot be told apart on this run.
    pub(crate) measured_noise: Metrics,
    /// Simulated engine on the target's request log, and the target's measured counters.
    pub simulated: EngineTrace,
    /// The simulated running gauge read at the target's counter timestamps and put on the
    /// grid as the measured one is ([`running_as_counted`]): what `running_corr` compares.
    pub(crate) simulated_running: Vec<f64>,
    pub(crate) measured_engine: EngineTrace,
    pub running_corr: f64,
    pub running_mae: f64,
    /// Prompt tokens the simulated prefix cache served to requests admitted on the grid, and
    /// the increase of the target's `prefix_cache_hits_total` counter over it (`None` where
    /// the run did not log it).
    pub cache_hits: CacheHits,
    pub(crate) model: LearnedModel,
    /// How the model was transferred, when the target's configuration had no training run.
    pub transfer: Option<TransferReport>,
}

/// Simulated prefix-cache hits against the measured counters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct CacheHits {
    pub simulated_tokens: f64,
    pub(crate) measured_tokens: Option<f64>,
}

impl CacheHits {
    /// (simulated − measured) / measured in %, when the run logged its hits and had some.
    pub fn error_pct(&self) -> Option<f64> {
        self.measured_tokens
            .filter(|&m| m > 0.0)
            .map(|m| 100.0 * (self.simulated_tokens - m) / m)
    }
}

/// Learns on `train` and validates on `target`.
pub fn validate_run(
    train: &[MeasuredRun],
    target: &MeasuredRun,
    opts: &LearnOptions,
    draws: Draws,
) -> Result<RunValidation> {
    let model = learn(train, opts)?;
    validate_with_model(model, target, opts, draws)
}

/// Validates an already learned model on `target`.
pub fn validate_with_model(
    model: LearnedModel,
    target: &MeasuredRun,
    opts: &LearnOptions,
    draws: Draws,
) -> Result<RunValidation> {
    if draws.realizations == 0 {
        return Err(Error::config("realizations", "0 (need ≥ 1)"));
    }
    // The measured side of the target: power and counters on the grid, for comparison only.
    let aligned = align(target, opts.dt_s)?;
    crate::synth::check_serving(&model, &aligned.serving)?;
    // The synthesized side sees only arrivals, token counts and serving settings.
    let simulation = simulate_run(&aligned, &model.timing, &model.kv_cache)?;
    let simulated_running = running_as_counted(&aligned, &simulation.outcomes);
    let simulated = simulation.trace;
    let synthesized = power_from_engine(&model, &simulated, draws.seed);
    let draws_metrics: Vec<Metrics> = std::iter::once(compare(&aligned.power_w, &synthesized))
        .chain((1..draws.realizations as u64).map(|r| {
            let y = power_from_engine(&model, &simulated, draws.seed.wrapping_add(r));
            compare(&aligned.power_w, &y)
        }))
        .collect();
    let b = baselines(&model, &simulated);
    let series_w = vec![synthesized, b.tdp_w, b.mean_w, b.two_level_w];
    let mut metrics: Vec<Metrics> = series_w
        .iter()
        .map(|y| compare(&aligned.power_w, y))
        .collect();
    metrics[0] = Metrics::reduce(&draws_metrics, |v| median_of(v.iter().copied()));
    Ok(RunValidation {
        run_id: aligned.run_id.clone(),
        configuration: aligned.serving.configuration(),
        t0_s: aligned.grid().t0_s,
        dt_s: opts.dt_s,
        measured_w: aligned.power_w.clone(),
        series_w,
        metrics,
        realizations: draws.realizations,
        powersynth_sd: Metrics::reduce(&draws_metrics, sd_of),
        measured_noise: resampling_noise(
            &aligned.power_w,
            &two_level_classes(&aligned.engine)
                .map(|c| c as u8)
                .collect::<Vec<u8>>(),
            NOISE_RESAMPLES,
            draws.seed,
        ),
        cache_hits: CacheHits {
            simulated_tokens: simulated.cached_tokens.iter().sum(),
            measured_tokens: target
                .engine
                .prefix_cache_hits_total
                .iter()
                .all(|x| x.is_finite())
                .then(|| aligned.engine.cached_tokens.iter().sum()),
        },
        running_corr: correlation(&simulated_running, &aligned.engine.running),
        running_mae: mean_abs_error(&simulated_running, &aligned.engine.running),
        simulated_running,
        simulated,
        measured_engine: aligned.engine,
        model,
        transfer: None,
    })
}

/// Split in time, for a configuration measured once: learn on the first `train_fraction` of
/// the run's span (power and engine counters both present), validate on the rest. The target
/// part is synthesized from the request log alone, as in [`validate_run`]; its run id gets the
/// suffix `@split<fraction>`.
pub fn time_split(
    run: &MeasuredRun,
    train_fraction: f64,
    opts: &LearnOptions,
    draws: Draws,
) -> Result<RunValidation> {
    if !(train_fraction > 0.0 && train_fraction < 1.0) {
        return Err(Error::config(
            "train_fraction",
            format!("{train_fraction} (need 0 < fraction < 1)"),
        ));
    }
    let (p, e) = (&run.power.t_s, &run.engine.t_s);
    let t0 = p[0].max(e[0]);
    let t1 = p[p.len() - 1].min(e[e.len() - 1]);
    let cut = t0 + train_fraction * (t1 - t0);
    let train = run.time_window(f64::NEG_INFINITY, cut)?;
    let target = run.time_window(cut, f64::INFINITY)?;
    let mut v = validate_run(&[train], &target, opts, draws)?;
    v.run_id = format!("{}@split{train_fraction}", v.run_id);
    Ok(v)
}

/// Leave-one-run-out: each run is the target once, the others of its configuration train.
pub fn leave_one_out(
    runs: &[MeasuredRun],
    opts: &LearnOptions,
    draws: Draws,
    mut on_done: impl FnMut(&RunValidation),
) -> Result<Vec<RunValidation>> {
    if runs.len() < 2 {
        return Err(Error::config(
            "runs",
            format!(
                "leave-one-run-out needs at least two runs of a configuration, got {}",
                runs.len()
            ),
        ));
    }
    let mut out = Vec::new();
    for (i, target) in runs.iter().enumerate() {
        let train: Vec<MeasuredRun> = runs
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, r)| r.clone())
            .collect();
        let v = validate_run(&train, target, opts, draws)?;
        on_done(&v);
        out.push(v);
    }
    Ok(out)
}

/// Validates `target` with a model for its configuration from `train` runs of any
/// configurations: learned when some train run shares it, else transferred with the
/// leaderboard ([`model_for`]); the report is kept in the result.
pub fn validate_transfer(
    train: &[MeasuredRun],
    target: &MeasuredRun,
    leaderboard: &[LeaderboardConfig],
    topts: &TransferOptions,
    opts: &LearnOptions,
    draws: Draws,
) -> Result<RunValidation> {
    let serving = crate::engine::ServingConfig::from_manifest(&target.manifest);
    let (model, report) = model_for(&serving, train, Some(leaderboard), topts, opts)?;
    let mut v = validate_with_model(model, target, opts, draws)?;
    v.transfer = report;
    Ok(v)
}

/// Leave-one-configuration-out: every configuration's runs are targets once, synthesized by
/// transfer from the runs of the other configurations (none of the target's own). A
/// configuration the transfer cannot reach is skipped with the reason (second list).
pub fn leave_one_configuration_out(
    runs: &[MeasuredRun],
    leaderboard: &[LeaderboardConfig],
    topts: &TransferOptions,
    opts: &LearnOptions,
    draws: Draws,
    mut on_done: impl FnMut(&RunValidation),
) -> Result<(Vec<RunValidation>, Vec<String>)> {
    let config =
        |r: &MeasuredRun| crate::engine::ServingConfig::from_manifest(&r.manifest).configuration();
    let mut configs: Vec<String> = runs.iter().map(config).collect();
    configs.sort();
    configs.dedup();
    if configs.len() < 2 {
        return Err(Error::config(
            "runs",
            format!(
                "leave-one-configuration-out needs runs of at least two configurations, got {}",
                configs.len()
            ),
        ));
    }
    let (mut out, mut skipped) = (Vec::new(), Vec::new());
    for c in &configs {
        let train: Vec<MeasuredRun> = runs.iter().filter(|r| config(r) != *c).cloned().collect();
        let targets: Vec<&MeasuredRun> = runs.iter().filter(|r| config(r) == *c).collect();
        // One model per configuration: the transfer depends on its model × GPU × TP only.
        let serving = crate::engine::ServingConfig::from_manifest(&targets[0].manifest);
        match model_for(&serving, &train, Some(leaderboard), topts, opts) {
            Ok((model, report)) => {
                for target in targets {
                    match validate_with_model(model.clone(), target, opts, draws) {
                        Ok(mut v) => {
                            v.transfer = report.clone();
                            on_done(&v);
                            out.push(v);
                        }
                        Err(e) => skipped.push(format!("{}: {e}", target.manifest.run_id)),
                    }
                }
            }
            Err(e) => skipped.extend(
                targets
                    .iter()
                    .map(|t| format!("{}: {e}", t.manifest.run_id)),
            ),
        }
    }
    Ok((out, skipped))
}

/// The measured cases of transferred validations, for the expected-error table.
pub fn transfer_cases(results: &[RunValidation]) -> Vec<TransferCase> {
    results
        .iter()
        .filter_map(|v| {
            let t = v.transfer.as_ref()?;
            Some(TransferCase {
                run_id: v.run_id.clone(),
                target: t.target.clone(),
                reference: t.reference.configuration.clone(),
                kind: t.kind(),
                energy_error_pct: v.metrics[0].energy_error_signed_pct,
                ks: v.metrics[0].ks,
            })
        })
        .collect()
}

/// The validations as one JSON document (`validate --json`): per run its configuration, the
/// metrics of every method, the measured noise, the engine check, cache hits and any transfer
/// report; NaN as null.
pub fn results_json(results: &[RunValidation]) -> serde_json::Value {
    let runs: Vec<serde_json::Value> = results
        .iter()
        .map(|v| {
            let methods: serde_json::Map<String, serde_json::Value> = METHODS
                .iter()
                .zip(&v.metrics)
                .map(|(m, x)| (m.to_string(), serde_json::json!(x)))
                .collect();
            serde_json::json!({
                "run_id": v.run_id,
                "configuration": v.configuration,
                "realizations": v.realizations,
                "metrics": methods,
                "powersynth_sd": v.powersynth_sd,
                "measured_noise": v.measured_noise,
                "running_corr": v.running_corr,
                "running_mae": v.running_mae,
                "cache_hits": v.cache_hits,
                "transfer": v.transfer,
            })
        })
        .collect();
    serde_json::json!({ "runs": runs })
}
