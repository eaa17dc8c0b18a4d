//! Where a newly raised alarm's id comes from.
//!
//! A single gateway counts (ids start after its start time in microseconds, so
//! an id from an earlier run never names another patient's alarm). In a
//! cluster, a partition's next owner may evaluate again device messages the
//! previous owner already evaluated (their acknowledgements lost with it): the
//! same reading raising the same alarm there must get the same id, so that the
//! events stream drops the repeat instead of showing one breach as two alarms.
//! There the id is derived from what raised it: the chair, the rule and the
//! device time of the reading ([`derived`]).

use std::sync::atomic::{AtomicU64, Ordering};

/// What a newly raised alarm comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlarmSeed<'a> {
    /// The rule whose condition raised it.
    pub rule: &'a str,
    /// The time of the measurement that raised it: device time for
    /// physiological conditions, gateway time for technical ones; for an alarm
    /// a session or limit change raised (judging the latest values again), the
    /// change's gateway time.
    pub ts: u64,
}

/// How a ward numbers the alarms it raises.
#[derive(Debug)]
pub enum AlarmIds {
    /// One more than the last id given (single-node mode).
    After(AtomicU64),
    /// [`derived`] from the chair and the seed (cluster mode).
    Derived,
}

impl AlarmIds {
    /// The id of an alarm raised on `chair` from `seed`.
    pub fn next(&self, chair: &str, seed: AlarmSeed<'_>) -> u64 {
        match self {
            AlarmIds::After(last) => last.fetch_add(1, Ordering::Relaxed) + 1,
            AlarmIds::Derived => derived(chair, seed),
        }
    }
}

/// Ids stay within JavaScript's exact integers (2^53 - 1): dashboards parse them
/// as numbers.
const MAX_ID: u64 = (1 << 53) - 1;

/// The alarm id for `chair` and `seed`: FNV-1a (64 bits) of the chair, the rule
/// and the time, cut to 53 bits, never 0. The same reading raising the same
/// rule on the same chair always gets the same id. Two different alarms get
/// the same id with a chance of about n²/2^54 among n alarms open at once
/// (below one in a billion for n = 4,000); a device whose clock steps back onto
/// the exact millisecond of an earlier raise of the same rule gets that
/// alarm's id again.
pub fn derived(chair: &str, seed: AlarmSeed<'_>) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = [
        chair.as_bytes(),
        b"\0",
        seed.rule.as_bytes(),
        b"\0",
        &seed.ts.to_be_bytes(),
    ]
    .iter()
    .flat_map(|part| part.iter())
    .fold(OFFSET_BASIS, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME));
    (hash & MAX_ID).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_derived_id_depends_on_chair_rule_and_time_only() {
        let seed = AlarmSeed {
            rule: "spo2_low",
            ts: 1_764_110_405_123,
        };
        let id = derived("north/3", seed);
        assert_eq!(id, derived("north/3", seed));
        assert!((1..=MAX_ID).contains(&id));
        assert_ne!(id, derived("north/4", seed));
        assert_ne!(
            id,
            derived(
                "north/3",
                AlarmSeed {
                    rule: "hr_high",
                    ..seed
                }
            )
        );
        assert_ne!(
            id,
            derived(
                "north/3",
                AlarmSeed {
                    ts: seed.ts + 1,
                    ..seed
                }
            )
        );
        // The separator keeps chair and rule apart.
        assert_ne!(
            derived("a/b", AlarmSeed { rule: "c", ts: 1 }),
            derived("a/", AlarmSeed { rule: "bc", ts: 1 })
        );
    }

    #[test]
    fn counted_ids_follow_the_last_one() {
        let ids = AlarmIds::After(AtomicU64::new(41));
        let seed = AlarmSeed { rule: "r", ts: 0 };
        assert_eq!(ids.next("a/1", seed), 42);
        assert_eq!(ids.next("a/1", seed), 43);
        assert_eq!(AlarmIds::Derived.next("a/1", seed), derived("a/1", seed));
    }
}
