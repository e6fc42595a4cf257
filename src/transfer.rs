//! Synthesis for configurations nobody measured: the shape of power over time from a measured
//! reference configuration, the levels and speeds of the target from the ML.ENERGY
//! leaderboard (docs/transfer.md has every step with its assumptions).
//!
//! 1. **Reference** ([`choose_reference`]): among the configurations with measured runs, the
//!    one on the target's GPU first, then of the target's architecture family (dense / MoE),
//!    then nearest in active parameters, then in TP.
//! 2. **Levels.** *Direct*, when the leaderboard has the target model (or its stand-in) on the
//!    target GPU: the target's steady power P_T(b) at running batch b is the leaderboard's
//!    average power, exact at each measured batch size, linear in log2 b between them and
//!    below the smallest along the first segment's slope, above along the group's logistic
//!    fit ([`BatchCurve`]). A synthesized active reading
//!    p_R of the reference maps to idle_T + (p_R − idle_R)·(P_T(b) − idle_T)/(D_R − idle_R),
//!    D_R the reference's steady decode reading in the bin's state (cell mean plus the
//!    leakage of a GPU held at it): a decode reading lands on P_T(b) on average, a prefill
//!    reading keeps its excess over decode in proportion. *Composed*, when the target GPU has
//!    no leaderboard data but the reference was measured on it: the reference's readings are
//!    scaled by the ratio of dynamic power (above idle) of the target model to the reference
//!    model at the same batch on a GPU where the leaderboard has both.
//!    The target's idle is the reference's idle share of its steady decode reading at the
//!    leaderboard's smallest batch, times the target's power there; an averaging meter
//!    (H100/B200: one second) is applied over the mapped point readings; averaged readings
//!    are capped at the board limit.
//! 3. **Timing.** Decode steps scale so that the transferred step at the leaderboard's batch
//!    sizes (≤ [`TIMING_MAX_BATCH`]) matches its median ITL (base and per-sequence costs, least
//!    squares on relative error); composed: by the target ÷ reference ITL ratio on the shared
//!    GPU. Prefill scales with compute: dense BF16 TFLOP/s × TP, and active parameters.
//!
//! Pure: no I/O; the binaries read the leaderboard and the runs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::engine::{ServingConfig, StepTiming};
use crate::error::{Error, Result};
use crate::fits::batch_curve::BatchCurve;
use crate::gpus::{gpu_spec, known_gpus, GpuSpec, GPUS};
use crate::learn::{learn, LearnOptions};
use crate::learn::{EngineState, LearnedModel, PowerModel};
use crate::level_map::{LevelMap, Levels};
use crate::sources::leaderboard::{groups, LeaderboardConfig, LeaderboardGroup};
use crate::sources::measured::{MeasuredRun, RunManifest};

/// The leaderboard task whose traffic stands for chat serving.
pub const DEFAULT_TASK: &str = "lm-arena-chat";
/// Prompt tokens per request assumed for the leaderboard's runs when their decode context is
/// estimated (it publishes output lengths only): chat prompts of a few hundred tokens.
const ASSUMED_PROMPT_TOKENS: f64 = 300.0;
/// Leaderboard batch sizes up to this calibrate the transferred decode timing: the range
/// where a step's time is linear in its batch, as the measured references are.
const TIMING_MAX_BATCH: f64 = 128.0;

/// What kind of model a configuration serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelFacts {
    pub model: String,
    pub moe: bool,
    /// Parameters used per token (billions).
    pub active_params_b: f64,
}

impl ModelFacts {
    /// The leaderboard's facts of `model` (any of its configurations).
    pub fn from_leaderboard(lb: &[LeaderboardConfig], model: &str) -> Option<Self> {
        let c = lb.iter().find(|c| c.model_id == model)?;
        if c.architecture.is_empty() || !c.active_params_b.is_finite() {
            return None; // compact fits carry no model facts
        }
        Some(Self {
            model: model.to_string(),
            moe: c.is_moe(),
            active_params_b: c.active_params_b,
        })
    }

    /// The facts a run's manifest records in its `arch` block.
    pub fn from_manifest(m: &RunManifest) -> Option<Self> {
        let a = m.arch.as_ref()?;
        (a.n_active > 0.0).then(|| Self {
            model: m.model.clone(),
            moe: a.family.to_ascii_lowercase().starts_with("moe") || a.n_experts > 1.0,
            active_params_b: a.n_active / 1e9,
        })
    }

    fn family(&self) -> &'static str {
        if self.moe {
            "MoE"
        } else {
            "dense"
        }
    }
}

/// A configuration with measured runs, as a reference candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub model: String,
    pub hardware: String,
    pub tp: u32,
    pub facts: Option<ModelFacts>,
}

impl Candidate {
    pub(crate) fn configuration(&self) -> String {
        format!("{} × {} × TP{}", self.model, self.hardware, self.tp)
    }
}

/// The reference chosen for a target, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceChoice {
    pub configuration: String,
    pub reason: String,
    /// Every candidate, best first.
    pub ranked: Vec<String>,
}

/// Ranks the candidates for `target`: same GPU first, then same family (dense / MoE; unknown
/// after known-same, before known-different), then nearest active parameters (|ln ratio|),
/// then nearest TP, then name. Returns the best one's index with the reason, or `None`
/// without candidates.
pub fn choose_reference(
    target: &ServingConfig,
    target_facts: Option<&ModelFacts>,
    candidates: &[Candidate],
) -> Option<(usize, ReferenceChoice)> {
    let key = |c: &Candidate| {
        let gpu = u8::from(!same_gpu(&c.hardware, &target.hardware));
        let (family, active) = match (target_facts, &c.facts) {
            (Some(t), Some(f)) => (
                if t.moe == f.moe { 0u8 } else { 2 },
                (f.active_params_b / t.active_params_b).ln().abs(),
            ),
            _ => (1, f64::INFINITY),
        };
        let tp = (c.tp as f64 / target.tp as f64).ln().abs();
        (gpu, family, active, tp, c.configuration())
    };
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|&a, &b| {
        let (ka, kb) = (key(&candidates[a]), key(&candidates[b]));
        (ka.0, ka.1)
            .cmp(&(kb.0, kb.1))
            .then(ka.2.total_cmp(&kb.2))
            .then(ka.3.total_cmp(&kb.3))
            .then(ka.4.cmp(&kb.4))
    });
    let &best = order.first()?;
    let c = &candidates[best];
    Some((
        best,
        ReferenceChoice {
            configuration: c.configuration(),
            reason: reason_for(target, target_facts, c),
            ranked: order
                .iter()
                .map(|&i| candidates[i].configuration())
                .collect(),
        },
    ))
}

