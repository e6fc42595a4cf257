//! `powersynth._powersynth`: the library for Python (PyO3, abi3). Tables leave as pyarrow
//! tables through the Arrow C data interface (no copy); errors as `PowersynthError` with the
//! Rust message. The Python package (`powersynth/__init__.py`) re-exports these with
//! docstrings; `powersynth/__init__.pyi` types them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::ffi::{to_ffi, FFI_ArrowArray, FFI_ArrowSchema};
use arrow_array::{
    Array, ArrayRef, Float64Array, RecordBatch, StringArray, StructArray, UInt32Array,
};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use rand::SeedableRng;
use rand_pcg::Pcg64;

use powersynth::coordinator::sink::RunLog;
use powersynth::engine::ServingConfig;
use powersynth::fits::itl_mixture::{self, ItlFitMode, ItlFitOptions, ItlMixture};
use powersynth::fits::logistic::{self, LogisticFit};
use powersynth::learn::{LearnOptions, LearnedModel};
use powersynth::scenario::{build, Overrides, Scenario};
use powersynth::sources::measured::load_run;
use powersynth::transfer::{adapt, model_for, TransferOptions};
use powersynth::workload::Workload;

create_exception!(_powersynth, PowersynthError, PyException);

fn err(e: impl std::fmt::Display) -> PyErr {
    PowersynthError::new_err(e.to_string())
}

/// Columns → a pyarrow.Table through the Arrow C data interface.
fn to_pyarrow(py: Python<'_>, columns: Vec<(String, ArrayRef)>) -> PyResult<PyObject> {
    let batch = RecordBatch::try_from_iter(columns).map_err(err)?;
    let data = StructArray::from(batch).into_data();
    let (array, schema) = to_ffi(&data).map_err(err)?;
    let (array, schema) = (Box::new(array), Box::new(schema));
    let pa = py.import("pyarrow")?;
    // pyarrow moves both structs out (their release callbacks pass to it); the boxes then
    // hold released structs and drop without freeing anything twice.
    let batch = pa.getattr("RecordBatch")?.call_method1(
        "_import_from_c",
        (
            &*array as *const FFI_ArrowArray as usize,
            &*schema as *const FFI_ArrowSchema as usize,
        ),
    )?;
    let table = pa
        .getattr("Table")?
        .call_method1("from_batches", (vec![batch],))?;
    Ok(table.unbind())
}

fn f64s(v: impl IntoIterator<Item = f64>) -> ArrayRef {
    Arc::new(Float64Array::from_iter_values(v))
}

fn strings<'a>(v: impl IntoIterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(v))
}

/// Leaderboard configurations from a leaderboard folder (`<task>.json`) or compact fits
/// (`build-dataset` output folder or `fits/default_fits.json`), one row each.
#[pyfunction]
fn load_leaderboard(py: Python<'_>, path: PathBuf) -> PyResult<PyObject> {
    let (_, c) = powersynth::pipeline::leaderboard_configs(&path).map_err(err)?;
    let u32s = |f: fn(&powersynth::sources::leaderboard::LeaderboardConfig) -> u32| -> ArrayRef {
        Arc::new(UInt32Array::from_iter_values(c.iter().map(f)))
    };
    to_pyarrow(
        py,
        vec![
            ("task".into(), strings(c.iter().map(|c| c.task.as_str()))),
            (
                "model_id".into(),
                strings(c.iter().map(|c| c.model_id.as_str())),
            ),
            (
                "gpu_model".into(),
                strings(c.iter().map(|c| c.gpu_model.as_str())),
            ),
            ("num_gpus".into(), u32s(|c| c.num_gpus)),
            ("max_num_seqs".into(), u32s(|c| c.max_num_seqs)),
            (
                "avg_batch_size".into(),
                f64s(c.iter().map(|c| c.batch_size())),
            ),
            ("avg_power_w".into(), f64s(c.iter().map(|c| c.avg_power_w))),
            (
                "median_itl_s".into(),
                f64s(c.iter().map(|c| c.median_itl_s)),
            ),
            ("p90_itl_s".into(), f64s(c.iter().map(|c| c.p90_itl_s))),
            ("p95_itl_s".into(), f64s(c.iter().map(|c| c.p95_itl_s))),
            ("p99_itl_s".into(), f64s(c.iter().map(|c| c.p99_itl_s))),
            (
                "output_throughput_tps".into(),
                f64s(c.iter().map(|c| c.output_throughput_tps)),
            ),
            (
                "architecture".into(),
                strings(c.iter().map(|c| c.architecture.as_str())),
            ),
            (
                "active_params_b".into(),
                f64s(c.iter().map(|c| c.active_params_b)),
            ),
        ],
    )
}

