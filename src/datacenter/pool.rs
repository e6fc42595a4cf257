//! The shared server pool (peer `ServerPool`): phase assignment, stagger offsets, amplitude
//! scales and per-model priority orders, drawn once from the layout seed; and the
//! phase-balanced round-robin allocation of servers to models.
//!
//! Allocation differs from the peer where the peer is wrong (peer spec §3.3, documented in
//! docs/coordinator.md): a model gets whole servers for ⌊GPUs / G⌋ and its remainder GPUs go to
//! a server already part-used by an earlier model when one has room (first fit), so GPUs, not
//! whole servers, are counted, and a pool whose GPU capacity suffices is never over-subscribed
//! by per-model rounding.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;

use crate::error::{Error, Result};

/// The most servers one pool may hold.
const MAX_SERVERS: u64 = 20_000_000;

/// Layout of the pool.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerPool {
    pub(crate) gpus_per_server: u32,
    /// Phase (0, 1, 2) of each server.
    pub(crate) phase: Vec<u8>,
    /// Template offset of each server (steps).
    pub stagger: Vec<u64>,
    /// Amplitude scale of each server.
    pub(crate) amplitude: Vec<f64>,
    /// Per model (in model order), its servers in priority order, split per phase.
    queues: Vec<[Vec<u32>; 3]>,
}

/// Servers given to one model: (server, GPUs used on it).
type Allocation = Vec<(u32, u32)>;

impl ServerPool {
    /// Draws the layout: S = ceil(capacity / G) servers, phase counts ⌊S/3⌋ + [φ < S mod 3]
    /// shuffled, stagger ~ U{0, …, l_max − 1}, amplitude ~ U[lo, hi), then one priority
    /// permutation per model (the peer's order of draws).
    pub(crate) fn build(
        capacity_gpus: u64,
        gpus_per_server: u32,
        models: usize,
        l_max: u64,
        amplitude_range: (f64, f64),
        seed: u64,
    ) -> Result<Self> {
        if gpus_per_server == 0 {
            return Err(Error::config("datacenter.gpus_per_server", "0 (need ≥ 1)"));
        }
        let (lo, hi) = amplitude_range;
        if !(lo > 0.0 && lo <= hi && hi.is_finite()) {
            return Err(Error::config(
                "datacenter.amplitude_scale_range",
                format!("[{lo}, {hi}] (need 0 < lo ≤ hi)"),
            ));
        }
        let servers = capacity_gpus.div_ceil(gpus_per_server as u64);
        if servers > MAX_SERVERS {
            return Err(Error::config(
                "datacenter.total_gpu_capacity",
                format!(
                    "{capacity_gpus} GPUs is {servers} servers, over {MAX_SERVERS} (every shard holds \
                     the whole pool's layout, ~40 bytes per server and model): check the \
                     capacity (--gpus)"
                ),
            ));
        }
        let s = servers as usize;
        let mut rng = Pcg64::seed_from_u64(seed);
        let mut phase: Vec<u8> = (0..3u8)
            .flat_map(|p| std::iter::repeat_n(p, s / 3 + usize::from((p as usize) < s % 3)))
            .collect();
        phase.shuffle(&mut rng);
        let l_max = l_max.max(1);
        let stagger = (0..s).map(|_| rng.gen_range(0..l_max)).collect();
        let amplitude = (0..s)
            .map(|_| if lo == hi { lo } else { rng.gen_range(lo..hi) })
            .collect();
        let queues = (0..models)
            .map(|_| {
                let mut order: Vec<u32> = (0..s as u32).collect();
                order.shuffle(&mut rng);
                let mut q: [Vec<u32>; 3] = Default::default();
                for srv in order {
                    q[phase[srv as usize] as usize].push(srv);
                }
                q
            })
            .collect();
        Ok(ServerPool {
            gpus_per_server,
            phase,
            stagger,
            amplitude,
            queues,
        })
    }

    pub(crate) fn servers(&self) -> usize {
        self.phase.len()
    }