/// Why `c` suits `target`: GPU, family and size, TP.
fn reason_for(target: &ServingConfig, target_facts: Option<&ModelFacts>, c: &Candidate) -> String {
    let mut why = vec![if same_gpu(&c.hardware, &target.hardware) {
        format!("same GPU ({})", c.hardware)
    } else {
        format!("no run on {}; {} instead", target.hardware, c.hardware)
    }];
    match (target_facts, &c.facts) {
        (Some(t), Some(f)) => why.push(format!(
            "{} {:.3} B active vs the target's {} {:.3} B",
            f.family(),
            f.active_params_b,
            t.family(),
            t.active_params_b
        )),
        _ => why.push("architecture unknown for the target or the reference".into()),
    }
    why.push(format!("TP{} vs TP{}", c.tp, target.tp));
    why.join("; ")
}

fn same_gpu(a: &str, b: &str) -> bool {
    canonical_gpu(a).eq_ignore_ascii_case(&canonical_gpu(b))
}

/// The leaderboard's power, median ITL and throughput of one group versus batch size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct GroupCurves {
    /// `<task>/<model>/<gpu>x<count>`.
    pub(crate) label: String,
    pub(crate) num_gpus: u32,
    /// Replica power (W, summed over the group's GPUs).
    pub(crate) power_w: BatchCurve,
    pub(crate) itl_s: BatchCurve,
    throughput_tps: BatchCurve,
    /// Mean output tokens per request over the group (NaN when not published).
    pub(crate) avg_output_len: f64,
}

impl GroupCurves {
    /// The curves of a leaderboard group. Repeated runs at one `max_num_seqs` are averaged
    /// (batch held, power, ITL, throughput) into one point.
    pub(crate) fn of(g: &LeaderboardGroup) -> Option<Self> {
        let mut by_cap: BTreeMap<u32, Vec<&LeaderboardConfig>> = BTreeMap::new();
        for c in &g.configs {
            by_cap.entry(c.max_num_seqs).or_default().push(c);
        }
        let mean = |cs: &[&LeaderboardConfig], f: fn(&LeaderboardConfig) -> f64| {
            cs.iter().map(|c| f(c)).sum::<f64>() / cs.len() as f64
        };
        let pts = |f: fn(&LeaderboardConfig) -> f64| {
            BatchCurve::from_points(
                by_cap
                    .values()
                    .map(|cs| (mean(cs, LeaderboardConfig::batch_size), mean(cs, f)))
                    .collect(),
            )
        };
        let out: Vec<f64> = g
            .configs
            .iter()
            .map(|c| c.avg_output_len)
            .filter(|v| v.is_finite())
            .collect();
        Some(Self {
            label: g.label(),
            num_gpus: g.num_gpus,
            power_w: pts(|c| c.avg_power_w)?,
            itl_s: pts(|c| c.median_itl_s)?,
            throughput_tps: pts(|c| c.output_throughput_tps)?,
            avg_output_len: if out.is_empty() {
                f64::NAN
            } else {
                out.iter().sum::<f64>() / out.len() as f64
            },
        })
    }
}

/// The group of `model` on `gpu` for `task`, with `tp` GPUs where the leaderboard has that
/// count, else the nearest count.
fn find_group<'a>(
    all: &'a [LeaderboardGroup],
    task: &str,
    model: &str,
    gpu: &str,
    tp: u32,
) -> Option<&'a LeaderboardGroup> {
    all.iter()
        .filter(|g| g.task == task && g.model_id == model && same_gpu(&g.gpu_model, gpu))
        .min_by(|a, b| {
            let d = |g: &LeaderboardGroup| (g.num_gpus as f64 / tp as f64).ln().abs();
            d(a).total_cmp(&d(b)).then(a.num_gpus.cmp(&b.num_gpus))
        })
}

/// How transfer reads the leaderboard.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TransferOptions {
    /// Leaderboard task whose fits give the levels ([`DEFAULT_TASK`] when empty).
    pub task: String,
    /// Target model → leaderboard model standing in for it (for models the leaderboard lacks).
    pub stand_ins: BTreeMap<String, String>,
}

impl TransferOptions {
    /// Options from the commands' flags: the task (empty: [`DEFAULT_TASK`]) and `--stand-in`
    /// values `TARGET_MODEL=LEADERBOARD_MODEL`.
    pub fn from_flags(task: &str, stand_ins: &[String]) -> Result<Self> {
        let mut map = BTreeMap::new();
        for s in stand_ins {
            let Some((t, m)) = s.split_once('=') else {
                return Err(Error::config(
                    "stand-in",
                    format!("{s:?}: expected TARGET_MODEL=LEADERBOARD_MODEL"),
                ));
            };
            if t.trim().is_empty() || m.trim().is_empty() {
                return Err(Error::config(
                    "stand-in",
                    format!("{s:?}: both models must be named"),
                ));
            }
            map.insert(t.trim().to_string(), m.trim().to_string());
        }
        Ok(Self {
            task: task.to_string(),
            stand_ins: map,
        })
    }

    /// The leaderboard model whose data stand for `model`: its stand-in, else itself.
    fn leaderboard_model<'a>(&'a self, model: &'a str) -> &'a str {
        self.stand_ins.get(model).map_or(model, String::as_str)
    }

    fn task(&self) -> &str {
        if self.task.is_empty() {
            DEFAULT_TASK
        } else {
            &self.task
        }
    }
}

/// One leaderboard batch size of a transfer, for the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct BatchCheck {
    pub(crate) batch: f64,
    /// The target's steady power there (W; NaN when composed: the levels are ratios).
    pub(crate) power_w: f64,
    /// The leaderboard's median ITL of the timing basis (s; composed: the stand-in model's on
    /// the shared GPU times the reference's transferred step ratio).
    pub(crate) itl_s: f64,
    /// The transferred decode step at this batch (s).
    pub(crate) step_s: f64,
    /// The leaderboard's output throughput (NaN when composed) and batch / step (tokens/s).
    throughput_tps: f64,
    decode_throughput_tps: f64,
}

/// What a transfer did, printed by the commands and written beside their outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferReport {
    pub(crate) target: String,
    pub reference: ReferenceChoice,
    /// `direct` (the target's own leaderboard levels) or `composed` (ratios on another GPU).
    pub mode: String,
    /// The leaderboard groups used.
    basis: Vec<String>,
    /// The leaderboard model standing in for the target's, when one was named.
    pub stand_in: Option<String>,
    same_model: bool,
    same_gpu: bool,
    /// Multipliers of the reference's step timing: fixed cost, per sequence (and context),
    /// per prompt token.
    decode_base_ratio: f64,
    decode_per_seq_ratio: f64,
    prefill_ratio: f64,
    kv_capacity_ratio: f64,
    pub(crate) level_map: LevelMap,
    pub(crate) checks: Vec<BatchCheck>,
    pub assumptions: Vec<String>,
}

