//! The embedded coordinator and offline datacenter: parity with the peer on its bench scenario,
//! the peer's test vectors where our behaviour is the peer's, the peer's bugs done right, and
//! the lifecycle (reset → bit-identical rerun, commands effective next step, bad schedules).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use num_rational::Ratio;
use powersynth::coordinator::controllers::{
    BatchSizeChange, BatchSizeSchedule, BatchSizeScheduleController, NoopController,
};
use powersynth::coordinator::sink::{ParquetRunWriter, RunLog};
use powersynth::coordinator::{
    Command, Controller, Coordinator, Datacenter, DatacenterCommand, DcState, Seconds,
};
use powersynth::datacenter::{
    DatacenterConfig, ModelDeployment, OfflineDatacenter, ReplicaSchedule, TrainingSchedule,
};
use powersynth::scenario::{build, Overrides, Scenario};
use powersynth::table::ParquetTable;

fn tenth() -> Seconds {
    Ratio::new(1, 10)
}

fn flat(
    label: &str,
    gpus: u32,
    replicas: u64,
    per_batch_w: &[(u32, f64)],
    len: usize,
) -> ModelDeployment {
    ModelDeployment {
        label: label.into(),
        gpus_per_replica: gpus,
        initial_batch_size: per_batch_w[0].0,
        schedule: ReplicaSchedule::new(replicas),
        templates: per_batch_w
            .iter()
            .map(|&(b, w)| (b, Arc::from(vec![w; len])))
            .collect(),
        itl_fits: None,
    }
}

fn run_all(coord: &mut Coordinator) -> RunLog {
    let mut log = RunLog::default();
    coord.run(&mut log).unwrap();
    log
}

/// Exact equality, NaN included (observed ITL is NaN without fits).
fn same_bits(a: &[DcState], b: &[DcState]) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

fn parity(gpus: u64, duration_s: f64) -> (RunLog, Coordinator) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/scenarios/openg2g-parity.toml");
    let sc = Scenario::from_file(&path).unwrap();
    let ov = Overrides {
        gpus: Some(gpus),
        duration_s: Some(duration_s),
        seed: None,
        shard: None,
    };
    let mut built = build(&sc, path.parent().unwrap(), &ov).unwrap();
    let log = run_all(&mut built.coordinator);
    (log, built.coordinator)
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    s / n as f64
}

#[test]
fn parity_scenario_matches_the_peer() {
    // Reference figures: the peer (openg2g 0.2.0.post1) on the same scenario, 600 s at 0.1 s,
    // seed 0 (script in docs/coordinator.md): per-phase means (kW), per-model GPU power (kW).
    let peer = [
        (
            1_000u64,
            [660.786, 660.952, 653.360],
            1975.098,
            [234.996, 240.103],
            [0.029613, 0.043397],
        ),
        (
            10_000,
            [2093.334, 2093.852, 2090.848],
            6278.034,
            [2361.880, 2416.154],
            [0.029606, 0.043402],
        ),
    ];
    for (gpus, phases_kw, total_kw, models_kw, itl_s) in peer {
        let (log, _) = parity(gpus, 600.0);
        let states = &log.dc_states[0];
        assert_eq!(states.len(), 6000);
        let ours_total = mean(states.iter().map(|s| s.facility_power_w)) / 1e3;
        assert!(
            (ours_total / total_kw - 1.0).abs() < 0.01,
            "{gpus}: {ours_total} vs {total_kw}"
        );
        let ph = [
            mean(states.iter().map(|s| s.power_w.a)) / 1e3,
            mean(states.iter().map(|s| s.power_w.b)) / 1e3,
            mean(states.iter().map(|s| s.power_w.c)) / 1e3,
        ];
        for p in 0..3 {
            assert!(
                (ph[p] / phases_kw[p] - 1.0).abs() < 0.01,
                "{gpus} phase {p}: {} vs {}",
                ph[p],
                phases_kw[p]
            );
        }
        for m in 0..2 {
            let ours = mean(states.iter().map(|s| s.models[m].power_w)) / 1e3;
            assert!(
                (ours / models_kw[m] - 1.0).abs() < 0.01,
                "{gpus} model {m}: {ours} vs {}",
                models_kw[m]
            );
            let itl = mean(states.iter().map(|s| s.models[m].observed_itl_s));
            assert!(
                (itl / itl_s[m] - 1.0).abs() < 0.01,
                "{gpus} ITL {m}: {itl} vs {}",
                itl_s[m]
            );
        }
        // Replicas as the bench sets them: half the capacity, whole servers of whole replicas.
        let expect = if gpus == 1000 {
            [496, 124]
        } else {
            [5000, 1250]
        };
        assert_eq!(states[0].models[0].active_replicas, expect[0]);
        assert_eq!(states[0].models[1].active_replicas, expect[1]);
    }
}

