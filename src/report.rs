//! Validation outputs: the metrics table (parquet), the power series, and a self-contained
//! HTML report: the metrics as an HTML table, and per run inline SVG charts ([`crate::plot`]:
//! measured vs synthesized power over time with the TDP, mean and two-level baselines, CDFs,
//! ACFs, running requests).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use crate::error::{Error, Result};
use crate::metrics::{acf, Metrics, ACF_MAX_LAG};
use crate::plot::{line_chart_svg, LineChart, Series};
use crate::stats::median_finite;
use crate::store::write_atomic;
use crate::synth::downsample_mean;
use crate::table::{write_parquet, Column, Table};
use crate::validate::{RunValidation, METHODS};

/// Writes `t_s` (s since the series' start), `time_unix_s` (t0 + t_s) and `power_w` as CSV or
/// parquet, chosen by the extension of `path`.
pub fn write_power_series(path: &Path, t0_s: f64, dt_s: f64, power_w: &[f64]) -> Result<()> {
    let t: Vec<f64> = (0..power_w.len()).map(|i| i as f64 * dt_s).collect();
    let unix: Vec<f64> = t.iter().map(|t| t0_s + t).collect();
    match path.extension().and_then(|e| e.to_str()) {
        Some("parquet") => write_parquet(
            path,
            &Table::new()
                .with("t_s", Column::F64(t))
                .with("time_unix_s", Column::F64(unix))
                .with("power_w", Column::F64(power_w.to_vec())),
        ),
        Some("csv") => write_atomic(path, |f| {
            let mut w = csv::Writer::from_writer(f);
            let err = |e: csv::Error| Error::content(path, e.to_string());
            w.write_record(["t_s", "time_unix_s", "power_w"])
                .map_err(err)?;
            for ((t, u), p) in t.iter().zip(&unix).zip(power_w) {
                w.write_record([format!("{t:.3}"), format!("{u:.3}"), format!("{p:.3}")])
                    .map_err(err)?;
            }
            w.flush().map_err(|e| Error::io(path, e))
        }),
        _ => Err(Error::config(
            "out",
            format!(
                "{}: the file name must end in .csv or .parquet",
                path.display()
            ),
        )),
    }
}

/// The metrics table: one row per (run, method), then the medians over runs per method.
fn metrics_table(results: &[RunValidation]) -> Table {
    let mut rows = MetricRows::default();
    for v in results {
        rows.push_run(v);
    }
    rows.push_medians(results);
    let MetricRows { run, method, cols } = rows;
    let (hits_sim, hits_meas) = cache_hit_columns(results, &run, &method);
    let mut t = Table::new()
        .with("run_id", Column::Str(run))
        .with("method", Column::Str(method));
    for (name, c) in METRIC_COLUMNS.iter().zip(cols) {
        t = t.with(name, Column::F64(c));
    }
    t.with("cache_hit_tokens_simulated", Column::F64(hits_sim))
        .with("cache_hit_tokens_measured", Column::F64(hits_meas))
}

/// The metrics table's numeric columns, in the order [`MetricRows::push`] fills them.
const METRIC_COLUMNS: [&str; 9] = [
    "energy_error_pct",
    "energy_error_signed_pct",
    "ks",
    "acf_r2",
    "nrmse",
    "p95_error_pct",
    "p99_error_pct",
    "running_corr",
    "running_mae",
];

/// The metrics table's rows as columns, filled row by row.
#[derive(Default)]
struct MetricRows {
    run: Vec<String>,
    method: Vec<String>,
    cols: [Vec<f64>; 9],
}

impl MetricRows {
    fn push(&mut self, run: &str, method: &str, x: &Metrics, corr: f64, mae: f64) {
        self.run.push(run.to_string());
        self.method.push(method.to_string());
        for (c, v) in self.cols.iter_mut().zip([
            x.energy_error_pct,
            x.energy_error_signed_pct,
            x.ks,
            x.acf_r2,
            x.nrmse,
            x.p95_error_pct,
            x.p99_error_pct,
            corr,
            mae,
        ]) {
            c.push(v);
        }
    }

