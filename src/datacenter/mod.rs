//! The offline datacenter (SPEC §7, peer spec §3): a server pool whose allocated servers draw
//! per-GPU power from templates (one per model and batch size), with per-server stagger,
//! amplitude jitter and noise, summed per phase, plus a base load and a training overlay.
//!
//! Where we differ from the peer, on purpose (see docs/coordinator.md):
//! - models whose schedule starts at 0 replicas are simulated once they get replicas (the peer
//!   never simulates them);
//! - power and active replicas count the GPUs a model uses, not whole servers (the peer counts
//!   10 one-GPU replicas on 8-GPU servers as 16 GPUs), and remainders share servers, so per-model
//!   rounding never over-subscribes a pool whose GPU capacity suffices;
//! - `ShiftReplicas` and `SetBatchSize` are checked when applied (capacity, known model, batch
//!   with a template and an ITL fit), not at the next step;
//! - noise is drawn per (server, model) slot from a counter-based stream keyed by (seed,
//!   step, server, model), so results depend neither on the number of threads nor on how the
//!   facility is split into shards.
//!
//! Sharding (`DatacenterConfig::shard`): every shard builds the same pool and allocation (they
//! are cheap and global) and draws power only for the servers it owns: whole racks with a rack
//! layout, else a contiguous range of servers. Shard 0 also carries the base load and the
//! training overlay, so per-phase, per-model, per-rack and facility power of the shards sum to
//! the unsplit run's. Replicas, batch sizes and observed ITLs are global: every shard reports
//! the same.
//!
//! Facility extensions (all default to the peer's behaviour): non-GPU power per server, idle
//! power per unallocated GPU, PUE, and a rack/row layout with rack and row power per step
//! (servers fill racks in index order, racks fill rows).

pub(crate) mod pool;
pub(crate) mod schedule;
pub(crate) mod training;

use std::collections::BTreeMap;
use std::sync::Arc;

use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use rand_pcg::Pcg64;
use rayon::prelude::*;

use crate::coordinator::{
    Component, Datacenter, DatacenterCommand, DcState, EventSource, Events, ModelState, Seconds,
    SimulationClock, ThreePhase,
};
use crate::error::{Error, Result};
use crate::fits::itl_mixture::ItlMixture;
use crate::shard::Shard;
pub(crate) use pool::ServerPool;
pub use schedule::ReplicaSchedule;
pub(crate) use training::TrainingTraceParams;
pub use training::{TrainingRun, TrainingSchedule, TrainingTrace};

/// Datacenter-wide settings (peer `DatacenterConfig` + `PowerAugmentationConfig` + facility).
#[derive(Debug, Clone, PartialEq)]
pub struct DatacenterConfig {
    pub gpus_per_server: u32,
    pub total_gpu_capacity: u64,
    pub base_kw_per_phase: f64,
    pub amplitude_scale_range: (f64, f64),
    pub noise_fraction: f64,
    /// CPU, memory, fans, NICs per server (W), every server of the pool. Peer: 0.
    pub non_gpu_w_per_server: f64,
    /// Power of a GPU with no replica on it (W). Peer: 0.
    pub idle_w_per_gpu: f64,
    /// Facility power = base + PUE × IT power. Peer: 1.
    pub pue: f64,
    /// Rack layout for rack and row power (0 = none).
    pub servers_per_rack: u32,
    pub racks_per_row: u32,
    /// The share of the facility this process simulates (default: all of it).
    pub shard: Shard,
}

impl Default for DatacenterConfig {
    fn default() -> Self {
        DatacenterConfig {
            gpus_per_server: 8,
            total_gpu_capacity: 0,
            base_kw_per_phase: 0.0,
            amplitude_scale_range: (1.0, 1.0),
            noise_fraction: 0.0,
            non_gpu_w_per_server: 0.0,
            idle_w_per_gpu: 0.0,
            pue: 1.0,
            servers_per_rack: 0,
            racks_per_row: 0,
            shard: Shard::WHOLE,
        }
    }
}