#[test]
fn second_run_after_reset_is_bit_identical() {
    let (a, mut coord) = parity(1000, 30.0);
    let b = run_all(&mut coord);
    assert!(same_bits(&a.dc_states[0], &b.dc_states[0]));
    // And a fresh build with another seed differs (the check can fail).
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/scenarios/openg2g-parity.toml");
    let sc = Scenario::from_file(&path).unwrap();
    let ov = Overrides {
        gpus: Some(1000),
        duration_s: Some(30.0),
        seed: Some(7),
        ..Overrides::default()
    };
    let c = run_all(&mut build(&sc, path.parent().unwrap(), &ov).unwrap().coordinator);
    assert!(!same_bits(&a.dc_states[0], &c.dc_states[0]));
}

#[test]
fn streamed_result_equals_the_in_memory_run() {
    let (mem, mut coord) = parity(1000, 20.0);
    let dir = tempfile::tempdir().unwrap();
    let mut w = ParquetRunWriter::new(dir.path());
    coord.run(&mut w).unwrap();
    let t = ParquetTable::read(&dir.path().join("steps/part-0.parquet")).unwrap();
    let a = t.floats("power_a_w").unwrap();
    assert_eq!(a.len(), 200);
    let m = ParquetTable::read(&dir.path().join("models/part-0.parquet")).unwrap();
    let (labels, mp) = (m.strings("model").unwrap(), m.floats("power_w").unwrap());
    assert_eq!(mp.len(), 400);
    for (i, s) in mem.dc_states[0].iter().enumerate() {
        assert_eq!(a[i].to_bits(), s.power_w.a.to_bits());
        assert_eq!(labels[2 * i + 1].as_deref(), Some("ModelB"));
        assert_eq!(mp[2 * i + 1].to_bits(), s.models[1].power_w.to_bits());
    }
    let f = ParquetTable::read(&dir.path().join("facility/part-0.parquet")).unwrap();
    let res = f.floats("resolution_s").unwrap();
    assert_eq!(res.iter().filter(|&&r| r == 1.0).count(), 20);
    // No temporary files left behind, and no rack tables without a rack layout.
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let e = e.unwrap();
        names.push(e.file_name().to_string_lossy().into_owned());
        if e.path().is_dir() {
            for f in std::fs::read_dir(e.path()).unwrap() {
                names.push(f.unwrap().file_name().to_string_lossy().into_owned());
            }
        }
    }
    assert!(names.iter().all(|n| !n.starts_with(".tmp")), "{names:?}");
    assert!(
        !names.iter().any(|n| n == "racks" || n == "rows"),
        "{names:?}"
    );
}

fn flat_dc(models: Vec<ModelDeployment>, capacity: u64) -> OfflineDatacenter {
    let cfg = DatacenterConfig {
        total_gpu_capacity: capacity,
        ..DatacenterConfig::default()
    };
    OfflineDatacenter::new("dc", tenth(), cfg, models, TrainingSchedule::default(), 0).unwrap()
}