impl TransferReport {
    /// A few lines for a terminal: the reference and why, the basis, the ratios, the checks.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "transfer to {} ({}) from {}: {}\n  levels from {}{}\n  timing × {:.3} (fixed), \
             × {:.3} (per sequence), × {:.3} (prefill); idle {:.1} → {:.1} W\n",
            self.target,
            self.mode,
            self.reference.configuration,
            self.reference.reason,
            self.basis.join(" and "),
            self.stand_in
                .as_ref()
                .map_or(String::new(), |m| format!(" (stand-in {m})")),
            self.decode_base_ratio,
            self.decode_per_seq_ratio,
            self.prefill_ratio,
            self.level_map.reference_idle_w,
            self.level_map.target_idle_w,
        );
        for c in &self.checks {
            out += &format!(
                "  batch {:>6.1}: power {:>7.1} W, ITL {:>6.2} ms → step {:>6.2} ms\n",
                c.batch,
                c.power_w,
                c.itl_s * 1e3,
                c.step_s * 1e3
            );
        }
        out
    }

    /// The transfer's kind, the key of the expected-error table.
    pub fn kind(&self) -> String {
        format!(
            "{}, {} model, {} GPU",
            self.mode,
            if self.same_model { "same" } else { "other" },
            if self.same_gpu { "same" } else { "other" }
        )
    }
}

/// Maps a model learned on a reference configuration to `target` (see the module docs).
/// `reference_facts` are the reference model's facts (manifest or leaderboard); `choice` is
/// recorded in the report. A target with no usable data is an error saying what is missing.
pub fn transfer(
    reference: &LearnedModel,
    reference_facts: Option<&ModelFacts>,
    choice: ReferenceChoice,
    target: &ServingConfig,
    leaderboard: &[LeaderboardConfig],
    opts: &TransferOptions,
) -> Result<(LearnedModel, TransferReport)> {
    let spec = |hw: &str| {
        gpu_spec(hw).ok_or_else(|| {
            Error::config(
                "hardware",
                format!("{hw}: unknown GPU model (known: {})", known_gpus()),
            )
        })
    };
    let (gpu_t, gpu_r) = (spec(&target.hardware)?, spec(&reference.hardware)?);
    let task = opts.task();
    let stand_in = opts.stand_ins.get(&target.model).cloned();
    let lb_model = opts.leaderboard_model(&target.model).to_string();
    let all: Vec<LeaderboardGroup> = groups(leaderboard)
        .into_iter()
        .filter(|g| g.task == task)
        .collect();
    if all.is_empty() {
        return Err(Error::config(
            "leaderboard",
            format!("no configurations for task {task:?}"),
        ));
    }
    let idle_r = pm_idle_w(&reference.power);
    let idle_r_gpu = idle_r / reference.tp as f64;
    let ctx = Context {
        reference,
        target,
        gpu_t,
        gpu_r,
        idle_r,
        idle_r_gpu,
        target_facts: ModelFacts::from_leaderboard(leaderboard, &lb_model),
        reference_facts: reference_facts.cloned(),
    };
    let plan = if let Some(g) = find_group(&all, task, &lb_model, &target.hardware, target.tp) {
        ctx.direct(g)?
    } else if same_gpu(&target.hardware, &reference.hardware) {
        ctx.composed(&all, task, &lb_model)?
    } else {
        return Err(missing_data(&all, task, &lb_model, target, reference));
    };
    Ok(ctx.finish(plan, choice, stand_in))
}

/// The reference's idle reading (replica, W): its cold idle cell.
fn pm_idle_w(pm: &PowerModel) -> f64 {
    pm.cell(&EngineState::IDLE).mean_w
}

/// The error for a target the leaderboard cannot place.
fn missing_data(
    all: &[LeaderboardGroup],
    task: &str,
    lb_model: &str,
    target: &ServingConfig,
    reference: &LearnedModel,
) -> Error {
    let on_gpu: Vec<String> = all
        .iter()
        .filter(|g| g.model_id == lb_model)
        .map(|g| format!("{}x{}", g.gpu_model, g.num_gpus))
        .collect();
    let what = if on_gpu.is_empty() {
        format!(
            "the leaderboard (task {task}) has no data for {lb_model}; name a leaderboard model of \
             the same family and size with --stand-in {}=MODEL",
            target.model
        )
    } else {
        format!(
            "the leaderboard (task {task}) has {lb_model} only on {} and the reference {} was \
             not measured on {}: train on a run on {} or pick a GPU the leaderboard has",
            on_gpu.join(", "),
            reference.configuration,
            target.hardware,
            target.hardware
        )
    };
    Error::config(
        "serving",
        format!("cannot transfer to {}: {what}", target.configuration()),
    )
}

/// Inputs shared by the transfer's steps.
struct Context<'a> {
    reference: &'a LearnedModel,
    target: &'a ServingConfig,
    gpu_t: &'static GpuSpec,
    gpu_r: &'static GpuSpec,
    idle_r: f64,
    idle_r_gpu: f64,
    target_facts: Option<ModelFacts>,
    reference_facts: Option<ModelFacts>,
}

/// The levels and timing ratios of a transfer before they are applied.
struct Plan {
    mode: &'static str,
    basis: Vec<String>,
    levels: Levels,
    target_idle_w: f64,
    base_ratio: f64,
    per_seq_ratio: f64,
    prefill_ratio: f64,
    /// Leaderboard batch sizes with the target power and the ITL the timing was fitted to.
    checks: Vec<(f64, f64, f64, f64)>,
    decode_context: f64,
    assumptions: Vec<String>,
}

/// How a transfer sets the target's idle level.
const IDLE_ASSUMPTION: &str = "idle: the same share of the lightest measured load as on the \
    reference (its idle reading ÷ its steady decode reading at the leaderboard's smallest batch \
    and context), times the target's power there: idle and low-batch power both come from the \
    clocks and static power a GPU holds with a model loaded, which scale together across GPUs \
    more than the board limit does";

impl Plan {
    /// The reference's step timing with the plan's ratios.
    fn scaled(&self, t: &StepTiming) -> StepTiming {
        StepTiming {
            base_s: t.base_s * self.base_ratio,
            per_decode_seq_s: t.per_decode_seq_s * self.per_seq_ratio,
            per_context_ktoken_s: t.per_context_ktoken_s * self.per_seq_ratio,
            per_prefill_token_s: t.per_prefill_token_s * self.prefill_ratio,
            per_prefill_attention_s: t.per_prefill_attention_s * self.prefill_ratio,
            first_step_s: t.first_step_s,
        }
    }

    /// The report's row per leaderboard batch, with the transferred decode step there.
    fn batch_checks(&self, timing: &StepTiming) -> Vec<BatchCheck> {
        self.checks
            .iter()
            .map(|&(b, power_w, itl_s, throughput_tps)| {
                let step_s = decode_step_s(timing, b, self.decode_context);
                BatchCheck {
                    batch: b,
                    power_w,
                    itl_s,
                    step_s,
                    throughput_tps,
                    decode_throughput_tps: b / step_s,
                }
            })
            .collect()
    }
}