/// One model served by the datacenter.
#[derive(Debug, Clone)]
pub struct ModelDeployment {
    pub label: String,
    pub gpus_per_replica: u32,
    pub initial_batch_size: u32,
    pub schedule: ReplicaSchedule,
    /// Per-GPU power templates (W per step) by batch size.
    pub templates: BTreeMap<u32, Arc<[f64]>>,
    /// ITL fits by batch size (observed ITL is NaN without them).
    pub itl_fits: Option<BTreeMap<u32, ItlMixture>>,
}

/// Server slots handled per noise stream and per parallel task.
const BLOCK: usize = 1024;
/// Below this many slots a step runs on one thread (rayon's hand-off would cost more).
const PARALLEL_MIN_SLOTS: usize = 4 * BLOCK;

/// One (model, server) pair that draws power.
#[derive(Debug, Clone, Copy)]
struct Slot {
    model: u32,
    /// The slot's noise stream key: splitmix of (server, model), fixed per allocation.
    noise_key: u64,
    phase: u8,
    rack: u32,
    /// The server's stagger reduced modulo the model's current template length.
    stagger: u32,
    /// amplitude × GPUs of the model on the server.
    scale: f64,
}

#[derive(Debug, Clone, Default)]
struct BlockSums {
    phase: [f64; 3],
    model: Vec<f64>,
}

struct ModelRuntime {
    d: ModelDeployment,
    /// This step's template index before the server's stagger: k mod template length.
    base: usize,
    batch: u32,
    offset: i64,
    replicas: u64,
    template: Arc<[f64]>,
}

impl ModelRuntime {
    /// A deployment before the first step: its initial batch's template, no replicas yet.
    fn initial(d: ModelDeployment) -> Self {
        let template = d.templates[&d.initial_batch_size].clone();
        ModelRuntime {
            base: 0,
            batch: d.initial_batch_size,
            offset: 0,
            replicas: 0,
            template,
            d,
        }
    }
}

/// The offline datacenter.
pub struct OfflineDatacenter {
    name: String,
    dt_s: Seconds,
    cfg: DatacenterConfig,
    seed: u64,
    labels: Vec<String>,
    sorted: Vec<usize>,
    models: Vec<ModelRuntime>,
    pool: ServerPool,
    training: TrainingSchedule,
    racks: usize,
    racks_per_row: usize,
    rack_of_server: Vec<u32>,
    /// The servers this shard draws power for.
    owned: std::ops::Range<usize>,
    // Per-run state.
    k: u64,
    latency_rng: Pcg64,
    demand: Vec<u64>,
    allocated: bool,
    slots: Vec<Slot>,
    slot_lens: Vec<usize>,
    static_phase_w: [f64; 3],
    /// Per model, the share of its servers on each phase (last allocation).
    phase_share: Vec<[f64; 3]>,
    static_rack_w: Vec<f64>,
    slot_power_w: Vec<f64>,
    scratch: Vec<BlockSums>,
    state: DcState,
    stepped: bool,
}

fn check_deployment(m: &ModelDeployment, g_server: u32) -> Result<()> {
    let field = format!("models.{}", m.label);
    let g = m.gpus_per_replica;
    if g == 0 || !(g_server.is_multiple_of(g) || g.is_multiple_of(g_server)) {
        return Err(Error::config(
            &field,
            format!("gpus_per_replica {g}: must divide gpus_per_server {g_server} or be a multiple of it"),
        ));
    }
    if m.templates.is_empty() {
        return Err(Error::config(&field, "no power templates"));
    }
    for (b, t) in &m.templates {
        if t.is_empty() {
            return Err(Error::config(
                &field,
                format!("empty template for batch size {b}"),
            ));
        }
        if let Some((i, v)) = t
            .iter()
            .enumerate()
            .find(|(_, v)| !(v.is_finite() && **v >= 0.0))
        {
            return Err(Error::config(
                &field,
                format!("template for batch size {b}, sample {i}: {v} W"),
            ));
        }
    }
    for (b, f) in m.itl_fits.iter().flatten() {
        f.check()
            .map_err(|e| Error::config(&field, format!("ITL fit for batch size {b}: {e}")))?;
    }
    check_batch(m, m.initial_batch_size)
}