    /// One run's rows: each method (powersynth followed by its spread over realizations when
    /// there are several), then the measured series' own noise.
    fn push_run(&mut self, v: &RunValidation) {
        for (m, x) in METHODS.iter().zip(&v.metrics) {
            self.push(&v.run_id, m, x, v.running_corr, v.running_mae);
            if *m == METHODS[0] && v.realizations > 1 {
                self.push(
                    &v.run_id,
                    "powersynth_sd",
                    &v.powersynth_sd,
                    f64::NAN,
                    f64::NAN,
                );
            }
        }
        self.push(
            &v.run_id,
            "measured_noise",
            &v.measured_noise,
            f64::NAN,
            f64::NAN,
        );
    }

    /// The `median` rows: per method, then for the measured noise, medians over runs.
    fn push_medians(&mut self, results: &[RunValidation]) {
        for (k, m) in METHODS.iter().enumerate() {
            let per_run: Vec<Metrics> = results.iter().map(|v| v.metrics[k]).collect();
            let x = Metrics::reduce(&per_run, |v| median_finite(v.iter().copied()));
            self.push(
                "median",
                m,
                &x,
                median_finite(results.iter().map(|v| v.running_corr)),
                median_finite(results.iter().map(|v| v.running_mae)),
            );
        }
        let noise: Vec<Metrics> = results.iter().map(|v| v.measured_noise).collect();
        self.push(
            "median",
            "measured_noise",
            &Metrics::reduce(&noise, |v| median_finite(v.iter().copied())),
            f64::NAN,
            f64::NAN,
        );
    }
}

/// Prefix-cache hit tokens, simulated and measured, on each run's powersynth row (NaN on the
/// other rows and where the run logged no hit counter).
fn cache_hit_columns(
    results: &[RunValidation],
    run: &[String],
    method: &[String],
) -> (Vec<f64>, Vec<f64>) {
    run.iter()
        .zip(method)
        .map(|(r, m)| {
            let v = results
                .iter()
                .find(|v| &v.run_id == r)
                .filter(|_| m == METHODS[0]);
            (
                v.map_or(f64::NAN, |v| v.cache_hits.simulated_tokens),
                v.and_then(|v| v.cache_hits.measured_tokens)
                    .unwrap_or(f64::NAN),
            )
        })
        .unzip()
}

/// One line per run with prefix-cache hits: simulated against the measured counters.
pub fn format_cache_hits(results: &[RunValidation]) -> String {
    let mut out = String::new();
    for v in results {
        let h = &v.cache_hits;
        if h.simulated_tokens == 0.0 && h.measured_tokens.is_none_or(|m| m == 0.0) {
            continue;
        }
        let _ = match (h.measured_tokens, h.error_pct()) {
            (Some(m), Some(e)) => writeln!(
                out,
                "prefix cache {}: simulated {:.0} hit tokens, measured {:.0} ({e:+.2} %)",
                v.run_id, h.simulated_tokens, m
            ),
            _ => writeln!(
                out,
                "prefix cache {}: simulated {:.0} hit tokens (the run logged no hit counter)",
                v.run_id, h.simulated_tokens
            ),
        };
    }
    out
}

/// The table as aligned text, one line per row.
fn format_table(t: &Table) -> String {
    let mut out = String::new();
    let n = t.num_rows();
    let _ = writeln!(
        out,
        "{:<34} {:<14} {:>8} {:>8} {:>6} {:>7} {:>6} {:>7} {:>7} {:>7} {:>6}",
        "run",
        "method",
        "|ΔE| %",
        "ΔE %",
        "KS",
        "ACF R²",
        "NRMSE",
        "P95 %",
        "P99 %",
        "run ρ",
        "MAE"
    );
    for i in 0..n {
        let s = |k: usize| match &t.columns[k].1 {
            Column::Str(v) => v[i].clone(),
            _ => String::new(),
        };
        let f = |k: usize| match &t.columns[k].1 {
            Column::F64(v) => v[i],
            _ => f64::NAN,
        };
        let run = s(0);
        let run = if run.len() > 34 { &run[..34] } else { &run };
        let _ = writeln!(
            out,
            "{:<34} {:<14} {:>8.2} {:>8.2} {:>6.3} {:>7.3} {:>6.3} {:>7.2} {:>7.2} {:>7.3} {:>6.2}",
            run,
            s(1),
            f(2),
            f(3),
            f(4),
            f(5),
            f(6),
            f(7),
            f(8),
            f(9),
            f(10)
        );
    }
    out
}

