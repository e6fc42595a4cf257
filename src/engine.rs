//! Serving-engine simulation (SPEC §6): vLLM-style continuous batching, step by step.
//!
//! Each engine step schedules, within a token budget of `max_num_batched_tokens`:
//! 1. one decode token for every running request past its prefill;
//! 2. the next prefill chunk of running requests whose prompt is only partly processed;
//! 3. waiting requests in arrival order while fewer than `max_num_seqs` run and budget is left
//!    (with chunked prefill a prompt may be split over steps; without it a prompt waits until
//!    it fits whole).
//!
//! The prefill step that completes a prompt also yields the first output token; each later
//! step yields one token, so a request with `output_tokens = n` leaves after n − 1 decode
//! steps. A step lasts [`StepTiming::step_s`] of what it scheduled. Requests that arrive while
//! the engine is full wait in the queue: unlike the paper's queue-free shortcut (completion =
//! arrival + in/λ_prefill + out/λ_decode), overload shows as waiting requests and late
//! completions. With `enable_prefix_caching`, a request's leading prompt blocks that an
//! earlier turn of its session left resident are served from the cache
//! ([`crate::prefix_cache`]): only the rest is prefilled, while the cached tokens still count
//! in the context its decode steps read. Not modelled: KV-cache exhaustion and preemption,
//! speculative decoding.
//!
//! The output is binned on a regular grid: time-averaged running and waiting requests, and the
//! prefill and decode tokens of the steps whose midpoint falls in each bin.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::prefix_cache::{KvCacheConfig, PrefixCache};
use crate::sources::measured::RunManifest;
use crate::workload::Workload;

/// How a replica is served (the `SERVING.json` of `synthesize`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServingConfig {
    /// Hugging Face model id, e.g. `Qwen/Qwen3-8B`.
    pub model: String,
    /// GPU model, e.g. `A100`.
    pub hardware: String,
    /// Tensor-parallel degree: GPUs of one replica.
    pub tp: u32,
    pub max_num_seqs: u32,
    pub max_num_batched_tokens: u32,
    pub enable_chunked_prefill: bool,
    pub enable_prefix_caching: bool,
}

impl ServingConfig {
    /// The serving settings recorded in a measured run's manifest.
    pub fn from_manifest(m: &RunManifest) -> Self {
        Self {
            model: m.model.clone(),
            hardware: m.hardware.clone(),
            tp: m.tp,
            max_num_seqs: m.server.max_num_seqs,
            max_num_batched_tokens: m.server.max_num_batched_tokens,
            enable_chunked_prefill: m.server.enable_chunked_prefill,
            enable_prefix_caching: m.server.enable_prefix_caching,
        }
    }

    /// Reads and checks a `SERVING.json` (docs/serving.md), or a measured run's
    /// `manifest.json` (its model, hardware, tp and `server` settings).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let json = |source| Error::Json {
            path: path.to_path_buf(),
            source,
        };
        let value: serde_json::Value = serde_json::from_str(&text).map_err(json)?;
        let cfg: Self = if value.get("server").is_some() && value.get("clock").is_some() {
            let m: RunManifest = serde_json::from_value(value).map_err(json)?;
            Self::from_manifest(&m)
        } else {
            serde_json::from_value(value).map_err(json)?
        };
        cfg.validate()
            .map_err(|e| Error::content(path, e.to_string()))?;
        Ok(cfg)
    }

    /// Checks the settings a simulation relies on.
    pub fn validate(&self) -> Result<()> {
        if self.tp == 0 {
            return Err(Error::config("tp", "0 (need ≥ 1)"));
        }
        if self.max_num_seqs == 0 {
            return Err(Error::config("max_num_seqs", "0 (need ≥ 1)"));
        }
        if self.max_num_batched_tokens < self.max_num_seqs {
            return Err(Error::config(
                "max_num_batched_tokens",
                format!(
                    "{} is below max_num_seqs = {}: decode steps would not fit the budget",
                    self.max_num_batched_tokens, self.max_num_seqs
                ),
            ));
        }
        Ok(())
    }

    /// The configuration key synthesis models are learned for: model × GPU × TP.
    pub fn configuration(&self) -> String {
        format!("{} × {} × TP{}", self.model, self.hardware, self.tp)
    }
}

/// Duration of one engine step as a linear function of what it scheduled, learned from
/// measured runs ([`crate::learn`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepTiming {
    /// Fixed cost of a step (scheduling, weights read once per step) (s).
    pub base_s: f64,
    /// Per request decoding in the step (s).
    pub per_decode_seq_s: f64,
    /// Per prompt token prefilled in the step (s).
    pub per_prefill_token_s: f64,
    /// Per 1,000 tokens of context held by the scheduled requests (attention reads) (s).
    pub per_context_ktoken_s: f64,
    /// Per prompt token prefilled, per 1,000 tokens of its request's context before it
    /// (prefill attention grows with the prompt's position: a 12k-token prompt costs more
    /// than twelve 1k ones) (s). Absent in models written before it: 0.
    #[serde(default)]
    pub per_prefill_attention_s: f64,
    /// Extra time of a run's first step (s): the first requests a freshly started server
    /// answers wait for its warm-up (clocks up from idle, kernels loaded and tuned for their
    /// first shapes). The A100 runs' first bursts are 0.1–0.4 s slower than their later ones.
    /// Absent in models written before it: 0.
    #[serde(default)]
    pub first_step_s: f64,
}