#[test]
fn batch_size_command_takes_effect_on_the_next_step() {
    let dc = flat_dc(vec![flat("A", 1, 8, &[(8, 300.0), (64, 500.0)], 100)], 8);
    let sched = BatchSizeSchedule::new(
        "A",
        vec![BatchSizeChange {
            at_s: 1.0,
            batch_size: 64,
            ramp_up_rate: 0.0,
        }],
    )
    .unwrap();
    let ctrl = BatchSizeScheduleController::new(
        Ratio::from_integer(1),
        "dc",
        BTreeMap::from([("A".to_string(), sched)]),
    );
    let mut coord = Coordinator::new(
        vec![Box::new(dc)],
        None,
        vec![Box::new(ctrl)],
        Ratio::from_integer(2),
    )
    .unwrap();
    let log = run_all(&mut coord);
    let s = &log.dc_states[0];
    // Tick 10 (t = 1.0 s): the datacenter steps before the controller fires.
    assert_eq!((s[10].time_s, s[10].models[0].batch_size), (1.0, 8));
    assert_eq!(s[10].models[0].power_w, 8.0 * 300.0);
    assert_eq!((s[11].time_s, s[11].models[0].batch_size), (1.1, 64));
    assert_eq!(s[11].models[0].power_w, 8.0 * 500.0);
    assert_eq!(log.commands.len(), 1);
    assert_eq!(log.commands[0].tick, 10);
    let topics: Vec<&str> = log.events.iter().map(|e| e.topic.as_str()).collect();
    assert_eq!(
        topics,
        [
            "controller.batch_schedule.fired",
            "datacenter.batch_size.updated"
        ]
    );
}

#[test]
fn step_api_and_dispatch_for_drivers() {
    let dc = flat_dc(
        vec![
            flat("A", 1, 4, &[(8, 300.0)], 10),
            flat("B", 2, 0, &[(8, 400.0)], 10),
        ],
        16,
    );
    let noop: Box<dyn Controller> = Box::new(NoopController {
        dt_s: Ratio::from_integer(1),
    });
    let mut coord =
        Coordinator::new(vec![Box::new(dc)], None, vec![noop], Ratio::from_integer(1)).unwrap();
    assert!(coord.step().is_err(), "step before start");
    coord.reset();
    coord.start().unwrap();
    let s0 = coord.step().unwrap().datacenters[0]
        .state()
        .unwrap()
        .clone();
    assert_eq!(s0.models[1].active_replicas, 0);
    // Model B starts at 0 replicas; the peer would never simulate it. A shift gives it power.
    let shift = Command::Datacenter {
        target: "dc".into(),
        command: DatacenterCommand::ShiftReplicas {
            model: "B".into(),
            replica_delta: 3,
        },
    };
    coord.dispatch(&[shift]).unwrap();
    let out = coord.step().unwrap();
    let s1 = out.datacenters[0].state().unwrap();
    assert_eq!(s1.models[1].active_replicas, 3);
    assert_eq!(s1.models[1].power_w, 6.0 * 400.0);
    // Over capacity (4 + 3·2 = 10 GPUs used of 16; 4 more replicas need 18).
    let too_many = Command::Datacenter {
        target: "dc".into(),
        command: DatacenterCommand::ShiftReplicas {
            model: "B".into(),
            replica_delta: 4,
        },
    };
    let err = coord.dispatch(&[too_many]).unwrap_err().to_string();
    assert!(err.contains("capacity is 16"), "{err}");
    let unknown = Command::Datacenter {
        target: "dc".into(),
        command: DatacenterCommand::SetBatchSize {
            batch_size_by_model: vec![("C".into(), 8)],
            ramp_up_rate_by_model: vec![],
        },
    };
    assert!(coord
        .dispatch(&[unknown])
        .unwrap_err()
        .to_string()
        .contains("no model \"C\""));
    let unmeasured = Command::Datacenter {
        target: "dc".into(),
        command: DatacenterCommand::SetBatchSize {
            batch_size_by_model: vec![("A".into(), 16)],
            ramp_up_rate_by_model: vec![],
        },
    };
    assert!(coord
        .dispatch(&[unmeasured])
        .unwrap_err()
        .to_string()
        .contains("no power template"));
    coord.stop();
}

