//! Synthesis against the real measured runs: leave-one-run-out figures, engine simulation
//! against measured counters, determinism of `synthesize`, and its bad-input errors.

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use powersynth::engine::ServingConfig;
use powersynth::learn::{learn, LearnOptions};
use powersynth::metrics::median_of;
use powersynth::sources::measured::{load_run, MeasuredRun};
use powersynth::synth::synthesize;
use powersynth::validate::{leave_one_out, time_split, validate_with_model, Draws};
use powersynth::workload::Workload;

const A100_SHAREGPT: [&str; 3] = [
    "arrival_rate_qwen3-8b_a100_r2p5",
    "arrival_pattern_qwen3-8b_a100_bursty",
    "arrival_pattern_qwen3-8b_a100_smooth",
];
const A100_TRACE_REPLAY: &str = "trace_replay_qwen3-8b_a100_cache_off";

fn run_dir(root: &Path, group: &str) -> PathBuf {
    std::fs::read_dir(root.join(group))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("manifest.json").is_file())
        .unwrap()
}

fn load(root: &Path, groups: &[&str]) -> Vec<MeasuredRun> {
    groups
        .iter()
        .map(|g| load_run(&run_dir(root, g)).unwrap())
        .collect()
}

/// Prints a leave-one-out's per-run figures (shown with `--nocapture`, and on a failure).
fn print_runs(res: &[powersynth::validate::RunValidation]) {
    for v in res {
        let m = &v.metrics[0];
        eprintln!(
            "{}: |ΔE| {:.2} % (signed {:+.2}), KS {:.3}, ACF R² {:.3}, P95 {:.1} %, P99 {:.1} %, running ρ {:.3}",
            v.run_id, m.energy_error_pct, m.energy_error_signed_pct, m.ks, m.acf_r2,
            m.p95_error_pct, m.p99_error_pct, v.running_corr
        );
    }
}

#[test]
fn leave_one_out_on_the_a100_sharegpt_runs_beats_the_baselines() {
    let Some(root) = common::shared("measured") else {
        return;
    };
    let runs = load(&root, &A100_SHAREGPT);
    let res = leave_one_out(&runs, &LearnOptions::default(), FIVE_DRAWS, |_| {}).unwrap();
    print_runs(&res);
    let med = |f: fn(&powersynth::metrics::Metrics) -> f64| {
        median_of(res.iter().map(|v| f(&v.metrics[0])))
    };
    // Trained on two ShareGPT runs only (no long prompt, no burst: few pure prefill
    // readings). Measured when this was written (medians over runs of the medians of 5
    // draws, seed 1, training runs in run-id order; r2p5 / bursty / smooth): |ΔE| 1.30 %
    // (1.30 / 1.58 / 0.38), KS 0.108, ACF R² 0.953, P95 3.1 %, P99 6.4 % (6.4 / 6.9 / 0.7).
    // The power model is meant to be learned on varied traffic (see
    // `leave_one_out_over_the_six_qwen3_8b_a100_runs`); with it these runs land within 1 %.
    // Bounds: the first issue's targets, P99 loosened to 10 %. From six starts of the timing
    // calibration ±0.15 apart in log space the median P99 is 6.4, 4.4, 5.5, 5.1, 7.1 and
    // 2.7 % (before the roofline priors, the warm-up and prefill readings pooled whatever
    // the context: 5.6, 9.4, 16.9, 9.1, 17.0 and 13.3 %; issue 16's notes).
    assert!(med(|m| m.energy_error_pct) < 3.0);
    assert!(med(|m| m.ks) < 0.15);
    assert!(med(|m| m.acf_r2) > 0.9);
    assert!(med(|m| m.p99_error_pct) < 10.0);
    for v in &res {
        let m = &v.metrics[0];
        // Engine simulation against the measured running-request counters.
        assert!(v.running_corr > 0.95, "{}: ρ {}", v.run_id, v.running_corr);
        assert!(v.running_mae < 0.5, "{}: MAE {}", v.run_id, v.running_mae);
        // Better than TDP on energy, than TDP and the mean on KS and ACF, than two-level on
        // KS and P99.
        assert!(m.energy_error_pct < v.metrics[1].energy_error_pct);
        for b in 1..=2 {
            let x = &v.metrics[b];
            assert!(m.ks < x.ks && m.acf_r2 > x.acf_r2, "{}", v.run_id);
        }
        assert!(m.ks < v.metrics[3].ks && m.p99_error_pct < v.metrics[3].p99_error_pct);
    }
    // Better than the mean on energy over the three runs (median |ΔE|; 1.30 against 3.23 %
    // when this was written). Not run by run: the bursty run has the same rate as the two it
    // is learned from, and the mean of theirs lands 1.45 % off it by chance; from six
    // calibration starts this model's |ΔE| on it is 0.92–1.64 % (the model before the
    // roofline priors and the context-free prefill readings: 0.76–2.41 %, worse than the
    // mean at four of the six).
    let mean_baseline = median_of(res.iter().map(|v| v.metrics[2].energy_error_pct));
    assert!(
        med(|m| m.energy_error_pct) < mean_baseline,
        "{mean_baseline}"
    );
}