/// y(x) = b0 + L·σ(k(x − x0)) with x = log2(batch), as the peer's `LogisticModel`.
#[pyclass(name = "LogisticModel", module = "powersynth", frozen)]
#[derive(Clone)]
struct PyLogisticModel {
    fit: LogisticFit,
}

#[pymethods]
impl PyLogisticModel {
    #[new]
    #[pyo3(signature = (L, x0, k, b0))]
    #[allow(non_snake_case)]
    fn new(L: f64, x0: f64, k: f64, b0: f64) -> Self {
        Self {
            fit: LogisticFit { l: L, x0, k, b0 },
        }
    }
    /// Fits the curve to points (x = log2 batch size): the peer's grid, refined.
    #[staticmethod]
    fn fit(x: Vec<f64>, y: Vec<f64>) -> PyResult<Self> {
        if x.len() != y.len() {
            return Err(err(format!(
                "x and y differ in length ({} vs {})",
                x.len(),
                y.len()
            )));
        }
        if x.iter().chain(&y).any(|v| !v.is_finite()) {
            return Err(err("x and y must be finite"));
        }
        Ok(Self {
            fit: logistic::fit(&x, &y).fit,
        })
    }
    #[getter(L)]
    fn l(&self) -> f64 {
        self.fit.l
    }
    #[getter]
    fn x0(&self) -> f64 {
        self.fit.x0
    }
    #[getter]
    fn k(&self) -> f64 {
        self.fit.k
    }
    #[getter]
    fn b0(&self) -> f64 {
        self.fit.b0
    }
    /// y at a batch size (x = log2(max(batch, 1))).
    fn eval(&self, batch: u32) -> f64 {
        self.fit.eval_batch(batch)
    }
    fn eval_x(&self, x: f64) -> f64 {
        self.fit.eval_x(x)
    }
    fn deriv_wrt_x(&self, x: f64) -> f64 {
        self.fit.deriv_wrt_x(x)
    }
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("L", self.fit.l)?;
        d.set_item("x0", self.fit.x0)?;
        d.set_item("k", self.fit.k)?;
        d.set_item("b0", self.fit.b0)?;
        Ok(d)
    }
    fn __repr__(&self) -> String {
        format!(
            "LogisticModel(L={}, x0={}, k={}, b0={})",
            self.fit.l, self.fit.x0, self.fit.k, self.fit.b0
        )
    }
}

/// A seeded random stream (PCG64) for sampling.
#[pyclass(name = "Rng", module = "powersynth")]
struct PyRng {
    rng: Pcg64,
}

#[pymethods]
impl PyRng {
    #[new]
    fn new(seed: u64) -> Self {
        Self {
            rng: Pcg64::seed_from_u64(seed),
        }
    }
}

/// ITL = loc + Y, Y a two-component log-normal mixture, as the peer's `ITLMixtureModel`.
#[pyclass(name = "ITLMixtureModel", module = "powersynth", frozen)]
#[derive(Clone)]
struct PyItlMixture {
    m: ItlMixture,
}

#[pymethods]
impl PyItlMixture {
    /// Fits ITL samples (s). `mode`: "robust" (default) or "compatible" (the peer's
    /// algorithm bit for bit); `max_samples`: a seeded subset of at most that many.
    #[staticmethod]
    #[pyo3(signature = (samples, max_samples=None, seed=0, mode="robust"))]
    fn fit(samples: Vec<f64>, max_samples: Option<usize>, seed: u64, mode: &str) -> PyResult<Self> {
        let mode = match mode {
            "robust" => ItlFitMode::Robust,
            "compatible" => ItlFitMode::Compatible,
            m => {
                return Err(err(format!(
                    "mode {m:?}: expected \"robust\" or \"compatible\""
                )))
            }
        };
        let opts = ItlFitOptions {
            mode,
            max_samples,
            seed,
        };
        Ok(Self {
            m: itl_mixture::fit(&samples, &opts),
        })
    }
    /// (mean, variance) of the mixture (s, s²).
    fn mean_var(&self) -> (f64, f64) {
        self.m.mean_var()
    }
    fn sample_one(&self, rng: &mut PyRng) -> f64 {
        self.m.sample_one(&mut rng.rng)
    }
    /// Mean of `n` draws (the CLT above 30), NaN for n ≤ 0: a fleet's mean ITL.
    fn sample_avg(&self, n: i64, rng: &mut PyRng) -> f64 {
        self.m.sample_avg(n, &mut rng.rng)
    }
    fn quantile(&self, q: f64) -> f64 {
        self.m.quantile(q)
    }
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let v = serde_json::to_value(self.m).map_err(err)?;
        let d = PyDict::new(py);
        if let serde_json::Value::Object(o) = v {
            for (k, v) in o {
                d.set_item(k, v.as_f64())?;
            }
        }
        Ok(d)
    }
    fn __repr__(&self) -> String {
        format!("ITLMixtureModel({:?})", self.m)
    }
}

