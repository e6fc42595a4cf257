//! Workloads (SPEC §6): the requests that drive a serving engine — arrival time, input
//! (prompt) tokens and output tokens. Sources: a vLLM benchmark request log, Poisson arrivals
//! at a rate, Gamma-renewal arrivals with a burstiness factor (vLLM's convention: 1 = Poisson,
//! < 1 burstier, > 1 smoother), with token counts drawn from an empirical distribution;
//! multi-turn sessions learned from a log ([`SessionModel`]) replayed from closed-loop clients
//! (a turn is sent when the previous answer is in plus the client's think time).

use std::collections::HashMap;
use std::path::Path;

use rand::Rng;
use rand_distr::{Distribution, Gamma};
use rand_pcg::Pcg64;

use crate::error::{Error, Result};
use crate::sources::measured::{read_request_log, Itls, RequestLog};

/// One request as the client sends it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Request {
    /// When the client sent it (unix seconds, or seconds from any origin the caller keeps).
    pub arrival_s: f64,
    /// Prompt tokens (prefill work).
    pub(crate) input_tokens: u32,
    /// Generated tokens (1 from the prefill step, the rest one per decode step).
    pub(crate) output_tokens: u32,
    /// The agent or chat session the request belongs to (an index into
    /// [`Workload::session_names`]), if the log says.
    pub(crate) session: Option<u32>,
    /// Leading prompt tokens the load generator declares as repeated context (0 = not
    /// declared; a later turn of a session then reuses the session's previous prompt).
    pub(crate) prefix_tokens: u32,
    /// Closed loop: the index (in the workload) of the request this one follows. It is then
    /// sent `think_s` after that one finishes, whatever its `arrival_s` (a client that waits
    /// for the answer, then thinks, then sends its next turn).
    pub follows: Option<u32>,
    /// The client's pause after the request it follows (s).
    pub think_s: f64,
}

impl Request {
    /// A request with no session and no declared prefix.
    pub fn new(arrival_s: f64, input_tokens: u32, output_tokens: u32) -> Self {
        Self {
            arrival_s,
            input_tokens,
            output_tokens,
            session: None,
            prefix_tokens: 0,
            follows: None,
            think_s: 0.0,
        }
    }
}

/// Requests in arrival order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Workload {
    pub requests: Vec<Request>,
    /// Names of the sessions [`Request::session`] indexes (empty when no request has one).
    pub session_names: Vec<String>,
}

impl Workload {
    /// Reads a vLLM benchmark log (`requests.json` or `requests_summary.json`, either order,
    /// either `itls` form) and keeps what a workload may use ([`Workload::from_log`]).
    pub fn from_request_log(path: &Path) -> Result<Self> {
        Self::from_log(&read_request_log(path)?)
    }

    /// The workload of a request log: arrivals, token counts, sessions and declared prefixes.
    /// Nothing measured about the run (TTFTs, ITLs, cache hits, power) enters synthesis.
    pub(crate) fn from_log(log: &RequestLog) -> Result<Self> {
        let path = &log.path;
        let to_i64 = |v: &[u32]| v.iter().map(|&x| x as i64).collect::<Vec<_>>();
        let mut w = Self::from_columns(
            path,
            &log.request_timestamps,
            &to_i64(&log.input_lens),
            &to_i64(&log.output_lens),
        )?;
        if let Some(ids) = &log.session_ids {
            let mut index: HashMap<&str, u32> = HashMap::new();
            for (r, id) in w.requests.iter_mut().zip(ids) {
                let next = index.len() as u32;
                let k = *index.entry(id.as_str()).or_insert(next);
                if k == next {
                    w.session_names.push(id.clone());
                }
                r.session = Some(k);
            }
        }
        if let Some(prefix) = &log.prefix_tokens {
            for (r, &p) in w.requests.iter_mut().zip(prefix) {
                r.prefix_tokens = p;
            }
        }
        Ok(w)
    }