/// Five synthesized realizations from seed 1: one draw's tail percentiles move by a few
/// percent from seed to seed on these ~95 s runs.
const FIVE_DRAWS: Draws = Draws {
    seed: 1,
    realizations: 5,
};

const A100_BURSTGPT: &str = "burstgpt_qwen3-8b_a100";
const A100_AGENTIC: &str = "agentic_openhands_qwen3-8b_a100";

/// Leave-one-run-out over every Qwen3-8B A100 run: ShareGPT at three burstinesses, the
/// cache-off agent replay (12k-token prompts at the board limit), the BurstGPT replay (1,000
/// ten-token requests in bursts) and the OpenHands agentic run (prefix cache on, 60 s idle
/// first). Issue 16's figures.
#[test]
fn leave_one_out_over_the_six_qwen3_8b_a100_runs() {
    let Some(root) = common::shared("measured") else {
        return;
    };
    let mut groups = A100_SHAREGPT.to_vec();
    groups.extend([A100_TRACE_REPLAY, A100_BURSTGPT, A100_AGENTIC]);
    let runs = load(&root, &groups);
    let res = leave_one_out(&runs, &LearnOptions::default(), FIVE_DRAWS, |_| {}).unwrap();
    print_runs(&res);
    let by_group = |g: &str| {
        let id = &runs[groups.iter().position(|x| *x == g).unwrap()]
            .manifest
            .run_id;
        res.iter().find(|v| &v.run_id == id).unwrap()
    };
    // Measured when this was written (medians of 5 draws, seed 1 / seed 100), |ΔE| % / KS /
    // running ρ: ShareGPT 0.76–0.84 (0.86–1.07) / 0.07–0.16 / ≥ 0.995; cache-off replay
    // 0.37 (0.39) / 0.158 (0.162) / 0.970; BurstGPT 3.81 (4.17) / 0.245 (0.249) / 0.926;
    // agentic 0.77 (0.96) / 0.184 / 0.915; median |ΔE| 0.78 % (0.97 %). From five other
    // starts of the timing calibration (±0.15 in log space): running ρ ≥ 0.915 on every run,
    // BurstGPT |ΔE| 3.8–4.6 %, cache-off ≤ 1.14 %, ShareGPT ≤ 1.01 % (issue 16's notes).
    let med = median_of(res.iter().map(|v| v.metrics[0].energy_error_pct));
    assert!(med <= 2.0, "median |ΔE| {med}");
    for v in &res {
        let m = &v.metrics[0];
        assert!(
            m.energy_error_pct <= 5.0,
            "{}: |ΔE| {}",
            v.run_id,
            m.energy_error_pct
        );
        // Better than every baseline (TDP, mean, two-level) on energy and KS.
        for b in 1..=3 {
            assert!(m.ks < v.metrics[b].ks, "{} vs baseline {b}", v.run_id);
            let x = v.metrics[b].energy_error_pct;
            assert!(m.energy_error_pct < x, "{} vs baseline {b}", v.run_id);
        }
        assert!(v.running_corr >= 0.9, "{}: ρ {}", v.run_id, v.running_corr);
    }
    for g in A100_SHAREGPT {
        let v = by_group(g);
        assert!(v.metrics[0].energy_error_pct <= 1.0, "{g}");
        assert!(v.metrics[0].ks <= 0.25 && v.running_corr > 0.99, "{g}");
    }
    for g in [A100_TRACE_REPLAY, A100_AGENTIC, A100_BURSTGPT] {
        assert!(by_group(g).metrics[0].ks <= 0.25, "{g}");
    }
    // The agentic run's prefix cache: simulated hit tokens against the counters' increase
    // (1,081,456 prompt tokens), within 5 %; no hits where the cache is off.
    let hits = by_group(A100_AGENTIC).cache_hits;
    assert!(hits.error_pct().unwrap().abs() < 5.0, "{hits:?}");
    for g in [A100_TRACE_REPLAY, A100_BURSTGPT] {
        assert_eq!(by_group(g).cache_hits.simulated_tokens, 0.0, "{g}");
    }
}