fn check_batch(m: &ModelDeployment, b: u32) -> Result<()> {
    let field = format!("models.{}", m.label);
    if b == 0 {
        return Err(Error::config(&field, "batch size 0 (need > 0)"));
    }
    if !m.templates.contains_key(&b) {
        return Err(Error::config(
            &field,
            format!(
                "batch size {b} has no power template (have {:?})",
                m.templates.keys().collect::<Vec<_>>()
            ),
        ));
    }
    if let Some(f) = &m.itl_fits {
        if !f.contains_key(&b) {
            return Err(Error::config(
                &field,
                format!(
                    "batch size {b} has no ITL fit (have {:?})",
                    f.keys().collect::<Vec<_>>()
                ),
            ));
        }
    }
    Ok(())
}

/// SplitMix64 as a random source: a counter-based stream, seeded per slot and step for the
/// noise (cheap to seed, one multiply-xorshift per draw).
struct SplitMix64(u64);

impl rand::RngCore for SplitMix64 {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        splitmix(self.0)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> std::result::Result<(), rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The models' labels and their order by label; fails on a duplicate label.
fn unique_labels(models: &[ModelDeployment]) -> Result<(Vec<String>, Vec<usize>)> {
    let labels: Vec<String> = models.iter().map(|m| m.label.clone()).collect();
    let mut sorted: Vec<usize> = (0..models.len()).collect();
    sorted.sort_by(|&a, &b| labels[a].cmp(&labels[b]));
    if let Some(w) = sorted.windows(2).find(|w| labels[w[0]] == labels[w[1]]) {
        return Err(Error::config(
            "models",
            format!("duplicate model label {:?}", labels[w[0]]),
        ));
    }
    Ok((labels, sorted))
}

/// The server pool, its stagger range the longest template of any model (peer: of models with
/// replicas at 0).
fn build_pool(cfg: &DatacenterConfig, models: &[ModelDeployment], seed: u64) -> Result<ServerPool> {
    let l_max = models
        .iter()
        .map(|m| m.templates.values().next().map_or(1, |t| t.len()) as u64)
        .max()
        .unwrap_or(1);
    ServerPool::build(
        cfg.total_gpu_capacity,
        cfg.gpus_per_server,
        models.len(),
        l_max,
        cfg.amplitude_scale_range,
        seed,
    )
}

impl OfflineDatacenter {
    /// Builds the datacenter and its pool. Checks (peer §3.2, plus ours): capacity at t = 0 and
    /// at every ramp boundary (GPUs, and that the pool can place them), templates and ITL fits
    /// for each initial batch, unique labels, replica sizes that fit servers.
    pub fn new(
        name: &str,
        dt_s: Seconds,
        cfg: DatacenterConfig,
        models: Vec<ModelDeployment>,
        training: TrainingSchedule,
        seed: u64,
    ) -> Result<Self> {
        check_config(name, &cfg, &models)?;
        let (labels, sorted) = unique_labels(&models)?;
        for m in &models {
            check_deployment(m, cfg.gpus_per_server)?;
        }
        let pool = build_pool(&cfg, &models, seed)?;
        check_capacity(&pool, &cfg, &models, &sorted, &labels)?;
        let racks_per_row = cfg.racks_per_row as usize;
        let (racks, rack_of_server, owned) = rack_layout(&cfg, pool.servers());
        let runtimes = models
            .into_iter()
            .map(ModelRuntime::initial)
            .collect::<Vec<_>>();
        let n = runtimes.len();
        let mut dc = OfflineDatacenter {
            name: name.to_string(),
            dt_s,
            cfg,
            seed,
            labels,
            sorted,
            models: runtimes,
            pool,
            training,
            racks,
            racks_per_row,
            rack_of_server,
            owned,
            k: 0,
            latency_rng: Pcg64::seed_from_u64(seed.wrapping_add(54_321)),
            demand: vec![0; n],
            allocated: false,
            slots: Vec::new(),
            slot_lens: vec![0; n],
            static_phase_w: [0.0; 3],
            phase_share: Vec::new(),
            static_rack_w: Vec::new(),
            slot_power_w: Vec::new(),
            scratch: Vec::new(),
            state: DcState::default(),
            stepped: false,
        };
        dc.reset();
        Ok(dc)
    }