    /// Builds a workload from the three request-log columns, checking them.
    fn from_columns(
        path: &Path,
        arrival_s: &[f64],
        input_tokens: &[i64],
        output_tokens: &[i64],
    ) -> Result<Self> {
        let n = arrival_s.len();
        if n == 0 {
            return Err(Error::content(path, "request_timestamps is empty"));
        }
        if input_tokens.len() != n || output_tokens.len() != n {
            return Err(Error::content(
                path,
                format!(
                    "request_timestamps has {n} entries but input_lens {} and output_lens {}",
                    input_tokens.len(),
                    output_tokens.len()
                ),
            ));
        }
        let mut requests = Vec::with_capacity(n);
        for i in 0..n {
            let (t, inp, out) = (arrival_s[i], input_tokens[i], output_tokens[i]);
            if !t.is_finite() {
                return Err(Error::row(path, i, format!("request_timestamps = {t}")));
            }
            if let Some(prev) = requests.last().map(|r: &Request| r.arrival_s) {
                if t < prev {
                    return Err(Error::row(
                        path,
                        i,
                        format!("request_timestamps = {t} is earlier than the previous {prev}"),
                    ));
                }
            }
            let tokens = |v: i64, name: &str, min: i64| {
                if v < min || v > u32::MAX as i64 {
                    Err(Error::row(path, i, format!("{name} = {v} (need ≥ {min})")))
                } else {
                    Ok(v as u32)
                }
            };
            requests.push(Request::new(
                t,
                tokens(inp, "input_lens", 1)?,
                tokens(out, "output_lens", 1)?,
            ));
        }
        Ok(Self {
            requests,
            session_names: Vec::new(),
        })
    }

    /// Arrivals of a Gamma-renewal process from `t0_s` to `t0_s + duration_s`: inter-arrival
    /// times Gamma(shape = burstiness, mean = 1 / rate). Burstiness 1 is Poisson.
    pub(crate) fn gamma_renewal(
        rate_per_s: f64,
        burstiness: f64,
        t0_s: f64,
        duration_s: f64,
        tokens: &EmpiricalTokens,
        rng: &mut Pcg64,
    ) -> Result<Self> {
        if !(rate_per_s > 0.0 && rate_per_s.is_finite()) {
            return Err(Error::config(
                "rate_per_s",
                format!("{rate_per_s} (need > 0)"),
            ));
        }
        if !(burstiness > 0.0 && burstiness.is_finite()) {
            return Err(Error::config(
                "burstiness",
                format!("{burstiness} (need > 0)"),
            ));
        }
        let gap = Gamma::new(burstiness, 1.0 / (rate_per_s * burstiness))
            .map_err(|e| Error::config("burstiness", e.to_string()))?;
        let mut requests = Vec::new();
        let mut t = t0_s;
        loop {
            t += gap.sample(rng);
            if t >= t0_s + duration_s {
                break;
            }
            let (input_tokens, output_tokens) = tokens.sample(rng);
            requests.push(Request::new(t, input_tokens, output_tokens));
        }
        Ok(Self {
            requests,
            session_names: Vec::new(),
        })
    }

    /// Poisson arrivals at `rate_per_s` (Gamma-renewal with burstiness 1).
    pub fn poisson(
        rate_per_s: f64,
        t0_s: f64,
        duration_s: f64,
        tokens: &EmpiricalTokens,
        rng: &mut Pcg64,
    ) -> Result<Self> {
        Self::gamma_renewal(rate_per_s, 1.0, t0_s, duration_s, tokens, rng)
    }
}

/// One turn of a recorded session.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Turn {
    /// The whole prompt: the session's context so far plus the new tokens (their growth over
    /// the turns is the context growth).
    pub(crate) input_tokens: u32,
    pub(crate) output_tokens: u32,
    /// Declared reusable prefix (0 = the previous turn's prompt, as the prefix cache reads it).
    pub(crate) prefix_tokens: u32,
    /// The client's pause after this turn's answer before its next turn (s).
    pub think_s: f64,
}

/// Multi-turn sessions learned from request logs (agent or chat replays): each session's
/// turns in order, with their prompt lengths (the context growth per turn) and the client's
/// think time after each. [`SessionModel::closed_loop`] replays them from closed-loop clients:
/// a client sends a turn, waits for its answer, thinks, sends the next.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SessionModel {
    pub sessions: Vec<Vec<Turn>>,
}