impl StepTiming {
    /// Duration (s) of a step with `decode_seqs` decodes, `prefill_tokens` prompt tokens,
    /// `context_tokens` of context over its requests and `prefill_attention_ktokens` = Σ over
    /// its prefill chunks of chunk × (tokens before the chunk + chunk / 2) / 1000.
    #[inline]
    pub fn step_s(
        &self,
        decode_seqs: u32,
        prefill_tokens: u32,
        context_tokens: u64,
        prefill_attention_ktokens: f64,
    ) -> f64 {
        self.base_s
            + self.per_decode_seq_s * decode_seqs as f64
            + self.prefill_s(prefill_tokens, prefill_attention_ktokens)
            + self.per_context_ktoken_s * context_tokens as f64 * 1e-3
    }

    /// The part of a step's duration that its prompt tokens add (s).
    #[inline]
    pub fn prefill_s(&self, prefill_tokens: u32, prefill_attention_ktokens: f64) -> f64 {
        self.per_prefill_token_s * prefill_tokens as f64
            + self.per_prefill_attention_s * prefill_attention_ktokens
    }

    /// Rejects timings that would stall the simulation (non-positive step times).
    pub fn validate(&self) -> Result<()> {
        let all = [
            self.base_s,
            self.per_decode_seq_s,
            self.per_prefill_token_s,
            self.per_context_ktoken_s,
            self.per_prefill_attention_s,
            self.first_step_s,
        ];
        if !(self.base_s > 0.0) || all.iter().any(|v| !v.is_finite() || *v < 0.0) {
            return Err(Error::config(
                "step timing",
                format!("{self:?} (need base_s > 0, every coefficient ≥ 0)"),
            ));
        }
        Ok(())
    }
}

/// Memory a synthesis holds per bin (the engine trace's series, the fine power series and its
/// draws): about 16 f64 values.
const BYTES_PER_BIN: usize = 128;

/// The largest grid a synthesis builds: 50 M bins (≈ 6 GB; 145 days at 0.25 s), or
/// `POWERSYNTH_MAX_BINS`.
fn max_bins() -> usize {
    std::env::var("POWERSYNTH_MAX_BINS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000_000)
}

/// The regular grid the engine trace is binned on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BinGrid {
    /// Start of bin 0 (s, same clock as the workload's arrivals).
    pub t0_s: f64,
    pub dt_s: f64,
    pub bins: usize,
}

impl BinGrid {
    /// A grid covering `duration_s` from `t0_s` (ceil(duration / dt) bins).
    pub fn new(t0_s: f64, duration_s: f64, dt_s: f64) -> Result<Self> {
        if !(dt_s > 0.0 && dt_s.is_finite()) {
            return Err(Error::config("dt_s", format!("{dt_s} (need > 0)")));
        }
        if !(duration_s > 0.0 && duration_s.is_finite()) {
            return Err(Error::config(
                "duration_s",
                format!("{duration_s} (need > 0)"),
            ));
        }
        if !t0_s.is_finite() {
            return Err(Error::config("t0_s", format!("{t0_s}")));
        }
        // Every bin's start must be a distinct float: t0 + dt − t0 = dt to 1 ppm.
        let end = t0_s + duration_s;
        if ((t0_s + dt_s) - t0_s - dt_s).abs() > 1e-6 * dt_s
            || (end - t0_s - duration_s).abs() > 1e-6 * duration_s
        {
            return Err(Error::config(
                "t0_s",
                format!(
                    "{t0_s} s is too large for bins of {dt_s} s (times would not be distinct \
                     floats): give t0 in unix seconds or seconds since a start"
                ),
            ));
        }
        let bins = (duration_s / dt_s - 1e-9).ceil().max(1.0);
        let max = max_bins();
        if bins > max as f64 {
            return Err(Error::config(
                "duration_s / dt_s",
                format!(
                    "{duration_s} s at {dt_s} s is {bins:.3e} bins, over the limit of {max} \
                     (about {} GB of engine and power series): shorten the duration, widen the \
                     step or split the window (raise the limit with POWERSYNTH_MAX_BINS)",
                    max * BYTES_PER_BIN / 1_000_000_000
                ),
            ));
        }
        Ok(Self {
            t0_s,
            dt_s,
            bins: bins as usize,
        })
    }

    /// Start time of bin `i`.
    pub fn t_s(&self, i: usize) -> f64 {
        self.t0_s + i as f64 * self.dt_s
    }

    fn end_s(&self) -> f64 {
        self.t_s(self.bins)
    }
}

/// What the engine did in each bin.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineTrace {
    pub grid: BinGrid,
    /// Time-averaged running requests as vLLM's `num_requests_running` gauge shows them: the
    /// gauge is updated when a step completes, so a request counts from the end of its first
    /// step (not from its admission) until the step that finishes it. On short bursts this
    /// matters: ten 250-token prompts prefilled in one 0.1 s step are invisible to the gauge
    /// during that step.
    pub running: Vec<f64>,
    /// Time-averaged requests arrived and not yet admitted.
    pub waiting: Vec<f64>,
    /// Prompt tokens processed by steps whose midpoint is in the bin.
    pub prefill_tokens: Vec<f64>,
    /// Output tokens produced by steps whose midpoint is in the bin.
    pub decode_tokens: Vec<f64>,
    /// Time-averaged context (prompt + generated tokens) held by the running requests.
    pub context_tokens: Vec<f64>,
    /// Prompt tokens served from the prefix cache by requests admitted in the bin.
    pub cached_tokens: Vec<f64>,
    /// Share of the bin the engine spends stepping (0 idle … 1 busy throughout).
    pub busy: Vec<f64>,
    /// Share of the bin spent on prompt tokens ([`StepTiming::prefill_s`] of each step,
    /// spread over the step).
    pub prefill_busy: Vec<f64>,
}

