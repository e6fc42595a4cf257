//! A battery on the feeder as OpenDSS's `Storage` element with external dispatch (the peer's
//! `BatteryStorage`, GRID.md "Storage droop"): a three-phase wye element whose terminal power
//! is the dispatch, and whose stored energy is integrated after each solve.
//!
//! What OpenDSS 0.14.5 does, measured with `opendssdirect.py` (IEEE 13, bus 671, 60 s steps;
//! the unit tests reproduce those readings):
//! - discharging P kW: the terminals inject P; stored −= (P + idling) / η_discharge · h;
//! - charging P kW: the terminals draw P; stored += (P − idling) · η_charge · h;
//! - P in both is the terminal power of the solution (what the element drew at the solved
//!   voltages, so below 0.9 pu less than dispatched), not the dispatch;
//! - idling (|P| ≤ 1e-9 kW): the terminals draw the idling kW (`%IdlingkW` of the kW rating),
//!   and the stored energy does not move;
//! - a discharge that reaches the reserve stops there and the element idles; a discharge
//!   requested at the reserve idles; likewise a charge at or up to the rating;
//! - kvar is injected as dispatched in every state;
//! - the power is constant inside [0.9, 1.1] pu of the element's base and an impedance
//!   continuous with it outside (Yeq/0.9², Yeq/1.1²).

use super::GridError;

/// Power below which a dispatch idles (kW), as the peer.
const IDLE_KW: f64 = 1e-9;

/// A battery's ratings and start (the peer's `BatteryStorage` fields).
#[derive(Debug, Clone, PartialEq)]
pub struct StorageSpec {
    pub name: String,
    /// A three-phase bus of the feeder.
    pub bus: String,
    /// Largest charge or discharge power (kW).
    pub kw_rated: f64,
    /// Apparent-power rating (kVA); the kW rating when not given.
    pub kva_rated: f64,
    /// Energy capacity (kWh).
    pub kwh_rated: f64,
    /// State of charge at the start (0..1).
    pub initial_soc: f64,
    /// State of charge a discharge stops at (0..1, ≤ the initial SOC).
    pub reserve_soc: f64,
    /// Charging and discharging efficiency (0..1].
    pub charge_efficiency: f64,
    pub discharge_efficiency: f64,
    /// Losses while connected, in % of the kW rating (OpenDSS `%IdlingkW`).
    pub idling_percent: f64,
}

impl StorageSpec {
    /// Checks every rating: positive, finite, fractions within [0, 1], reserve ≤ initial SOC.
    pub(crate) fn check(&self) -> Result<(), GridError> {
        let what = format!("storage {}", self.name);
        let fail = |msg: String| Err(GridError::invalid(what.clone(), msg));
        if self.name.is_empty() {
            return Err(GridError::invalid("storage", "needs a name"));
        }
        for (field, v) in [
            ("kw_rated", self.kw_rated),
            ("kva_rated", self.kva_rated),
            ("kwh_rated", self.kwh_rated),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return fail(format!("{field} = {v}: must be positive and finite"));
            }
        }
        if self.kva_rated < self.kw_rated {
            return fail(format!(
                "kva_rated {} is below kw_rated {}",
                self.kva_rated, self.kw_rated
            ));
        }
        for (field, v, zero_ok) in [
            ("initial_soc", self.initial_soc, true),
            ("reserve_soc", self.reserve_soc, true),
            ("charge_efficiency", self.charge_efficiency, false),
            ("discharge_efficiency", self.discharge_efficiency, false),
        ] {
            let low_ok = if zero_ok { v >= 0.0 } else { v > 0.0 };
            if !(low_ok && v <= 1.0) {
                return fail(format!("{field} = {v}: must be within (0, 1]"));
            }
        }
        if self.reserve_soc > self.initial_soc {
            return fail(format!(
                "reserve_soc {} is above initial_soc {}",
                self.reserve_soc, self.initial_soc
            ));
        }
        if !(self.idling_percent.is_finite() && self.idling_percent >= 0.0) {
            return fail(format!(
                "idling_percent = {}: must be ≥ 0",
                self.idling_percent
            ));
        }
        Ok(())
    }

    fn idling_kw(&self) -> f64 {
        self.idling_percent / 100.0 * self.kw_rated
    }
}

/// What a battery is doing in a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StorageMode {
    Idling,
    Charging,
    Discharging,
}

impl StorageMode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            StorageMode::Idling => "idling",
            StorageMode::Charging => "charging",
            StorageMode::Discharging => "discharging",
        }
    }
}