impl SessionModel {
    /// The sessions of a request log with `session_ids`. Think time after a turn: the log's
    /// `post_gap_s` where it has one; else the gap to the session's next arrival less the
    /// turn's measured latency (TTFT + (output − 1) × its mean ITL, where logged), at least 0.
    pub fn from_log(log: &RequestLog) -> Result<Self> {
        let Some(ids) = &log.session_ids else {
            return Err(Error::content(
                &log.path,
                "no \"session_ids\": sessions cannot be learned from this log",
            ));
        };
        let mut order: Vec<&str> = Vec::new();
        let mut turns_of: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, id) in ids.iter().enumerate() {
            let v = turns_of.entry(id.as_str()).or_default();
            if v.is_empty() {
                order.push(id.as_str());
            }
            v.push(i);
        }
        let mean_itl = |i: usize| -> Option<f64> {
            match &log.itls {
                Some(Itls::MeanPerRequest(m)) => Some(m[i]).filter(|x| x.is_finite()),
                Some(Itls::PerToken(l)) if !l[i].is_empty() => {
                    Some(l[i].iter().sum::<f64>() / l[i].len() as f64)
                }
                _ => None,
            }
        };
        let think = |k: usize, next: Option<usize>| -> f64 {
            if let Some(g) = &log.post_gap_s {
                return g[k];
            }
            let Some(n) = next else { return 0.0 };
            let gap = log.request_timestamps[n] - log.request_timestamps[k];
            let ttft = log
                .ttfts
                .as_ref()
                .map(|t| t[k])
                .filter(|x| x.is_finite())
                .unwrap_or(0.0);
            let decode = mean_itl(k).unwrap_or(0.0) * log.output_lens[k].saturating_sub(1) as f64;
            (gap - ttft - decode).max(0.0)
        };
        let sessions = order
            .iter()
            .map(|id| {
                let idx = &turns_of[id];
                idx.iter()
                    .enumerate()
                    .map(|(j, &k)| Turn {
                        input_tokens: log.input_lens[k].max(1),
                        output_tokens: log.output_lens[k].max(1),
                        prefix_tokens: log.prefix_tokens.as_ref().map_or(0, |p| p[k]),
                        think_s: think(k, idx.get(j + 1).copied()),
                    })
                    .collect()
            })
            .collect();
        Ok(Self { sessions })
    }

    /// Closed-loop traffic from `clients` clients over [t0_s, t0_s + duration_s): each starts
    /// within the first second, then runs sessions drawn uniformly (with replacement) one
    /// after another, each turn sent when the previous answer is in plus the think time
    /// ([`Request::follows`]); every drawn session is a new session for the prefix cache.
    /// Enough sessions are drawn to fill the window even if the server answered at once.
    pub fn closed_loop(
        &self,
        clients: u32,
        t0_s: f64,
        duration_s: f64,
        rng: &mut Pcg64,
    ) -> Result<Workload> {
        if self.sessions.iter().all(|s| s.is_empty()) {
            return Err(Error::config("sessions", "no session to replay"));
        }
        if clients == 0 {
            return Err(Error::config("clients", "0 (need ≥ 1)"));
        }
        if !(duration_s > 0.0 && duration_s.is_finite() && t0_s.is_finite()) {
            return Err(Error::config(
                "duration_s",
                format!("{duration_s} from t0 {t0_s} (need a finite window)"),
            ));
        }
        const MAX_REQUESTS: usize = 10_000_000;
        let mut w = Workload::default();
        for c in 0..clients {
            let start = t0_s + rng.gen::<f64>();
            // A lower bound of the client's busy time: think times plus 5 ms per output token.
            let mut covered = 0.0;
            let mut previous: Option<u32> = None;
            while covered < duration_s {
                let s = &self.sessions[rng.gen_range(0..self.sessions.len())];
                let session = w.session_names.len() as u32;
                w.session_names.push(format!("client{c}-session{session}"));
                let mut think = 0.0;
                for t in s {
                    let idx = w.requests.len() as u32;
                    w.requests.push(Request {
                        arrival_s: start,
                        input_tokens: t.input_tokens,
                        output_tokens: t.output_tokens,
                        session: Some(session),
                        prefix_tokens: t.prefix_tokens,
                        follows: previous,
                        think_s: think,
                    });
                    previous = Some(idx);
                    think = t.think_s;
                    covered += t.think_s + 0.005 * t.output_tokens as f64;
                }
                if w.requests.len() > MAX_REQUESTS {
                    return Err(Error::config(
                        "duration_s",
                        format!(
                            "{duration_s} s with {clients} clients needs more than \
                             {MAX_REQUESTS} requests; shorten the window"
                        ),
                    ));
                }
            }
        }
        Ok(w)
    }
}

/// The empirical joint distribution of (input, output) tokens: draws a request of the
/// sample uniformly, keeping the pairing of prompt and answer lengths.
#[derive(Debug, Clone, PartialEq)]
pub struct EmpiricalTokens {
    pairs: Vec<(u32, u32)>,
}