impl EngineTrace {
    /// An engine that does nothing over `grid` (every bin idle).
    pub fn zeros(grid: BinGrid) -> Self {
        let z = vec![0.0; grid.bins];
        Self {
            grid,
            running: z.clone(),
            waiting: z.clone(),
            prefill_tokens: z.clone(),
            decode_tokens: z.clone(),
            context_tokens: z.clone(),
            cached_tokens: z.clone(),
            busy: z.clone(),
            prefill_busy: z,
        }
    }
}

/// When each request was admitted, produced its first token and finished (s); NaN if the
/// simulation window ended first.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestOutcome {
    /// When it arrived: its `arrival_s`, or for a closed-loop follow-up the finish of the
    /// turn it follows plus its think time (NaN if that never came).
    pub arrival_s: f64,
    pub admitted_s: f64,
    /// End of its first step: when the running gauge starts counting it.
    pub counted_s: f64,
    pub first_token_s: f64,
    pub finished_s: f64,
    /// Prompt tokens served from the prefix cache (0 when not admitted).
    pub cached_tokens: u32,
}

/// Engine trace plus per-request outcomes.
#[derive(Debug, Clone, PartialEq)]
pub struct Simulation {
    pub trace: EngineTrace,
    pub outcomes: Vec<RequestOutcome>,
}

/// Adds 1 per second of the interval [a, b) to the bins it overlaps (divided by dt).
fn add_interval(series: &mut [f64], grid: &BinGrid, a: f64, b: f64) {
    add_interval_weighted(series, grid, a, b, 1.0)
}

/// Adds `weight` per second of the interval [a, b) to the bins it overlaps (divided by dt).
fn add_interval_weighted(series: &mut [f64], grid: &BinGrid, a: f64, b: f64, weight: f64) {
    let (a, b) = (a.max(grid.t0_s), b.min(grid.end_s()));
    if !(b > a) {
        return;
    }
    let first = ((a - grid.t0_s) / grid.dt_s).floor() as usize;
    let last = (((b - grid.t0_s) / grid.dt_s).ceil() as usize).min(series.len());
    for (i, slot) in series.iter_mut().enumerate().take(last).skip(first) {
        let lo = grid.t_s(i).max(a);
        let hi = grid.t_s(i + 1).min(b);
        if hi > lo {
            *slot += weight * (hi - lo) / grid.dt_s;
        }
    }
}

fn add_at(series: &mut [f64], grid: &BinGrid, t: f64, v: f64) {
    if t >= grid.t0_s {
        let i = ((t - grid.t0_s) / grid.dt_s).floor() as usize;
        if let Some(slot) = series.get_mut(i) {
            *slot += v;
        }
    }
}

struct Prefilling {
    idx: usize,
    done_tokens: u32,
}

/// A time as a heap key (total order).
#[derive(Debug, Clone, Copy, PartialEq)]
struct TimeKey(f64);
impl Eq for TimeKey {}
impl PartialOrd for TimeKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for TimeKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Requests not yet arrived: open-loop ones at their `arrival_s`, and closed-loop follow-ups
/// ([`crate::workload::Request::follows`]) released when the turn they follow finishes, after
/// their think time. A follow-up whose turn never finishes never arrives.
struct Arrivals {
    upcoming: BinaryHeap<Reverse<(TimeKey, usize)>>,
    followers: std::collections::HashMap<usize, Vec<usize>>,
    /// When each request arrived (NaN until it does).
    arrival_s: Vec<f64>,
}

impl Arrivals {
    fn new(reqs: &[crate::workload::Request]) -> Self {
        let mut upcoming = BinaryHeap::new();
        let mut followers: std::collections::HashMap<usize, Vec<usize>> = Default::default();
        for (i, r) in reqs.iter().enumerate() {
            match r.follows {
                Some(p) => followers.entry(p as usize).or_default().push(i),
                None => upcoming.push(Reverse((TimeKey(r.arrival_s), i))),
            }
        }
        Self {
            upcoming,
            followers,
            arrival_s: reqs
                .iter()
                .map(|r| {
                    if r.follows.is_some() {
                        f64::NAN
                    } else {
                        r.arrival_s
                    }
                })
                .collect(),
        }
    }

    fn next_s(&self) -> Option<f64> {
        self.upcoming.peek().map(|Reverse((t, _))| t.0)
    }

    /// Moves every request arrived by `t_s` to `waiting`, in arrival order.
    fn arrive_until(&mut self, t_s: f64, waiting: &mut VecDeque<usize>) {
        while let Some(&Reverse((at, idx))) = self.upcoming.peek() {
            if at.0 > t_s {
                break;
            }
            self.upcoming.pop();
            waiting.push_back(idx);
        }
    }

    /// Request `idx` finished at `t_s`: its follow-ups arrive after their think time.
    fn finished(&mut self, idx: usize, t_s: f64, reqs: &[crate::workload::Request]) {
        if let Some(next) = self.followers.remove(&idx) {
            for k in next {
                let at = t_s + reqs[k].think_s.max(0.0);
                self.arrival_s[k] = at;
                self.upcoming.push(Reverse((TimeKey(at), k)));
            }
        }
    }

    /// Requests arrived by the end but never admitted (their wait runs to the end).
    fn left(&self) -> impl Iterator<Item = usize> + '_ {
        self.upcoming.iter().map(|Reverse((_, i))| *i)
    }
}

/// Simulates `workload` on one replica served with `serving`, step times `timing` and a KV
/// cache `kv` (its prefix cache on when `serving.enable_prefix_caching`), binned on `grid`.
/// Requests arriving before the grid are simulated too (their tail shows in the first bins);
/// the simulation stops at the grid's end.
pub fn simulate(
    workload: &Workload,
    serving: &ServingConfig,
    timing: &StepTiming,
    kv: &KvCacheConfig,
    grid: BinGrid,
) -> Result<Simulation> {
    serving.validate()?;
    timing.validate()?;
    check_workload(&workload.requests, serving)?;
    let mut engine = Engine::new(&workload.requests, serving, timing, kv, grid);
    engine.run();
    Ok(engine.close_window())
}

