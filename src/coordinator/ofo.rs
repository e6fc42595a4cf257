//! Online feedback optimisation of batch sizes (the peer's `OFOBatchSizeController`,
//! GRID.md "Controllers"): per model x = log2(batch);
//! voltage duals λ_under ← max(0, λ_under + ρ_v(v_min − v)), λ_over ← max(0, λ_over +
//! ρ_v(v − v_max)), η = λ_over − λ_under; latency dual μ ← max(0, μ + ρ_l(ITL − deadline))
//! when the ITL is finite and replicas > 0; gradient −w_T·w·r′(x)/r(b_max) +
//! k_v·(ηᵀH·e)·w·P′(x)/1000 + μ·L′(x) + w_sw·(x − x_prev); x ← clamp(x − ρ_x·grad) to the
//! log2 range of the union of feasible batch sizes, emitted snapped to the nearest feasible
//! size (ties to the smaller), every step. H comes from the grid ([`Grid::voltage_sensitivity`])
//! at the first step and every `sensitivity_update_interval` steps.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::fits::logistic::LogisticFit;

use super::{
    Command, Component, Controller, DatacenterCommand, EventSource, Events, Seconds, SimView,
    SimulationClock, VoltageSensitivity,
};

/// The peer's `OFOConfig` (defaults as GRID.md gives them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct OfoConfig {
    pub(crate) primal_step_size: f64,
    pub(crate) w_throughput: f64,
    pub(crate) w_switch: f64,
    pub(crate) voltage_gradient_scale: f64,
    pub(crate) v_min: f64,
    pub(crate) v_max: f64,
    pub(crate) voltage_dual_step_size: f64,
    pub(crate) latency_dual_step_size: f64,
    /// Re-estimate H every this many steps (0: once, at the first step).
    pub(crate) sensitivity_update_interval: u64,
    /// The step H is the slope over (kW per phase).
    pub(crate) sensitivity_perturbation_kw: f64,
}

impl Default for OfoConfig {
    fn default() -> Self {
        OfoConfig {
            primal_step_size: 0.05,
            w_throughput: 0.1,
            w_switch: 0.0,
            voltage_gradient_scale: 1e6,
            v_min: 0.95,
            v_max: 1.05,
            voltage_dual_step_size: 0.5,
            latency_dual_step_size: 1.0,
            sensitivity_update_interval: 0,
            sensitivity_perturbation_kw: 100.0,
        }
    }
}

/// One model the controller steers: its per-replica logistic fits versus log2(batch).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OfoModel {
    pub(crate) label: String,
    pub(crate) power_w: LogisticFit,
    pub(crate) latency_s: LogisticFit,
    pub(crate) throughput: LogisticFit,
    pub(crate) itl_deadline_s: f64,
    pub(crate) feasible_batch_sizes: Vec<u32>,
    pub(crate) initial_batch_size: u32,
}

/// The OFO batch-size controller of one datacenter.
#[derive(Debug, Clone)]
pub(crate) struct OfoController {
    dt_s: Seconds,
    datacenter: String,
    cfg: OfoConfig,
    models: Vec<OfoModel>,
    feasible: Vec<u32>,
    throughput_max: Vec<f64>,
    x: Vec<f64>,
    x_prev: Vec<f64>,
    lambda_under: Vec<f64>,
    lambda_over: Vec<f64>,
    mu: Vec<f64>,
    h: Option<VoltageSensitivity>,
    steps: u64,
}

