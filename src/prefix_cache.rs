//! Automatic prefix caching as vLLM does it (SPEC §6), at the level of detail power needs:
//! how many prompt tokens of each request are served from cache instead of prefilled.
//!
//! The KV cache is a pool of blocks of `block_tokens` tokens (vLLM: 16). A request's leading
//! full prompt blocks are a hit when an earlier request left the same tokens resident. Token
//! contents are not known, so identity comes from the request log's structure:
//! - a later turn of a session repeats its session's context: its prefix is the session's last
//!   prompt (vLLM re-renders the previous answer, so measured hits stop at the previous
//!   prompt's last full block; `agentic_openhands_qwen3-8b_a100` reproduces this exactly), or
//!   the declared `prefix_tokens` when the log gives them;
//! - a declared prefix on a session's first turn (or on a request without a session) is a
//!   shared prefix such as a system prompt: two of the same length in blocks are taken to be
//!   the same text.
//!
//! At least one prompt token is always computed (a hit stops one token short of the prompt).
//! A session's blocks stay pinned while one of its requests runs; afterwards they are free
//! but cached, and evicted least recently used first (tail blocks first) when the running
//! requests' context plus the cached blocks would exceed the capacity.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::workload::Request;

/// The KV cache a replica's prefix cache lives in.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KvCacheConfig {
    /// Tokens per KV block (vLLM's default 16).
    pub(crate) block_tokens: u32,
    /// Tokens the KV cache holds on this replica; `None` = unbounded (nothing is evicted).
    pub(crate) capacity_tokens: Option<u64>,
}