impl Context<'_> {
    /// The idle of a replica whose power versus batch is `curve` ([`IDLE_ASSUMPTION`]): the
    /// reference's idle reading as a share of its steady decode reading at the curve's
    /// smallest batch with `context` tokens per request, times the curve there.
    fn idle_like(&self, curve: &BatchCurve, context: f64) -> f64 {
        let b = curve.batch[0];
        let f = [1.0, 1.0, b, 0.0, 0.0, b * context * 1e-3, 1.0];
        let decode_w = self.reference.power.steady_decode_w(&f);
        (self.idle_r / decode_w.max(1.0)).min(1.0) * curve.eval(b)
    }

    /// Active-parameter ratio target ÷ reference (1 when either is unknown).
    fn active_ratio(&self, assumptions: &mut Vec<String>) -> f64 {
        match (&self.target_facts, &self.reference_facts) {
            (Some(t), Some(r)) if t.active_params_b > 0.0 && r.active_params_b > 0.0 => {
                t.active_params_b / r.active_params_b
            }
            _ => {
                assumptions.push(
                    "active parameters unknown for the target or the reference: prefill \
                     cost per token taken as the reference's"
                        .into(),
                );
                1.0
            }
        }
    }

    /// Levels from the target's own leaderboard group on the target GPU.
    fn direct(&self, g: &LeaderboardGroup) -> Result<Plan> {
        let curves = GroupCurves::of(g).ok_or_else(|| {
            Error::config("leaderboard", format!("{}: no usable points", g.label()))
        })?;
        let mut assumptions = vec![IDLE_ASSUMPTION.to_string()];
        let per_gpu_scale = self.target.tp as f64 / curves.num_gpus as f64;
        if g.num_gpus != self.target.tp {
            assumptions.push(format!(
                "the leaderboard has {} on {} GPUs, not {}: power scaled per GPU, ITL taken \
                 as is",
                g.model_id, g.num_gpus, self.target.tp
            ));
        }
        let power_w = BatchCurve {
            values: curves
                .power_w
                .values
                .iter()
                .map(|v| v * per_gpu_scale)
                .collect(),
            logistic: curves.power_w.logistic.map(|mut l| {
                l.l *= per_gpu_scale;
                l.b0 *= per_gpu_scale;
                l
            }),
            ..curves.power_w.clone()
        };
        let decode_context = decode_context(curves.avg_output_len, &mut assumptions);
        let points: Vec<(f64, f64)> = timing_points(&curves.itl_s);
        let (base_ratio, per_seq_ratio) =
            fit_decode_ratios(&self.reference.timing, &points, decode_context);
        let flops = (self.gpu_r.bf16_dense_tflops * self.reference.tp as f64)
            / (self.gpu_t.bf16_dense_tflops * self.target.tp as f64);
        let prefill_ratio = flops * self.active_ratio(&mut assumptions);
        assumptions.push(format!(
            "prefill per token scales with dense BF16 TFLOP/s × TP ({} × {} → {} × {}) and \
             active parameters",
            self.gpu_r.bf16_dense_tflops,
            self.reference.tp,
            self.gpu_t.bf16_dense_tflops,
            self.target.tp
        ));
        let checks = curves
            .itl_s
            .batch
            .iter()
            .map(|&b| {
                (
                    b,
                    power_w.eval(b),
                    curves.itl_s.eval(b),
                    curves.throughput_tps.eval(b),
                )
            })
            .collect();
        Ok(Plan {
            mode: "direct",
            basis: vec![curves.label.clone()],
            target_idle_w: self.idle_like(&power_w, decode_context),
            levels: Levels::Absolute { power_w },
            base_ratio,
            per_seq_ratio,
            prefill_ratio,
            checks,
            decode_context,
            assumptions,
        })
    }

    /// The GPU nearest the target's board limit where the leaderboard has both the target
    /// model (or its stand-in) and the reference model, with their groups.
    fn shared_gpu_groups<'g>(
        &self,
        all: &'g [LeaderboardGroup],
        task: &str,
        lb_model: &str,
    ) -> Result<(&'static GpuSpec, &'g LeaderboardGroup, &'g LeaderboardGroup)> {
        let (t, r) = (self.target, self.reference);
        let mut shared: Vec<&'static GpuSpec> = GPUS.iter().collect();
        shared.sort_by(|a, b| {
            let d = |g: &GpuSpec| (g.board_limit_w / self.gpu_t.board_limit_w).ln().abs();
            d(a).total_cmp(&d(b))
        });
        shared
            .iter()
            .find_map(|g| {
                let m = find_group(all, task, lb_model, g.name, t.tp)?;
                let rm = find_group(all, task, &r.model, g.name, r.tp)?;
                Some((*g, m, rm))
            })
            .ok_or_else(|| {
                let hint = if all.iter().any(|g| g.model_id == lb_model) {
                    String::new()
                } else {
                    format!(
                        " ({lb_model} is not in it: name a stand-in with --stand-in {}=MODEL)",
                        t.model
                    )
                };
                Error::config(
                    "serving",
                    format!(
                        "cannot transfer to {}: no GPU where the leaderboard (task {task}) has \
                         both {lb_model} and the reference model {}{hint}",
                        t.configuration(),
                        r.model
                    ),
                )
            })
    }

    /// Ratios target ÷ reference model on a GPU where the leaderboard has both, applied to
    /// the reference's levels on the target GPU (where it was measured).
    fn composed(&self, all: &[LeaderboardGroup], task: &str, lb_model: &str) -> Result<Plan> {
        let (t, r) = (self.target, self.reference);
        let (gpu_g, m, rm) = self.shared_gpu_groups(all, task, lb_model)?;
        let (cm, cr) = (
            GroupCurves::of(m).ok_or_else(|| Error::config("leaderboard", m.label()))?,
            GroupCurves::of(rm).ok_or_else(|| Error::config("leaderboard", rm.label()))?,
        );
        let mut context_note = Vec::new();
        let decode_context = decode_context(cm.avg_output_len, &mut context_note);
        let idle_g = self.idle_like(&cr.power_w, decode_context) / cr.num_gpus as f64;
        let ratio = dynamic_ratio(&cm, &cr, idle_g, t.tp, r.tp)?;
        let speed: Vec<f64> = timing_points(&cm.itl_s)
            .iter()
            .map(|&(b, itl)| (itl / cr.itl_s.eval(b)).ln())
            .collect();
        let step_ratio = (speed.iter().sum::<f64>() / speed.len().max(1) as f64).exp();
        let mut assumptions = vec![
            format!(
                "levels: the reference's readings on {} with their dynamic part (above idle) \
                 scaled by {lb_model} ÷ {} on {} at the same batch (idle there: {:.1} W per GPU, \
                 {IDLE_ASSUMPTION})",
                t.hardware, r.model, gpu_g.name, idle_g
            ),
            format!(
                "decode steps scale by the mean ITL ratio {lb_model} ÷ {} on {} at batch ≤ {}",
                r.model, gpu_g.name, TIMING_MAX_BATCH
            ),
        ];
        let prefill_ratio = self.active_ratio(&mut assumptions) * r.tp as f64 / t.tp as f64;
        assumptions.extend(context_note);
        let checks = cm
            .itl_s
            .batch
            .iter()
            .map(|&b| {
                (
                    b,
                    f64::NAN,
                    cm.itl_s.eval(b) / cr.itl_s.eval(b)
                        * decode_step_s(&r.timing, b, decode_context),
                    f64::NAN,
                )
            })
            .collect();
        Ok(Plan {
            mode: "composed",
            basis: vec![cm.label.clone(), cr.label.clone()],
            target_idle_w: self.idle_r_gpu * t.tp as f64,
            levels: Levels::Ratio {
                dynamic_ratio: ratio,
            },
            base_ratio: step_ratio,
            per_seq_ratio: step_ratio,
            prefill_ratio,
            checks,
            decode_context,
            assumptions,
        })
    }

    /// The transferred model and its report.
    fn finish(
        &self,
        plan: Plan,
        choice: ReferenceChoice,
        stand_in: Option<String>,
    ) -> (LearnedModel, TransferReport) {
        let (r, t) = (self.reference, self.target);
        let timing = plan.scaled(&r.timing);
        let checks = plan.batch_checks(&timing);
        let kv_ratio = (self.gpu_t.hbm_gb * t.tp as f64) / (self.gpu_r.hbm_gb * r.tp as f64);
        let window_bins = if self.gpu_t.meter_window_s > self.gpu_r.meter_window_s {
            ((self.gpu_t.meter_window_s / r.dt_s).round() as usize).max(1)
        } else {
            1
        };
        let level_map = LevelMap {
            reference_idle_w: self.idle_r,
            target_idle_w: plan.target_idle_w,
            board_limit_w: self.gpu_t.board_limit_w * t.tp as f64,
            meter_window_bins: window_bins,
            levels: plan.levels,
        };
        let mut assumptions = plan.assumptions;
        assumptions.push(format!(
            "KV-cache capacity scales with HBM × TP ({} GB × {} → {} GB × {})",
            self.gpu_r.hbm_gb, r.tp, self.gpu_t.hbm_gb, t.tp
        ));
        assumptions.push(format!(
            "the meter: {} (reference {})",
            meter_name(self.gpu_t),
            meter_name(self.gpu_r)
        ));
        let mut model = r.clone();
        model.configuration = t.configuration();
        model.model = t.model.clone();
        model.hardware = t.hardware.clone();
        model.tp = t.tp;
        model.timing = timing;
        model.kv_cache.capacity_tokens = r
            .kv_cache
            .capacity_tokens
            .map(|c| (c as f64 * kv_ratio) as u64);
        model.baselines = mapped_baselines(r, &level_map, self.gpu_t, t.tp);
        model.transfer = Some(level_map.clone());
        let report = TransferReport {
            target: t.configuration(),
            reference: choice,
            mode: plan.mode.into(),
            basis: plan.basis,
            stand_in,
            same_model: t.model == r.model,
            same_gpu: same_gpu(&t.hardware, &r.hardware),
            decode_base_ratio: plan.base_ratio,
            decode_per_seq_ratio: plan.per_seq_ratio,
            prefill_ratio: plan.prefill_ratio,
            kv_capacity_ratio: kv_ratio,
            level_map,
            checks,
            assumptions,
        };
        (model, report)
    }
}