impl OfoController {
    pub(crate) fn new(
        dt_s: Seconds,
        datacenter: &str,
        models: Vec<OfoModel>,
        cfg: OfoConfig,
    ) -> Result<Self> {
        let field = "controllers.ofo";
        if models.is_empty() {
            return Err(Error::config(field, "no models"));
        }
        if !(cfg.v_min < cfg.v_max) || !(cfg.primal_step_size > 0.0) {
            return Err(Error::config(
                field,
                "needs v_min < v_max and a positive primal_step_size",
            ));
        }
        let mut feasible: Vec<u32> = models
            .iter()
            .flat_map(|m| m.feasible_batch_sizes.iter().copied())
            .collect();
        feasible.sort_unstable();
        feasible.dedup();
        if feasible.first().is_none_or(|&b| b == 0) {
            return Err(Error::config(field, "feasible batch sizes must be ≥ 1"));
        }
        let b_max = *feasible.last().unwrap();
        let throughput_max = models
            .iter()
            .map(|m| {
                let t = m.throughput.eval_batch(b_max);
                if t.is_finite() && t > 0.0 {
                    t
                } else {
                    1.0
                }
            })
            .collect();
        let mut c = OfoController {
            dt_s,
            datacenter: datacenter.to_string(),
            cfg,
            models,
            feasible,
            throughput_max,
            x: Vec::new(),
            x_prev: Vec::new(),
            lambda_under: Vec::new(),
            lambda_over: Vec::new(),
            mu: Vec::new(),
            h: None,
            steps: 0,
        };
        c.reset();
        Ok(c)
    }

    fn clamp_x(&self, x: f64) -> f64 {
        let lo = (self.feasible[0] as f64).log2();
        let hi = (*self.feasible.last().unwrap() as f64).log2();
        x.clamp(lo, hi)
    }

    /// The feasible batch size nearest 2^x (ties to the smaller).
    pub(crate) fn snap(&self, x: f64) -> u32 {
        let b = 2f64.powf(x);
        let i = self.feasible.partition_point(|&f| (f as f64) < b);
        let mut best = None::<u32>;
        for j in [i.checked_sub(1), Some(i)].into_iter().flatten() {
            if let Some(&f) = self.feasible.get(j) {
                let better = best.is_none_or(|bb| ((f as f64) - b).abs() < ((bb as f64) - b).abs());
                if better {
                    best = Some(f);
                }
            }
        }
        best.unwrap_or(self.feasible[0])
    }

    /// η = λ_over − λ_under after updating the duals with the monitored voltages.
    fn update_voltage_duals(&mut self, v: &[f64]) -> Vec<f64> {
        let rho = self.cfg.voltage_dual_step_size;
        (0..v.len())
            .map(|r| {
                self.lambda_under[r] =
                    (self.lambda_under[r] + rho * (self.cfg.v_min - v[r])).max(0.0);
                self.lambda_over[r] =
                    (self.lambda_over[r] + rho * (v[r] - self.cfg.v_max)).max(0.0);
                self.lambda_over[r] - self.lambda_under[r]
            })
            .collect()
    }

    /// One primal step of model `m` (returns the new x).
    fn primal_step(&self, m: usize, eta_h_e: f64, replicas: f64) -> f64 {
        let model = &self.models[m];
        let x = self.x[m];
        let d_power_kw = replicas * model.power_w.deriv_wrt_x(x) / 1000.0;
        let d_throughput = replicas * model.throughput.deriv_wrt_x(x) / self.throughput_max[m];
        let grad = -self.cfg.w_throughput * d_throughput
            + self.cfg.voltage_gradient_scale * eta_h_e * d_power_kw
            + self.mu[m] * model.latency_s.deriv_wrt_x(x)
            + self.cfg.w_switch * (x - self.x_prev[m]);
        self.clamp_x(x - self.cfg.primal_step_size * grad)
    }
}

impl Component for OfoController {
    fn dt_s(&self) -> Seconds {
        self.dt_s
    }
    fn reset(&mut self) {
        self.x = self
            .models
            .iter()
            .map(|m| (m.initial_batch_size.max(1) as f64).log2())
            .collect();
        self.x = self.x.iter().map(|&x| self.clamp_x(x)).collect();
        self.x_prev = self.x.clone();
        self.mu = vec![0.0; self.models.len()];
        self.lambda_under.clear();
        self.lambda_over.clear();
        self.h = None;
        self.steps = 0;
    }
}

impl Controller for OfoController {
    fn name(&self) -> &str {
        "ofo"
    }