/// A battery during a run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StorageUnit {
    pub(crate) spec: StorageSpec,
    pub(crate) stored_kwh: f64,
    /// The dispatch last set (kW, + discharging; kvar, + injecting).
    dispatch_kw: f64,
    dispatch_kvar: f64,
    /// The mode of the coming (or last) solve.
    pub(crate) mode: StorageMode,
}

impl StorageUnit {
    pub(crate) fn new(spec: StorageSpec) -> Result<StorageUnit, GridError> {
        spec.check()?;
        let stored_kwh = spec.initial_soc * spec.kwh_rated;
        Ok(StorageUnit {
            spec,
            stored_kwh,
            dispatch_kw: 0.0,
            dispatch_kvar: 0.0,
            mode: StorageMode::Idling,
        })
    }

    /// Sets the dispatch kept until the next command; refuses one beyond the ratings.
    pub(crate) fn set_dispatch(&mut self, kw: f64, kvar: f64) -> Result<(), GridError> {
        let what = || format!("storage {} dispatch", self.spec.name);
        if !(kw.is_finite() && kvar.is_finite()) {
            return Err(GridError::invalid(
                what(),
                format!("{kw} kW, {kvar} kvar: must be finite"),
            ));
        }
        if kw.abs() > self.spec.kw_rated + 1e-9 {
            return Err(GridError::invalid(
                what(),
                format!("{kw} kW exceeds the rating {} kW", self.spec.kw_rated),
            ));
        }
        let kva = (kw * kw + kvar * kvar).sqrt();
        if kva > self.spec.kva_rated + 1e-9 {
            return Err(GridError::invalid(
                what(),
                format!("{kva} kVA exceeds the rating {} kVA", self.spec.kva_rated),
            ));
        }
        self.dispatch_kw = kw;
        self.dispatch_kvar = kvar;
        Ok(())
    }

    pub(crate) fn soc(&self) -> f64 {
        self.stored_kwh / self.spec.kwh_rated
    }

    fn reserve_kwh(&self) -> f64 {
        self.spec.reserve_soc * self.spec.kwh_rated
    }

    /// The mode and terminal power (kW injected, kvar injected) for the coming solve: the
    /// dispatch, unless the battery is empty (at its reserve) for a discharge or full for a
    /// charge, when it idles.
    pub(crate) fn prepare_solve(&mut self) -> (f64, f64) {
        let kw = self.dispatch_kw;
        self.mode = if kw.abs() <= IDLE_KW {
            StorageMode::Idling
        } else if kw > 0.0 {
            if self.stored_kwh <= self.reserve_kwh() {
                StorageMode::Idling
            } else {
                StorageMode::Discharging
            }
        } else if self.stored_kwh >= self.spec.kwh_rated {
            StorageMode::Idling
        } else {
            StorageMode::Charging
        };
        let injected_kw = match self.mode {
            StorageMode::Idling => -self.spec.idling_kw(),
            _ => kw,
        };
        (injected_kw, self.dispatch_kvar)
    }