fn meter_name(g: &GpuSpec) -> String {
    if g.meter_window_s > 0.0 {
        format!("{} averages over {} s", g.name, g.meter_window_s)
    } else {
        format!("{} reads a point", g.name)
    }
}

/// The dynamic power (above `idle_g` per GPU) of the target model ÷ the reference model's
/// versus batch, each per replica of its own TP (the leaderboard's GPU count scaled to it).
fn dynamic_ratio(
    cm: &GroupCurves,
    cr: &GroupCurves,
    idle_g: f64,
    target_tp: u32,
    reference_tp: u32,
) -> Result<BatchCurve> {
    let mut batches: Vec<f64> = cm.power_w.batch.clone();
    batches.extend(&cr.power_w.batch);
    let dynamic = |c: &GroupCurves, b: f64, tp: u32| {
        (c.power_w.eval(b) - c.num_gpus as f64 * idle_g).max(1.0) * tp as f64 / c.num_gpus as f64
    };
    BatchCurve::from_points(
        batches
            .iter()
            .map(|&b| (b, dynamic(cm, b, target_tp) / dynamic(cr, b, reference_tp)))
            .collect(),
    )
    .ok_or_else(|| Error::config("leaderboard", "no batch sizes to compose"))
}

/// A decode step of `batch` requests holding `context` tokens each (s).
fn decode_step_s(timing: &StepTiming, batch: f64, context: f64) -> f64 {
    timing.step_s(batch.round() as u32, 0, (batch * context) as u64, 0.0)
}

/// Tokens of context a leaderboard request holds on average while it decodes.
fn decode_context(avg_output_len: f64, assumptions: &mut Vec<String>) -> f64 {
    let out = if avg_output_len.is_finite() {
        avg_output_len
    } else {
        500.0
    };
    assumptions.push(format!(
        "leaderboard decode context: {ASSUMED_PROMPT_TOKENS} prompt tokens (assumed) + half the \
         mean output ({out:.0}) per request"
    ));
    ASSUMED_PROMPT_TOKENS + out / 2.0
}

/// The (batch, ITL) points that calibrate decode timing: those at batch ≤
/// [`TIMING_MAX_BATCH`], or the two smallest when fewer.
fn timing_points(itl: &BatchCurve) -> Vec<(f64, f64)> {
    let pts: Vec<(f64, f64)> = itl
        .batch
        .iter()
        .copied()
        .zip(itl.values.iter().copied())
        .collect();
    let low: Vec<(f64, f64)> = pts
        .iter()
        .copied()
        .filter(|(b, _)| *b <= TIMING_MAX_BATCH)
        .collect();
    if low.len() >= 2 {
        low
    } else {
        pts.into_iter().take(2).collect()
    }
}

