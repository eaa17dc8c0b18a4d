//! The simulated patient's values at a given device time: resting baseline, the
//! typical ketamine response, scripted events, and small seeded noise.
//!
//! The ketamine response follows the 2,342-infusion series in docs/alarms.md [BP40]:
//! SBP/DBP rise by a mean +16/+11 mmHg, peaking about 40 minutes after the infusion
//! starts, and settle in recovery (time constant 12 min here). HR rises a little
//! (+6 /min at the peak). SpO2 and RR do not change at these doses. The noise is
//! small on purpose: a normal demo patient must stay inside the default alarm limits.

use super::{EventKind, SessionScript};
use fastrand::Rng;

/// Mean rise at the response's peak, mmHg (SBP, DBP) and /min (HR).
const SBP_RISE: f64 = 16.0;
const DBP_RISE: f64 = 11.0;
const HR_RISE: f64 = 6.0;
/// Infusion minute of the peak.
const PEAK_MINUTE: f64 = 40.0;
/// How fast the rise settles in recovery, minutes.
const RECOVERY_TAU_MIN: f64 = 12.0;
/// Longest ramp into and out of a physiological event.
const MAX_RAMP_MS: u64 = 8_000;

/// Fraction (0..=1) of the typical ketamine BP rise, `infusion_min` minutes after the
/// infusion started, for an infusion of `infusion_len_min` minutes (then recovery).
/// Rises smoothly to 1 at minute 40, declines slowly if the infusion goes on, decays
/// exponentially once it stops.
pub fn ketamine_bp_fraction(infusion_min: f64, infusion_len_min: f64) -> f64 {
    let during = |m: f64| {
        if m <= 0.0 {
            0.0
        } else if m <= PEAK_MINUTE {
            (std::f64::consts::FRAC_PI_2 * m / PEAK_MINUTE).sin()
        } else {
            (1.0 - 0.0075 * (m - PEAK_MINUTE)).max(0.85)
        }
    };
    if infusion_min <= infusion_len_min {
        during(infusion_min)
    } else {
        let r = infusion_min - infusion_len_min;
        during(infusion_len_min) * (-r / RECOVERY_TAU_MIN).exp()
    }
}

/// Triangular noise in `[-amp, amp]`.
fn noise(rng: &mut Rng, amp: f64) -> f64 {
    (rng.f64() + rng.f64() - 1.0) * amp
}

/// 0 outside the event, 1 at its height, ramping linearly in and out.
fn envelope(start: u64, end: u64, t: u64) -> f64 {
    let ramp = ((end - start) / 4).clamp(1, MAX_RAMP_MS) as f64;
    let up = (t.saturating_sub(start)) as f64 / ramp;
    let down = (end.saturating_sub(t)) as f64 / ramp;
    up.min(down).clamp(0.0, 1.0)
}

fn lerp(from: f64, to: f64, x: f64) -> f64 {
    from + (to - from) * x
}

/// The session's values at device time `t`.
pub(super) struct Physiology<'a> {
    pub s: &'a SessionScript,
}

