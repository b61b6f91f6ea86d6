//! xorshift64* and the structured test data built on it (shared by tests/util.rs and
//! xtask/tests).

/// xorshift64*: deterministic, dependency-free.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    /// Bytes with structure (repeats of a small vocabulary) so deltas find matches.
    pub fn text(&mut self, n: usize) -> Vec<u8> {
        let words: [&[u8]; 8] = [
            b"function ",
            b"return ",
            b"0x1f2e",
            b"\x00\x00\x00\x01",
            b"let x=",
            b";\n",
            b"bundle",
            b"\xff\xfe",
        ];
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            if self.below(4) == 0 {
                v.push(self.next() as u8);
            } else {
                v.extend_from_slice(words[self.below(8) as usize]);
            }
        }
        v.truncate(n);
        v
    }
    /// Apply random byte edits (insert, delete, change, move a block).
    pub fn edit(&mut self, data: &[u8], n_edits: usize) -> Vec<u8> {
        let mut d = data.to_vec();
        for _ in 0..n_edits {
            let len = d.len() as u64;
            match self.below(4) {
                0 => {
                    let at = self.below(len + 1) as usize;
                    let k = 1 + self.below(40) as usize;
                    let ins = self.text(k);
                    d.splice(at..at, ins);
                }
                1 if len > 0 => {
                    let at = self.below(len) as usize;
                    let k = (1 + self.below(40) as usize).min(d.len() - at);
                    d.drain(at..at + k);
                }
                2 if len > 0 => {
                    let at = self.below(len) as usize;
                    d[at] = d[at].wrapping_add(1 + self.below(255) as u8);
                }
                _ if len > 2 => {
                    let a = self.below(len) as usize;
                    let k = (1 + self.below(200) as usize).min(d.len() - a);
                    let block: Vec<u8> = d.drain(a..a + k).collect();
                    let to = self.below(d.len() as u64 + 1) as usize;
                    d.splice(to..to, block);
                }
                _ => {}
            }
        }
        d
    }
}