/// Multipliers (α, β) of the reference's fixed and per-sequence decode costs that bring its
/// step at each (batch, ITL) point to the ITL: weighted least squares on relative error of
/// ITL ≈ α·base + β·b·(per_seq + context·per_ktoken); one common ratio when the two-parameter
/// fit is not positive.
fn fit_decode_ratios(timing: &StepTiming, points: &[(f64, f64)], context: f64) -> (f64, f64) {
    let per_seq = timing.per_decode_seq_s + context * 1e-3 * timing.per_context_ktoken_s;
    let (mut s11, mut s12, mut s22, mut r1, mut r2) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for &(b, y) in points {
        let w = 1.0 / (y * y);
        let (u, v) = (timing.base_s, b * per_seq);
        s11 += w * u * u;
        s12 += w * u * v;
        s22 += w * v * v;
        r1 += w * u * y;
        r2 += w * v * y;
    }
    let det = s11 * s22 - s12 * s12;
    if det.abs() > 1e-12 * s11 * s22 {
        let alpha = (r1 * s22 - r2 * s12) / det;
        let beta = (s11 * r2 - s12 * r1) / det;
        if alpha > 0.0 && beta > 0.0 {
            return (alpha, beta);
        }
    }
    let common = (r1 + r2) / (s11 + 2.0 * s12 + s22);
    (common, common)
}

/// The reference's baseline levels mapped to the target: TDP of the target board, idle by
/// the idle ratio, the other levels by the active map at the reference decode level.
fn mapped_baselines(
    r: &LearnedModel,
    map: &LevelMap,
    gpu_t: &GpuSpec,
    tp: u32,
) -> crate::learn::BaselineLevels {
    let b = &r.baselines;
    let scale = match &map.levels {
        Levels::Absolute { power_w } => {
            let lowest = power_w.batch.first().copied().unwrap_or(1.0);
            (power_w.eval(lowest) - map.target_idle_w)
                / (b.decode_w - map.reference_idle_w).max(1.0)
        }
        Levels::Ratio { dynamic_ratio } => dynamic_ratio.eval(1.0),
    };
    let active = |w: f64| map.target_idle_w + (w - map.reference_idle_w) * scale;
    crate::learn::BaselineLevels {
        tdp_w: gpu_t.board_limit_w * tp as f64,
        mean_w: active(b.mean_w),
        idle_w: b.idle_w * map.target_idle_w / map.reference_idle_w.max(1e-9),
        prefill_w: active(b.prefill_w),
        decode_w: active(b.decode_w),
    }
}

/// The model for `target` from training runs of any configurations: learned on the runs of
/// the target's configuration when there are some; else, with a leaderboard, transferred from
/// the best reference configuration ([`choose_reference`]) learned on its runs. Without
/// either, an error naming the configurations the runs have.
pub fn model_for(
    target: &ServingConfig,
    runs: &[MeasuredRun],
    leaderboard: Option<&[LeaderboardConfig]>,
    opts: &TransferOptions,
    learn_opts: &LearnOptions,
) -> Result<(LearnedModel, Option<TransferReport>)> {
    let by_config = by_configuration(runs);
    let wanted = (
        target.model.clone(),
        canonical_gpu(&target.hardware),
        target.tp,
    );
    if let Some(own) = by_config.get(&wanted) {
        return Ok((learn(own, learn_opts)?, None));
    }
    let have: Vec<String> = by_config
        .keys()
        .map(|(m, h, tp)| format!("{m} × {h} × TP{tp}"))
        .collect();
    let Some(lb) = leaderboard else {
        return Err(Error::config(
            "serving",
            format!(
                "no training run of {} (the runs are of {}); give a leaderboard (--leaderboard \
                 DIR, or `leaderboard` in a scenario) to transfer from them",
                target.configuration(),
                have.join(", ")
            ),
        ));
    };
    let groups: Vec<&Vec<MeasuredRun>> = by_config.values().collect();
    let candidates = candidates_of(&groups, lb);
    let target_facts = ModelFacts::from_leaderboard(lb, opts.leaderboard_model(&target.model));
    let (_, choice) = choose_reference(target, target_facts.as_ref(), &candidates)
        .ok_or_else(|| Error::config("train", "no training runs"))?;
    // The best reference the leaderboard can place: candidates in rank order, the first whose
    // transfer works (a reference on the target GPU needs the models compared on another).
    let mut failures = Vec::new();
    for (rank, name) in choice.ranked.iter().enumerate() {
        let i = candidates
            .iter()
            .position(|c| c.configuration() == *name)
            .expect("ranked names come from the candidates");
        let mut this = choice.clone();
        this.configuration = name.clone();
        if rank > 0 {
            this.reason = format!(
                "{} (ranked {} of {}: {})",
                reason_for(target, target_facts.as_ref(), &candidates[i]),
                rank + 1,
                choice.ranked.len(),
                failures.join("; ")
            );
        }
        let reference = learn(groups[i], learn_opts)?;
        match transfer(
            &reference,
            candidates[i].facts.as_ref(),
            this,
            target,
            lb,
            opts,
        ) {
            Ok((model, report)) => return Ok((model, Some(report))),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    Err(Error::config(
        "serving",
        format!(
            "no reference transfers to {}: {}",
            target.configuration(),
            failures.join("; ")
        ),
    ))
}

/// A model already learned (read from a file, say) for `target`: as is when it is of the
/// target's configuration or was itself transferred (synthesis then names any mismatch);
/// else, with a leaderboard, transferred from it as the reference (`source` says where it
/// came from, for the report).
pub fn adapt(
    model: LearnedModel,
    source: &str,
    target: &ServingConfig,
    leaderboard: Option<&[LeaderboardConfig]>,
    opts: &TransferOptions,
) -> Result<(LearnedModel, Option<TransferReport>)> {
    let own =
        model.model == target.model && model.hardware == target.hardware && model.tp == target.tp;
    let Some(lb) = leaderboard.filter(|_| !own && model.transfer.is_none()) else {
        return Ok((model, None));
    };
    let choice = ReferenceChoice {
        configuration: model.configuration.clone(),
        reason: format!("given by {source}"),
        ranked: vec![model.configuration.clone()],
    };
    let facts = ModelFacts::from_leaderboard(lb, &model.model);
    let (m, r) = transfer(&model, facts.as_ref(), choice, target, lb, opts)?;
    Ok((m, Some(r)))
}

/// Runs grouped by configuration (model, GPU as the table names it, TP).
fn by_configuration(runs: &[MeasuredRun]) -> BTreeMap<(String, String, u32), Vec<MeasuredRun>> {
    let mut by_config: BTreeMap<(String, String, u32), Vec<MeasuredRun>> = BTreeMap::new();
    for r in runs {
        let m = &r.manifest;
        let key = (m.model.clone(), canonical_gpu(&m.hardware), m.tp);
        by_config.entry(key).or_default().push(r.clone());
    }
    by_config
}

/// One reference candidate per group of runs, with its facts from the manifest or else the
/// leaderboard.
fn candidates_of(groups: &[&Vec<MeasuredRun>], lb: &[LeaderboardConfig]) -> Vec<Candidate> {
    groups
        .iter()
        .map(|g| {
            let m = &g[0].manifest;
            Candidate {
                model: m.model.clone(),
                hardware: m.hardware.clone(),
                tp: m.tp,
                facts: ModelFacts::from_manifest(m)
                    .or_else(|| ModelFacts::from_leaderboard(lb, &m.model)),
            }
        })
        .collect()
}

/// The table's name for a GPU (`H100` for `NVIDIA H100 80GB HBM3`), else the name as given.
fn canonical_gpu(hardware: &str) -> String {
    gpu_spec(hardware).map_or_else(|| hardware.to_string(), |g| g.name.to_string())
}

/// The transfer's measured errors, from `validate --leave-one-configuration-out`: what a
/// transferred trace is expected to miss by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferErrors {
    pub schema: String,
    /// The command that measured them.
    pub command: String,
    pub cases: Vec<TransferCase>,
}

/// One measured run synthesized by transfer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferCase {
    pub(crate) run_id: String,
    pub(crate) target: String,
    pub(crate) reference: String,
    /// [`TransferReport::kind`].
    pub(crate) kind: String,
    pub(crate) energy_error_pct: f64,
    pub(crate) ks: f64,
}