fn ecdf(v: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len() as f64;
    let p = (1..=s.len()).map(|i| i as f64 / n).collect();
    (s, p)
}

/// The metrics table as an HTML `<table>` (numbers to 3 decimals, NaN as an empty cell).
fn html_table(t: &Table) -> String {
    let mut h = String::from("<table><thead><tr>");
    for (name, _) in &t.columns {
        let _ = write!(h, "<th>{}</th>", html_escape(name));
    }
    h.push_str("</tr></thead><tbody>");
    for i in 0..t.num_rows() {
        h.push_str("<tr>");
        for (_, c) in &t.columns {
            match c {
                Column::Str(v) => {
                    let _ = write!(h, "<td>{}</td>", html_escape(&v[i]));
                }
                Column::F64(v) if v[i].is_finite() => {
                    let _ = write!(h, "<td class='n'>{:.3}</td>", v[i]);
                }
                _ => h.push_str("<td></td>"),
            }
        }
        h.push_str("</tr>");
    }
    h.push_str("</tbody></table>");
    h
}

/// One chart, or the reason it could not be drawn (the report still appears).
fn chart(c: LineChart) -> String {
    line_chart_svg(&c).unwrap_or_else(|e| format!("<p>{}</p>", html_escape(&e.to_string())))
}

/// The four charts of one run.
fn run_charts(v: &RunValidation) -> String {
    let t: Vec<f64> = (0..v.measured_w.len()).map(|i| i as f64 * v.dt_s).collect();
    let s = Series::new;
    let mut h = chart(LineChart {
        title: "Power: measured, synthesized and baselines",
        x_label: "time since start (s)",
        y_label: "power (W)",
        series: vec![
            s("measured", &t, &v.measured_w),
            s("powersynth", &t, &v.series_w[0]),
            s("TDP", &t, &v.series_w[1]),
            s("mean", &t, &v.series_w[2]),
            s("two-level", &t, &v.series_w[3]),
        ],
    });
    let (gx, gp) = ecdf(&v.measured_w);
    let (sx, sp) = ecdf(&v.series_w[0]);
    h += &chart(LineChart {
        title: "CDF of power",
        x_label: "power (W)",
        y_label: "share of bins ≤ power",
        series: vec![
            Series::new("measured", &gx, &gp),
            Series::new("powersynth", &sx, &sp),
        ],
    });
    let lags = ACF_MAX_LAG.min(v.measured_w.len().saturating_sub(1));
    let lx: Vec<f64> = (1..=lags).map(|k| k as f64 * v.dt_s).collect();
    let (ag, ay) = (acf(&v.measured_w, lags), acf(&v.series_w[0], lags));
    h += &chart(LineChart {
        title: "Autocorrelation of power",
        x_label: "lag (s)",
        y_label: "autocorrelation",
        series: vec![
            Series::new("measured", &lx, &ag),
            Series::new("powersynth", &lx, &ay),
        ],
    });
    h += &chart(LineChart {
        title: "Running requests: measured counters vs engine simulation",
        x_label: "time since start (s)",
        y_label: "requests",
        series: vec![
            s("measured", &t, &v.measured_engine.running),
            s("simulated", &t, &v.simulated_running),
        ],
    });
    h
}