#[test]
fn whole_server_over_count_is_not_copied() {
    // Peer spec §9: 10 replicas × 1 GPU at 500 W on 8-GPU servers; the peer reports 8000 W and
    // 16 active replicas. The GPUs in use draw 5000 W and 10 replicas serve.
    let dc = flat_dc(vec![flat("A", 1, 10, &[(8, 500.0)], 10)], 16);
    let mut coord = Coordinator::new(vec![Box::new(dc)], None, vec![], Ratio::new(1, 10)).unwrap();
    let log = run_all(&mut coord);
    let s = &log.dc_states[0][0];
    assert_eq!(s.models[0].power_w, 5000.0);
    assert_eq!(s.models[0].active_replicas, 10);
    assert_eq!(s.power_w.total(), 5000.0);
    let nonzero = [s.power_w.a, s.power_w.b, s.power_w.c]
        .iter()
        .filter(|&&p| p > 0.0)
        .count();
    assert_eq!(nonzero, 2, "two servers on two phases: {:?}", s.power_w);
}

#[test]
fn bad_setups_are_rejected_with_clear_errors() {
    let err = ReplicaSchedule::new(4)
        .ramp_to(8, 10.0, 20.0)
        .unwrap()
        .ramp_to(2, 15.0, 30.0)
        .unwrap_err();
    assert!(err.to_string().contains("overlaps"), "{err}");
    let c = |t, b| BatchSizeChange {
        at_s: t,
        batch_size: b,
        ramp_up_rate: 0.0,
    };
    let err = BatchSizeSchedule::new("A", vec![c(5.0, 8), c(5.0, 64)]).unwrap_err();
    assert!(err.to_string().contains("same time t = 5 s"), "{err}");
    // Capacity at a ramp boundary.
    let mut m = flat("A", 1, 4, &[(8, 300.0)], 10);
    m.schedule = ReplicaSchedule::new(4).ramp_to(20, 5.0, 10.0).unwrap();
    let cfg = DatacenterConfig {
        total_gpu_capacity: 16,
        ..DatacenterConfig::default()
    };
    let err = OfflineDatacenter::new("dc", tenth(), cfg, vec![m], TrainingSchedule::default(), 0)
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("at t = 10 s the models need 20 GPUs, capacity is 16"),
        "{err}"
    );
    // Duration not a whole number of ticks; duplicate datacenter names.
    let mk = || -> Box<dyn Datacenter> {
        Box::new(flat_dc(vec![flat("A", 1, 1, &[(8, 300.0)], 10)], 8))
    };
    assert!(Coordinator::new(vec![mk()], None, vec![], Ratio::new(1, 20)).is_err());
    assert!(Coordinator::new(vec![mk(), mk()], None, vec![], Ratio::from_integer(1)).is_err());
    // A scenario with overlapping ramps or duplicate schedule times fails at build, naming them.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/scenarios/openg2g-parity.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let ramps = text.replace(
        "label = \"ModelA\"\n",
        "label = \"ModelA\"\nramps = [{ target = 10, t_start_s = 10.0, t_end_s = 20.0 }, { target = 5, t_start_s = 15.0, t_end_s = 25.0 }]\n",
    );
    assert_ne!(ramps, text);
    let sc: Scenario = toml::from_str(&ramps).unwrap();
    let err = build(&sc, path.parent().unwrap(), &Overrides::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("models.ModelA.ramps") && err.contains("overlaps"),
        "{err}"
    );
    let dup = text.replace(
        "kind = \"noop\"\ndt_s = 1",
        "kind = \"batch-schedule\"\ndt_s = 1\nchanges = [{ model = \"ModelA\", at_s = 5.0, batch_size = 64 }, { model = \"ModelA\", at_s = 5.0, batch_size = 32 }]",
    );
    assert_ne!(dup, text);
    let sc: Scenario = toml::from_str(&dup).unwrap();
    let err = build(&sc, path.parent().unwrap(), &Overrides::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("same time t = 5 s"), "{err}");
}

