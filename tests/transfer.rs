//! Transfer to configurations nobody measured, on the real data: leave-one-configuration-out
//! (Qwen3-8B on H100 from the A100 runs + the leaderboard; Gemma-4 MoE on A100 TP2 from the
//! Qwen3-8B A100 runs with a leaderboard stand-in), and every leaderboard configuration's
//! average power reproduced by a steady load on a model transferred from a measured
//! reference.

mod common;

use std::path::{Path, PathBuf};

use powersynth::engine::ServingConfig;
use powersynth::learn::{learn, LearnOptions};
use powersynth::sources::leaderboard::{groups, load_dir, LeaderboardConfig};
use powersynth::sources::measured::{discover_runs, load_run, MeasuredRun};
use powersynth::synth::synthesize;
use powersynth::transfer::{
    choose_reference, model_for, transfer, ModelFacts, ReferenceChoice, TransferOptions,
};
use powersynth::validate::{validate_transfer, Draws};
use powersynth::workload::{Request, Workload};

const GEMMA: &str = "google/gemma-4-26B-A4B-it";
const GEMMA_STAND_IN: &str = "Qwen/Qwen3-30B-A3B-Instruct-2507";

fn runs_under(root: &Path, group_prefix: &str) -> Vec<MeasuredRun> {
    let mut dirs: Vec<PathBuf> = discover_runs(root)
        .unwrap()
        .into_iter()
        .filter(|d| {
            d.strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .starts_with(group_prefix)
        })
        .collect();
    dirs.sort();
    dirs.iter().map(|d| load_run(d).unwrap()).collect()
}

fn a100_qwen_runs(root: &Path) -> Vec<MeasuredRun> {
    discover_runs(root)
        .unwrap()
        .iter()
        .map(|d| load_run(d).unwrap())
        .filter(|r| r.manifest.model == "Qwen/Qwen3-8B" && r.manifest.hardware == "A100")
        .collect()
}

fn leaderboard() -> Option<Vec<LeaderboardConfig>> {
    let dir = common::shared("mlenergy-leaderboard")?;
    Some(load_dir(&dir, None).unwrap().1)
}

#[test]
fn qwen3_8b_on_h100_from_the_a100_runs_and_the_leaderboard() {
    let (Some(root), Some(lb)) = (common::shared("measured"), leaderboard()) else {
        return;
    };
    let train = a100_qwen_runs(&root);
    assert_eq!(train.len(), 6, "the six Qwen3-8B A100 runs");
    let target = runs_under(&root, "validate_qwen3-8b").remove(0);
    let draws = Draws {
        seed: 1,
        realizations: 5,
    };
    let v = validate_transfer(
        &train,
        &target,
        &lb,
        &TransferOptions::default(),
        &LearnOptions::default(),
        draws,
    )
    .unwrap();
    let t = v.transfer.as_ref().expect("a transfer: no H100 run trains");
    assert_eq!(t.reference.configuration, "Qwen/Qwen3-8B × A100 × TP1");
    assert_eq!(t.mode, "direct");
    let m = &v.metrics[0];
    // Measured when this was written (10 draws, seed 1): ΔE +0.41 %, KS 0.212, running ρ
    // 0.998. Issue 13's bounds: 5 % and 0.25.
    assert!(
        m.energy_error_pct <= 5.0,
        "ΔE {}",
        m.energy_error_signed_pct
    );
    assert!(m.ks <= 0.25, "KS {}", m.ks);
    assert!(v.running_corr > 0.95, "running ρ {}", v.running_corr);
    // Better than the board-limit and mean baselines on energy and distribution.
    for b in [1, 2] {
        assert!(m.energy_error_pct < v.metrics[b].energy_error_pct);
        assert!(m.ks < v.metrics[b].ks);
    }
}