/// Refuses a workload the engine cannot serve: a closed-loop follow-up listed before the turn
/// it follows or with a non-finite think time, or (without chunked prefill) a prompt larger
/// than the token budget of a batch.
fn check_workload(reqs: &[crate::workload::Request], serving: &ServingConfig) -> Result<()> {
    if let Some((i, r)) = reqs
        .iter()
        .enumerate()
        .find(|(i, r)| r.follows.is_some_and(|p| p as usize >= *i) || !r.think_s.is_finite())
    {
        return Err(Error::config(
            "workload",
            format!(
                "request {i} follows request {:?} with think time {} s (a follow-up must come \
                 after the turn it follows, with a finite think time)",
                r.follows, r.think_s
            ),
        ));
    }
    if !serving.enable_chunked_prefill {
        if let Some((i, r)) = reqs
            .iter()
            .enumerate()
            .find(|(_, r)| r.input_tokens > serving.max_num_batched_tokens)
        {
            return Err(Error::config(
                "workload",
                format!(
                    "request {i} has {} prompt tokens, more than max_num_batched_tokens = {} \
                     without chunked prefill (vLLM rejects it)",
                    r.input_tokens, serving.max_num_batched_tokens
                ),
            ));
        }
    }
    Ok(())
}

/// What one engine step scheduled.
struct StepPlan {
    /// Running requests past their prefill: one decode token each.
    decode_seqs: u32,
    /// Prompt tokens prefilled in the step (sum of `chunks`).
    prefill_tokens: u32,
    /// Prefill chunks: (index into `Engine::prefilling`, tokens).
    chunks: Vec<(usize, u32)>,
    /// Requests admitted from the queue in this step.
    admitted: Vec<usize>,
    /// Token budget of the batch not yet used.
    budget_left: u32,
}

/// The state of the continuous-batching loop of [`simulate`]: the queue, the requests in
/// prefill and in decode, the context their KV cache holds, and the binned trace so far.
struct Engine<'a> {
    reqs: &'a [crate::workload::Request],
    serving: &'a ServingConfig,
    timing: &'a StepTiming,
    grid: BinGrid,
    end_s: f64,
    trace: EngineTrace,
    outcomes: Vec<RequestOutcome>,
    cache: PrefixCache,
    arrivals: Arrivals,
    /// Arrived requests not yet admitted, in arrival order.
    waiting: VecDeque<usize>,
    /// Admitted requests whose prompt is not fully prefilled, in admission order.
    prefilling: Vec<Prefilling>,
    /// Decoding requests: (decode step at which the request finishes, request index).
    decoding: BinaryHeap<Reverse<(u64, usize)>>,
    /// Steps that decoded at least one request so far.
    decode_steps: u64,
    /// Context (prompt + generated tokens) held by the running requests.
    context_tokens: u64,
    /// Whether the run's first step (with [`StepTiming::first_step_s`]) is behind.
    warmed_up: bool,
}

impl<'a> Engine<'a> {
    /// An idle engine before the first arrival: empty queue and batch, every outcome NaN.
    fn new(
        reqs: &'a [crate::workload::Request],
        serving: &'a ServingConfig,
        timing: &'a StepTiming,
        kv: &KvCacheConfig,
        grid: BinGrid,
    ) -> Self {
        let nan = f64::NAN;
        let outcomes = vec![
            RequestOutcome {
                arrival_s: nan,
                admitted_s: nan,
                counted_s: nan,
                first_token_s: nan,
                finished_s: nan,
                cached_tokens: 0,
            };
            reqs.len()
        ];
        Self {
            reqs,
            serving,
            timing,
            grid,
            end_s: grid.end_s(),
            trace: EngineTrace::zeros(grid),
            outcomes,
            cache: PrefixCache::new(serving.enable_prefix_caching, *kv),
            arrivals: Arrivals::new(reqs),
            waiting: VecDeque::new(),
            prefilling: Vec::new(),
            decoding: BinaryHeap::new(),
            decode_steps: 0,
            context_tokens: 0,
            warmed_up: false,
        }
    }

    /// Runs engine steps back to back from the first arrival to the grid's end, skipping
    /// idle time to the next arrival when nothing waits, prefills or decodes.
    fn run(&mut self) {
        let mut t = self.arrivals.next_s().unwrap_or(self.end_s);
        while t < self.end_s {
            self.arrivals.arrive_until(t, &mut self.waiting);
            if self.waiting.is_empty() && self.prefilling.is_empty() && self.decoding.is_empty() {
                match self.arrivals.next_s() {
                    Some(next) => {
                        t = next;
                        continue;
                    }
                    None => break,
                }
            }
            let plan = self.schedule_step(t);
            let (t_end, mid) = self.time_and_bin_step(t, &plan);
            self.apply_step(&plan, t_end, mid);
            t = t_end;
        }
    }

    /// Schedules one step at `t` within the batch's token budget: a decode token for every
    /// decoding request, then the next prefill chunks, then admissions from the queue.
    fn schedule_step(&mut self, t: f64) -> StepPlan {
        let decode_seqs = self.decoding.len() as u32;
        let mut plan = StepPlan {
            decode_seqs,
            prefill_tokens: 0,
            chunks: Vec::new(),
            admitted: Vec::new(),
            budget_left: self
                .serving
                .max_num_batched_tokens
                .saturating_sub(decode_seqs),
        };
        self.schedule_prefill_chunks(&mut plan);
        self.admit_waiting(t, &mut plan);
        plan
    }