    pub fn pool(&self) -> &ServerPool {
        &self.pool
    }

    fn reallocate(&mut self, demand: &[u64]) -> Result<()> {
        let alloc = self.pool.allocate(demand, &self.sorted, &self.labels)?;
        let g = self.cfg.gpus_per_server;
        let mut used = vec![0u32; self.pool.servers()];
        self.slots.clear();
        // Each model's servers per phase (all servers, whatever the shard), as the peer counts.
        self.phase_share = alloc
            .iter()
            .map(|a| {
                let mut n = [0.0f64; 3];
                for &(srv, _) in a {
                    n[self.pool.phase[srv as usize] as usize] += 1.0;
                }
                let total: f64 = n.iter().sum();
                if total > 0.0 {
                    n.map(|x| x / total)
                } else {
                    [1.0 / 3.0; 3]
                }
            })
            .collect();
        for (m, a) in alloc.iter().enumerate() {
            let len = self.models[m].template.len();
            self.slot_lens[m] = len;
            for &(srv, gpus) in a {
                let s = srv as usize;
                used[s] += gpus;
                if !self.owned.contains(&s) {
                    continue;
                }
                self.slots.push(Slot {
                    model: m as u32,
                    noise_key: splitmix(((srv as u64) << 20) ^ m as u64),
                    phase: self.pool.phase[s],
                    rack: self.rack_of_server[s],
                    stagger: (self.pool.stagger[s] % len as u64) as u32,
                    scale: self.pool.amplitude[s] * gpus as f64,
                });
            }
        }
        // Power that does not change until the next allocation: non-GPU power of every server,
        // idle power of unused GPUs.
        self.static_phase_w = [0.0; 3];
        self.static_rack_w = vec![0.0; self.racks];
        for (s, &u) in used.iter().enumerate() {
            if !self.owned.contains(&s) {
                continue;
            }
            let w = self.cfg.non_gpu_w_per_server + self.cfg.idle_w_per_gpu * (g - u.min(g)) as f64;
            self.static_phase_w[self.pool.phase[s] as usize] += w;
            if self.racks > 0 {
                self.static_rack_w[self.rack_of_server[s] as usize] += w;
            }
        }
        let blocks = self.slots.len().div_ceil(BLOCK);
        let n = self.models.len();
        self.scratch.resize(blocks, BlockSums::default());
        for b in &mut self.scratch {
            b.model.resize(n, 0.0);
        }
        self.slot_power_w.resize(self.slots.len(), 0.0);
        self.allocated = true;
        Ok(())
    }

