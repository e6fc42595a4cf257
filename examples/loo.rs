use powersynth::learn::LearnOptions;
use powersynth::sources::measured::load_run;
use powersynth::validate::{leave_one_out, METHODS};
fn main() {
    let root = std::path::Path::new("../shared/data/measured");
    let mut runs = Vec::new();
    let groups: Vec<String> = std::env::args().skip(1).collect();
    for g in &groups {
        let d = std::fs::read_dir(root.join(g))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        runs.push(load_run(&d).unwrap());
    }
    let opts = LearnOptions::default();
    leave_one_out(&runs, &opts, 1, |v| {
        println!(
            "{} window {} r2 {:.3} phi {:.2} cells {} corr {:.3} mae {:.2}",
            &v.run_id[..30],
            v.model.power.meter_window_bins,
            v.model.power.r2,
            v.model.power.phi,
            v.model.power.cells.len(),
            v.running_corr,
            v.running_mae
        );
        let mut g = v.measured_w.clone();
        g.sort_by(f64::total_cmp);
        let mut y = v.series_w[0].clone();
        y.sort_by(f64::total_cmp);
        let q = |s: &[f64], p: f64| s[((s.len() - 1) as f64 * p) as usize];
        println!(
            "  quantiles g {:?}\n            y {:?}",
            [0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99].map(|p| q(&g, p).round()),
            [0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99].map(|p| q(&y, p).round())
        );
        for (m, x) in METHODS.iter().zip(&v.metrics) {
            println!(
                "  {m:10} dE {:6.2} ks {:.3} acf {:.3} nrmse {:.3} p95 {:.2} p99 {:.2}",
                x.energy_error_signed_pct,
                x.ks,
                x.acf_r2,
                x.nrmse,
                x.p95_error_pct,
                x.p99_error_pct
            );
        }
    })
    .unwrap();
}