impl Physiology<'_> {
    fn ketamine(&self, t: u64) -> f64 {
        let start = self.s.infusion_start();
        if t < start {
            return 0.0;
        }
        let min = (t - start) as f64 / 60_000.0;
        ketamine_bp_fraction(min, self.s.infusion_ms as f64 / 60_000.0) * self.s.response
    }

    /// The envelope and kind of the physiological event in progress at `t` that
    /// `pick` selects (its target value).
    fn event(&self, t: u64, pick: impl Fn(&EventKind) -> Option<f64>) -> Option<(f64, f64)> {
        self.s
            .events
            .iter()
            .filter(|e| e.covers(t))
            .find_map(|e| pick(&e.kind).map(|v| (v, envelope(e.start_ms, e.end_ms, t))))
    }

    pub fn hr(&self, t: u64, rng: &mut Rng) -> f64 {
        let normal = self.s.baseline.hr + HR_RISE * self.ketamine(t) + noise(rng, 2.0);
        let v = match self.event(t, |k| match k {
            EventKind::Bradycardia { hr } | EventKind::Tachycardia { hr } => Some(*hr),
            _ => None,
        }) {
            Some((target, x)) => lerp(normal, target, x),
            None => normal,
        };
        v.round().clamp(20.0, 250.0)
    }

    pub fn spo2(&self, t: u64, rng: &mut Rng) -> f64 {
        if let Some(e) = self
            .s
            .event_at(t, |k| matches!(k, EventKind::MotionArtefact { .. }))
        {
            if let EventKind::MotionArtefact { spo2 } = e.kind {
                return spo2.round();
            }
        }
        let normal = self.s.baseline.spo2 + noise(rng, 1.0);
        let v = match self.event(t, |k| match k {
            EventKind::Desaturation { spo2 } | EventKind::RespiratoryDepression { spo2, .. } => {
                Some(*spo2)
            }
            _ => None,
        }) {
            Some((target, x)) => lerp(normal, target, x),
            None => normal,
        };
        v.round().clamp(50.0, 100.0)
    }

    pub fn rr(&self, t: u64, rng: &mut Rng) -> f64 {
        let normal = self.s.baseline.rr + noise(rng, 1.2);
        let v = match self.event(t, |k| match k {
            EventKind::RespiratoryDepression { rr, .. } => Some(*rr),
            _ => None,
        }) {
            Some((target, x)) => lerp(normal, target, x),
            None => normal,
        };
        v.round().clamp(2.0, 60.0)
    }

    /// EtCO2 rises as breathing slows (hypoventilation).
    pub fn etco2(&self, t: u64, rng: &mut Rng) -> Option<f64> {
        let base = self.s.baseline.etco2?;
        let rise = self
            .event(t, |k| match k {
                EventKind::RespiratoryDepression { .. } => Some(15.0),
                _ => None,
            })
            .map_or(0.0, |(r, x)| r * x);
        Some((base + rise + noise(rng, 1.5)).round().clamp(10.0, 90.0))
    }

    /// One NIBP cuff reading (SBP, DBP). `artefact` is an artefact's exact values.
    pub fn cuff(&self, t: u64, artefact: Option<(f64, f64)>, rng: &mut Rng) -> (f64, f64) {
        if let Some(v) = artefact {
            return v;
        }
        let surge = self.s.events.iter().find_map(|e| match e.kind {
            EventKind::BpSurge { sbp, dbp } if e.covers(t) => Some((sbp, dbp)),
            _ => None,
        });
        // A slow rise: the fraction of the way from the usual curve to its target.
        let slow = self.s.events.iter().find_map(|e| match e.kind {
            EventKind::SlowHypertension { sbp, dbp } if e.covers(t) => {
                let x = (t - e.start_ms) as f64 / (e.end_ms - e.start_ms) as f64;
                Some((sbp, dbp, x))
            }
            _ => None,
        });
        let (sbp, dbp) = match surge {
            Some((sbp, dbp)) => (sbp + noise(rng, 3.0), dbp + noise(rng, 2.0)),
            None => {
                let k = self.ketamine(t);
                let (mut sbp, mut dbp) = (
                    self.s.baseline.sbp + SBP_RISE * k,
                    self.s.baseline.dbp + DBP_RISE * k,
                );
                if let Some((to_sbp, to_dbp, x)) = slow {
                    (sbp, dbp) = (lerp(sbp, to_sbp, x), lerp(dbp, to_dbp, x));
                }
                // Same draws in the same order with or without the event.
                (sbp + noise(rng, 4.0), dbp + noise(rng, 3.0))
            }
        };
        (
            sbp.round().clamp(40.0, 300.0),
            dbp.round().clamp(20.0, 200.0),
        )
    }

    /// The pump's (running, rate, infused so far) at `t`, for `iv` in infusion and
    /// recovery.
    pub fn pump(&self, t: u64) -> (bool, f64, f64) {
        let start = self.s.infusion_start();
        let end = self.s.recovery_start();
        let running = t >= start && t < end;
        let hours = (t.clamp(start, end) - start) as f64 / 3_600_000.0;
        let infused = (self.s.pump_rate_ml_h * hours * 10.0).round() / 10.0;
        let rate = if running { self.s.pump_rate_ml_h } else { 0.0 };
        (running, rate, infused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rise_peaks_at_minute_40_and_settles_in_recovery() {
        let peak = (0..=60)
            .map(|m| (m, ketamine_bp_fraction(m as f64, 60.0)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap();
        assert_eq!(peak.0, 40);
        assert!((peak.1 - 1.0).abs() < 1e-9);
        assert!(ketamine_bp_fraction(5.0, 60.0) < 0.25);
        assert!(ketamine_bp_fraction(60.0 + 45.0, 60.0) < 0.05);
    }

    #[test]
    fn envelope_ramps_in_and_out() {
        assert_eq!(envelope(0, 40_000, 0), 0.0);
        assert_eq!(envelope(0, 40_000, 20_000), 1.0);
        assert!(envelope(0, 40_000, 36_000) < 0.6);
        assert_eq!(envelope(0, 40_000, 40_000), 0.0);
    }
}
