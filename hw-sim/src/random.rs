//! Seeded randomness shared by the simulators: SplitMix64 (Steele, Lea, Flood 2014).
//!
//! Everything the simulators randomise comes from here, from an explicit seed, so a run replays
//! exactly. Small, fast, and good enough for a simulator; not for cryptography.

/// The SplitMix64 increment (the golden-ratio gamma).
pub(crate) const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 finaliser: a bijective 64-bit mix.
pub(crate) const fn finalize(value: u64) -> u64 {
    let mut z = value;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A well-mixed hash of one value: one SplitMix64 step from `value`.
pub(crate) const fn mix(value: u64) -> u64 {
    finalize(value.wrapping_add(GOLDEN_GAMMA))
}

/// A value in `[0, 1)` from the top 53 bits of `value`.
pub(crate) fn unit(value: u64) -> f64 {
    (value >> 11) as f64 / (1u64 << 53) as f64
}

/// A SplitMix64 generator.
#[derive(Clone, Debug)]
pub(crate) struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator from `seed`.
    pub(crate) fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        finalize(self.state)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        unit(self.next_u64())
    }

    /// Uniform in `(0, 1]`.
    pub(crate) fn unit_open(&mut self) -> f64 {
        1.0 - self.unit()
    }

    /// Uniform in `0..bound` (`bound > 0`; the modulo bias is irrelevant here).
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "empty range");
        self.next_u64() % bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_the_reference_splitmix64() {
        // First outputs of SplitMix64 seeded with 1234567 (the reference implementation's test).
        let mut rng = SplitMix64::new(1_234_567);
        assert_eq!(rng.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(rng.next_u64(), 3_203_168_211_198_807_973);
        assert_eq!(mix(0), SplitMix64::new(0).next_u64());
        assert!((0.0..1.0).contains(&unit(u64::MAX)));
    }
}