mod common;

#[test]
fn synthesized_power_source_next_to_replayed_power() {
    // State-transition synthesis as a datacenter power source: learned from a measured A100
    // run, driven at that run's request rate, the facility power of 40 one-GPU replicas must
    // match 40 × the run's measured mean power (± 10 %), next to a replayed parametric model.
    let Some(root) = common::shared("measured/arrival_rate_qwen3-8b_a100_r2p5") else {
        return;
    };
    let run_dir = powersynth::sources::measured::discover_runs(&root)
        .unwrap()
        .remove(0);
    let measured = powersynth::sources::measured::load_run(&run_dir).unwrap();
    // Measured mean while traffic arrives (the power log also holds idle time around it).
    let ts = &measured.requests.request_timestamps;
    let (t0, t1) = (ts[0], ts[ts.len() - 1]);
    let loaded: Vec<f64> = measured
        .power
        .t_s
        .iter()
        .zip(&measured.power.power_w)
        .filter(|(t, _)| (t0..=t1).contains(*t))
        .map(|(_, p)| *p)
        .collect();
    let measured_mean_w = loaded.iter().sum::<f64>() / loaded.len() as f64;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
        duration_s = 120
        [datacenter]
        dt_s = "1/4"
        total_gpu_capacity = 48
        [[models]]
        label = "qwen3-8b-synth"
        gpus_per_replica = 1
        initial_batch_size = 256
        replicas = 40
        power = {{ kind = "synthesized", train = [{train:?}], batch_sizes = [256], rate_per_s = 2.5, series_s = 600.0 }}
        [[models]]
        label = "replayed"
        gpus_per_replica = 1
        initial_batch_size = 8
        replicas = 8
        power = {{ kind = "parametric", batch_sizes = [8], level_w = [300.0, 300.0], trace_s = 10.0, trace_dt_s = 0.25 }}
        "#,
        train = run_dir.display().to_string()
    );
    let path = dir.path().join("scenario.toml");
    std::fs::write(&path, text).unwrap();
    let sc = Scenario::from_file(&path).unwrap();
    let log = run_all(
        &mut build(&sc, dir.path(), &Overrides::default())
            .unwrap()
            .coordinator,
    );
    let states = &log.dc_states[0];
    assert_eq!(states.len(), 480);
    let synth_w = mean(states.iter().map(|s| s.models[0].power_w));
    let expect_w = 40.0 * measured_mean_w;
    assert!(
        (synth_w / expect_w - 1.0).abs() < 0.10,
        "synthesized {synth_w} W vs measured 40 × {measured_mean_w} W"
    );
    assert_eq!(
        mean(states.iter().map(|s| s.models[1].power_w)),
        8.0 * 300.0
    );
    // Synthesized power varies from step to step (engine state), the flat replay does not.
    let first = states[0].models[0].power_w;
    assert!(states
        .iter()
        .any(|s| (s.models[0].power_w - first).abs() > 1.0));
}

/// The measured mean power of a run while its traffic arrives.
fn loaded_mean_w(run: &powersynth::sources::measured::MeasuredRun) -> f64 {
    let ts = &run.requests.request_timestamps;
    let (t0, t1) = (ts[0], ts[ts.len() - 1]);
    let loaded: Vec<f64> = run
        .power
        .t_s
        .iter()
        .zip(&run.power.power_w)
        .filter(|(t, _)| (t0..=t1).contains(*t))
        .map(|(_, p)| *p)
        .collect();
    loaded.iter().sum::<f64>() / loaded.len() as f64
}