/// The model for `serving`: read from `model` (transferred when it is of another
/// configuration and a leaderboard is given), or learned / transferred from `train` runs.
fn learned_model(
    py: Python<'_>,
    serving: &ServingConfig,
    model: Option<PathBuf>,
    train: Option<Vec<PathBuf>>,
    lb: Option<&[powersynth::sources::leaderboard::LeaderboardConfig]>,
    topts: &TransferOptions,
) -> PyResult<(LearnedModel, Option<powersynth::transfer::TransferReport>)> {
    if let Some(p) = model {
        let m = LearnedModel::read_json(&p).map_err(err)?;
        let source = format!("model={}", p.display());
        return adapt(m, &source, serving, lb, topts).map_err(err);
    }
    let Some(dirs) = train else {
        return Err(err("give train=[run dirs] or model=path"));
    };
    let runs = dirs
        .iter()
        .map(|d| load_run(d))
        .collect::<powersynth::error::Result<Vec<_>>>()
        .map_err(err)?;
    py.allow_threads(|| model_for(serving, &runs, lb, topts, &LearnOptions::default()))
        .map_err(err)
}

/// Synthesizes a replica's power for a request log; returns (table t_s/power_w, info JSON).
#[pyfunction]
#[pyo3(signature = (serving, requests, t0, duration_s, dt_s=0.25, seed=0, train=None, model=None, leaderboard=None, stand_in=None, task=None))]
#[allow(clippy::too_many_arguments)]
fn synthesize(
    py: Python<'_>,
    serving: &Bound<'_, PyDict>,
    requests: PathBuf,
    t0: f64,
    duration_s: f64,
    dt_s: f64,
    seed: u64,
    train: Option<Vec<PathBuf>>,
    model: Option<PathBuf>,
    leaderboard: Option<PathBuf>,
    stand_in: Option<BTreeMap<String, String>>,
    task: Option<String>,
) -> PyResult<(PyObject, String)> {
    let json = py
        .import("json")?
        .call_method1("dumps", (serving,))?
        .extract::<String>()?;
    let serving: ServingConfig =
        serde_json::from_str(&json).map_err(|e| err(format!("serving: {e}")))?;
    serving.validate().map_err(err)?;
    let workload = Workload::from_request_log(&requests).map_err(err)?;
    let lb = match &leaderboard {
        Some(p) => Some(powersynth::pipeline::leaderboard_configs(p).map_err(err)?.1),
        None => None,
    };
    let topts = TransferOptions {
        task: task.unwrap_or_default(),
        stand_ins: stand_in.unwrap_or_default(),
    };
    let (learned, report) = learned_model(py, &serving, model, train, lb.as_deref(), &topts)?;
    let (series, _) = py
        .allow_threads(|| {
            powersynth::synth::synthesize(&learned, &serving, &workload, t0, duration_s, dt_s, seed)
        })
        .map_err(err)?;
    let table = to_pyarrow(
        py,
        vec![
            (
                "t_s".into(),
                f64s((0..series.power_w.len()).map(|i| i as f64 * series.dt_s)),
            ),
            (
                "time_unix_s".into(),
                f64s((0..series.power_w.len()).map(|i| series.t_s(i))),
            ),
            ("power_w".into(), f64s(series.power_w.iter().copied())),
        ],
    )?;
    let warnings = powersynth::synth::synthesis_warnings(&learned, &workload, t0, duration_s);
    let info = serde_json::json!({
        "configuration": learned.configuration,
        "training_runs": learned.training_runs,
        "transfer": report,
        "warnings": warnings,
    });
    Ok((table, info.to_string()))
}