/// A model learned on the first two ShareGPT runs, and the third run as the target.
fn learn_two_score_third(root: &Path) -> (powersynth::learn::LearnedModel, MeasuredRun) {
    let runs = load(root, &A100_SHAREGPT[..2]);
    let model = learn(&runs, &LearnOptions::default()).unwrap();
    (model, load_run(&run_dir(root, A100_SHAREGPT[2])).unwrap())
}

#[test]
fn same_seed_same_series_other_seed_other_series() {
    let Some(root) = common::shared("measured") else {
        return;
    };
    let (model, target) = learn_two_score_third(&root);
    let serving = ServingConfig::from_manifest(&target.manifest);
    let w = Workload::from_request_log(&target.requests.path).unwrap();
    let t0 = w.requests[0].arrival_s - 5.0;
    let go = |seed| {
        synthesize(&model, &serving, &w, t0, 120.0, 0.25, seed)
            .unwrap()
            .0
            .power_w
    };
    let (a, b, c) = (go(3), go(3), go(4));
    assert_eq!(a.len(), 480);
    assert_eq!(a, b);
    assert_ne!(a, c);
    // The first 5 s precede every request: idle power (A100 idles near 83 W).
    assert!(
        a[..20].iter().all(|p| (60.0..110.0).contains(p)),
        "{:?}",
        &a[..20]
    );
    // 1 s output = mean of four 0.25 s bins of the same draw.
    let coarse = synthesize(&model, &serving, &w, t0, 120.0, 1.0, 3)
        .unwrap()
        .0;
    assert_eq!(coarse.power_w.len(), 120);
    assert!((coarse.power_w[7] - a[28..32].iter().sum::<f64>() / 4.0).abs() < 1e-9);
}

#[test]
fn several_realizations_report_the_median_and_spread_of_single_draws() {
    let Some(root) = common::shared("measured") else {
        return;
    };
    let (model, target) = learn_two_score_third(&root);
    let opts = LearnOptions::default();
    let draws = Draws {
        seed: 5,
        realizations: 3,
    };
    let v = validate_with_model(model.clone(), &target, &opts, draws).unwrap();
    let singles: Vec<_> = (5..8)
        .map(|s| {
            validate_with_model(model.clone(), &target, &opts, Draws::one(s))
                .unwrap()
                .metrics[0]
        })
        .collect();
    let ks: Vec<f64> = singles.iter().map(|m| m.ks).collect();
    let acf: Vec<f64> = singles.iter().map(|m| m.acf_r2).collect();
    assert_eq!(v.metrics[0].ks, median_of(ks.iter().copied()));
    assert_eq!(v.metrics[0].acf_r2, median_of(acf.iter().copied()));
    let mean = acf.iter().sum::<f64>() / 3.0;
    let sd = (acf.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 2.0).sqrt();
    assert!((v.powersynth_sd.acf_r2 - sd).abs() < 1e-12);
    // The written series is realization 0 (seed 5); baselines do not depend on the draws.
    assert_eq!(v.metrics[1], singles_baseline(&model, &target, &opts));
    assert!(validate_with_model(
        model,
        &target,
        &opts,
        Draws {
            seed: 5,
            realizations: 0
        }
    )
    .is_err());
}

#[test]
fn time_split_learns_on_the_start_and_scores_the_rest() {
    let Some(root) = common::shared("measured") else {
        return;
    };
    let run = load_run(&run_dir(&root, A100_SHAREGPT[0])).unwrap();
    let (p, e) = (&run.power.t_s, &run.engine.t_s);
    let (t0, t1) = (p[0].max(e[0]), p[p.len() - 1].min(e[e.len() - 1]));
    let cut = t0 + 0.6 * (t1 - t0);
    let head = run.time_window(f64::NEG_INFINITY, cut).unwrap();
    let tail = run.time_window(cut, f64::INFINITY).unwrap();
    assert_eq!(head.power.t_s.len() + tail.power.t_s.len(), p.len());
    assert!(head.power.t_s.iter().all(|&t| t < cut) && tail.power.t_s.iter().all(|&t| t >= cut));
    assert_eq!(
        tail.requests, run.requests,
        "arrivals stay whole: earlier requests still run"
    );
    let v = time_split(&run, 0.6, &LearnOptions::default(), Draws::one(1)).unwrap();
    assert!(v.run_id.ends_with("@split0.6"));
    // Scored on the tail only: its grid starts at the cut.
    assert!(v.t0_s >= cut - 1e-9 && v.t0_s < cut + 0.25);
    // Energy within 5 % of the measured tail (0.02 % when written, seed 1).
    assert!(v.metrics[0].energy_error_pct < 5.0, "{:?}", v.metrics[0]);
    assert!(time_split(&run, 1.0, &LearnOptions::default(), Draws::one(1)).is_err());
}