#[test]
fn gemma4_moe_on_a100_tp2_needs_a_stand_in_and_lands_with_one() {
    let (Some(root), Some(lb)) = (common::shared("measured"), leaderboard()) else {
        return;
    };
    let train = a100_qwen_runs(&root);
    let target = runs_under(&root, "validate_gemma-4").remove(0);
    let draws = Draws {
        seed: 1,
        realizations: 3,
    };
    let opts = LearnOptions::default();
    // The leaderboard has no Gemma-4: the error says so and what to do.
    let err = validate_transfer(
        &train,
        &target,
        &lb,
        &TransferOptions::default(),
        &opts,
        draws,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains(GEMMA) && err.contains("--stand-in"), "{err}");
    let topts = TransferOptions::from_flags("", &[format!("{GEMMA}={GEMMA_STAND_IN}")]).unwrap();
    let v = validate_transfer(&train, &target, &lb, &topts, &opts, draws).unwrap();
    let t = v.transfer.as_ref().unwrap();
    assert_eq!(t.mode, "composed");
    assert_eq!(t.stand_in.as_deref(), Some(GEMMA_STAND_IN));
    // Measured when this was written (10 draws, seed 1): ΔE +2.35 %, KS 0.198, running ρ
    // 0.961.
    let m = &v.metrics[0];
    assert!(
        m.energy_error_pct <= 5.0,
        "ΔE {}",
        m.energy_error_signed_pct
    );
    assert!(m.ks <= 0.25, "KS {}", m.ks);
}

/// A steady load: `batch` requests in at once, each far longer than the window, so `batch`
/// decode the whole time.
fn steady(batch: u32) -> Workload {
    Workload {
        requests: (0..batch)
            .map(|_| Request::new(0.0, 64, 1_000_000))
            .collect(),
        session_names: vec![],
    }
}

#[test]
fn every_leaderboard_configuration_keeps_its_average_power_after_transfer() {
    let (Some(root), Some(lb)) = (common::shared("measured"), leaderboard()) else {
        return;
    };
    // The reference: the Qwen3-8B A100 Poisson run (a real learned shape).
    let reference = learn(
        &runs_under(&root, "arrival_rate_qwen3-8b_a100_r2p5"),
        &LearnOptions::default(),
    )
    .unwrap();
    let facts = ModelFacts::from_leaderboard(&lb, &reference.model);
    let mut worst = (0.0f64, String::new());
    let mut checked = 0;
    for g in groups(&lb) {
        let serving = ServingConfig {
            model: g.model_id.clone(),
            hardware: g.gpu_model.clone(),
            tp: g.num_gpus,
            max_num_seqs: 1,
            max_num_batched_tokens: 1 << 20,
            enable_chunked_prefill: true,
            enable_prefix_caching: false,
        };
        let choice = ReferenceChoice {
            configuration: reference.configuration.clone(),
            reason: "test".into(),
            ranked: vec![],
        };
        let opts = TransferOptions {
            task: g.task.clone(),
            ..Default::default()
        };
        let (model, _) = transfer(&reference, facts.as_ref(), choice, &serving, &lb, &opts)
            .unwrap_or_else(|e| panic!("{}: {e}", g.label()));
        // Repeated runs at one batch cap are one point: their mean.
        let mut caps: Vec<u32> = g.configs.iter().map(|c| c.max_num_seqs).collect();
        caps.dedup();
        for cap in caps {
            let same: Vec<&LeaderboardConfig> =
                g.configs.iter().filter(|c| c.max_num_seqs == cap).collect();
            let n = same.len() as f64;
            let batch = same.iter().map(|c| c.batch_size()).sum::<f64>() / n;
            let want_w = same.iter().map(|c| c.avg_power_w).sum::<f64>() / n;
            let b = batch.round().max(1.0) as u32;
            let serving = ServingConfig {
                max_num_seqs: b,
                ..serving.clone()
            };
            let (series, _) =
                synthesize(&model, &serving, &steady(b), 0.0, 120.0, 0.25, 7).unwrap();
            // The last minute: past the first prefill and the GPU's warm-up. The load runs at
            // the rounded batch: where the curve is steep (video-chat Qwen3-Omni on B200 falls
            // from 596 W at batch 7.6 to 401 W at 15.7) that alone moves it by up to ~2.5 %.
            let tail = &series.power_w[240..];
            let got_w = tail.iter().sum::<f64>() / tail.len() as f64;
            let err = (got_w - want_w).abs() / want_w;
            if err > worst.0 {
                worst = (
                    err,
                    format!("{} at batch {b}: {got_w:.1} vs {want_w:.1} W", g.label()),
                );
            }
            assert!(err <= 0.03, "{}", worst.1);
            checked += 1;
        }
    }
    eprintln!(
        "{checked} leaderboard configurations; worst {:.2} % ({})",
        100.0 * worst.0,
        worst.1
    );
    assert!(checked > 700, "{checked}");
}