#[test]
fn a_datacenter_of_an_unmeasured_configuration_by_transfer() {
    // Qwen3-8B on H100 filled into a datacenter from the A100 Poisson run and the leaderboard
    // (no H100 run trains), driven at the H100 run's 4 req/s: 40 replicas draw 40 × that run's
    // measured mean while loaded (± 10 %). Without `leaderboard` the scenario is refused.
    let (Some(a100), Some(h100), Some(lb)) = (
        common::shared("measured/arrival_rate_qwen3-8b_a100_r2p5"),
        common::shared("measured/validate_qwen3-8b"),
        common::shared("mlenergy-leaderboard"),
    ) else {
        return;
    };
    let first = |root: &std::path::Path| {
        powersynth::sources::measured::discover_runs(root)
            .unwrap()
            .remove(0)
    };
    let h100_run = powersynth::sources::measured::load_run(&first(&h100)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let scenario = |extra: &str| {
        format!(
            r#"
            duration_s = 120
            [datacenter]
            dt_s = "1/4"
            total_gpu_capacity = 40
            [[models]]
            label = "qwen3-8b-h100"
            gpus_per_replica = 1
            initial_batch_size = 256
            replicas = 40
            power = {{ kind = "synthesized", train = [{train:?}], batch_sizes = [256], rate_per_s = 4.0, series_s = 600.0, hardware = "H100"{extra} }}
            "#,
            train = first(&a100).display().to_string()
        )
    };
    let path = dir.path().join("scenario.toml");
    std::fs::write(&path, scenario("")).unwrap();
    let sc = Scenario::from_file(&path).unwrap();
    let err = build(&sc, dir.path(), &Overrides::default())
        .err()
        .expect("no H100 run and no leaderboard")
        .to_string();
    assert!(err.contains("leaderboard"), "{err}");
    std::fs::write(
        &path,
        scenario(&format!(", leaderboard = {:?}", lb.display().to_string())),
    )
    .unwrap();
    let sc = Scenario::from_file(&path).unwrap();
    let log = run_all(
        &mut build(&sc, dir.path(), &Overrides::default())
            .unwrap()
            .coordinator,
    );
    let synth_w = mean(log.dc_states[0].iter().map(|s| s.models[0].power_w));
    let expect_w = 40.0 * loaded_mean_w(&h100_run);
    eprintln!(
        "transferred {synth_w:.0} W vs measured 40 × {:.1} W",
        expect_w / 40.0
    );
    assert!(
        (synth_w / expect_w - 1.0).abs() < 0.10,
        "transferred {synth_w} W vs 40 × the H100 run's {} W",
        expect_w / 40.0
    );
}

#[test]
fn facility_aggregation_racks_rows_non_gpu_power_and_pue() {
    // 5 servers × 8 GPUs; 2 servers per rack, 2 racks per row → racks {0,1}, {2,3}, {4};
    // rows {racks 0,1}, {rack 2}. 12 one-GPU replicas at 300 W; 100 W non-GPU per server;
    // 50 W per idle GPU; PUE 1.25; base 1 kW per phase.
    let cfg = DatacenterConfig {
        total_gpu_capacity: 40,
        non_gpu_w_per_server: 100.0,
        idle_w_per_gpu: 50.0,
        pue: 1.25,
        base_kw_per_phase: 1.0,
        servers_per_rack: 2,
        racks_per_row: 2,
        ..DatacenterConfig::default()
    };
    let dc = OfflineDatacenter::new(
        "site",
        tenth(),
        cfg,
        vec![flat("A", 1, 12, &[(8, 300.0)], 10)],
        TrainingSchedule::default(),
        3,
    )
    .unwrap();
    assert_eq!(dc.rack_layout(), (3, 2));
    let mut coord =
        Coordinator::new(vec![Box::new(dc)], None, vec![], Ratio::from_integer(120)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut w = ParquetRunWriter::new(dir.path()).with_rack_window_s(60.0);
    coord.run(&mut w).unwrap();
    let mut log = RunLog::default();
    coord.run(&mut log).unwrap();
    let s = &log.dc_states[0][0];
    let gpu_w = 12.0 * 300.0;
    let it_w = gpu_w + 5.0 * 100.0 + (40.0 - 12.0) * 50.0;
    assert!(
        (s.rack_power_w.iter().sum::<f64>() - it_w).abs() < 1e-9,
        "{:?}",
        s.rack_power_w
    );
    assert!((s.row_power_w.iter().sum::<f64>() - it_w).abs() < 1e-9);
    assert_eq!(s.row_power_w.len(), 2);
    assert!((s.row_power_w[0] - s.rack_power_w[0] - s.rack_power_w[1]).abs() < 1e-9);
    assert!((s.power_w.total() - 3000.0 - it_w).abs() < 1e-9);
    assert!((s.facility_power_w - (3000.0 + 1.25 * it_w)).abs() < 1e-9);
    // Every rack holds at least its servers' non-GPU power and idle GPUs.
    assert!(s.rack_power_w.iter().all(|&p| p >= 100.0));
    // Rack means over 60 s windows, two windows, equal to the (flat) per-step rack power.
    let racks = ParquetTable::read(&dir.path().join("racks/part-0.parquet")).unwrap();
    assert_eq!(racks.num_rows(), 6);
    let p = racks.floats("power_w").unwrap();
    assert!((p[0] - s.rack_power_w[0]).abs() < 1e-6);
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("facility_metrics.json")).unwrap(),
    )
    .unwrap();
    let avg = m[0]["mean_facility_power_w"].as_f64().unwrap();
    assert!((avg - (3000.0 + 1.25 * it_w)).abs() < 1e-6);
    let resolutions: Vec<f64> = m[0]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["dt_s"].as_f64().unwrap())
        .collect();
    assert_eq!(resolutions, [0.1, 1.0, 60.0]);
}