fn singles_baseline(
    model: &powersynth::learn::LearnedModel,
    target: &MeasuredRun,
    opts: &LearnOptions,
) -> powersynth::metrics::Metrics {
    validate_with_model(model.clone(), target, opts, Draws::one(99))
        .unwrap()
        .metrics[1]
}

/// `--train` with the first two ShareGPT runs.
fn train_on_two(root: &Path) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec!["--train".into()];
    v.extend(A100_SHAREGPT[..2].iter().map(|g| run_dir(root, g).into()));
    v
}

/// `synthesize` for the third ShareGPT run's request log, the model from `source` (`--train …`
/// or `--model FILE`, plus any further flags).
fn synthesize_cmd(
    root: &Path,
    tmp: &Path,
    source: &[OsString],
    serving: &str,
    out: &str,
) -> std::process::Output {
    let target = run_dir(root, A100_SHAREGPT[2]);
    Command::new(env!("CARGO_BIN_EXE_synthesize"))
        .args(source)
        .args(["--serving", serving])
        .arg("--requests")
        .arg(target.join("requests_summary.json"))
        .args(["--t0", "1784415440", "--duration-s", "60", "--dt-s", "0.25"])
        .args(["--seed", "9", "--out"])
        .arg(tmp.join(out))
        .output()
        .unwrap()
}

#[test]
fn synthesize_command_is_byte_deterministic_and_rejects_bad_input() {
    let Some(root) = common::shared("measured") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let serving = tmp.path().join("serving.json");
    std::fs::write(
        &serving,
        r#"{"model": "Qwen/Qwen3-8B", "hardware": "A100", "tp": 1, "max_num_seqs": 256,
            "max_num_batched_tokens": 8192, "enable_chunked_prefill": true,
            "enable_prefix_caching": false}"#,
    )
    .unwrap();
    let s = serving.to_str().unwrap();
    for out in ["a.csv", "b.csv"] {
        let o = synthesize_cmd(&root, tmp.path(), &train_on_two(&root), s, out);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let a = std::fs::read(tmp.path().join("a.csv")).unwrap();
    assert_eq!(a, std::fs::read(tmp.path().join("b.csv")).unwrap());
    let text = String::from_utf8(a).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("t_s,time_unix_s,power_w"));
    let first: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(first[..2], ["0.000", "1784415440.000"]);
    assert_eq!(text.lines().count(), 1 + 240);

    // A bad output name and a bad serving file: clear errors, nothing written.
    let o = synthesize_cmd(&root, tmp.path(), &train_on_two(&root), s, "c.txt");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains(".csv or .parquet"));
    assert!(!tmp.path().join("c.txt").exists());
    let bad = tmp.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"model": "Qwen/Qwen3-8B", "hardware": "A100", "tp": 0, "max_num_seqs": 256,
            "max_num_batched_tokens": 8192, "enable_chunked_prefill": true,
            "enable_prefix_caching": false}"#,
    )
    .unwrap();
    let o = synthesize_cmd(
        &root,
        tmp.path(),
        &train_on_two(&root),
        bad.to_str().unwrap(),
        "d.csv",
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("bad.json") && err.contains("tp"),
        "{err}"
    );
    assert!(!tmp.path().join("d.csv").exists());
}