impl EmpiricalTokens {
    /// From a workload's requests (at least one).
    pub fn from_workload(w: &Workload) -> Result<Self> {
        if w.requests.is_empty() {
            return Err(Error::config("tokens", "empty workload"));
        }
        Ok(Self {
            pairs: w
                .requests
                .iter()
                .map(|r| (r.input_tokens, r.output_tokens))
                .collect(),
        })
    }

    /// One (input, output) pair.
    pub(crate) fn sample(&self, rng: &mut impl Rng) -> (u32, u32) {
        self.pairs[rng.gen_range(0..self.pairs.len())]
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn envelope_warns_beyond_training_and_window_warnings_say_why() {
        let w = |reqs: Vec<(f64, u32, u32)>| Workload {
            requests: reqs
                .into_iter()
                .map(|(t, i, o)| Request::new(t, i, o))
                .collect(),
            ..Workload::default()
        };
        // Training: 11 requests over 10 s (1/s), prompts ≤ 500, outputs ≤ 200.
        let train = w((0..11).map(|k| (k as f64, 100 + 40 * k, 200)).collect());
        let env = TrafficEnvelope::of(&[&train]).unwrap();
        assert_eq!(
            (
                env.max_prompt_tokens,
                env.max_output_tokens,
                env.max_arrivals_per_s
            ),
            (500, 200, 1)
        );
        assert!((env.max_rate_per_s - 1.0).abs() < 1e-12);
        assert!(env.warnings(&train).is_empty());
        // A burst of 5 in 0.4 s with a 12k-token prompt: three warnings with the numbers.
        let burst = w((0..5)
            .map(|k| (k as f64 * 0.1, if k == 0 { 12_000 } else { 50 }, 10))
            .collect());
        let ws = env.warnings(&burst).join(" | ");
        assert!(
            ws.contains("1 request(s) have prompts longer") && ws.contains("12000"),
            "{ws}"
        );
        assert!(
            ws.contains("requests/s") && ws.contains("bursts of 5"),
            "{ws}"
        );
        // Windows.
        assert!(window_warnings(&train, 0.0, 20.0).is_empty());
        assert!(window_warnings(&train, 5.0, 100.0)[0].starts_with("5 of 11 requests"));
        assert!(window_warnings(&train, 1e9, 10.0)[0].contains("the trace is idle"));
    }

    use super::*;
    use rand::SeedableRng;

    #[test]
    fn renewal_rate_and_burstiness() {
        let tokens = EmpiricalTokens {
            pairs: vec![(10, 5), (20, 7)],
        };
        for (b, cv2) in [(1.0, 1.0), (0.25, 4.0), (4.0, 0.25)] {
            let mut rng = Pcg64::seed_from_u64(7);
            let w = Workload::gamma_renewal(5.0, b, 100.0, 4000.0, &tokens, &mut rng).unwrap();
            let n = w.requests.len() as f64;
            assert!((n / 4000.0 - 5.0).abs() < 0.25, "rate {}", n / 4000.0);
            let gaps: Vec<f64> = w
                .requests
                .windows(2)
                .map(|p| p[1].arrival_s - p[0].arrival_s)
                .collect();
            let m = gaps.iter().sum::<f64>() / gaps.len() as f64;
            let v = gaps.iter().map(|g| (g - m).powi(2)).sum::<f64>() / gaps.len() as f64;
            // Gamma(shape k): squared coefficient of variation 1/k.
            assert!(
                (v / (m * m) - cv2).abs() < 0.15 * cv2,
                "burstiness {b}: cv² {}",
                v / (m * m)
            );
            assert!(w.requests[0].arrival_s >= 100.0);
        }
    }

    #[test]
    fn log_columns_are_checked() {
        let p = Path::new("x.json");
        assert!(Workload::from_columns(p, &[1.0, 0.5], &[1, 1], &[1, 1])
            .unwrap_err()
            .to_string()
            .contains("row 1"));
        assert!(Workload::from_columns(p, &[1.0], &[0], &[1])
            .unwrap_err()
            .to_string()
            .contains("input_lens = 0"));
        assert!(Workload::from_columns(p, &[1.0], &[1, 2], &[1]).is_err());
    }
}

/// The traffic a model was learned on, to say when synthesis goes beyond it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrafficEnvelope {
    max_prompt_tokens: u32,
    max_output_tokens: u32,
    /// Requests per second over a run's span (first to last arrival), the highest run's.
    max_rate_per_s: f64,
    /// Most arrivals within any one second.
    max_arrivals_per_s: u32,
}