    /// Gives the running requests whose prompt is only partly prefilled their next chunk,
    /// in admission order, while budget is left.
    fn schedule_prefill_chunks(&self, plan: &mut StepPlan) {
        for (k, p) in self.prefilling.iter().enumerate() {
            if plan.budget_left == 0 {
                break;
            }
            let rest = self.reqs[p.idx].input_tokens - p.done_tokens;
            let chunk = rest.min(plan.budget_left);
            plan.chunks.push((k, chunk));
            plan.budget_left -= chunk;
            plan.prefill_tokens += chunk;
        }
    }

    /// Admits waiting requests in arrival order at `t` while fewer than `max_num_seqs` run
    /// and budget is left (without chunked prefill, only a prompt that fits whole): each one
    /// takes its prefix-cache hit and a first prefill chunk of the rest of its prompt.
    fn admit_waiting(&mut self, t: f64, plan: &mut StepPlan) {
        let reqs = self.reqs;
        let max_seqs = self.serving.max_num_seqs as usize;
        while plan.budget_left > 0 && self.prefilling.len() + self.decoding.len() < max_seqs {
            let Some(&idx) = self.waiting.front() else {
                break;
            };
            let need = reqs[idx].input_tokens;
            if !self.serving.enable_chunked_prefill && need > plan.budget_left {
                break;
            }
            self.waiting.pop_front();
            self.outcomes[idx].admitted_s = t;
            plan.admitted.push(idx);
            let arrived = self.arrivals.arrival_s[idx];
            add_interval(&mut self.trace.waiting, &self.grid, arrived, t);
            let hit = self.cache.admit(&reqs[idx], t);
            self.outcomes[idx].cached_tokens = hit;
            add_at(&mut self.trace.cached_tokens, &self.grid, t, hit as f64);
            self.context_tokens += hit as u64;
            let need = need - hit;
            let chunk = need.min(plan.budget_left);
            self.prefilling.push(Prefilling {
                idx,
                done_tokens: hit,
            });
            plan.chunks.push((self.prefilling.len() - 1, chunk));
            plan.budget_left -= chunk;
            plan.prefill_tokens += chunk;
        }
    }

    /// Times the step scheduled at `t` ([`StepTiming::step_s`] of its decodes, prefill
    /// tokens, context and prefill attention) and bins what it does over its span: busy and
    /// prefill-busy shares, context held, and its prompt tokens at its midpoint. Returns the
    /// step's end and midpoint (s).
    fn time_and_bin_step(&mut self, t: f64, plan: &StepPlan) -> (f64, f64) {
        let grid = &self.grid;
        let trace = &mut self.trace;
        let step_context = self.context_tokens + plan.prefill_tokens as u64;
        let attention_ktokens: f64 = plan
            .chunks
            .iter()
            .map(|&(k, c)| {
                c as f64 * (self.prefilling[k].done_tokens as f64 + 0.5 * c as f64) * 1e-3
            })
            .sum();
        let mut dur = self.timing.step_s(
            plan.decode_seqs,
            plan.prefill_tokens,
            step_context,
            attention_ktokens,
        );
        if !self.warmed_up {
            self.warmed_up = true;
            dur += self.timing.first_step_s;
        }
        let t_end = t + dur;
        let mid = t + 0.5 * dur;
        add_at(
            &mut trace.prefill_tokens,
            grid,
            mid,
            plan.prefill_tokens as f64,
        );
        add_interval(&mut trace.busy, grid, t, t_end);
        let prefill_share = self
            .timing
            .prefill_s(plan.prefill_tokens, attention_ktokens)
            / dur;
        add_interval_weighted(&mut trace.prefill_busy, grid, t, t_end, prefill_share);
        add_interval_weighted(
            &mut trace.context_tokens,
            grid,
            t,
            t_end,
            step_context as f64,
        );
        (t_end, mid)
    }

    /// Applies the step that ends at `t_end`: its admissions start counting in the running
    /// gauge, the KV cache grows by the tokens it processed, finished decodes leave,
    /// completed prefills yield their first token, and its output tokens are binned at its
    /// midpoint `mid`; the prefix cache then evicts free blocks until the running requests'
    /// context and the cached blocks fit the KV cache.
    fn apply_step(&mut self, plan: &StepPlan, t_end: f64, mid: f64) {
        for &idx in &plan.admitted {
            self.outcomes[idx].counted_s = t_end;
        }
        let mut produced = plan.decode_seqs as u64;
        self.context_tokens += plan.decode_seqs as u64 + plan.prefill_tokens as u64;
        if plan.decode_seqs > 0 {
            self.decode_steps += 1;
            self.finish_decodes(t_end);
        }
        produced += self.advance_prefills(&plan.chunks, t_end);
        add_at(
            &mut self.trace.decode_tokens,
            &self.grid,
            mid,
            produced as f64,
        );
        self.cache.evict_to_fit(self.context_tokens);
    }

    /// Removes the decoding requests whose last token came in the decode step just counted:
    /// they finish at `t_end`.
    fn finish_decodes(&mut self, t_end: f64) {
        while let Some(&Reverse((finish, idx))) = self.decoding.peek() {
            if finish > self.decode_steps {
                break;
            }
            self.decoding.pop();
            self.finish(idx, t_end);
        }
    }