    /// Integrates the stored energy over a step of `dt_s` in the mode of the last solve, at
    /// the terminal power that solve gave (`injected_kw`, + discharging); a battery that
    /// reaches its reserve or its rating stops there and idles.
    pub(crate) fn advance(&mut self, dt_s: f64, injected_kw: f64) {
        let h = dt_s / 3600.0;
        let idling = self.spec.idling_kw();
        match self.mode {
            StorageMode::Idling => {}
            StorageMode::Discharging => {
                let kw = injected_kw;
                self.stored_kwh -= (kw + idling) / self.spec.discharge_efficiency * h;
                if self.stored_kwh <= self.reserve_kwh() {
                    self.stored_kwh = self.reserve_kwh();
                    self.mode = StorageMode::Idling;
                }
            }
            StorageMode::Charging => {
                let kw = -injected_kw;
                let net = kw - idling;
                if net >= 0.0 {
                    self.stored_kwh += net * self.spec.charge_efficiency * h;
                } else {
                    self.stored_kwh += net / self.spec.discharge_efficiency * h;
                }
                if self.stored_kwh >= self.spec.kwh_rated {
                    self.stored_kwh = self.spec.kwh_rated;
                    self.mode = StorageMode::Idling;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe's battery: 250 kW, 300 kVA, 100 kWh, reserve 20 %, η 0.9 / 0.95, 1 % idling.
    fn probe(initial_soc: f64) -> StorageUnit {
        StorageUnit::new(StorageSpec {
            name: "bess".into(),
            bus: "671".into(),
            kw_rated: 250.0,
            kva_rated: 300.0,
            kwh_rated: 100.0,
            initial_soc,
            reserve_soc: 0.2,
            charge_efficiency: 0.9,
            discharge_efficiency: 0.95,
            idling_percent: 1.0,
        })
        .unwrap()
    }

    /// One 60 s step; the solve's terminal power is the dispatch, or `solved_kw` (what
    /// OpenDSS's solution gave) when known.
    fn step_at(
        u: &mut StorageUnit,
        kw: f64,
        kvar: f64,
        solved_kw: Option<f64>,
    ) -> (f64, f64, StorageMode) {
        u.set_dispatch(kw, kvar).unwrap();
        let (p, q) = u.prepare_solve();
        u.advance(60.0, solved_kw.unwrap_or(p));
        (p, q, u.mode)
    }

    fn step(u: &mut StorageUnit, kw: f64, kvar: f64) -> (f64, f64, StorageMode) {
        step_at(u, kw, kvar, None)
    }

    /// SOC after each 60 s step as OpenDSS 0.14.5 reported it (`Storages.puSOC` after
    /// `Solution.Cleanup`), same battery, dispatches and solved terminal kW
    /// (`CktElement.Powers`).
    #[test]
    fn soc_follows_opendss() {
        let mut u = probe(0.5);
        let seq: [(f64, f64, f64, f64); 6] = [
            (200.0, 0.0, 199.99674253573414, 0.4644742556954852),
            (200.0, 0.0, 199.99995272946046, 0.42894794819908866),
            (250.0, 50.0, 250.00276007404258, 0.38464921836153737),
            (0.0, 0.0, -2.49999067341413, 0.38464921836153737),
            (-200.0, 0.0, -199.99609869919954, 0.4142736331664173),
            (-250.0, -30.0, -249.99717236948476, 0.4513982090218401),
        ];
        for (kw, kvar, solved, soc) in seq {
            step_at(&mut u, kw, kvar, Some(solved));
            assert!((u.soc() - soc).abs() < 1e-12, "{kw}: {} vs {soc}", u.soc());
        }
    }

    #[test]
    fn reserve_and_full_stop_the_battery() {
        // OpenDSS: from SOC 0.23867715489559949 a 250 kW discharge ends at 0.2 and idles;
        // the next discharge request idles and draws the 2.5 kW idling losses.
        let mut u = probe(0.5);
        u.stored_kwh = 23.867_715_489_559_95;
        assert_eq!(step(&mut u, 250.0, 0.0).2, StorageMode::Idling);
        assert!((u.soc() - 0.2).abs() < 1e-12);
        let (p, _, mode) = step(&mut u, 250.0, 0.0);
        assert_eq!((p, mode), (-2.5, StorageMode::Idling));
        // A charge from 0.2: OpenDSS 0.23712403537707386.
        step_at(&mut u, -250.0, 0.0, Some(-249.99356918049227));
        assert!((u.soc() - 0.23712403537707386).abs() < 1e-12);
        // From 0.9 three 250 kW charges reach 1.0 (OpenDSS 0.93712, 0.97425, 1.0), then idle.
        let mut u = probe(0.9);
        for (solved, soc) in [
            (-249.99917600641115, 0.9371248764009618),
            (-249.99998056971276, 0.9742498734864187),
            (-249.9999994611351, 1.0),
        ] {
            step_at(&mut u, -250.0, 0.0, Some(solved));
            assert!((u.soc() - soc).abs() < 1e-12, "{} vs {soc}", u.soc());
        }
        assert_eq!(step(&mut u, -250.0, 0.0).0, -2.5);
        // Discharging from full works: OpenDSS 0.9820173693453698.
        step_at(&mut u, 100.0, 0.0, Some(100.00099473139215));
        assert!((u.soc() - 0.9820173693453698).abs() < 1e-12);
    }

    #[test]
    fn idle_keeps_kvar_and_ratings_are_enforced() {
        let mut u = probe(0.5);
        assert_eq!(step(&mut u, 0.0, 100.0), (-2.5, 100.0, StorageMode::Idling));
        assert!(u.set_dispatch(251.0, 0.0).is_err());
        assert!(u.set_dispatch(250.0, 170.0).is_err());
        assert!(u.set_dispatch(f64::NAN, 0.0).is_err());
        let mut spec = probe(0.5).spec;
        spec.reserve_soc = 0.6;
        assert!(spec
            .check()
            .unwrap_err()
            .to_string()
            .contains("reserve_soc"));
    }
}