    fn server_power(&mut self) {
        let k = self.k;
        let nu = self.cfg.noise_fraction;
        let noise_seed = splitmix(self.seed.wrapping_add(12_345)) ^ splitmix(k);
        for m in &mut self.models {
            m.base = (k % m.template.len() as u64) as usize;
        }
        let models = &self.models;
        let work = |((chunk, sums), outs): ((&[Slot], &mut BlockSums), &mut [f64])| {
            sums.phase = [0.0; 3];
            sums.model.iter_mut().for_each(|v| *v = 0.0);
            for (sl, out) in chunk.iter().zip(outs.iter_mut()) {
                let m = &models[sl.model as usize];
                let tpl = &m.template;
                let mut idx = m.base + sl.stagger as usize;
                if idx >= tpl.len() {
                    idx -= tpl.len();
                }
                let mut p = tpl[idx] * sl.scale;
                if nu > 0.0 {
                    let mut rng = SplitMix64(noise_seed ^ sl.noise_key);
                    let z: f64 = StandardNormal.sample(&mut rng);
                    p += z * nu * p.max(1.0);
                    p = p.max(0.0);
                }
                sums.phase[sl.phase as usize] += p;
                sums.model[sl.model as usize] += p;
                *out = p;
            }
        };
        // Fixed blocks with their own partial sums, noise keyed per slot: the same result on
        // one thread or many.
        if self.slots.len() >= PARALLEL_MIN_SLOTS {
            self.slots
                .par_chunks(BLOCK)
                .zip(self.scratch.par_iter_mut())
                .zip(self.slot_power_w.par_chunks_mut(BLOCK))
                .for_each(work);
        } else {
            self.slots
                .chunks(BLOCK)
                .zip(self.scratch.iter_mut())
                .zip(self.slot_power_w.chunks_mut(BLOCK))
                .for_each(work);
        }
    }
}

impl Component for OfflineDatacenter {
    fn dt_s(&self) -> Seconds {
        self.dt_s
    }

    fn reset(&mut self) {
        self.k = 0;
        self.latency_rng = Pcg64::seed_from_u64(self.seed.wrapping_add(54_321));
        for m in &mut self.models {
            m.batch = m.d.initial_batch_size;
            m.offset = 0;
            m.replicas = 0;
            m.template = m.d.templates[&m.batch].clone();
        }
        self.allocated = false;
        self.stepped = false;
        self.state = DcState {
            models: vec![ModelState::default(); self.models.len()],
            row_power_w: vec![0.0; self.racks.div_ceil(self.racks_per_row.max(1))],
            rack_power_w: vec![0.0; self.racks],
            ..DcState::default()
        };
    }
}

/// The name and the facility figures: bounded and finite (1e308 kW was once accepted and wrote
/// infinite power), at least one model and one GPU.
fn check_config(name: &str, cfg: &DatacenterConfig, models: &[ModelDeployment]) -> Result<()> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(Error::config(
            "datacenter.name",
            format!("{name:?} (use letters, digits, _ and -)"),
        ));
    }
    if models.is_empty() {
        return Err(Error::config("models", "none (need ≥ 1)"));
    }
    if cfg.total_gpu_capacity == 0 {
        return Err(Error::config(
            "datacenter.total_gpu_capacity",
            "0 (need ≥ 1)",
        ));
    }
    if !(cfg.noise_fraction >= 0.0 && cfg.noise_fraction.is_finite()) {
        return Err(Error::config(
            "datacenter.noise_fraction",
            format!("{} (need ≥ 0)", cfg.noise_fraction),
        ));
    }
    // Upper bounds far above any facility keep every sum finite (1e308 kW was accepted
    // and wrote infinite power).
    for (f, v, max) in [
        ("datacenter.base_kw_per_phase", cfg.base_kw_per_phase, 1e7),
        (
            "datacenter.non_gpu_w_per_server",
            cfg.non_gpu_w_per_server,
            1e5,
        ),
        (
            "datacenter.idle_w_per_gpu",
            cfg.idle_w_per_gpu,
            training::MAX_W_PER_GPU,
        ),
    ] {
        if !(v >= 0.0 && v <= max) {
            return Err(Error::config(f, format!("{v} (need 0 … {max})")));
        }
    }
    if !(cfg.pue >= 1.0 && cfg.pue <= 10.0) {
        return Err(Error::config(
            "datacenter.pue",
            format!("{} (need 1 … 10)", cfg.pue),
        ));
    }
    Ok(())
}