#[test]
fn the_reference_is_the_same_gpu_then_the_same_family() {
    let (Some(root), Some(lb)) = (common::shared("measured"), leaderboard()) else {
        return;
    };
    let runs: Vec<MeasuredRun> = discover_runs(&root)
        .unwrap()
        .iter()
        .map(|d| load_run(d).unwrap())
        .collect();
    let candidates = |exclude: &str| {
        let mut seen = Vec::new();
        let mut out = Vec::new();
        for r in &runs {
            let m = &r.manifest;
            let key = (m.model.clone(), m.hardware.clone(), m.tp);
            if m.model == exclude || seen.contains(&key) {
                continue;
            }
            seen.push(key);
            out.push(powersynth::transfer::Candidate {
                model: m.model.clone(),
                hardware: m.hardware.clone(),
                tp: m.tp,
                facts: ModelFacts::from_manifest(m),
            });
        }
        out
    };
    // A dense 8 B on B200: no run on B200; the dense Qwen3-8B beats the MoE Gemma-4.
    let target = ServingConfig {
        model: "meta-llama/Llama-3.1-8B-Instruct".into(),
        hardware: "B200".into(),
        tp: 1,
        max_num_seqs: 64,
        max_num_batched_tokens: 8192,
        enable_chunked_prefill: true,
        enable_prefix_caching: false,
    };
    let facts = ModelFacts::from_leaderboard(&lb, &target.model).unwrap();
    let all = candidates("");
    let (i, c) = choose_reference(&target, Some(&facts), &all).unwrap();
    assert!(all[i].model == "Qwen/Qwen3-8B", "{c:?}");
    // An MoE on A100: the Gemma-4 run (same GPU, same family) beats the dense ones.
    let moe = ModelFacts {
        model: "x".into(),
        moe: true,
        active_params_b: 3.0,
    };
    let a100 = ServingConfig {
        hardware: "A100".into(),
        ..target.clone()
    };
    let (i, _) = choose_reference(&a100, Some(&moe), &all).unwrap();
    assert_eq!(all[i].model, GEMMA);
    // With runs of the target's own configuration, nothing is transferred.
    let (m, report) = model_for(
        &ServingConfig::from_manifest(&runs_under(&root, "validate_qwen3-8b")[0].manifest),
        &runs_under(&root, "validate_qwen3-8b"),
        Some(&lb),
        &TransferOptions::default(),
        &LearnOptions::default(),
    )
    .unwrap();
    assert!(report.is_none() && m.transfer.is_none());
}

#[test]
fn compact_fits_stand_in_for_the_leaderboard() {
    // The embedded fits (a fresh clone has them) read as leaderboard configurations: one per
    // group and batch size, power off the group's logistic curve; also from a build-dataset
    // output folder holding fits/default_fits.json.
    let embedded = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/default/fits.json");
    let (what, configs) = powersynth::pipeline::leaderboard_configs(&embedded).unwrap();
    assert!(what.starts_with("compact fits"), "{what}");
    let fits = powersynth::pipeline::CompactFits::read(&embedded).unwrap();
    let n: usize = fits.groups.iter().map(|g| g.batch_sizes.len()).sum();
    assert_eq!(configs.len(), n);
    let g = &fits.groups[0];
    let c = configs
        .iter()
        .find(|c| c.model_id == g.model_id && c.max_num_seqs == g.batch_sizes[0])
        .unwrap();
    assert_eq!(
        c.avg_power_w,
        g.logistic["power"].fit.eval_batch(g.batch_sizes[0])
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("fits")).unwrap();
    std::fs::copy(&embedded, dir.path().join("fits/default_fits.json")).unwrap();
    assert_eq!(
        powersynth::pipeline::leaderboard_configs(dir.path())
            .unwrap()
            .1
            .len(),
        n
    );
    // A transfer runs on them (no model facts: the family is unknown).
    let Some(root) = common::shared("measured") else {
        return;
    };
    let reference = learn(
        &runs_under(&root, "arrival_rate_qwen3-8b_a100_r2p5"),
        &LearnOptions::default(),
    )
    .unwrap();
    let target = ServingConfig {
        hardware: "H100".into(),
        ..ServingConfig::from_manifest(
            &runs_under(&root, "arrival_rate_qwen3-8b_a100_r2p5")[0].manifest,
        )
    };
    let choice = ReferenceChoice {
        configuration: reference.configuration.clone(),
        reason: "test".into(),
        ranked: vec![],
    };
    let (_, report) = transfer(
        &reference,
        None,
        choice,
        &target,
        &configs,
        &TransferOptions::default(),
    )
    .unwrap();
    assert_eq!(report.mode, "direct");
    assert!(report
        .assumptions
        .iter()
        .any(|a| a.contains("active parameters unknown")));
}