    /// Adds this step's prefill chunks to their requests; a request whose prompt is now
    /// prefilled yields its first token at `t_end` and either finishes (one output token)
    /// or moves to decode. Returns the first tokens produced.
    fn advance_prefills(&mut self, chunks: &[(usize, u32)], t_end: f64) -> u64 {
        let reqs = self.reqs;
        let mut completed: Vec<usize> = Vec::new();
        for &(k, chunk) in chunks {
            let p = &mut self.prefilling[k];
            p.done_tokens += chunk;
            if p.done_tokens == reqs[p.idx].input_tokens {
                completed.push(k);
            }
        }
        // Remove completed prefills (highest index first keeps the others' positions valid).
        completed.sort_unstable_by(|a, b| b.cmp(a));
        let mut produced = 0;
        for k in completed {
            let idx = self.prefilling.remove(k).idx;
            produced += 1;
            self.context_tokens += 1;
            self.outcomes[idx].first_token_s = t_end;
            self.cache.prefilled(&reqs[idx], t_end);
            let out = reqs[idx].output_tokens;
            if out <= 1 {
                self.finish(idx, t_end);
            } else {
                self.decoding
                    .push(Reverse((self.decode_steps + (out - 1) as u64, idx)));
            }
        }
        produced
    }

    /// Request `idx` finishes at `t_end`: its session's KV cache blocks become free (but
    /// stay cached), its follow-up turns are released, its running interval is binned and
    /// its context leaves the batch.
    fn finish(&mut self, idx: usize, t_end: f64) {
        let reqs = self.reqs;
        let r = &reqs[idx];
        self.outcomes[idx].finished_s = t_end;
        self.cache.finished(r, t_end);
        self.arrivals.finished(idx, t_end, reqs);
        let counted = self.outcomes[idx].counted_s;
        add_interval(&mut self.trace.running, &self.grid, counted, t_end);
        self.context_tokens -= (r.input_tokens + r.output_tokens) as u64;
    }

    /// Ends the window: requests still running count to the grid's end, requests still
    /// waiting (or arrived and never admitted) wait to the end, and every outcome gets its
    /// arrival time.
    fn close_window(self) -> Simulation {
        let Self {
            grid,
            end_s,
            mut trace,
            mut outcomes,
            arrivals,
            waiting,
            ..
        } = self;
        for o in &outcomes {
            if o.admitted_s.is_finite() && o.finished_s.is_nan() {
                add_interval(&mut trace.running, &grid, o.counted_s, end_s);
            }
        }
        for idx in waiting.iter().copied().chain(arrivals.left()) {
            add_interval(&mut trace.waiting, &grid, arrivals.arrival_s[idx], end_s);
        }
        for (o, &a) in outcomes.iter_mut().zip(&arrivals.arrival_s) {
            o.arrival_s = a;
        }
        Simulation { trace, outcomes }
    }
}