    /// Allocates `demand_gpus[m]` GPUs to each model, visiting models in `order` (sorted
    /// labels). Whole servers by phase-balanced round robin over the model's priority queues
    /// (start at phase A; take the next unclaimed server of the first phase, from p, that has
    /// one; continue from the phase after it); the remainder first-fit into a part-used server,
    /// else a new one. Errors name the model and the demand when the pool runs out.
    pub(crate) fn allocate(
        &self,
        demand_gpus: &[u64],
        order: &[usize],
        labels: &[String],
    ) -> Result<Vec<Allocation>> {
        let g = self.gpus_per_server as u64;
        let mut claimed = vec![false; self.servers()];
        let mut open: Vec<(u32, u32)> = Vec::new(); // (server, free GPUs)
        let mut out = vec![Vec::new(); demand_gpus.len()];
        for &m in order {
            let d = demand_gpus[m];
            if d == 0 {
                continue;
            }
            let queues = &self.queues[m];
            let mut cursor = [0usize; 3];
            let mut p = 0usize;
            let mut take = |claimed: &mut Vec<bool>| -> Option<u32> {
                for step in 0..3 {
                    let ph = (p + step) % 3;
                    let q = &queues[ph];
                    while cursor[ph] < q.len() && claimed[q[cursor[ph]] as usize] {
                        cursor[ph] += 1;
                    }
                    if cursor[ph] < q.len() {
                        let srv = q[cursor[ph]];
                        claimed[srv as usize] = true;
                        cursor[ph] += 1;
                        p = ph + 1;
                        return Some(srv);
                    }
                }
                None
            };
            let over = || {
                let total: u64 = demand_gpus.iter().sum();
                Error::data(format!(
                    "server pool over-subscribed: model {:?} needs {d} GPUs; all models need {total} GPUs \
                     of a pool of {} servers × {g} GPUs",
                    labels[m],
                    self.servers()
                ))
            };
            for _ in 0..d / g {
                let srv = take(&mut claimed).ok_or_else(over)?;
                out[m].push((srv, g as u32));
            }
            let rem = (d % g) as u32;
            if rem > 0 {
                if let Some(slot) = open.iter_mut().find(|(_, free)| *free >= rem) {
                    slot.1 -= rem;
                    out[m].push((slot.0, rem));
                } else {
                    let srv = take(&mut claimed).ok_or_else(over)?;
                    out[m].push((srv, rem));
                    open.push((srv, g as u32 - rem));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("m{i}")).collect()
    }

    #[test]
    fn phases_are_balanced_and_layout_is_seeded() {
        let p = ServerPool::build(1000, 8, 2, 600, (0.98, 1.02), 0).unwrap();
        assert_eq!(p.servers(), 125);
        let count = |ph| p.phase.iter().filter(|&&x| x == ph).count();
        assert_eq!((count(0), count(1), count(2)), (42, 42, 41));
        assert!(p.stagger.iter().all(|&s| s < 600));
        assert!(p.amplitude.iter().all(|&a| (0.98..1.02).contains(&a)));
        assert_eq!(
            p,
            ServerPool::build(1000, 8, 2, 600, (0.98, 1.02), 0).unwrap()
        );
        assert_ne!(
            p.stagger,
            ServerPool::build(1000, 8, 2, 600, (0.98, 1.02), 1)
                .unwrap()
                .stagger
        );
    }

    #[test]
    fn round_robin_is_phase_balanced_and_counts_gpus() {
        let p = ServerPool::build(1000, 8, 2, 1, (1.0, 1.0), 3).unwrap();
        let a = p.allocate(&[240, 0], &[0, 1], &labels(2)).unwrap();
        assert_eq!(a[0].len(), 30);
        let per_phase: Vec<usize> = (0..3)
            .map(|ph| {
                a[0].iter()
                    .filter(|(s, _)| p.phase[*s as usize] == ph)
                    .count()
            })
            .collect();
        assert_eq!(per_phase, vec![10, 10, 10]);
        // 500 GPUs of a 1-GPU model + 500 of a 4-GPU model: the peer needs 63 + 63 > 125
        // servers and fails; counted in GPUs it fits, sharing one server.
        let a = p.allocate(&[500, 500], &[0, 1], &labels(2)).unwrap();
        let gpus: u32 = a.iter().flatten().map(|(_, g)| g).sum();
        assert_eq!(gpus, 1000);
        let mut servers: Vec<u32> = a.iter().flatten().map(|(s, _)| *s).collect();
        servers.sort_unstable();
        servers.dedup();
        assert_eq!(servers.len(), 125);
        // Real over-subscription is an error naming the model.
        let err = p
            .allocate(&[600, 408], &[0, 1], &labels(2))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("over-subscribed") && err.contains("m1"),
            "{err}"
        );
    }
}
