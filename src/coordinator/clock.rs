//! Exact simulation time. Every period is a rational number of seconds (`num_rational`), the
//! clock counts integer ticks of the greatest common period, and `t = tick · tick_s` is
//! computed from integers each time, so there is no drift however long the run (a day at
//! 0.1 s is 864 000 exact ticks, not 864 000 additions of an inexact 0.1).

use num_integer::Integer;
use num_rational::Ratio;

use crate::error::{Error, Result};

/// Seconds as an exact fraction.
pub type Seconds = Ratio<u64>;

/// Parses a period: `"1/10"`, `"0.1"`, `"3600"` (decimal text is read exactly: "0.1" is 1/10).
pub(crate) fn parse_seconds(field: &str, text: &str) -> Result<Seconds> {
    let bad = |why: &str| Error::config(field, format!("{text:?} ({why})"));
    let t = text.trim();
    let value = if let Some((n, d)) = t.split_once('/') {
        let n: u64 = n
            .trim()
            .parse()
            .map_err(|_| bad("numerator is not a whole number"))?;
        let d: u64 = d
            .trim()
            .parse()
            .map_err(|_| bad("denominator is not a whole number"))?;
        if d == 0 {
            return Err(bad("zero denominator"));
        }
        Ratio::new(n, d)
    } else {
        let (int, frac) = t.split_once('.').unwrap_or((t, ""));
        if frac.len() > 12 || int.is_empty() && frac.is_empty() {
            return Err(bad(
                "expected a decimal with at most 12 fractional digits or a/b",
            ));
        }
        let digits = format!("{int}{frac}");
        if !digits.chars().all(|c| c.is_ascii_digit()) {
            return Err(bad("not a non-negative number"));
        }
        let n: u64 = digits.parse().map_err(|_| bad("out of range"))?;
        Ratio::new(n, 10u64.pow(frac.len() as u32))
    };
    if value == Ratio::from_integer(0) {
        return Err(bad("must be > 0"));
    }
    Ok(value)
}

/// Exact rational form of a float period given in a configuration file (its shortest decimal
/// text, so 0.1 → 1/10).
pub(crate) fn seconds_from_f64(field: &str, value: f64) -> Result<Seconds> {
    if !(value > 0.0 && value.is_finite()) {
        return Err(Error::config(field, format!("{value} (must be > 0)")));
    }
    parse_seconds(field, &format!("{value}"))
}

/// Greatest common divisor of two positive fractions: gcd(a/b, c/d) = gcd(ad, cb) / bd.
/// An error when the products overflow (periods whose ratio is no simple fraction).
pub(crate) fn gcd(a: Seconds, b: Seconds) -> Result<Seconds> {
    let (an, ad) = (*a.numer(), *a.denom());
    let (bn, bd) = (*b.numer(), *b.denom());
    let products = an
        .checked_mul(bd)
        .zip(bn.checked_mul(ad))
        .zip(ad.checked_mul(bd));
    match products {
        Some(((x, y), d)) => Ok(Ratio::new(x.gcd(&y), d)),
        None => Err(Error::config(
            "periods",
            format!(
                "{a} s and {b} s have no common tick within 64-bit integers: give periods \
                 whose ratio is a simple fraction (\"1/10\", 0.25, 1)"
            ),
        )),
    }
}

/// Seconds as f64 (one rounding, from integers).
pub fn to_f64(s: Seconds) -> f64 {
    *s.numer() as f64 / *s.denom() as f64
}

/// The shared clock: an integer tick counter and the tick length.
#[derive(Debug, Clone)]
pub struct SimulationClock {
    tick_s: Seconds,
    tick: u64,
}

impl SimulationClock {
    pub fn new(tick_s: Seconds) -> Result<Self> {
        if *tick_s.numer() == 0 {
            return Err(Error::config("clock.tick_s", "0 (must be > 0)"));
        }
        Ok(SimulationClock { tick_s, tick: 0 })
    }
    /// Ticks since the start.
    pub(crate) fn tick(&self) -> u64 {
        self.tick
    }
    /// Exact time since the start.
    pub fn time(&self) -> Seconds {
        self.tick_s * Ratio::from_integer(self.tick)
    }
    /// Time since the start (s), from integers: no accumulated rounding.
    pub(crate) fn time_s(&self) -> f64 {
        let (n, d) = (*self.tick_s.numer() as u128, *self.tick_s.denom() as u128);
        (self.tick as u128 * n) as f64 / d as f64
    }
    /// How many ticks make `period`; an error unless it is a whole number.
    pub(crate) fn ticks_per(&self, field: &str, period: Seconds) -> Result<u64> {
        let q = period / self.tick_s;
        if !q.is_integer() || *q.numer() == 0 {
            return Err(Error::config(
                field,
                format!(
                    "period {period} s is not a positive multiple of the tick {} s",
                    self.tick_s
                ),
            ));
        }
        Ok(q.to_integer())
    }
    /// True when a component stepping every `every` ticks is due now (everything is due at 0).
    pub(crate) fn is_due(&self, every: u64) -> bool {
        self.tick.is_multiple_of(every)
    }
    pub fn advance(&mut self) {
        self.tick += 1;
    }
    pub(crate) fn reset(&mut self) {
        self.tick = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exact_periods() {
        assert_eq!(parse_seconds("dt", "1/10").unwrap(), Ratio::new(1, 10));
        assert_eq!(parse_seconds("dt", "0.1").unwrap(), Ratio::new(1, 10));
        assert_eq!(
            parse_seconds("dt", "3600").unwrap(),
            Ratio::from_integer(3600)
        );
        assert_eq!(parse_seconds("dt", "0.25").unwrap(), Ratio::new(1, 4));
        assert_eq!(seconds_from_f64("dt", 0.1).unwrap(), Ratio::new(1, 10));
        for bad in ["0", "-1", "1/0", "x", "0.0"] {
            assert!(parse_seconds("dt", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn gcd_of_periods() {
        let g = gcd(Ratio::new(1, 10), Ratio::from_integer(1)).unwrap();
        assert_eq!(g, Ratio::new(1, 10));
        assert_eq!(
            gcd(Ratio::new(1, 4), Ratio::new(1, 6)).unwrap(),
            Ratio::new(1, 12)
        );
        assert_eq!(
            gcd(Ratio::new(3, 10), Ratio::new(1, 2)).unwrap(),
            Ratio::new(1, 10)
        );
        assert!(gcd(Ratio::new(1, u64::MAX / 3), Ratio::new(1, 7)).is_err());
    }

    #[test]
    fn no_drift_over_a_day_at_a_tenth_of_a_second() {
        let mut c = SimulationClock::new(Ratio::new(1, 10)).unwrap();
        let mut naive = 0.0f64;
        for _ in 0..864_000 {
            c.advance();
            naive += 0.1;
        }
        assert_eq!(c.time_s(), 86_400.0);
        assert_eq!(c.time(), Ratio::from_integer(86_400));
        // The naive sum drifts; the clock does not.
        assert!((naive - 86_400.0).abs() > 1e-7);
        assert!(c.ticks_per("p", Ratio::new(3, 10)).unwrap() == 3);
        assert!(c.ticks_per("p", Ratio::new(1, 20)).is_err());
    }
}