/// The HTML report of a validation (one or more target runs).
fn html_report(results: &[RunValidation], table: &Table) -> String {
    let mut h = String::from(
        "<!doctype html><html><head><meta charset='utf-8'><title>powersynth validation</title>\
         <style>body{font-family:sans-serif;margin:2em} pre{font-size:12px} \
         table{border-collapse:collapse;font-size:12px} td,th{border:1px solid #ccc;\
         padding:2px 6px} td.n{text-align:right}</style></head><body>\
         <h1>powersynth validation</h1><p>Measured power against power synthesized from the \
         target's request log and serving settings only, with the TDP, mean and two-level \
         baselines (SPEC §8).</p>",
    );
    h += &html_table(table);
    let _ = write!(h, "<pre>{}</pre>", html_escape(&format_cache_hits(results)));
    for v in results {
        let _ = write!(
            h,
            "<h2>{}</h2><p>{} · trained on {} · meter window {} bins · {} power cells · φ {:.2} \
             · engine running-requests correlation {:.3}, MAE {:.2}</p>",
            html_escape(&v.run_id),
            html_escape(&v.configuration),
            html_escape(&v.model.training_runs.join(", ")),
            v.model.power.meter_window_bins,
            v.model.power.cells.len(),
            v.model.power.phi,
            v.running_corr,
            v.running_mae
        );
        h += &run_charts(v);
    }
    h.push_str("</body></html>\n");
    h
}

/// Points beyond which a per-second series is not drawn (the SVG would pass ~1 MB).
const MAX_CHART_POINTS: usize = 20_000;

/// Means over consecutive blocks of `k` seconds, with each block's start time.
/// Means over windows of `k` seconds of a per-second series, as a step line (each mean held
/// over its window, so a 15 min mean does not look 15 min late); `k = 1` gives the seconds'
/// centres.
fn blocks(v: &[f64], k: usize) -> (Vec<f64>, Vec<f64>) {
    let m = downsample_mean(v, k);
    if k == 1 {
        return ((0..m.len()).map(|i| i as f64 + 0.5).collect(), m);
    }
    let n = v.len();
    let t = (0..m.len())
        .flat_map(|i| [(i * k) as f64, ((i + 1) * k).min(n) as f64])
        .collect();
    (t, m.iter().flat_map(|&w| [w, w]).collect())
}

