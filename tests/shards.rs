//! Sharded runs: a facility simulated as N shards and merged equals the unsplit run (every
//! table, facility metrics), whatever N, through the library and through the binaries as the
//! README runs them; merges of incomplete or mixed shards are refused.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use powersynth::coordinator::merge::merge_shards;
use powersynth::coordinator::sink::{ParquetRunWriter, RUN_TABLES};
use powersynth::scenario::{build, Overrides, Scenario};
use powersynth::shard::Shard;
use powersynth::table::{Column, ParquetTable, Table};

fn scenario_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/scenarios/facility-racks.toml")
}

fn overrides(shard: Option<Shard>) -> Overrides {
    Overrides {
        duration_s: Some(180.0),
        shard,
        ..Overrides::default()
    }
}

/// Runs the scenario (or one shard of it) into `dir` through the library.
fn run(dir: &Path, shard: Option<Shard>) {
    let path = scenario_path();
    let sc = Scenario::from_file(&path).unwrap();
    let ov = overrides(shard);
    let mut built = build(&sc, path.parent().unwrap(), &ov).unwrap();
    let key = ov.run_key(&path).unwrap();
    let mut w = ParquetRunWriter::new(dir).with_shard(shard.unwrap_or_default(), &key);
    built.coordinator.run(&mut w).unwrap();
}

fn read(dir: &Path, table: &str) -> Table {
    ParquetTable::read(&dir.join(table).join("part-0.parquet"))
        .unwrap()
        .to_table()
        .unwrap()
}

/// Every table of `a` equals `b`'s: same columns and rows, floats within 1e-9 relative (NaN
/// equal to NaN), the rest exactly. Returns the largest relative float difference.
fn assert_same_run(a: &Path, b: &Path) -> f64 {
    let mut worst: f64 = 0.0;
    for name in RUN_TABLES {
        let (ta, tb) = (read(a, name), read(b, name));
        assert_eq!(ta.num_rows(), tb.num_rows(), "{name}");
        assert!(ta.num_rows() > 0, "{name} is empty");
        for ((ca, xa), (cb, xb)) in ta.columns.iter().zip(&tb.columns) {
            assert_eq!(ca, cb, "{name}");
            match (xa, xb) {
                (Column::F64(x), Column::F64(y)) => {
                    for (i, (u, v)) in x.iter().zip(y).enumerate() {
                        if u.is_nan() && v.is_nan() {
                            continue;
                        }
                        let rel = (u - v).abs() / u.abs().max(1.0);
                        assert!(rel <= 1e-9, "{name}.{ca} row {i}: {u} vs {v}");
                        worst = worst.max(rel);
                    }
                }
                _ => assert_eq!(xa, xb, "{name}.{ca}"),
            }
        }
    }
    let metrics = |d: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join("facility_metrics.json")).unwrap())
            .unwrap()
    };
    let (ma, mb) = (metrics(a), metrics(b));
    let mean = |m: &serde_json::Value| m[0]["mean_facility_power_w"].as_f64().unwrap();
    assert!((mean(&ma) - mean(&mb)).abs() <= 1e-9 * mean(&ma));
    assert_eq!(ma[0]["steps"], mb[0]["steps"]);
    worst
}

#[test]
fn merged_shards_equal_the_unsplit_run_for_any_shard_count() {
    let whole = tempfile::tempdir().unwrap();
    run(whole.path(), None);
    // The run has power in every kind of column the merge sums (the check can fail).
    let steps = read(whole.path(), "steps");
    let training = match &steps.columns[7] {
        (n, Column::F64(v)) if n == "training_power_w" => v.iter().cloned().fold(0.0, f64::max),
        other => panic!("{other:?}"),
    };
    assert!(training > 1000.0, "training overlay {training} W");
    // 63 racks: 4 and 3 shards split unevenly, 70 leaves some shards without a rack.
    for n in [4u32, 3, 70] {
        let shards = tempfile::tempdir().unwrap();
        for i in 0..n {
            run(shards.path(), Some(Shard::new(i, n).unwrap()));
        }
        let merged = tempfile::tempdir().unwrap();
        let summary = merge_shards(shards.path(), merged.path()).unwrap();
        assert_eq!(summary.shards, n);
        let worst = assert_same_run(whole.path(), merged.path());
        eprintln!("{n} shards: largest relative difference {worst:e}");
    }
}