#[test]
fn synthesize_transfers_with_a_leaderboard_and_says_so() {
    let (Some(root), Some(lb_dir)) = (
        common::shared("measured"),
        common::shared("mlenergy-leaderboard"),
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let serving = tmp.path().join("serving.json");
    std::fs::write(
        &serving,
        r#"{"model": "Qwen/Qwen3-8B", "hardware": "H100", "tp": 1, "max_num_seqs": 256,
            "max_num_batched_tokens": 8192, "enable_chunked_prefill": true,
            "enable_prefix_caching": false}"#,
    )
    .unwrap();
    let train = runs_under(&root, "arrival_rate_qwen3-8b_a100_r2p5")[0]
        .dir
        .clone();
    let requests = runs_under(&root, "validate_qwen3-8b")[0]
        .dir
        .join("requests_summary.json");
    let run = |extra: &[&std::ffi::OsStr], out: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_synthesize"))
            .arg("--train")
            .arg(&train)
            .arg("--serving")
            .arg(&serving)
            .arg("--requests")
            .arg(&requests)
            .args(["--t0", "1784422669", "--duration-s", "30", "--out"])
            .arg(tmp.path().join(out))
            .args(extra)
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap()
    };
    // No H100 run and no leaderboard: refused, saying what would make it work.
    let o = run(&[], "a.parquet");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("--leaderboard"),
        "{err}"
    );
    assert!(!tmp.path().join("a.parquet").exists());
    // A malformed stand-in: refused before anything is read.
    let o = run(&["--stand-in".as_ref(), "nonsense".as_ref()], "b.parquet");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("TARGET_MODEL=LEADERBOARD_MODEL"),
        "{err}"
    );
    // With the leaderboard: transferred, the reference on stderr, the expected error on
    // stdout and in the manifest beside the output.
    let o = run(&["--leaderboard".as_ref(), lb_dir.as_os_str()], "c.parquet");
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{err}");
    assert!(err.contains("from Qwen/Qwen3-8B × A100 × TP1"), "{err}");
    assert!(out.contains("expected error of this transfer"), "{out}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("c.manifest.json")).unwrap())
            .unwrap();
    assert_eq!(
        manifest["transfer"]["reference"]["configuration"],
        "Qwen/Qwen3-8B × A100 × TP1"
    );
    assert_eq!(manifest["configuration"], "Qwen/Qwen3-8B × H100 × TP1");
    assert!(manifest["expected_error"].as_str().unwrap().contains("ΔE"));
}

#[test]
fn validate_json_reports_the_transfer() {
    let (Some(root), Some(lb_dir)) = (
        common::shared("measured"),
        common::shared("mlenergy-leaderboard"),
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let train = runs_under(&root, "arrival_rate_qwen3-8b_a100_r2p5")[0]
        .dir
        .clone();
    let target = runs_under(&root, "validate_qwen3-8b")[0].dir.clone();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_validate"))
        .arg("--train")
        .arg(&train)
        .arg("--target")
        .arg(&target)
        .arg("--leaderboard")
        .arg(&lb_dir)
        .arg("--out")
        .arg(tmp.path())
        .arg("--json")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let run = &v["runs"][0];
    assert_eq!(run["transfer"]["mode"], "direct");
    let de = run["metrics"]["powersynth"]["energy_error_pct"]
        .as_f64()
        .unwrap();
    let tdp = run["metrics"]["tdp"]["energy_error_pct"].as_f64().unwrap();
    assert!(de < tdp, "{de} vs TDP {tdp}");
    assert!(tmp.path().join("transfer_errors.json").is_file());
    assert!(tmp.path().join("report.html").is_file());
}