/// Capacity at t = 0 and at every ramp boundary: in GPUs, and placeable by the pool.
fn check_capacity(
    pool: &ServerPool,
    cfg: &DatacenterConfig,
    models: &[ModelDeployment],
    sorted: &[usize],
    labels: &[String],
) -> Result<()> {
    let mut times = vec![0.0];
    for m in models {
        times.extend(m.schedule.boundaries());
    }
    for &t in &times {
        let demand: Vec<u64> = models
            .iter()
            .map(|m| m.schedule.replicas_at(t) * m.gpus_per_replica as u64)
            .collect();
        let total: u64 = demand.iter().sum();
        if total > cfg.total_gpu_capacity {
            return Err(Error::config(
                "replica schedules",
                format!(
                    "at t = {t} s the models need {total} GPUs, capacity is {}",
                    cfg.total_gpu_capacity
                ),
            ));
        }
        pool.allocate(&demand, sorted, labels)?;
    }
    Ok(())
}

/// (racks, rack of each server, servers this shard owns): whole racks per shard with a rack
/// layout, a contiguous range of servers without one.
fn rack_layout(
    cfg: &DatacenterConfig,
    servers: usize,
) -> (usize, Vec<u32>, std::ops::Range<usize>) {
    let (racks, rack_of_server) = if cfg.servers_per_rack > 0 && cfg.racks_per_row > 0 {
        let per_rack = cfg.servers_per_rack as usize;
        (
            servers.div_ceil(per_rack),
            (0..servers).map(|i| (i / per_rack) as u32).collect(),
        )
    } else {
        (0, vec![0; servers])
    };
    let owned = if racks > 0 {
        let r = cfg.shard.range(racks);
        let per_rack = cfg.servers_per_rack as usize;
        (r.start * per_rack).min(servers)..(r.end * per_rack).min(servers)
    } else {
        cfg.shard.range(servers)
    };
    (racks, rack_of_server, owned)
}

impl Datacenter for OfflineDatacenter {
    fn name(&self) -> &str {
        &self.name
    }
    fn model_labels(&self) -> &[String] {
        &self.labels
    }
    fn rack_layout(&self) -> (usize, usize) {
        (self.racks, self.racks_per_row)
    }
    fn phase_share(&self) -> Vec<[f64; 3]> {
        self.phase_share.clone()
    }

    fn step(&mut self, clock: &SimulationClock, _events: &mut Events) -> Result<()> {
        let t = clock.time_s();
        let mut changed = !self.allocated;
        let mut demand = std::mem::take(&mut self.demand);
        for (m, rt) in self.models.iter_mut().enumerate() {
            let n = (rt.d.schedule.replicas_at(t) as i64 + rt.offset).max(0) as u64;
            rt.replicas = n;
            let d = n * rt.d.gpus_per_replica as u64;
            changed |= demand[m] != d || self.slot_lens[m] != rt.template.len();
            demand[m] = d;
        }
        let r = if changed {
            self.reallocate(&demand)
        } else {
            Ok(())
        };
        self.demand = demand;
        r?;
        self.server_power();
        let mut phase = self.static_phase_w;
        let st = &mut self.state;
        for x in st.models.iter_mut() {
            x.power_w = 0.0;
        }
        for b in &self.scratch {
            for (x, v) in phase.iter_mut().zip(&b.phase) {
                *x += v;
            }
            for (x, v) in st.models.iter_mut().zip(&b.model) {
                x.power_w += v;
            }
        }
        if self.racks > 0 {
            st.rack_power_w.copy_from_slice(&self.static_rack_w);
            for (sl, p) in self.slots.iter().zip(&self.slot_power_w) {
                st.rack_power_w[sl.rack as usize] += p;
            }
            st.row_power_w.iter_mut().for_each(|x| *x = 0.0);
            for (r, p) in st.rack_power_w.iter().enumerate() {
                st.row_power_w[r / self.racks_per_row] += p;
            }
        }
        // Facility-wide loads belong to shard 0 (the shards' sums are the whole facility).
        let first_shard = self.cfg.shard.index == 0;
        let training_w = if self.training.is_empty() || !first_shard {
            0.0
        } else {
            self.training.power_w(t)
        };
        let base_w = if first_shard {
            1000.0 * self.cfg.base_kw_per_phase
        } else {
            0.0
        };
        let it_w = phase.iter().sum::<f64>() + training_w;
        st.time_s = t;
        st.training_power_w = training_w;
        st.power_w = ThreePhase {
            a: base_w + phase[0] + training_w / 3.0,
            b: base_w + phase[1] + training_w / 3.0,
            c: base_w + phase[2] + training_w / 3.0,
        };
        st.facility_power_w = 3.0 * base_w + self.cfg.pue * it_w;
        for (x, rt) in st.models.iter_mut().zip(&self.models) {
            x.active_replicas = rt.replicas;
            x.batch_size = rt.batch;
            x.observed_itl_s = match &rt.d.itl_fits {
                Some(f) if rt.replicas > 0 => {
                    f[&rt.batch].sample_avg(rt.replicas as i64, &mut self.latency_rng)
                }
                _ => f64::NAN,
            };
        }
        self.k += 1;
        self.stepped = true;
        Ok(())
    }