#[test]
fn a_shard_alone_is_part_of_the_facility() {
    let whole = tempfile::tempdir().unwrap();
    run(whole.path(), None);
    let one = tempfile::tempdir().unwrap();
    run(one.path(), Some(Shard::new(1, 4).unwrap()));
    let w = read(whole.path(), "steps");
    let p = ParquetTable::read(&one.path().join("steps/shard=1/part-0.parquet")).unwrap();
    let (fw, fp) = match (&w.columns[6].1, p.floats("facility_power_w").unwrap()) {
        (Column::F64(a), b) => (a.clone(), b),
        _ => unreachable!(),
    };
    // Shard 1 has a quarter of the racks and none of the base load or training.
    let ratio = fp.iter().sum::<f64>() / fw.iter().sum::<f64>();
    assert!((0.15..0.35).contains(&ratio), "shard 1 share {ratio}");
    // A shard writes no facility outputs: those are the merge's.
    assert!(!one.path().join("facility").exists());
    assert!(one.path().join("shards/shard=1.json").exists());
}

fn bin(name: &str) -> Command {
    let exe = match name {
        "simulate" => env!("CARGO_BIN_EXE_simulate"),
        _ => env!("CARGO_BIN_EXE_merge-shards"),
    };
    Command::new(exe)
}