impl TrafficEnvelope {
    /// The envelope of several workloads (None without requests).
    pub(crate) fn of(workloads: &[&Workload]) -> Option<Self> {
        let reqs = workloads.iter().flat_map(|w| &w.requests);
        let max_prompt_tokens = reqs.clone().map(|r| r.input_tokens).max()?;
        Some(Self {
            max_prompt_tokens,
            max_output_tokens: reqs.map(|r| r.output_tokens).max().unwrap_or(0),
            max_rate_per_s: workloads.iter().map(|w| rate_per_s(w)).fold(0.0, f64::max),
            max_arrivals_per_s: workloads
                .iter()
                .map(|w| peak_arrivals_per_s(w))
                .max()
                .unwrap_or(0),
        })
    }

    /// What of `w` lies outside the envelope, one sentence each, with the numbers.
    pub(crate) fn warnings(&self, w: &Workload) -> Vec<String> {
        let mut out = Vec::new();
        let Some(target) = Self::of(&[w]) else {
            return out;
        };
        if target.max_prompt_tokens > self.max_prompt_tokens {
            let n = w
                .requests
                .iter()
                .filter(|r| r.input_tokens > self.max_prompt_tokens)
                .count();
            out.push(format!(
                "{n} request(s) have prompts longer than any in training (up to {} tokens vs {}): \
                 their prefill time and power are extrapolated",
                target.max_prompt_tokens, self.max_prompt_tokens
            ));
        }
        if target.max_output_tokens > self.max_output_tokens {
            out.push(format!(
                "outputs up to {} tokens, training saw up to {}",
                target.max_output_tokens, self.max_output_tokens
            ));
        }
        if target.max_rate_per_s > 1.5 * self.max_rate_per_s {
            out.push(format!(
                "{:.2} requests/s, above 1.5 × the busiest training run ({:.2}/s): batches larger \
                 than measured",
                target.max_rate_per_s, self.max_rate_per_s
            ));
        }
        if target.max_arrivals_per_s > 2 * self.max_arrivals_per_s.max(1) {
            out.push(format!(
                "bursts of {} arrivals in one second, training at most {}",
                target.max_arrivals_per_s, self.max_arrivals_per_s
            ));
        }
        out
    }
}

/// The finite arrival times of a workload, sorted.
fn arrival_times(w: &Workload) -> Vec<f64> {
    let mut t: Vec<f64> = w
        .requests
        .iter()
        .map(|r| r.arrival_s)
        .filter(|t| t.is_finite())
        .collect();
    t.sort_by(f64::total_cmp);
    t
}

/// Requests per second between the first and the last arrival (0 for fewer than two).
fn rate_per_s(w: &Workload) -> f64 {
    let t = arrival_times(w);
    match (t.first(), t.last()) {
        (Some(lo), Some(hi)) if hi > lo => (t.len() - 1) as f64 / (hi - lo),
        _ => 0.0,
    }
}

/// The most arrivals within any window of one second.
fn peak_arrivals_per_s(w: &Workload) -> u32 {
    let t = arrival_times(w);
    let (mut best, mut lo) = (0usize, 0usize);
    for hi in 0..t.len() {
        while t[hi] - t[lo] >= 1.0 {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best as u32
}

/// Why a synthesis window [t0, t0 + duration) would come out idle or cut traffic, if it would.
pub(crate) fn window_warnings(w: &Workload, t0_s: f64, duration_s: f64) -> Vec<String> {
    let t = arrival_times(w);
    let (Some(&lo), Some(&hi)) = (t.first(), t.last()) else {
        return vec!["the request log holds no request: the trace is idle".into()];
    };
    let t1 = t0_s + duration_s;
    let inside = t.iter().filter(|&&x| x >= t0_s && x < t1).count();
    if inside == 0 {
        vec![format!(
            "no request arrives in the window [{t0_s}, {t1}) s; the requests span [{lo}, {hi}] \
             s: the trace is idle (is --t0 on the requests' clock?)"
        )]
    } else if inside < t.len() {
        vec![format!(
            "{} of {} requests arrive outside the window [{t0_s}, {t1}) s (the requests span \
             [{lo}, {hi}] s)",
            t.len() - inside,
            t.len()
        )]
    } else {
        vec![]
    }
}