    fn state(&self) -> Option<&DcState> {
        self.stepped.then_some(&self.state)
    }

    fn available_gpu_capacity(&self) -> Option<u64> {
        let used: u64 = self
            .models
            .iter()
            .map(|x| x.replicas * x.d.gpus_per_replica as u64)
            .sum();
        Some(self.cfg.total_gpu_capacity.saturating_sub(used))
    }

    fn apply_control(&mut self, command: &DatacenterCommand, events: &mut Events) -> Result<()> {
        let find = |labels: &[String], l: &str| {
            labels.iter().position(|x| x == l).ok_or_else(|| {
                Error::config(
                    "command",
                    format!(
                        "datacenter {:?} serves no model {l:?} (has {labels:?})",
                        self.name
                    ),
                )
            })
        };
        match command {
            DatacenterCommand::SetBatchSize {
                batch_size_by_model,
                ramp_up_rate_by_model,
            } => {
                if let Some((l, r)) = ramp_up_rate_by_model.iter().find(|(_, r)| *r > 0.0) {
                    return Err(Error::config(
                        "SetBatchSize",
                        format!("ramp rate {r} for {l:?}: the offline datacenter changes batch sizes immediately"),
                    ));
                }
                let mut idx = Vec::with_capacity(batch_size_by_model.len());
                for (l, b) in batch_size_by_model {
                    let m = find(&self.labels, l)?;
                    check_batch(&self.models[m].d, *b)?;
                    idx.push((m, *b));
                }
                for (m, b) in idx {
                    let rt = &mut self.models[m];
                    rt.batch = b;
                    rt.template = rt.d.templates[&b].clone();
                }
                events.emit(
                    EventSource::Datacenter,
                    "datacenter.batch_size.updated",
                    serde_json::json!({ "batch_size_by_model": batch_size_by_model.iter().cloned().collect::<BTreeMap<_, _>>() }),
                );
            }
            DatacenterCommand::ShiftReplicas {
                model,
                replica_delta,
            } => {
                let m = find(&self.labels, model)?;
                let rt = &self.models[m];
                let scheduled = rt.d.schedule.replicas_at(self.state.time_s) as i64;
                let effective = (scheduled + rt.offset + replica_delta).max(0) as u64;
                let others: u64 = self
                    .models
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != m)
                    .map(|(_, x)| x.replicas * x.d.gpus_per_replica as u64)
                    .sum();
                let need = others + effective * rt.d.gpus_per_replica as u64;
                if need > self.cfg.total_gpu_capacity {
                    return Err(Error::config(
                        "ShiftReplicas",
                        format!(
                            "{replica_delta:+} replicas of {model:?} would need {need} GPUs, capacity is {}",
                            self.cfg.total_gpu_capacity
                        ),
                    ));
                }
                self.models[m].offset += replica_delta;
                events.emit(
                    EventSource::Datacenter,
                    "datacenter.replicas.shifted",
                    serde_json::json!({ "model_label": model, "replica_delta": replica_delta, "effective_replicas": effective }),
                );
            }
        }
        Ok(())
    }
}