/// The HTML report of a datacenter simulation: facility power at 1 s, 1 min and 15 min means,
/// per-phase power, from per-second series (W, second i = [i, i + 1) s of simulated time).
pub fn simulation_report(title: &str, facility_w: &[f64], phase_w: [&[f64]; 3]) -> String {
    let mut h = format!(
        "<!doctype html><html><head><meta charset='utf-8'><title>{t}</title>\
         <style>body{{font-family:sans-serif;margin:2em}}</style></head><body><h1>{t}</h1>",
        t = html_escape(title)
    );
    let kw = |v: &[f64]| v.iter().map(|w| w / 1000.0).collect::<Vec<f64>>();
    let (t1, f1) = (
        (0..facility_w.len())
            .map(|i| i as f64 + 0.5)
            .collect::<Vec<f64>>(),
        kw(facility_w),
    );
    let (tm, fm) = blocks(&f1, 60);
    let (tq, fq) = blocks(&f1, 900);
    let mut series = Vec::new();
    if f1.len() <= MAX_CHART_POINTS {
        series.push(Series {
            light: true,
            ..Series::new("1 s mean", &t1, &f1)
        });
    } else {
        let _ = write!(
            h,
            "<p>{} s simulated: the 1 s series is not drawn (over {MAX_CHART_POINTS} points); it is in the parquet output.</p>",
            f1.len()
        );
    }
    // A window mean is drawn when the run holds at least one whole window (as in facility/).
    if f1.len() >= 60 {
        series.push(Series::new("1 min mean", &tm, &fm));
    }
    if f1.len() >= 900 {
        series.push(Series::new("15 min mean", &tq, &fq));
    }
    h += &chart(LineChart {
        title: "Facility power",
        x_label: "time since start (s)",
        y_label: "power (kW)",
        series,
    });
    let every = if facility_w.len() <= MAX_CHART_POINTS {
        1
    } else {
        60
    };
    let phases: Vec<(Vec<f64>, Vec<f64>)> = phase_w.iter().map(|p| blocks(&kw(p), every)).collect();
    h += &chart(LineChart {
        title: if every == 1 {
            "Power per phase (1 s means)"
        } else {
            "Power per phase (1 min means)"
        },
        x_label: "time since start (s)",
        y_label: "power (kW)",
        series: ["phase A", "phase B", "phase C"]
            .iter()
            .zip(&phases)
            .map(|(name, (x, y))| Series::new(name, x, y))
            .collect(),
    });
    h.push_str("</body></html>\n");
    h
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Writes an HTML page atomically (temporary file, then rename).
pub fn write_html(path: &Path, html: &str) -> Result<()> {
    write_atomic(path, |f| {
        f.write_all(html.as_bytes()).map_err(|e| Error::io(path, e))
    })
}

/// Writes `metrics.parquet`, `report.html` and one `power/<run>.parquet` per run (one schema
/// in the folder, the run in a `run_id` column) into `dir`; returns the printed table.
pub fn write_validation(dir: &Path, results: &[RunValidation]) -> Result<String> {
    let gate = crate::io::write_gate()?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    drop(gate);
    let table = metrics_table(results);
    write_parquet(&dir.join("metrics.parquet"), &table)?;
    for v in results {
        let t: Vec<f64> = (0..v.measured_w.len()).map(|i| i as f64 * v.dt_s).collect();
        let unix: Vec<f64> = t.iter().map(|t| v.t0_s + t).collect();
        let mut tab = Table::new()
            .with("run_id", Column::Str(vec![v.run_id.clone(); unix.len()]))
            .with("t_s", Column::F64(t))
            .with("time_unix_s", Column::F64(unix))
            .with("measured_w", Column::F64(v.measured_w.clone()));
        for (m, s) in METHODS.iter().zip(&v.series_w) {
            tab = tab.with(&format!("{m}_w"), Column::F64(s.clone()));
        }
        tab = tab
            .with(
                "running_measured",
                Column::F64(v.measured_engine.running.clone()),
            )
            .with(
                "running_simulated",
                Column::F64(v.simulated_running.clone()),
            );
        let name = format!("{}.parquet", crate::store::sanitize(&v.run_id));
        write_parquet(&dir.join("power").join(name), &tab)?;
    }
    write_html(&dir.join("report.html"), &html_report(results, &table))?;
    Ok(format_table(&table))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paths of series (axis lines and ticks are black).
    fn series_paths(svg: &str) -> usize {
        svg.split("<polyline")
            .skip(1)
            .filter(|p| !p.contains("stroke=\"#000000\""))
            .count()
    }

    #[test]
    fn simulation_report_draws_facility_means_and_phases() {
        let f: Vec<f64> = (0..3600)
            .map(|i| 1e6 + 1e3 * (i as f64 / 60.0).sin())
            .collect();
        let p: Vec<f64> = f.iter().map(|w| w / 3.0).collect();
        let h = simulation_report("run", &f, [&p, &p, &p]);
        let svgs: Vec<&str> = h.split("<svg").skip(1).collect();
        assert_eq!(svgs.len(), 2);
        assert_eq!(series_paths(svgs[0]), 3, "1 s, 1 min and 15 min means");
        assert_eq!(series_paths(svgs[1]), 3, "three phases");
        for s in [
            "power (kW)",
            "time since start (s)",
            "15 min mean",
            "phase C",
        ] {
            assert!(h.contains(s), "{s}");
        }
        // A day: the 1 s series is left to the parquet output, phases at 1 min.
        let day = vec![1e6; 86_400];
        let h = simulation_report("day", &day, [&day, &day, &day]);
        assert!(h.contains("1 s series is not drawn"));
        assert!(h.contains("1 min means"));
    }
}