/// Schema tag of [`TransferErrors`].
pub const TRANSFER_ERRORS_SCHEMA: &str = "powersynth.transfer_errors.v1";

impl TransferErrors {
    /// The table shipped with the toolkit (`data/default/transfer_errors.json`).
    pub fn embedded() -> Self {
        serde_json::from_str(include_str!("../data/default/transfer_errors.json"))
            .expect("the embedded transfer-error table parses (checked by a test)")
    }

    /// The expected error of a transfer of `kind`: its own cases when there are some, else
    /// every case, as "|ΔE| ≤ x % and KS ≤ y over n runs (kind …)".
    pub fn expected(&self, kind: &str) -> String {
        let own: Vec<&TransferCase> = self.cases.iter().filter(|c| c.kind == kind).collect();
        let (cases, which) = if own.is_empty() {
            (
                self.cases.iter().collect::<Vec<_>>(),
                format!("no measured case of this kind ({kind}); all kinds"),
            )
        } else {
            (own, kind.to_string())
        };
        if cases.is_empty() {
            return "no measured transfer case: error unknown".into();
        }
        let de = cases
            .iter()
            .map(|c| c.energy_error_pct.abs())
            .fold(0.0, f64::max);
        let ks = cases.iter().map(|c| c.ks).fold(0.0, f64::max);
        let list: Vec<String> = cases
            .iter()
            .map(|c| {
                format!(
                    "{} from {}: ΔE {:+.1} %, KS {:.3}",
                    c.target, c.reference, c.energy_error_pct, c.ks
                )
            })
            .collect();
        format!(
            "|ΔE| ≤ {de:.1} %, KS ≤ {ks:.2} over {} run(s) of leave-one-configuration-out \
             ({which}): {}",
            cases.len(),
            list.join("; ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serving(model: &str, hw: &str, tp: u32) -> ServingConfig {
        ServingConfig {
            model: model.into(),
            hardware: hw.into(),
            tp,
            max_num_seqs: 256,
            max_num_batched_tokens: 8192,
            enable_chunked_prefill: true,
            enable_prefix_caching: false,
        }
    }

    fn cand(model: &str, hw: &str, tp: u32, moe: bool, active: f64) -> Candidate {
        Candidate {
            model: model.into(),
            hardware: hw.into(),
            tp,
            facts: Some(ModelFacts {
                model: model.into(),
                moe,
                active_params_b: active,
            }),
        }
    }

    #[test]
    fn reference_choice_prefers_gpu_then_family_then_size() {
        let cands = vec![
            cand("dense-8b", "A100", 1, false, 8.0),
            cand("moe-a4b", "A100", 2, true, 4.0),
            cand("dense-70b", "H100", 4, false, 70.0),
            cand("dense-14b", "H100", 1, false, 14.0),
        ];
        let facts = |moe, active| ModelFacts {
            model: "t".into(),
            moe,
            active_params_b: active,
        };
        // Same GPU wins over a nearer size on another GPU.
        let t = serving("t", "H100", 1);
        let (i, c) = choose_reference(&t, Some(&facts(false, 8.0)), &cands).unwrap();
        assert_eq!(i, 3, "{c:?}");
        assert_eq!(c.ranked[1], "dense-70b × H100 × TP4");
        // No run on the GPU: the same family first, then active parameters.
        let t = serving("t", "B200", 2);
        assert_eq!(
            choose_reference(&t, Some(&facts(true, 3.0)), &cands)
                .unwrap()
                .0,
            1
        );
        assert_eq!(
            choose_reference(&t, Some(&facts(false, 9.0)), &cands)
                .unwrap()
                .0,
            0
        );
        // On the target GPU, the dense 8 B beats the MoE for a dense target.
        let t = serving("t", "A100", 2);
        let (i, c) = choose_reference(&t, Some(&facts(false, 7.0)), &cands).unwrap();
        assert_eq!(i, 0);
        assert!(c.reason.starts_with("same GPU (A100)"), "{}", c.reason);
        assert!(choose_reference(&t, None, &[]).is_none());
    }

    #[test]
    fn embedded_transfer_errors_parse() {
        let e = TransferErrors::embedded();
        assert_eq!(e.schema, TRANSFER_ERRORS_SCHEMA);
        assert!(!e.expected("direct, same model, other GPU").is_empty());
    }

    fn lbc(
        model: &str,
        gpu: &str,
        cap: u32,
        power_w: f64,
        itl_ms: f64,
        moe: bool,
        active: f64,
    ) -> LeaderboardConfig {
        LeaderboardConfig {
            task: DEFAULT_TASK.into(),
            model_id: model.into(),
            nickname: String::new(),
            gpu_model: gpu.into(),
            num_gpus: 1,
            max_num_seqs: cap,
            avg_power_w: power_w,
            median_itl_s: itl_ms * 1e-3,
            p90_itl_s: itl_ms * 1e-3,
            p95_itl_s: itl_ms * 1e-3,
            p99_itl_s: itl_ms * 1e-3,
            output_throughput_tps: cap as f64 / (itl_ms * 1e-3),
            energy_per_token_j: 1.0,
            avg_batch_size: cap as f64,
            architecture: if moe {
                "MoE".into()
            } else {
                "Dense Transformer".into()
            },
            active_params_b: active,
            avg_output_len: 400.0,
        }
    }

    /// A reference on A100 whose idle reads 100 W and every active state 300 W (no leakage).
    fn two_level_reference(model: &str) -> LearnedModel {
        use crate::learn::{BaselineLevels, PowerCell, N_CELLS};
        let cell = |label: &str, w: f64| PowerCell {
            label: label.into(),
            bins: 100,
            mean_w: w,
            quantiles_w: vec![w, w],
            phi: None,
        };
        let mut lookup = vec![1; N_CELLS];
        lookup[EngineState::IDLE.index()] = 0;
        LearnedModel {
            schema: crate::learn::LEARNED_MODEL_SCHEMA.into(),
            configuration: format!("{model} × A100 × TP1"),
            model: model.into(),
            hardware: "A100".into(),
            tp: 1,
            dt_s: 0.25,
            timing: StepTiming {
                base_s: 0.01,
                per_decode_seq_s: 1e-4,
                per_prefill_token_s: 1e-4,
                per_context_ktoken_s: 0.0,
                per_prefill_attention_s: 0.0,
                first_step_s: 0.0,
            },
            kv_cache: Default::default(),
            power: PowerModel {
                meter_window_bins: 1,
                cells: vec![cell("idle", 100.0), cell("busy", 300.0)],
                lookup,
                phi: 0.5,
                r2: 0.0,
                min_cell_bins: 30,
                thermal: Default::default(),
            },
            baselines: BaselineLevels {
                tdp_w: 400.0,
                mean_w: 250.0,
                idle_w: 100.0,
                prefill_w: 300.0,
                decode_w: 300.0,
            },
            training_runs: vec![],
            engine_checks: vec![],
            transfer: None,
            training_traffic: None,
        }
    }

    fn choice(r: &LearnedModel) -> ReferenceChoice {
        ReferenceChoice {
            configuration: r.configuration.clone(),
            reason: "test".into(),
            ranked: vec![],
        }
    }

    #[test]
    fn composed_ratios_have_known_answers() {
        // On H100 (idle there: a third of the reference's 300 W decode level at batch 8, as
        // on the reference: 100 W), target model M draws 400 / 500 W at batch 8 / 16 and
        // reference model R 300 / 350 W: dynamic ratios 300/200 = 1.5 and 400/250 = 1.6.
        let lb = vec![
            lbc("M", "H100", 8, 400.0, 10.0, true, 3.0),
            lbc("M", "H100", 16, 500.0, 12.0, true, 3.0),
            lbc("R", "H100", 8, 300.0, 8.0, false, 8.0),
            lbc("R", "H100", 16, 350.0, 8.0, false, 8.0),
        ];
        let r = two_level_reference("R");
        let target = serving("M", "A100", 1);
        let facts = ModelFacts::from_leaderboard(&lb, "R");
        let (m, rep) = transfer(
            &r,
            facts.as_ref(),
            choice(&r),
            &target,
            &lb,
            &Default::default(),
        )
        .unwrap();
        assert_eq!(rep.mode, "composed");
        let Levels::Ratio { dynamic_ratio } = &rep.level_map.levels else {
            panic!("{:?}", rep.level_map.levels);
        };
        assert!((dynamic_ratio.eval(8.0) - 1.5).abs() < 1e-9);
        assert!((dynamic_ratio.eval(16.0) - 1.6).abs() < 1e-9);
        assert!((rep.level_map.target_idle_w - 100.0).abs() < 1e-9);
        // Steps scale by the geometric mean of the ITL ratios 1.25 and 1.5; prefill by the
        // active parameters 3 / 8.
        let step = (1.25f64 * 1.5).sqrt();
        assert!((rep.decode_base_ratio - step).abs() < 1e-9);
        assert!((m.timing.base_s - 0.01 * step).abs() < 1e-12);
        assert!((rep.prefill_ratio - 0.375).abs() < 1e-12);
        assert_eq!(
            rep.level_map.meter_window_bins, 1,
            "A100 to A100: a point reading"
        );
        // A steady decode reading of the reference at batch 8 maps to 100 + 200 × 1.5.
        let bin = crate::level_map::ActiveBin {
            batch: 8.0,
            reference_decode_w: 300.0,
        };
        let mut p = [300.0];
        rep.level_map.apply(&[Some(bin)], &mut p);
        assert!((p[0] - 400.0).abs() < 1e-9);
    }

    #[test]
    fn direct_levels_and_what_is_missing() {
        let lb = vec![
            lbc("R", "H100", 8, 300.0, 8.0, false, 8.0),
            lbc("R", "H100", 16, 350.0, 9.0, false, 8.0),
        ];
        let r = two_level_reference("R");
        let facts = ModelFacts::from_leaderboard(&lb, "R");
        let (m, rep) = transfer(
            &r,
            facts.as_ref(),
            choice(&r),
            &serving("R", "H100", 1),
            &lb,
            &Default::default(),
        )
        .unwrap();
        assert_eq!(
            (rep.mode.as_str(), rep.same_model, rep.same_gpu),
            ("direct", true, false)
        );
        // Idle: the reference's share of its decode level (1/3) of the target's 300 W.
        assert!((rep.level_map.target_idle_w - 100.0).abs() < 1e-9);
        assert_eq!(rep.level_map.meter_window_bins, 4, "H100 averages over 1 s");
        assert_eq!(m.baselines.tdp_w, 700.0);
        // Prefill per token: A100 312 ÷ H100 989 TFLOP/s.
        assert!((rep.prefill_ratio - 312.0 / 989.0).abs() < 1e-12);
        // Nothing for the model on any GPU: say to name a stand-in.
        let e = transfer(
            &r,
            None,
            choice(&r),
            &serving("Z", "H100", 1),
            &lb,
            &Default::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("no data for Z") && e.contains("--stand-in Z=MODEL"),
            "{e}"
        );
        // The model only on a GPU the reference was not measured on, target on a third GPU.
        let e = transfer(
            &r,
            None,
            choice(&r),
            &serving("R", "B200", 1),
            &lb,
            &Default::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("only on H100x1"), "{e}");
        // Unknown GPU.
        let e = transfer(
            &r,
            None,
            choice(&r),
            &serving("R", "MI300X", 1),
            &lb,
            &Default::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown GPU"), "{e}");
    }

    #[test]
    fn decode_ratios_recover_a_scaled_timing() {
        let r = StepTiming {
            base_s: 0.012,
            per_decode_seq_s: 2e-5,
            per_prefill_token_s: 6e-5,
            per_context_ktoken_s: 1e-4,
            per_prefill_attention_s: 0.0,
            first_step_s: 0.0,
        };
        let ctx = 600.0;
        // A target whose fixed cost is 0.6× and per-sequence cost 1.5× the reference's.
        let pts: Vec<(f64, f64)> = [8.0, 16.0, 32.0, 64.0, 128.0]
            .iter()
            .map(|&b| (b, 0.6 * r.base_s + 1.5 * b * (2e-5 + 0.6 * 1e-4)))
            .collect();
        let (a, b) = fit_decode_ratios(&r, &pts, ctx);
        assert!((a - 0.6).abs() < 1e-9 && (b - 1.5).abs() < 1e-9, "{a} {b}");
        // One point: a common ratio.
        let (a, b) = fit_decode_ratios(&r, &pts[..1], ctx);
        assert_eq!(a, b);
        let step = a * r.base_s + b * 8.0 * (2e-5 + 0.6 * 1e-4);
        assert!((step - pts[0].1).abs() < 1e-12);
    }
}