/// vLLM's `num_requests_running` gauge at each of `times_s` (sorted ascending): the requests
/// with `counted_s ≤ t < finished_s` (unfinished ones count to the end).
pub fn running_gauge_at(outcomes: &[RequestOutcome], times_s: &[f64]) -> Vec<f64> {
    let mut starts: Vec<f64> = outcomes
        .iter()
        .map(|o| o.counted_s)
        .filter(|t| t.is_finite())
        .collect();
    let mut ends: Vec<f64> = outcomes
        .iter()
        .filter(|o| o.counted_s.is_finite() && o.finished_s.is_finite())
        .map(|o| o.finished_s)
        .collect();
    starts.sort_by(f64::total_cmp);
    ends.sort_by(f64::total_cmp);
    let (mut i, mut j) = (0, 0);
    times_s
        .iter()
        .map(|&t| {
            while i < starts.len() && starts[i] <= t {
                i += 1;
            }
            while j < ends.len() && ends[j] <= t {
                j += 1;
            }
            (i - j) as f64
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn serving_settings_from_a_serving_json_or_a_run_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let serving = dir.path().join("serving.json");
        std::fs::write(
            &serving,
            r#"{"model": "m", "hardware": "H100", "tp": 2, "max_num_seqs": 64,
                "max_num_batched_tokens": 4096, "enable_chunked_prefill": true,
                "enable_prefix_caching": true}"#,
        )
        .unwrap();
        let a = ServingConfig::from_file(&serving).unwrap();
        let manifest = dir.path().join("manifest.json");
        std::fs::write(
            &manifest,
            r#"{"model": "m", "hardware": "H100", "tp": 2,
                "server": {"max_num_seqs": 64, "max_num_batched_tokens": 4096,
                           "enable_chunked_prefill": true, "enable_prefix_caching": true},
                "clock": {"local_utc_offset_s": 0.0}}"#,
        )
        .unwrap();
        assert_eq!(ServingConfig::from_file(&manifest).unwrap(), a);
        std::fs::write(&serving, r#"{"model": "m"}"#).unwrap();
        let e = ServingConfig::from_file(&serving).unwrap_err().to_string();
        assert!(e.contains("serving.json") && e.contains("hardware"), "{e}");
    }

    use super::*;

    #[test]
    fn grids_refuse_indistinct_times_and_unbounded_sizes() {
        assert_eq!(BinGrid::new(1.78e9, 60.0, 0.25).unwrap().bins, 240);
        let e = BinGrid::new(1e16, 60.0, 0.25).unwrap_err().to_string();
        assert!(e.contains("too large"), "{e}");
        let e = BinGrid::new(0.0, 1e12, 0.25).unwrap_err().to_string();
        assert!(e.contains("bins, over the limit"), "{e}");
        let e = serde_json::from_str::<ServingConfig>(
            r#"{"model": "m", "hardware": "A100", "tp": 1, "max_num_seqs": 8,
                "max_num_batched_tokens": 8192, "enable_chunked_prefill": true,
                "enable_prefix_caching": false, "enable_prefix_cachng": true}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("enable_prefix_cachng"), "{e}");
    }
    use crate::workload::Request;

    fn serving(max_num_seqs: u32, budget: u32) -> ServingConfig {
        ServingConfig {
            model: "m".into(),
            hardware: "A100".into(),
            tp: 1,
            max_num_seqs,
            max_num_batched_tokens: budget,
            enable_chunked_prefill: true,
            enable_prefix_caching: false,
        }
    }

    // 10 ms per step, 1 ms per decode, 0.01 ms per prompt token, no context term.
    const TIMING: StepTiming = StepTiming {
        base_s: 0.010,
        per_decode_seq_s: 0.001,
        per_prefill_token_s: 0.000_01,
        per_context_ktoken_s: 0.0,
        per_prefill_attention_s: 0.0,
        first_step_s: 0.0,
    };

    fn req(t: f64, i: u32, o: u32) -> Request {
        Request::new(t, i, o)
    }

    fn run(w: &Workload, s: &ServingConfig, grid: BinGrid) -> Result<Simulation> {
        simulate(w, s, &TIMING, &KvCacheConfig::default(), grid)
    }

    #[test]
    fn first_step_pays_the_warm_up_once() {
        // Two requests 1 s apart on an idle engine: the first one's prefill step (20 ms) takes
        // 0.3 s more; the second one, after the engine went idle, does not.
        let w = Workload {
            session_names: vec![],
            requests: vec![req(1.0, 1000, 1), req(2.0, 1000, 1)],
        };
        let grid = BinGrid::new(0.0, 3.0, 0.25).unwrap();
        let warm = StepTiming {
            first_step_s: 0.3,
            ..TIMING
        };
        let sim = simulate(
            &w,
            &serving(8, 2048),
            &warm,
            &KvCacheConfig::default(),
            grid,
        )
        .unwrap();
        let ttft = |k: usize| sim.outcomes[k].first_token_s - sim.outcomes[k].arrival_s;
        assert!((ttft(0) - 0.320).abs() < 1e-12, "{:?}", sim.outcomes[0]);
        assert!((ttft(1) - 0.020).abs() < 1e-12, "{:?}", sim.outcomes[1]);
        // The warm-up is busy time: bin 4 = [1.0, 1.25) is busy throughout.
        assert!((sim.trace.busy[4] - 1.0).abs() < 1e-9);
        let bad = StepTiming {
            first_step_s: -0.1,
            ..TIMING
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn one_request_by_hand() {
        // Prefill 1000 tokens: 10 + 10 = 20 ms, first token at 1.020. Then 4 decode steps of
        // 11 ms each: finished at 1.064.
        let w = Workload {
            session_names: vec![],
            requests: vec![req(1.0, 1000, 5)],
        };
        let grid = BinGrid::new(0.0, 2.0, 0.25).unwrap();
        let sim = run(&w, &serving(8, 2048), grid).unwrap();
        let o = sim.outcomes[0];
        assert!((o.admitted_s - 1.0).abs() < 1e-12);
        assert!((o.first_token_s - 1.020).abs() < 1e-12, "{o:?}");
        assert!((o.finished_s - 1.064).abs() < 1e-12, "{o:?}");
        // Counted by the running gauge from the end of its first step (1.020) to 1.064: 44 ms
        // inside bin 4 = [1.0, 1.25); busy for all 64 ms, 20 of them on the prompt's tokens.
        assert!((sim.trace.running[4] - 0.044 / 0.25).abs() < 1e-9);
        assert!((sim.trace.busy[4] - 0.064 / 0.25).abs() < 1e-9);
        assert!((sim.trace.prefill_busy[4] - 0.010 / 0.25).abs() < 1e-9);
        assert_eq!(sim.trace.running.iter().filter(|v| **v > 0.0).count(), 1);
        assert_eq!(sim.trace.prefill_tokens.iter().sum::<f64>(), 1000.0);
        assert_eq!(sim.trace.decode_tokens.iter().sum::<f64>(), 5.0);
        assert_eq!(sim.trace.waiting.iter().sum::<f64>(), 0.0);
    }

    #[test]
    fn gauge_counts_from_the_end_of_the_first_step() {
        let w = Workload {
            session_names: vec![],
            requests: vec![req(1.0, 1000, 5)],
        };
        let grid = BinGrid::new(0.0, 2.0, 0.25).unwrap();
        let sim = run(&w, &serving(8, 2048), grid).unwrap();
        // First step 1.000–1.020, finished at 1.064.
        let g = running_gauge_at(&sim.outcomes, &[1.01, 1.02, 1.05, 1.064, 1.5]);
        assert_eq!(g, vec![0.0, 1.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn a_second_turn_prefills_only_what_the_cache_lacks() {
        // Turn 0: 1000 prompt tokens; turn 1 of the same session 1500 tokens, after turn 0
        // finished: 992 tokens (62 full blocks) come from the cache, 508 are prefilled.
        let turn = |t: f64, input: u32| Request {
            session: Some(0),
            ..req(t, input, 3)
        };
        let w = Workload {
            session_names: vec!["s".into()],
            requests: vec![turn(0.0, 1000), turn(1.0, 1500)],
        };
        let grid = BinGrid::new(0.0, 2.0, 0.25).unwrap();
        let mut on = serving(8, 2048);
        on.enable_prefix_caching = true;
        let sim = run(&w, &on, grid).unwrap();
        assert_eq!(sim.outcomes[1].cached_tokens, 992);
        assert_eq!(sim.trace.cached_tokens.iter().sum::<f64>(), 992.0);
        assert_eq!(sim.trace.prefill_tokens.iter().sum::<f64>(), 1000.0 + 508.0);
        // Its first step: 10 ms + 508 × 0.01 ms; the cached tokens still count in its context.
        let o = sim.outcomes[1];
        assert!((o.first_token_s - o.admitted_s - (0.010 + 508.0 * 0.000_01)).abs() < 1e-12);
        // Cache off: the whole prompt again, no hits.
        let off = run(&w, &serving(8, 2048), grid).unwrap();
        assert_eq!(off.outcomes[1].cached_tokens, 0);
        assert_eq!(off.trace.prefill_tokens.iter().sum::<f64>(), 2500.0);
    }

    #[test]
    fn a_closed_loop_turn_is_sent_after_the_answer_and_the_think_time() {
        // Turn 1 follows turn 0 with 0.5 s of thinking: it arrives at turn 0's finish + 0.5,
        // whatever its own arrival_s says; a follow-up of a request that never finishes
        // never arrives.
        let w = Workload {
            session_names: vec![],
            requests: vec![
                req(1.0, 1000, 5),
                Request {
                    follows: Some(0),
                    think_s: 0.5,
                    ..req(0.0, 100, 2)
                },
                req(3.0, 10, 10_000),
                Request {
                    follows: Some(2),
                    ..req(0.0, 10, 2)
                },
            ],
        };
        let grid = BinGrid::new(0.0, 4.0, 0.25).unwrap();
        let sim = run(&w, &serving(8, 2048), grid).unwrap();
        let (a, b) = (sim.outcomes[0], sim.outcomes[1]);
        assert!((a.finished_s - 1.064).abs() < 1e-12, "{a:?}");
        assert!((b.arrival_s - 1.564).abs() < 1e-12, "{b:?}");
        assert!((b.admitted_s - 1.564).abs() < 1e-12, "{b:?}");
        assert!(sim.outcomes[3].arrival_s.is_nan() && sim.outcomes[3].admitted_s.is_nan());
        // A follow-up listed before the turn it follows is refused.
        let bad = Workload {
            session_names: vec![],
            requests: vec![Request {
                follows: Some(0),
                ..req(0.0, 10, 2)
            }],
        };
        let e = run(&bad, &serving(8, 2048), grid).unwrap_err().to_string();
        assert!(e.contains("request 0 follows request Some(0)"), "{e}");
    }

    #[test]
    fn two_overlapping_requests_share_steps() {
        // A at 0 (100 tokens in, 3 out), B at 0.012 (joins at A's second step).
        let w = Workload {
            session_names: vec![],
            requests: vec![req(0.0, 100, 3), req(0.012, 200, 2)],
        };
        let grid = BinGrid::new(0.0, 1.0, 0.25).unwrap();
        let sim = run(&w, &serving(8, 2048), grid).unwrap();
        // Step 1 [0, 0.011): A prefill (100 tok) → first token at 0.011.
        // Step 2 [0.011, 0.022): A decode; B not yet arrived at 0.011 → 11 ms.
        // Step 3 [0.022, 0.035): A decode (finishes, 3rd token) + B prefill 200 tok: 10+1+2.
        // Step 4 [0.035, 0.046): B decode (2nd token) → finished.
        let (a, b) = (sim.outcomes[0], sim.outcomes[1]);
        assert!((a.first_token_s - 0.011).abs() < 1e-12, "{a:?}");
        assert!((a.finished_s - 0.035).abs() < 1e-12, "{a:?}");
        assert!((b.admitted_s - 0.022).abs() < 1e-12, "{b:?}");
        assert!((b.first_token_s - 0.035).abs() < 1e-12, "{b:?}");
        assert!((b.finished_s - 0.046).abs() < 1e-12, "{b:?}");
        // B waited 10 ms.
        assert!((sim.trace.waiting[0] - 0.010 / 0.25).abs() < 1e-9);
        assert_eq!(sim.trace.decode_tokens.iter().sum::<f64>(), 5.0);
    }

    #[test]
    fn overload_queues_beyond_max_num_seqs() {
        // Two seats, five simultaneous long requests: three must wait for seats.
        let w = Workload {
            session_names: vec![],
            requests: (0..5).map(|_| req(0.0, 10, 100)).collect(),
        };
        let grid = BinGrid::new(0.0, 10.0, 0.25).unwrap();
        let sim = run(&w, &serving(2, 2048), grid).unwrap();
        let adm: Vec<f64> = sim.outcomes.iter().map(|o| o.admitted_s).collect();
        assert_eq!(adm[0], 0.0);
        assert_eq!(adm[1], 0.0);
        // Requests 2 and 3 start when 0 and 1 finish, 4 after them.
        assert!((adm[2] - sim.outcomes[0].finished_s).abs() < 1e-12);
        assert!((adm[3] - sim.outcomes[1].finished_s).abs() < 1e-12);
        assert!((adm[4] - sim.outcomes[2].finished_s).abs() < 1e-12);
        assert!(sim.trace.running.iter().all(|r| *r <= 2.0 + 1e-9));
        assert!((sim.trace.waiting[0] - 3.0).abs() < 1e-9);
        // Queue-free shortcut would finish every request by ~1.2 s; here the last is late.
        assert!(sim.outcomes[4].finished_s > 2.0 * sim.outcomes[0].finished_s);
        assert_eq!(sim.trace.decode_tokens.iter().sum::<f64>(), 500.0);
    }

    #[test]
    fn chunked_prefill_splits_long_prompts() {
        let w = Workload {
            session_names: vec![],
            requests: vec![req(0.0, 5000, 2)],
        };
        let grid = BinGrid::new(0.0, 1.0, 0.25).unwrap();
        let sim = run(&w, &serving(8, 2048), grid).unwrap();
        // Chunks 2048 + 2048 + 904: three steps before the first token.
        let expected = 3.0 * 0.010 + 5000.0 * 0.000_01;
        assert!((sim.outcomes[0].first_token_s - expected).abs() < 1e-12);
        let mut no_chunk = serving(8, 2048);
        no_chunk.enable_chunked_prefill = false;
        let err = run(&w, &no_chunk, grid).unwrap_err();
        assert!(err.to_string().contains("request 0 has 5000 prompt tokens"));
    }
}