fn simulate(out: &Path, extra: &[&str]) -> std::process::Child {
    bin("simulate")
        .arg("--scenario")
        .arg(scenario_path())
        .args(["--duration-s", "180", "--out"])
        .arg(out)
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn four_processes_and_merge_shards_as_the_readme_runs_them() {
    let root = tempfile::tempdir().unwrap();
    let (whole, shards, merged) = (
        root.path().join("whole"),
        root.path().join("shards"),
        root.path().join("merged"),
    );
    let mut children = vec![simulate(&whole, &[])];
    for i in 0..4 {
        children.push(simulate(&shards, &["--shard", &format!("{i}/4")]));
    }
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let o = bin("merge-shards")
        .arg(&shards)
        .arg("--out")
        .arg(&merged)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_run(&whole, &merged);
    assert!(merged.join("report.html").exists());

    // A missing shard is named.
    std::fs::remove_file(shards.join("shards/shard=2.json")).unwrap();
    let o = bin("merge-shards")
        .arg(&shards)
        .args(["--out"])
        .arg(root.path().join("m2"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("shards [2] of 4 are missing"),
        "{err}"
    );
    // A shard of another run (another seed) is refused.
    let o = simulate(&shards, &["--shard", "2/4", "--seed", "5"])
        .wait_with_output()
        .unwrap();
    assert!(o.status.success());
    let o = bin("merge-shards")
        .arg(&shards)
        .args(["--out"])
        .arg(root.path().join("m3"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("of another run"),
        "{err}"
    );
    // -q: nothing on stderr (no progress bar, no info); -v: the merge's steps.
    let o = simulate(&root.path().join("q"), &["-q"])
        .wait_with_output()
        .unwrap();
    assert!(o.status.success() && o.stderr.is_empty(), "{:?}", o.stderr);
    let o = bin("merge-shards")
        .arg(&shards)
        .args(["-v", "--out"])
        .arg(root.path().join("m4"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("merging shards") || err.contains("of another run"),
        "{err}"
    );
    // And a bad shard is refused by simulate itself.
    let o = simulate(&shards, &["--shard", "4/4"])
        .wait_with_output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("need 0 ≤ I < N"),
        "{err}"
    );
}

/// Every entry under `dir` (relative paths), sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn sigterm_mid_run_leaves_the_output_folder_as_it_was() {
    let root = tempfile::tempdir().unwrap();
    let (kept, fresh) = (root.path().join("kept"), root.path().join("fresh"));
    // A previous complete result in `kept`; `fresh` has none.
    let o = simulate(&kept, &["-q"]).wait_with_output().unwrap();
    assert!(o.status.success());
    let before = tree(&kept);
    let steps = std::fs::read(kept.join("steps/part-0.parquet")).unwrap();
    let parity =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/scenarios/openg2g-parity.toml");
    for out in [&kept, &fresh] {
        let mut child = bin("simulate")
            .arg("--scenario")
            .arg(&parity)
            .args(["--gpus", "100000", "--duration-s", "3600", "-q", "--out"])
            .arg(out)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Wait until the run is writing (a temporary parquet in its staging folder).
        let writing = || {
            tree(root.path())
                .iter()
                .any(|p| p.contains(".staging-") && p.ends_with(".tmp"))
        };
        let t0 = std::time::Instant::now();
        while !writing() {
            assert!(t0.elapsed().as_secs() < 60, "the run never started writing");
            assert!(child.try_wait().unwrap().is_none(), "the run ended early");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let pid = child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let o = child.wait_with_output().unwrap();
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("interrupted"), "{err}");
        // Nothing of the killed run is left: no staging folder, no temporary file.
        let left: Vec<String> = tree(root.path())
            .into_iter()
            .filter(|p| p.contains("staging") || p.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
    assert_eq!(tree(&kept), before);
    assert_eq!(
        std::fs::read(kept.join("steps/part-0.parquet")).unwrap(),
        steps
    );
    assert!(!fresh.exists());
}

/// `build-dataset` killed mid-run leaves --out as it was: a previous complete result
/// (refitted with `--force` when killed) is byte-identical afterwards, a fresh folder is absent,
/// and no staging folder is left. Then an uninterrupted rerun into the kept folder reuses its
/// spec cache (the previous result is hard-linked into the staging folder, never modified).
#[test]
fn build_dataset_killed_mid_run_leaves_the_output_folder_as_it_was() {
    let Some(leaderboard) = common::shared("mlenergy-leaderboard") else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let pipeline = root.path().join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            "name = \"k\"\nseed = 0\n[source]\nkind = \"leaderboard\"\npath = {:?}\n\
             tasks = [\"gpqa\", \"lm-arena-chat\"]\n[itl]\nmode = \"robust\"\nmax_samples = 2048\n",
            leaderboard.display().to_string()
        ),
    )
    .unwrap();
    let run = |out: &Path, extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_build-dataset"))
            .arg("--pipeline")
            .arg(&pipeline)
            .arg("--out")
            .arg(out)
            .args(extra)
            .arg("-q")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (kept, fresh) = (root.path().join("kept"), root.path().join("fresh"));
    let o = run(&kept, &[]).wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let before = tree(&kept);
    let manifest = std::fs::read(kept.join("manifest.json")).unwrap();
    for out in [&kept, &fresh] {
        let mut child = run(out, &["--force"]);
        // Wait until the staging folder holds spec folders (linked from the previous result, or
        // the first ones fitted), then a second more: the run is refitting and writing from
        // several threads (a --force run takes several seconds here).
        let writing = || {
            tree(root.path())
                .iter()
                .any(|p| p.contains(".staging-") && p.contains("specs/"))
        };
        let t0 = std::time::Instant::now();
        while !writing() {
            assert!(t0.elapsed().as_secs() < 60, "the run never started writing");
            assert!(child.try_wait().unwrap().is_none(), "the run ended early");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::thread::sleep(std::time::Duration::from_millis(1000));
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        let pid = child.id().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(killed.success());
        let o = child.wait_with_output().unwrap();
        assert!(!o.status.success(), "the run finished before the signal");
        let left: Vec<String> = tree(root.path())
            .into_iter()
            .filter(|p| p.contains("staging") || p.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
    assert_eq!(tree(&kept), before);
    assert_eq!(std::fs::read(kept.join("manifest.json")).unwrap(), manifest);
    assert!(!fresh.exists());
    // A rerun reuses the kept spec cache whole.
    let o = Command::new(env!("CARGO_BIN_EXE_build-dataset"))
        .arg("--pipeline")
        .arg(&pipeline)
        .arg("--out")
        .arg(&kept)
        .arg("--json")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(summary["groups_built"], 0, "{summary}");
}
