//! Workloads (SPEC §6): the requests that drive a serving engine — arrival time, input
//! (prompt) tokens and output tokens. Sources: a vLLM benchmark request log, Poisson arrivals
//! at a rate, Gamma-renewal arrivals with a burstiness factor (vLLM's convention: 1 = Poisson,
//! < 1 burstier, > 1 smoother), with token counts drawn from an empirical distribution.

use std::collections::HashMap;
use std::path::Path;

use rand::Rng;
use rand_distr::{Distribution, Gamma};
use rand_pcg::Pcg64;

use crate::error::{Error, Result};
use crate::sources::measured::{read_request_log, RequestLog};

/// One request as the client sends it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Request {
    /// When the client sent it (unix seconds, or seconds from any origin the caller keeps).
    pub arrival_s: f64,
    /// Prompt tokens (prefill work).
    pub input_tokens: u32,
    /// Generated tokens (1 from the prefill step, the rest one per decode step).
    pub output_tokens: u32,
    /// The agent or chat session the request belongs to (an index into
    /// [`Workload::session_names`]), if the log says.
    pub session: Option<u32>,
    /// Leading prompt tokens the load generator declares as repeated context (0 = not
    /// declared; a later turn of a session then reuses the session's previous prompt).
    pub prefix_tokens: u32,
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
    pub fn from_log(log: &RequestLog) -> Result<Self> {
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
    pub fn from_columns(
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
    pub fn gamma_renewal(
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

    /// The same requests, arrivals moved by `shift_s`.
    pub fn shifted(&self, shift_s: f64) -> Self {
        Self {
            requests: self
                .requests
                .iter()
                .map(|r| Request {
                    arrival_s: r.arrival_s + shift_s,
                    ..*r
                })
                .collect(),
            session_names: self.session_names.clone(),
        }
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
    pub fn sample(&self, rng: &mut impl Rng) -> (u32, u32) {
        self.pairs[rng.gen_range(0..self.pairs.len())]
    }
}

#[cfg(test)]
mod tests {
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