    fn check(&self, view: &SimView<'_>) -> Result<()> {
        let dc = view.datacenter(&self.datacenter).ok_or_else(|| {
            Error::config(
                "controllers.ofo.datacenter",
                format!("no datacenter named {:?}", self.datacenter),
            )
        })?;
        for m in &self.models {
            if !dc.model_labels().contains(&m.label) {
                return Err(Error::config(
                    "controllers.ofo.fits",
                    format!("model {:?} is not served by {:?}", m.label, self.datacenter),
                ));
            }
        }
        if view.grid.is_none() {
            return Err(Error::config(
                "controllers.ofo",
                "needs a [grid] (it steers batch sizes by the feeder's voltages)",
            ));
        }
        Ok(())
    }

    fn step(
        &mut self,
        clock: &SimulationClock,
        view: &SimView<'_>,
        events: &mut Events,
    ) -> Result<Vec<Command>> {
        self.refresh_sensitivity(view)?;
        let state = view
            .grid_state
            .ok_or_else(|| Error::config("controllers.ofo", "no grid state yet"))?;
        let h = self.h.as_ref().expect("set by refresh_sensitivity");
        let v: Vec<f64> = h
            .rows
            .iter()
            .map(|(bus, phase)| state.voltage(bus, *phase).unwrap_or(f64::NAN))
            .collect();
        let h_rows = h.h.clone();
        let eta = self.update_voltage_duals(&v);
        let dc = view
            .datacenter(&self.datacenter)
            .ok_or_else(|| Error::config("controllers.ofo", "datacenter vanished"))?;
        let dc_state = dc.state();
        let shares = dc.phase_share();
        let labels = dc.model_labels().to_vec();
        let mut batch = Vec::with_capacity(self.models.len());
        for m in 0..self.models.len() {
            let k = labels
                .iter()
                .position(|l| *l == self.models[m].label)
                .expect("checked at start");
            let (replicas, itl) = dc_state
                .map(|s| {
                    (
                        s.models[k].active_replicas as f64,
                        s.models[k].observed_itl_s,
                    )
                })
                .unwrap_or((0.0, f64::NAN));
            self.update_latency_dual(m, itl, replicas);
            let e = normalised(shares.get(k).copied().unwrap_or([1.0 / 3.0; 3]));
            let eta_h_e: f64 = eta
                .iter()
                .zip(&h_rows)
                .filter(|(n, _)| n.is_finite())
                .map(|(n, row)| n * (row[0] * e[0] + row[1] * e[1] + row[2] * e[2]))
                .sum();
            let x_new = self.primal_step(m, eta_h_e, replicas);
            self.x_prev[m] = self.x[m];
            self.x[m] = x_new;
            batch.push((self.models[m].label.clone(), self.snap(x_new)));
        }
        self.steps += 1;
        Ok(self.command(clock, batch, events))
    }
}

impl OfoController {
    /// H from the grid at the first step and every `sensitivity_update_interval` steps.
    fn refresh_sensitivity(&mut self, view: &SimView<'_>) -> Result<()> {
        let grid = view
            .grid
            .ok_or_else(|| Error::config("controllers.ofo", "no grid"))?;
        let interval = self.cfg.sensitivity_update_interval;
        if self.h.is_none() || (interval > 0 && self.steps.is_multiple_of(interval)) {
            let h = grid
                .voltage_sensitivity(&self.datacenter, self.cfg.sensitivity_perturbation_kw)?
                .ok_or_else(|| {
                    Error::config(
                        "controllers.ofo",
                        format!("the grid has no datacenter {:?}", self.datacenter),
                    )
                })?;
            self.lambda_under.resize(h.rows.len(), 0.0);
            self.lambda_over.resize(h.rows.len(), 0.0);
            self.h = Some(h);
        }
        Ok(())
    }

    /// μ ← max(0, μ + ρ_l(ITL − deadline)) when the ITL is finite and replicas serve.
    fn update_latency_dual(&mut self, m: usize, itl: f64, replicas: f64) {
        if itl.is_finite() && replicas > 0.0 {
            self.mu[m] = (self.mu[m]
                + self.cfg.latency_dual_step_size * (itl - self.models[m].itl_deadline_s))
                .max(0.0);
        }
    }