#[test]
fn templates_are_indexed_by_step_plus_stagger_and_training_splits_over_phases() {
    // One 8-GPU server, a ramp template of 7 samples: server power at step k is
    // 8 · T[(k + stagger) mod 7] (peer §3.3). A training run adds W/3 to every phase.
    let tpl: Vec<f64> = (0..7).map(|i| 100.0 + 10.0 * i as f64).collect();
    let mut m = flat("A", 8, 1, &[(8, 0.0)], 7);
    m.templates = BTreeMap::from([(8, Arc::from(tpl.clone()))]);
    let trace = powersynth::datacenter::TrainingTrace {
        t_s: vec![0.0, 1.0, 2.0],
        power_w: vec![200.0, 200.0, 200.0],
    };
    let run = powersynth::datacenter::TrainingRun::new(3, &trace, 400.0).unwrap();
    let training = TrainingSchedule::default().with(run, 1.0, 1.5).unwrap();
    let cfg = DatacenterConfig {
        total_gpu_capacity: 8,
        ..DatacenterConfig::default()
    };
    let dc = OfflineDatacenter::new("dc", tenth(), cfg, vec![m], training, 5).unwrap();
    let stagger = dc.pool().stagger[0] as usize;
    assert!(stagger < 7);
    let mut coord =
        Coordinator::new(vec![Box::new(dc)], None, vec![], Ratio::from_integer(2)).unwrap();
    let log = run_all(&mut coord);
    for (k, s) in log.dc_states[0].iter().enumerate() {
        let gpu = 8.0 * tpl[(k + stagger) % 7];
        assert_eq!(s.models[0].power_w, gpu, "step {k}");
        let train = if (1.0..=1.5).contains(&s.time_s) {
            3.0 * 400.0
        } else {
            0.0
        };
        assert!(
            (s.training_power_w - train).abs() < 1e-9,
            "step {k}: {}",
            s.training_power_w
        );
        assert!((s.power_w.total() - gpu - train).abs() < 1e-9);
    }
    let s = &log.dc_states[0][12];
    let share = [s.power_w.a, s.power_w.b, s.power_w.c]
        .iter()
        .filter(|&&p| (p - 400.0).abs() < 1e-9)
        .count();
    assert_eq!(
        share, 2,
        "two phases carry only the training third: {:?}",
        s.power_w
    );
}
