//! Where a device's clock stands against the gateway's.
//!
//! A reading's `ts` is the device's time of measurement; the session's times (the
//! infusion's start) are the clinic system's or the gateway's. To say how many
//! minutes into the infusion a reading was taken, its `ts` is moved onto the
//! gateway's clock by the device's offset, estimated as the smallest
//! `received − ts` seen recently: delivery only ever adds delay, so the smallest
//! difference is the one closest to the clock offset alone (as NTP's clock filter
//! keeps its lowest-delay sample). A burst of readings delivered late (a device that
//! buffered through a network outage, a gateway restart) then keeps the minutes it
//! was measured at, instead of the minute it arrived.
//!
//! The minimum is taken over two consecutive buckets of [`BUCKET_MS`] of gateway
//! time, so a clock that is corrected or drifts is followed within twice that; the
//! last estimate carries over a silence of any length, and is recorded with each
//! session event so a restarted gateway starts from it. A chair whose very first
//! readings arrive late in a burst has nothing better than their own delays.

/// Length of one bucket of the minimum, gateway ms.
pub const BUCKET_MS: u64 = 15 * 60_000;

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct DeviceClock {
    /// Gateway time the current bucket started.
    bucket_start: u64,
    /// Smallest `received − ts` in the current bucket and in the one before it.
    current: Option<i64>,
    previous: Option<i64>,
}

impl DeviceClock {
    /// A reading stamped `ts` by the device arrived at gateway time `received`.
    pub fn observe(&mut self, ts: u64, received: u64) {
        if self.current.is_none() && self.previous.is_none() {
            self.bucket_start = received;
        }
        if received.saturating_sub(self.bucket_start) >= BUCKET_MS {
            // After a silence, the last estimate carries over whatever its age: a
            // clock drifts little in an outage, and the readings that end one are
            // the late ones it must not be taken from.
            self.previous = self.current.or(self.previous);
            self.current = None;
            self.bucket_start = received;
        }
        let offset = received as i64 - ts as i64;
        self.current = Some(self.current.map_or(offset, |o| o.min(offset)));
    }

    /// Start from an offset estimated before (restored after a gateway restart), so
    /// that readings redelivered late in a burst are not the first estimate.
    pub fn seed(&mut self, offset: i64) {
        *self = DeviceClock {
            bucket_start: 0,
            current: None,
            previous: Some(offset),
        };
    }

    /// The estimated `gateway − device` offset, ms, if any reading has been seen.
    pub fn offset(&self) -> Option<i64> {
        match (self.current, self.previous) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Device time `ts` on the gateway's clock (unchanged without an estimate).
    pub fn to_gateway(&self, ts: u64) -> u64 {
        match self.offset() {
            Some(o) => (ts as i64).saturating_add(o).max(0) as u64,
            None => ts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_780_000_000_000;
    const MIN: u64 = 60_000;

    #[test]
    fn a_late_burst_keeps_the_time_it_was_measured_at() {
        let mut clock = DeviceClock::default();
        // A device 2 minutes behind, delivering within 50 ms, each second.
        let behind = 2 * MIN;
        for s in 0..600 {
            let ts = T0 + s * 1000;
            clock.observe(ts, ts + behind + 50);
        }
        // Then 13 minutes buffered and delivered together.
        let outage_start = T0 + 600_000;
        let delivered = outage_start + 13 * MIN + behind;
        for s in 0..780 {
            clock.observe(outage_start + s * 1000, delivered);
        }
        let measured = outage_start + 5 * MIN;
        assert_eq!(clock.to_gateway(measured), measured + behind + 50);
    }

    #[test]
    fn a_corrected_clock_is_followed_within_two_buckets() {
        let mut clock = DeviceClock::default();
        let mut t = T0;
        // A device 10 minutes ahead.
        while t < T0 + 20 * MIN {
            clock.observe(t + 10 * MIN, t);
            t += 1000;
        }
        assert_eq!(clock.offset(), Some(-((10 * MIN) as i64)));
        // Its clock is set right: the old offset ages out.
        while t < T0 + 20 * MIN + 2 * BUCKET_MS {
            clock.observe(t, t + 20);
            t += 1000;
        }
        assert_eq!(clock.offset(), Some(20));
    }

    #[test]
    fn an_outage_of_any_length_keeps_the_estimate_and_so_does_a_restart() {
        let mut clock = DeviceClock::default();
        for s in 0..60 {
            let ts = T0 + s * 1000;
            clock.observe(ts, ts + 40);
        }
        // An hour without anything, then the buffered hour in one burst.
        let back = T0 + 60_000 + 3_600_000;
        for s in 0..3600 {
            clock.observe(T0 + 60_000 + s * 1000, back);
        }
        assert_eq!(clock.offset(), Some(40));
        // A restarted gateway, seeded with the offset it recorded, then a burst.
        let mut restarted = DeviceClock::default();
        restarted.seed(40);
        let redelivered = T0 + 900_000;
        for s in 0..600 {
            restarted.observe(T0 + s * 1000, redelivered);
        }
        assert_eq!(restarted.to_gateway(T0 + 300_000), T0 + 300_040);
    }

    #[test]
    fn without_readings_device_time_is_taken_as_it_is() {
        assert_eq!(DeviceClock::default().to_gateway(T0), T0);
    }
}