#[test]
fn a_saved_model_synthesizes_the_same_bytes_and_a_stale_one_is_refused() {
    let Some(root) = common::shared("measured") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let target = run_dir(&root, A100_SHAREGPT[2]);
    // SERVING.json from the target's manifest.
    let m = load_run(&target).unwrap().manifest;
    let serving_json = tmp.path().join("serving.json");
    std::fs::write(
        &serving_json,
        serde_json::to_string(&ServingConfig::from_manifest(&m)).unwrap(),
    )
    .unwrap();
    let serving = serving_json.to_str().unwrap();
    let run =
        |source: &[OsString], out: &str| synthesize_cmd(&root, tmp.path(), source, serving, out);
    let model = tmp.path().join("model.json");
    let mut train = train_on_two(&root);
    train.push("--model-out".into());
    train.push(model.clone().into());
    let o = run(&train, "learned.csv");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&["--model".into(), model.clone().into()], "loaded.csv");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read(tmp.path().join("learned.csv")).unwrap(),
        std::fs::read(tmp.path().join("loaded.csv")).unwrap()
    );
    // A model of an older schema: refused with the file and the schema named, nothing written.
    let text = std::fs::read_to_string(&model).unwrap();
    let stale = tmp.path().join("stale.json");
    std::fs::write(
        &stale,
        text.replace(
            powersynth::learn::LEARNED_MODEL_SCHEMA,
            "powersynth.learned_model.v1",
        ),
    )
    .unwrap();
    let o = run(&["--model".into(), stale.into()], "stale.csv");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("stale.json") && err.contains("schema"),
        "{err}"
    );
    assert!(!tmp.path().join("stale.csv").exists());
    // A tampered model: a negative quantile, a φ of 1.5, a negative step time.
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let bad = |name: &str, edit: &dyn Fn(&mut serde_json::Value), needle: &str| {
        let mut t = v.clone();
        edit(&mut t);
        let p = tmp.path().join(name);
        std::fs::write(&p, t.to_string()).unwrap();
        let o = run(&["--model".into(), p.into()], "tampered.csv");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains(name) && err.contains(needle),
            "{name}: {err}"
        );
        assert!(!tmp.path().join("tampered.csv").exists());
    };
    bad(
        "negative.json",
        &|t| t["power"]["cells"][0]["quantiles_w"][0] = serde_json::json!(-50.0),
        "quantiles_w",
    );
    bad(
        "phi.json",
        &|t| t["power"]["phi"] = serde_json::json!(1.5),
        "power.phi",
    );
    bad(
        "timing.json",
        &|t| t["timing"]["base_s"] = serde_json::json!(-1.0),
        "step timing",
    );
}

