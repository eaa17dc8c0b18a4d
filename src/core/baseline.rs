//! Personal baselines: the median of each vital over the `baseline` phase.
//!
//! Why the median: resting values are taken while the patient settles into the chair,
//! talks, moves an arm under the cuff or has a probe slip. Those artefacts are brief
//! and one-sided (a spike, a dropout); the median ignores up to half of the samples
//! being wrong, where a mean is pulled by a single 250 mmHg cuff artefact. For NIBP,
//! which gives one value per cuff cycle, the median of two or three readings is the
//! usual clinical "take the middle one" rule.
//!
//! Memory stays bounded however long the phase lasts: each vital keeps at most
//! `max_samples` values, a uniform random sample of the whole phase (reservoir
//! sampling), so their median tracks the phase's median. Random rather than every
//! n-th value: a fixed stride can alias with a periodic signal (breathing, a
//! monitor's averaging cycle) and keep only its peaks or troughs. The generator is
//! seeded, so a given stream always gives the same baseline.

use super::reading::Vital;
use super::session::Baseline;

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Sampler {
    kept: Vec<f32>,
    /// Samples seen in all.
    seen: u32,
}

/// Collects baseline samples during the `baseline` phase.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BaselineSampler {
    vitals: [Sampler; 6],
    max_samples: usize,
    /// Kept as the generator's state, so a sampler taken back carries on
    /// drawing exactly as the original would have.
    #[serde(with = "rng_state")]
    rng: fastrand::Rng,
}

mod rng_state {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(rng: &fastrand::Rng, s: S) -> Result<S::Ok, S::Error> {
        rng.get_seed().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<fastrand::Rng, D::Error> {
        u64::deserialize(d).map(fastrand::Rng::with_seed)
    }
}

impl BaselineSampler {
    pub fn new(max_samples: usize) -> Self {
        BaselineSampler {
            vitals: Default::default(),
            max_samples: max_samples.max(2),
            rng: fastrand::Rng::with_seed(0x0005_eed0_ba5e),
        }
    }

    pub fn add(&mut self, vital: Vital, value: f64) {
        let s = &mut self.vitals[vital.index()];
        s.seen = s.seen.saturating_add(1);
        if s.kept.len() < self.max_samples {
            s.kept.push(value as f32);
        } else {
            // Algorithm R: the k-th value replaces a kept one with probability max/k.
            let j = self.rng.u32(0..s.seen) as usize;
            if j < self.max_samples {
                s.kept[j] = value as f32;
            }
        }
    }

    /// The baseline: each vital's median, for vitals with at least `min_samples`.
    pub fn finish(&self, min_samples: usize) -> Baseline {
        let mut out = [None; 6];
        for v in Vital::ALL {
            let s = &self.vitals[v.index()];
            if s.seen as usize >= min_samples && !s.kept.is_empty() {
                out[v.index()] = Some(median(&s.kept));
            }
        }
        out
    }
}

/// The median (mean of the middle two for an even count), rounded to 0.1.
fn median(values: &[f32]) -> f64 {
    let mut v: Vec<f32> = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let m = if n % 2 == 1 {
        v[n / 2] as f64
    } else {
        (v[n / 2 - 1] as f64 + v[n / 2] as f64) / 2.0
    };
    (m * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_ignores_a_cuff_artefact() {
        let mut s = BaselineSampler::new(64);
        for x in [128.0, 250.0, 126.0] {
            s.add(Vital::Sbp, x);
        }
        assert_eq!(s.finish(2)[Vital::Sbp.index()], Some(128.0));
        assert_eq!(s.finish(4)[Vital::Sbp.index()], None);
        assert_eq!(s.finish(1)[Vital::Hr.index()], None);
    }

    #[test]
    fn even_count_takes_the_middle_pair() {
        let mut s = BaselineSampler::new(64);
        for x in [120.0, 130.0] {
            s.add(Vital::Sbp, x);
        }
        assert_eq!(s.finish(1)[Vital::Sbp.index()], Some(125.0));
    }

    proptest::proptest! {
        /// However long the phase, memory is bounded and the median of the kept
        /// samples of a slowly drifting signal stays close to the true median.
        #[test]
        fn bounded_and_close(n in 1usize..5000, cap in 64usize..256) {
            let mut s = BaselineSampler::new(cap);
            let values: Vec<f64> = (0..n).map(|i| 60.0 + (i % 40) as f64 * 0.5).collect();
            for x in &values {
                s.add(Vital::Hr, *x);
            }
            proptest::prop_assert!(s.vitals[Vital::Hr.index()].kept.len() <= cap);
            let mut sorted = values.clone();
            sorted.sort_by(|a, b| a.total_cmp(b));
            let exact = sorted[n / 2];
            let got = s.finish(1)[Vital::Hr.index()].unwrap();
            // Sampling error of the median of `cap` values out of a spread of 19.5:
            // about 1.2 at cap 64; 6 is five standard errors.
            proptest::prop_assert!((got - exact).abs() <= 6.0, "got {got}, exact {exact}");
        }
    }
}
