//! Helpers shared by the library's unit tests.

/// A xorshift64 generator of test bytes (not random in any strong sense: reproducible noise).
pub(crate) struct XorShift(pub(crate) u64);

impl XorShift {
    /// The next `n` bytes: the low byte of each successive state.
    pub(crate) fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                self.0 as u8
            })
            .collect()
    }
}

/// `n` bytes of noise from `seed`.
pub(crate) fn noise(seed: u64, n: usize) -> Vec<u8> {
    XorShift(seed).bytes(n)
}