#[test]
fn site_is_the_sum_of_its_replicas_plus_non_gpu_power_times_pue() {
    use powersynth::site::{facility_metrics_multi, synthesize_site, SiteLayout};
    let Some(root) = common::shared("measured") else {
        return;
    };
    let runs = load(&root, &A100_SHAREGPT[..2]);
    let model = learn(&runs, &LearnOptions::default()).unwrap();
    let serving = ServingConfig::from_manifest(&runs[0].manifest);
    let w = Workload::from_request_log(&runs[1].requests.path).unwrap();
    let t0 = w.requests[0].arrival_s;
    let layout = SiteLayout {
        servers: 3,
        replicas_per_server: 2,
        servers_per_rack: 2,
        racks_per_row: 1,
        non_gpu_w_per_server: 500.0,
        pue: 1.25,
    };
    let site = synthesize_site(
        &model,
        &serving,
        &layout,
        &w,
        powersynth::synth::OutputWindow {
            t0_s: t0,
            duration_s: 60.0,
            dt_s: 1.0,
        },
        5,
    )
    .unwrap();
    assert_eq!(site.racks_w.len(), 2);
    assert_eq!(site.rows_w.len(), 2);
    // Recompute replica by replica: request k goes to replica k mod 6.
    let mut it_w = vec![3.0 * 500.0; 60];
    for r in 0..6 {
        let part = Workload {
            requests: w.requests.iter().skip(r).step_by(6).copied().collect(),
            ..Default::default()
        };
        let seed = 5 ^ (r as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let p = synthesize(&model, &serving, &part, t0, 60.0, 1.0, seed)
            .unwrap()
            .0;
        for (a, b) in it_w.iter_mut().zip(&p.power_w) {
            *a += b;
        }
    }
    for (got, it) in site.site_w.iter().zip(&it_w) {
        assert!((got - 1.25 * it).abs() < 1e-6, "{got} vs {}", 1.25 * it);
    }
    let m = facility_metrics_multi(&site.site_w, 1.0);
    assert_eq!(m.len(), 2); // 1 s and 1 min
    assert!(m[0].peak_w >= m[1].peak_w && (m[0].average_w - m[1].average_w).abs() < 1e-6);
}

/// Sessions learned from the agentic run (24 sessions, 89 turns, think times from
/// `post_gap_s`), replayed from closed-loop clients through the engine: every follow-up is
/// sent when the turn before it is answered plus its think time, a client never has two
/// requests in flight, and the prefix cache serves the later turns.
#[test]
fn agent_sessions_replay_from_closed_loop_clients() {
    use powersynth::engine::{simulate, BinGrid, StepTiming};
    use powersynth::prefix_cache::KvCacheConfig;
    use powersynth::sources::measured::read_request_log;
    use powersynth::workload::SessionModel;
    use rand::SeedableRng;
    let Some(root) = common::shared("measured") else {
        return;
    };
    let dir = run_dir(&root, A100_AGENTIC);
    let log = read_request_log(&dir.join("requests.json")).unwrap();
    let model = SessionModel::from_log(&log).unwrap();
    assert_eq!(model.sessions.len(), 24);
    assert_eq!(model.sessions.iter().map(Vec::len).sum::<usize>(), 89);
    // The first session in arrival order is a one-turn django session; its think time is the
    // logged post_gap_s of that request (row 0 of the session-ordered file).
    let raw: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("requests.json")).unwrap()).unwrap();
    let gap0 = raw["post_gap_s"][0].as_f64().unwrap();
    assert_eq!(raw["session_ids"][0], "django__django-13768");
    assert_eq!(model.sessions[0].len(), 1);
    assert_eq!(model.sessions[0][0].think_s, gap0);
    let clients = 4;
    let mut rng = rand_pcg::Pcg64::seed_from_u64(3);
    let w = model.closed_loop(clients, 0.0, 300.0, &mut rng).unwrap();
    let mut serving = ServingConfig::from_manifest(&load_run(&dir).unwrap().manifest);
    serving.enable_prefix_caching = true;
    let timing = StepTiming {
        base_s: 0.0125,
        per_decode_seq_s: 1e-5,
        per_prefill_token_s: 6e-5,
        per_context_ktoken_s: 1e-4,
        per_prefill_attention_s: 3e-6,
        first_step_s: 0.0,
    };
    let grid = BinGrid::new(0.0, 300.0, 0.25).unwrap();
    let sim = simulate(&w, &serving, &timing, &KvCacheConfig::default(), grid).unwrap();
    let mut sent = 0;
    for (q, o) in w.requests.iter().zip(&sim.outcomes) {
        if let (Some(p), true) = (q.follows, o.arrival_s.is_finite()) {
            let before = sim.outcomes[p as usize];
            assert!((o.arrival_s - (before.finished_s + q.think_s)).abs() < 1e-9);
            sent += 1;
        }
    }
    assert!(sent > 50, "{sent} follow-ups sent");
    assert!(sim
        .trace
        .running
        .iter()
        .all(|&r| r <= clients as f64 + 1e-9));
    // Later turns of a session hit the cache: most prompt tokens are served from it.
    let hits: f64 = sim.trace.cached_tokens.iter().sum();
    let prompt: f64 = hits + sim.trace.prefill_tokens.iter().sum::<f64>();
    assert!(hits > 0.5 * prompt, "{hits} of {prompt}");
}

#[test]
fn the_model_does_not_depend_on_the_order_of_the_training_runs() {
    let Some(root) = common::shared("measured") else {
        return;
    };
    let mut runs = load(&root, &[A100_SHAREGPT[0], A100_BURSTGPT]);
    let opts = LearnOptions {
        timing_iters: 40,
        ..LearnOptions::default()
    };
    let a = learn(&runs, &opts).unwrap();
    runs.reverse();
    let b = learn(&runs, &opts).unwrap();
    assert_eq!(a, b);
}

#[test]
fn timing_prior_reads_the_kv_cache_at_the_hbm_bandwidth() {
    let Some(root) = common::shared("measured") else {
        return;
    };
    let run = load(&root, &[A100_BURSTGPT]).remove(0);
    let prior = powersynth::learn::TimingPrior::of(&run);
    // Qwen3-8B: 36 layers × 8 KV heads × 128 × (K and V) × 2 bytes = 147,456 B per token;
    // 1,000 tokens at 0.7 × 2.039 TB/s.
    let expected = 1e3 * 147_456.0 / (0.7 * 2.039e12);
    let got = prior.per_context_ktoken_s.unwrap();
    assert!((got / expected - 1.0).abs() < 1e-12, "{got} vs {expected}");
    // The manifest has no transformer-only parameter count: no attention prior.
    assert_eq!(prior.attention_to_prefill, None);
}