/// Runs a scenario file; one table per datacenter (its states in time order).
#[pyfunction]
#[pyo3(signature = (path, gpus=None, duration_s=None, seed=None))]
fn run_scenario(
    py: Python<'_>,
    path: PathBuf,
    gpus: Option<u64>,
    duration_s: Option<f64>,
    seed: Option<u64>,
) -> PyResult<Py<PyDict>> {
    let sc = Scenario::from_file(&path).map_err(err)?;
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let ov = Overrides {
        gpus,
        duration_s,
        seed,
        shard: None,
    };
    let log = py
        .allow_threads(|| -> powersynth::error::Result<RunLog> {
            let mut built = build(&sc, &base, &ov)?;
            let mut log = RunLog::default();
            built.coordinator.run(&mut log)?;
            Ok(log)
        })
        .map_err(err)?;
    let out = PyDict::new(py);
    let labels: Vec<&str> = sc.models.iter().map(|m| m.label.as_str()).collect();
    for (i, states) in log.dc_states.iter().enumerate() {
        let col = |f: &dyn Fn(&powersynth::coordinator::DcState) -> f64| f64s(states.iter().map(f));
        let mut cols: Vec<(String, ArrayRef)> = vec![
            ("t_s".into(), col(&|s| s.time_s)),
            ("power_a_w".into(), col(&|s| s.power_w.a)),
            ("power_b_w".into(), col(&|s| s.power_w.b)),
            ("power_c_w".into(), col(&|s| s.power_w.c)),
            ("facility_power_w".into(), col(&|s| s.facility_power_w)),
            ("training_power_w".into(), col(&|s| s.training_power_w)),
        ];
        for (m, label) in labels.iter().enumerate() {
            cols.push((
                format!("{label}__power_w"),
                col(&|s| s.models.get(m).map_or(f64::NAN, |x| x.power_w)),
            ));
            cols.push((
                format!("{label}__active_replicas"),
                col(&|s| {
                    s.models
                        .get(m)
                        .map_or(f64::NAN, |x| x.active_replicas as f64)
                }),
            ));
            cols.push((
                format!("{label}__batch_size"),
                col(&|s| s.models.get(m).map_or(f64::NAN, |x| x.batch_size as f64)),
            ));
        }
        let name = if i == 0 {
            sc.datacenter.name.clone()
        } else {
            format!("dc{i}")
        };
        out.set_item(name, to_pyarrow(py, cols)?)?;
    }
    Ok(out.unbind())
}

/// One three-phase power flow on an OpenDSS feeder with datacenter loads (as `powerflow`):
/// returns {"converged", "iterations", "nodes": {"bus.phase": v_pu}}.
#[pyfunction]
#[pyo3(signature = (feeder, loads=None, taps=None, source_pu=None, pf=0.95, tolerance_pu=1e-6))]
fn power_flow(
    py: Python<'_>,
    feeder: PathBuf,
    loads: Option<BTreeMap<String, f64>>,
    taps: Option<BTreeMap<String, i32>>,
    source_pu: Option<f64>,
    pf: f64,
    tolerance_pu: f64,
) -> PyResult<Py<PyDict>> {
    use powersynth::grid::setup::{GridSetup, PreparedGrid};
    if !(pf > 0.0 && pf <= 1.0) {
        return Err(err(format!("pf {pf} must be in (0, 1]")));
    }
    let loads: Vec<(String, f64)> = loads.unwrap_or_default().into_iter().collect();
    for (bus, kw) in &loads {
        if !(kw.is_finite() && *kw >= 0.0) {
            return Err(err(format!(
                "load at {bus}: {kw} kW per phase must be finite and ≥ 0"
            )));
        }
    }
    let setup = GridSetup {
        source_pu,
        taps: taps.unwrap_or_default().into_iter().collect(),
        datacenter_buses: loads.iter().map(|(b, _)| b.clone()).collect(),
    };
    let (report, nodes) = py
        .allow_threads(|| -> Result<_, powersynth::grid::GridError> {
            let mut grid = PreparedGrid::open(&feeder, &setup)?;
            for (k, (_, kw)) in loads.iter().enumerate() {
                grid.set_datacenter_kw(k, [*kw; 3], pf);
            }
            grid.flow.options.tolerance_pu = tolerance_pu;
            let report = grid.flow.solve()?;
            let v = grid.flow.voltages_pu();
            let nodes: Vec<(String, f64)> = grid
                .flow
                .network()
                .nodes
                .iter()
                .zip(v)
                .map(|(n, v)| (n.to_string(), v))
                .collect();
            Ok((report, nodes))
        })
        .map_err(err)?;
    let out = PyDict::new(py);
    out.set_item("converged", report.converged)?;
    out.set_item("iterations", report.iterations)?;
    let d = PyDict::new(py);
    for (k, v) in nodes {
        d.set_item(k, v)?;
    }
    out.set_item("nodes", d)?;
    Ok(out.unbind())
}

#[pymodule]
fn _powersynth(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("PowersynthError", m.py().get_type::<PowersynthError>())?;
    m.add_class::<PyLogisticModel>()?;
    m.add_class::<PyItlMixture>()?;
    m.add_class::<PyRng>()?;
    m.add_function(wrap_pyfunction!(load_leaderboard, m)?)?;
    m.add_function(wrap_pyfunction!(synthesize, m)?)?;
    m.add_function(wrap_pyfunction!(run_scenario, m)?)?;
    m.add_function(wrap_pyfunction!(power_flow, m)?)?;
    Ok(())
}