impl Default for KvCacheConfig {
    fn default() -> Self {
        Self {
            block_tokens: 16,
            capacity_tokens: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum PrefixKey {
    /// The context a session left behind (its last prompt).
    Session(u32),
    /// A prefix shared across requests, identified by its length in blocks.
    Shared(u32),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    blocks: u32,
    /// Running requests using the entry's blocks (pinned while > 0).
    users: u32,
    last_use_s: f64,
}

/// The prefix cache of one replica during a simulation.
#[derive(Debug, Clone)]
pub struct PrefixCache {
    enabled: bool,
    cfg: KvCacheConfig,
    entries: HashMap<PrefixKey, Entry>,
    /// Blocks of entries no running request uses (cached, evictable).
    free_blocks: u64,
}

impl PrefixCache {
    /// A cache that serves hits only when `enabled` (vLLM's `enable_prefix_caching`).
    pub(crate) fn new(enabled: bool, cfg: KvCacheConfig) -> Self {
        Self {
            enabled,
            cfg: KvCacheConfig {
                block_tokens: cfg.block_tokens.max(1),
                ..cfg
            },
            entries: HashMap::new(),
            free_blocks: 0,
        }
    }

    fn shared_key(&self, r: &Request) -> Option<PrefixKey> {
        let blocks = r.prefix_tokens / self.cfg.block_tokens;
        (blocks > 0).then_some(PrefixKey::Shared(blocks))
    }

    /// A request is admitted at `t_s`: the prompt tokens served from cache (a multiple of the
    /// block size, at most `input_tokens − 1`). Pins the request's session entry.
    pub(crate) fn admit(&mut self, r: &Request, t_s: f64) -> u32 {
        if !self.enabled {
            return 0;
        }
        let bt = self.cfg.block_tokens;
        let max_blocks = r.input_tokens.saturating_sub(1) / bt;
        let declared = if r.prefix_tokens > 0 {
            r.prefix_tokens / bt
        } else {
            u32::MAX
        };
        let mut hit = 0;
        if let Some(s) = r.session {
            let e = self.pin(PrefixKey::Session(s), t_s);
            hit = e.min(declared);
        }
        if let Some(k) = self.shared_key(r) {
            if let Some(e) = self.entries.get_mut(&k) {
                e.last_use_s = t_s;
                hit = hit.max(e.blocks);
            }
        }
        hit.min(max_blocks) * bt
    }

    /// Pins (creates if needed) an entry; returns its blocks.
    fn pin(&mut self, key: PrefixKey, t_s: f64) -> u32 {
        let e = self.entries.entry(key).or_insert(Entry {
            blocks: 0,
            users: 0,
            last_use_s: t_s,
        });
        if e.users == 0 {
            self.free_blocks -= e.blocks as u64;
        }
        e.users += 1;
        e.last_use_s = t_s;
        e.blocks
    }

    /// A request's prompt is fully computed: its full blocks become the session's cached
    /// context, and a declared shared prefix becomes cached for later requests.
    pub(crate) fn prefilled(&mut self, r: &Request, t_s: f64) {
        if !self.enabled {
            return;
        }
        let bt = self.cfg.block_tokens;
        if let Some(s) = r.session {
            if let Some(e) = self.entries.get_mut(&PrefixKey::Session(s)) {
                e.blocks = e.blocks.max(r.input_tokens / bt);
                e.last_use_s = t_s;
            }
        }
        if let Some(k) = self.shared_key(r) {
            let blocks = r.prefix_tokens / bt;
            let e = self.entries.entry(k).or_insert(Entry {
                blocks: 0,
                users: 0,
                last_use_s: t_s,
            });
            if e.users == 0 {
                self.free_blocks += (blocks - e.blocks.min(blocks)) as u64;
            }
            e.blocks = e.blocks.max(blocks);
            e.last_use_s = t_s;
        }
    }

    /// A request finished at `t_s`: its session's blocks become free but stay cached.
    pub(crate) fn finished(&mut self, r: &Request, t_s: f64) {
        if !self.enabled {
            return;
        }
        if let Some(s) = r.session {
            if let Some(e) = self.entries.get_mut(&PrefixKey::Session(s)) {
                e.users = e.users.saturating_sub(1);
                e.last_use_s = t_s;
                if e.users == 0 {
                    self.free_blocks += e.blocks as u64;
                }
            }
        }
    }

    /// Evicts free cached blocks, least recently used entry first and its tail first, until
    /// the running requests' `used_tokens` plus the cached blocks fit the capacity.
    pub(crate) fn evict_to_fit(&mut self, used_tokens: u64) {
        let Some(cap) = self.cfg.capacity_tokens else {
            return;
        };
        if !self.enabled {
            return;
        }
        let bt = self.cfg.block_tokens as u64;
        let cap_blocks = cap / bt;
        let used_blocks = used_tokens.div_ceil(bt);
        while used_blocks + self.free_blocks > cap_blocks && self.free_blocks > 0 {
            let excess = used_blocks + self.free_blocks - cap_blocks;
            let Some((&key, _)) = self
                .entries
                .iter()
                .filter(|(_, e)| e.users == 0 && e.blocks > 0)
                .min_by(|a, b| {
                    a.1.last_use_s
                        .total_cmp(&b.1.last_use_s)
                        .then_with(|| key_order(a.0).cmp(&key_order(b.0)))
                })
            else {
                break;
            };
            let e = self.entries.get_mut(&key).expect("entry just found");
            let drop = (e.blocks as u64).min(excess) as u32;
            e.blocks -= drop;
            self.free_blocks -= drop as u64;
            if e.blocks == 0 {
                self.entries.remove(&key);
            }
        }
    }

    /// Tokens held by free cached blocks (for tests and reports).
    pub fn cached_free_tokens(&self) -> u64 {
        self.free_blocks * self.cfg.block_tokens as u64
    }
}

/// A total order on keys so that ties in last use evict deterministically.
fn key_order(k: &PrefixKey) -> (u8, u32) {
    match *k {
        PrefixKey::Session(s) => (0, s),
        PrefixKey::Shared(b) => (1, b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(session: u32, input: u32) -> Request {
        Request {
            session: Some(session),
            ..Request::new(0.0, input, 10)
        }
    }

    #[test]
    fn second_turn_hits_the_first_turns_full_blocks() {
        let mut c = PrefixCache::new(true, KvCacheConfig::default());
        let t0 = turn(0, 902);
        assert_eq!(c.admit(&t0, 0.0), 0);
        c.prefilled(&t0, 0.1);
        c.finished(&t0, 1.0);
        // The measured agentic run: 902 prompt tokens → 56 full blocks = 896 hit tokens.
        let t1 = turn(0, 19_854);
        assert_eq!(c.admit(&t1, 2.0), 896);
        c.prefilled(&t1, 3.0);
        c.finished(&t1, 4.0);
        let t2 = turn(0, 20_476);
        assert_eq!(c.admit(&t2, 5.0), 19_840);
        // Another session sees nothing of it.
        assert_eq!(c.admit(&turn(1, 20_476), 5.0), 0);
    }

    #[test]
    fn a_prompt_equal_to_the_cached_one_still_computes_a_token() {
        let mut c = PrefixCache::new(true, KvCacheConfig::default());
        let t0 = turn(3, 320);
        c.admit(&t0, 0.0);
        c.prefilled(&t0, 0.0);
        c.finished(&t0, 0.0);
        assert_eq!(c.admit(&turn(3, 320), 1.0), 304);
    }

    #[test]
    fn cache_off_never_hits() {
        let mut c = PrefixCache::new(false, KvCacheConfig::default());
        let t0 = turn(0, 1000);
        c.admit(&t0, 0.0);
        c.prefilled(&t0, 0.0);
        c.finished(&t0, 0.0);
        assert_eq!(c.admit(&turn(0, 2000), 1.0), 0);
    }

    #[test]
    fn small_capacity_evicts_the_least_recently_used_session() {
        // Room for 100 blocks (1600 tokens). Sessions 0 and 1 leave 50 and 40 blocks; with a
        // running request holding 320 tokens (20 blocks), 10 blocks must go: from session 0,
        // the least recently used, tail first.
        let cfg = KvCacheConfig {
            block_tokens: 16,
            capacity_tokens: Some(1600),
        };
        let mut c = PrefixCache::new(true, cfg);
        for (s, input, t) in [(0, 800, 0.0), (1, 640, 1.0)] {
            let r = turn(s, input);
            c.admit(&r, t);
            c.prefilled(&r, t);
            c.finished(&r, t);
        }
        assert_eq!(c.cached_free_tokens(), 1440);
        c.evict_to_fit(320);
        assert_eq!(c.cached_free_tokens(), 1280);
        assert_eq!(c.admit(&turn(0, 2000), 2.0), 640);
        assert_eq!(c.admit(&turn(1, 2000), 2.0), 640);
        // Everything pinned now: nothing more can be evicted, whatever the pressure.
        c.evict_to_fit(100_000);
        assert_eq!(c.cached_free_tokens(), 0);
        assert_eq!(c.admit(&turn(0, 2000), 3.0), 640);
    }

    #[test]
    fn declared_shared_prefix_hits_across_sessions() {
        let mut c = PrefixCache::new(true, KvCacheConfig::default());
        let a = Request {
            prefix_tokens: 3200,
            ..turn(0, 4222)
        };
        assert_eq!(c.admit(&a, 0.0), 0);
        c.prefilled(&a, 0.5);
        let b = Request {
            prefix_tokens: 3200,
            ..turn(1, 4129)
        };
        assert_eq!(c.admit(&b, 1.0), 3200);
        // A later turn with a declared prefix shorter than the session's last prompt.
        c.finished(&a, 2.0);
        let a1 = Request {
            prefix_tokens: 4096,
            ..turn(0, 5060)
        };
        assert_eq!(c.admit(&a1, 3.0), 4096);
    }
}
