//! Test helpers shared by the unit tests of several modules (compiled for tests only).

/// SplitMix64 (Steele, Lea and Flood): a deterministic stream of well-mixed 64-bit values for the tests that compare
/// a fast path with a reference over many generated inputs. The same seed gives the same inputs on every run.
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let z = (self.0 ^ (self.0 >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
