//! Per-reading bookkeeping of one chair: the recent values trend rules judge, and
//! the set of conditions a reading makes due.

use std::collections::VecDeque;

/// Recent values of one vital for trend rules: at most [`TREND_SAMPLES`], spaced at
/// least a sixteenth of the window apart so that they cover the whole window.
///
/// [`TREND_SAMPLES`]: crate::core::rules::TREND_SAMPLES
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct Trend {
    pub(super) samples: VecDeque<(u64, f32)>,
}

impl Trend {
    pub(super) fn push(&mut self, ts: u64, value: f64, window_ms: u64) {
        let spacing = window_ms / crate::core::rules::TREND_SAMPLES as u64;
        let n = self.samples.len();
        if n > 0 && ts < self.samples[n - 1].0 {
            return;
        }
        // Too close to the one before the newest: replace the newest, so that kept
        // samples stay spaced out and the newest is always exact.
        if n >= 2 && ts.saturating_sub(self.samples[n - 2].0) < spacing {
            self.samples[n - 1] = (ts, value as f32);
            return;
        }
        if n >= crate::core::rules::TREND_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((ts, value as f32));
    }

    /// Lowest and highest value measured within `window_ms` before `ts`.
    pub(super) fn range(&self, ts: u64, window_ms: u64) -> Option<(f64, f64)> {
        self.samples
            .iter()
            .filter(|(t, _)| ts.saturating_sub(*t) <= window_ms)
            .fold(None, |acc, &(_, v)| {
                let v = v as f64;
                Some(acc.map_or((v, v), |(lo, hi): (f64, f64)| (lo.min(v), hi.max(v))))
            })
    }
}

/// A set of condition indexes, iterated in index order: a bitset, on the stack for
/// rule sets of up to 256 conditions (no allocation per reading), on the heap beyond.
pub(super) struct Due {
    small: [u64; 4],
    /// Used instead of `small` when the rule set has more conditions (empty, and so
    /// not allocated, otherwise).
    large: Vec<u64>,
}

impl Due {
    pub(super) fn new(conditions: usize) -> Due {
        let large = if conditions > 256 {
            vec![0; conditions.div_ceil(64)]
        } else {
            Vec::new()
        };
        Due {
            small: [0; 4],
            large,
        }
    }

    fn words(&self) -> &[u64] {
        if self.large.is_empty() {
            &self.small
        } else {
            &self.large
        }
    }

    pub(super) fn insert(&mut self, i: usize) {
        let words = if self.large.is_empty() {
            &mut self.small[..]
        } else {
            &mut self.large[..]
        };
        words[i / 64] |= 1 << (i % 64);
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words().iter().enumerate().flat_map(|(w, &word)| {
            let mut word = word;
            std::iter::from_fn(move || {
                (word != 0).then(|| {
                    let bit = word.trailing_zeros() as usize;
                    word &= word - 1;
                    w * 64 + bit
                })
            })
        })
    }
}