    /// The step's `SetBatchSize` (every step, as the peer) and its event.
    fn command(
        &self,
        clock: &SimulationClock,
        batch: Vec<(String, u32)>,
        events: &mut Events,
    ) -> Vec<Command> {
        let duals: BTreeMap<String, f64> = self
            .models
            .iter()
            .zip(&self.mu)
            .map(|(m, mu)| (m.label.clone(), *mu))
            .collect();
        events.emit(
            EventSource::Controller,
            "controller.ofo.step",
            serde_json::json!({
                "t_s": clock.time_s(),
                "batch_size_by_model": batch.iter().cloned().collect::<BTreeMap<_, _>>(),
                "latency_dual_by_model": duals,
            }),
        );
        vec![Command::Datacenter {
            target: self.datacenter.clone(),
            command: DatacenterCommand::SetBatchSize {
                batch_size_by_model: batch,
                ramp_up_rate_by_model: Vec::new(),
            },
        }]
    }
}

fn normalised(e: [f64; 3]) -> [f64; 3] {
    let s: f64 = e.iter().sum();
    if s.is_finite() && s > 0.0 {
        e.map(|x| x / s)
    } else {
        [1.0 / 3.0; 3]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use num_rational::Ratio;

    fn fit(l: f64, x0: f64, k: f64, b0: f64) -> LogisticFit {
        LogisticFit { l, x0, k, b0 }
    }

    fn controller() -> OfoController {
        OfoController::new(
            Ratio::from_integer(1),
            "dc",
            vec![OfoModel {
                label: "m".into(),
                power_w: fit(400.0, 6.0, 1.0, 100.0),
                latency_s: fit(0.04, 7.0, 1.0, 0.01),
                throughput: fit(1000.0, 7.0, 1.0, 0.0),
                itl_deadline_s: 0.03,
                feasible_batch_sizes: vec![8, 16, 32, 64, 128],
                initial_batch_size: 32,
            }],
            OfoConfig::default(),
        )
        .unwrap()
    }

    #[test]
    fn snap_nearest_feasible_ties_to_smaller() {
        let c = controller();
        assert_eq!(c.snap(5.0), 32);
        assert_eq!(c.snap(24f64.log2()), 16); // 24 is as far from 16 as from 32
        assert_eq!(c.snap(25f64.log2()), 32);
        assert_eq!(c.snap(1.0), 8);
    }

    /// Hand-computed: two monitored rows at 0.94 and 1.0 pu, H rows (−1e-4, −2e-4, −3e-4) and
    /// (−1e-5, …): λ_under = 0.5·0.01 = 0.005 on row 0, η = (−0.005, 0); ηᵀH·e = 0.005·2e-4 =
    /// 1e-6. x = 5, w = 10 replicas: P′ = 400·σ(−1)(1−σ(−1)) = 78.644773 W, r′ = 1000·σ(−2)(1 −
    /// σ(−2)) = 104.993585, r(b_max = 128) = 1000·σ(0) = 500; gradient = −0.1·10·104.993585/500
    /// + 1e6·1e-6·10·0.078644773 + 0 = 0.576451; x ← 5 − 0.05·0.576451 = 4.971177.
    #[test]
    fn duals_and_primal_step_hand_computed() {
        let mut c = controller();
        c.lambda_under = vec![0.0; 2];
        c.lambda_over = vec![0.0; 2];
        let eta = c.update_voltage_duals(&[0.94, 1.0]);
        assert!((eta[0] + 0.005).abs() < 1e-15 && eta[1] == 0.0);
        let h = [[-1e-4, -2e-4, -3e-4], [-1e-5, -1e-5, -1e-5]];
        let e = [1.0 / 3.0; 3];
        let eta_h_e: f64 = eta
            .iter()
            .zip(&h)
            .map(|(n, r)| n * (r[0] * e[0] + r[1] * e[1] + r[2] * e[2]))
            .sum();
        assert!((eta_h_e - 1e-6).abs() < 1e-18);
        let x = c.primal_step(0, eta_h_e, 10.0);
        assert!((x - 4.971177).abs() < 1e-6, "{x}");
        // The latency dual adds μ·L′(x) and pushes x down further.
        c.mu[0] = 1.0;
        let x_mu = c.primal_step(0, eta_h_e, 10.0);
        assert!(x_mu < x);
    }
}
