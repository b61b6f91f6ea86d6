//! Reference prediction for executables (delta transform 1): synthetic x86-64 and AArch64 ELF
//! programs whose new version inserts a function and grows its data, so that every call,
//! RIP-relative operand and pointer behind the insertion changes by the same displacement.

use std::fs;

use bundelta::format::{Header, FLAG_EXE_REFS};
use bundelta::{DiffOptions, Patcher};
use proptest::prelude::*;

use crate::util::Rng;

const BASE: u64 = 0x40_0000;
const CODE_AT: usize = 0x1000;

/// A program: functions (each a seed for its filler and a list of references) and data
/// items; `machine` 62 (x86-64) or 183 (AArch64).
#[derive(Clone)]
pub struct Program {
    pub machine: u16,
    pub funcs: Vec<(u64, Vec<Ref>)>,
    pub data: Vec<u64>,
}

#[derive(Clone, Copy)]
pub enum Ref {
    Call(usize),
    Lea(usize),
}

fn filler(seed: u64, n: usize, arm: bool) -> Vec<u8> {
    let mut r = Rng(seed | 1);
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        if arm {
            // ADD/MOV-like words, never a branch.
            v.extend_from_slice(&(0x9100_0000u32 | (r.next() as u32 & 0x003F_FFFF)).to_le_bytes());
        } else {
            let ops: [&[u8]; 6] = [
                b"\x55",
                b"\x48\x89\xe5",
                b"\x48\x83\xec\x20",
                b"\x31\xc0",
                b"\x5d\xc3",
                b"\x90",
            ];
            v.extend_from_slice(ops[r.below(6) as usize]);
        }
    }
    v.truncate(n - n % if arm { 4 } else { 1 });
    v
}

impl Program {
    pub fn random(rng: &mut Rng, machine: u16, nfuncs: usize) -> Program {
        let ndata = nfuncs / 2 + 1;
        let funcs = (0..nfuncs)
            .map(|_| {
                let refs = (0..rng.below(12) + 1)
                    .map(|_| {
                        if rng.below(2) == 0 {
                            Ref::Call(rng.below(nfuncs as u64) as usize)
                        } else {
                            Ref::Lea(rng.below(ndata as u64) as usize)
                        }
                    })
                    .collect();
                (rng.next(), refs)
            })
            .collect();
        let data = (0..ndata).map(|_| rng.next()).collect();
        Program {
            machine,
            funcs,
            data,
        }
    }

    /// The next version: a new function at `at` (called from its neighbours' position on),
    /// and a new data item at the front.
    pub fn edited(&self, rng: &mut Rng, at: usize) -> Program {
        let mut p = self.clone();
        let shift = |r: &Ref| match *r {
            Ref::Call(k) => Ref::Call(if k >= at { k + 1 } else { k }),
            Ref::Lea(k) => Ref::Lea(k + 1),
        };
        for f in &mut p.funcs {
            f.1 = f.1.iter().map(shift).collect();
        }
        p.funcs
            .insert(at, (rng.next(), vec![Ref::Call(0), Ref::Lea(0)]));
        p.data.insert(0, rng.next());
        p
    }

    /// The ELF image: header, one PT_LOAD from offset 0, code at 0x1000, then data (each item
    /// 16 bytes: a value and a pointer to a function), then a pointer table.
    pub fn build(&self) -> Vec<u8> {
        let arm = self.machine == 183;
        let bodies: Vec<Vec<u8>> = self
            .funcs
            .iter()
            .map(|(seed, refs)| {
                filler(*seed, 40 + (*seed % 200) as usize, arm).repeat(refs.len().max(1))
            })
            .collect();
        let ref_len = |r: &Ref| match (arm, r) {
            (true, Ref::Call(_)) => 4,
            (true, Ref::Lea(_)) => 8,
            (false, _) => 7,
        };
        let mut starts = Vec::new();
        let mut at = CODE_AT;
        for (b, (_, refs)) in bodies.iter().zip(&self.funcs) {
            starts.push(at);
            at += b.len() + refs.iter().map(ref_len).sum::<usize>();
        }
        let data_at = at.next_multiple_of(16);
        let end = data_at + 16 * self.data.len();
        let mut img = vec![0u8; end];
        // Code.
        for ((b, (_, refs)), &s) in bodies.iter().zip(&self.funcs).zip(&starts) {
            let per = b.len() / refs.len().max(1);
            let mut w = s;
            for (i, r) in refs.iter().enumerate() {
                img[w..w + per].copy_from_slice(&b[i * per..(i + 1) * per]);
                w += per;
                let target = match *r {
                    Ref::Call(k) => starts[k],
                    Ref::Lea(k) => data_at + 16 * k,
                };
                if arm {
                    if let Ref::Call(_) = r {
                        let imm = ((target as i64 - w as i64) >> 2) as u32 & 0x03FF_FFFF;
                        img[w..w + 4].copy_from_slice(&(0x9400_0000 | imm).to_le_bytes());
                    } else {
                        // adrp x3, target; add x3, x3, #:lo12:target
                        let pages = ((target as i64 & !0xFFF) - (w as i64 & !0xFFF)) >> 12;
                        let adrp = 0x9000_0003
                            | ((pages as u32 & 3) << 29)
                            | ((pages as u32 >> 2 & 0x7FFFF) << 5);
                        let add = 0x9100_0063 | ((target as u32 & 0xFFF) << 10);
                        img[w..w + 4].copy_from_slice(&adrp.to_le_bytes());
                        img[w + 4..w + 8].copy_from_slice(&add.to_le_bytes());
                    }
                } else {
                    let (op, len): (&[u8], usize) = match r {
                        Ref::Call(_) => (b"\xe8", 5),
                        Ref::Lea(_) => (b"\x48\x8d\x05", 7),
                    };
                    img[w..w + op.len()].copy_from_slice(op);
                    let rel = (target as i64 - (w + len) as i64) as i32;
                    img[w + op.len()..w + len].copy_from_slice(&rel.to_le_bytes());
                    img[w + len..w + 7].fill(0x90);
                }
                w += ref_len(r);
            }
        }
        // Data: a value and a pointer to a function.
        for (k, v) in self.data.iter().enumerate() {
            let d = data_at + 16 * k;
            img[d..d + 8].copy_from_slice(&v.to_le_bytes());
            let f = starts[(*v as usize) % starts.len()] as u64 + BASE;
            img[d + 8..d + 16].copy_from_slice(&f.to_le_bytes());
        }
        // ELF header and one program header.
        img[..6].copy_from_slice(b"\x7fELF\x02\x01");
        img[16..18].copy_from_slice(&2u16.to_le_bytes());
        img[18..20].copy_from_slice(&self.machine.to_le_bytes());
        img[32..40].copy_from_slice(&64u64.to_le_bytes());
        img[54..56].copy_from_slice(&56u16.to_le_bytes());
        img[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = 64;
        img[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
        img[ph + 16..ph + 24].copy_from_slice(&BASE.to_le_bytes());
        img[ph + 32..ph + 40].copy_from_slice(&(end as u64).to_le_bytes());
        img[ph + 40..ph + 48].copy_from_slice(&(end as u64 + 0x1000).to_le_bytes());
        img
    }
}

/// The pair the golden vector pins (tests/golden.rs) and the size test uses.
pub fn golden_exe_inputs() -> (Vec<u8>, Vec<u8>) {
    let mut rng = Rng(0xe1f);
    let p = Program::random(&mut rng, 62, 120);
    let q = p.edited(&mut rng, 40);
    (p.build(), q.build())
}

fn apply_bytes(old: &[u8], patch: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("old"), old).unwrap();
    fs::write(dir.path().join("p"), patch).unwrap();
    Patcher::new()
        .apply(
            dir.path().join("old"),
            dir.path().join("p"),
            dir.path().join("out"),
        )
        .unwrap();
    fs::read(dir.path().join("out")).unwrap()
}

#[test]
fn prediction_is_chosen_and_pays() {
    for machine in [62u16, 183] {
        let mut rng = Rng(0xe1f + u64::from(machine));
        let p = Program::random(&mut rng, machine, 400);
        let q = p.edited(&mut rng, 100);
        let (old, new) = (p.build(), q.build());
        assert!(new.len() > 64 << 10, "spans several apply blocks");
        let with = DiffOptions::new().diff_bytes(&old, &new).unwrap();
        let without = DiffOptions::new()
            .exe_refs(false)
            .diff_bytes(&old, &new)
            .unwrap();
        let h = Header::decode(&with).unwrap();
        assert_ne!(h.flags & FLAG_EXE_REFS, 0, "machine {machine}");
        assert_eq!(Header::decode(&without).unwrap().flags & FLAG_EXE_REFS, 0);
        assert!(
            with.len() * 2 < without.len(),
            "machine {machine}: {} vs {} bytes",
            with.len(),
            without.len()
        );
        assert_eq!(apply_bytes(&old, &with), new, "machine {machine}");
        assert_eq!(apply_bytes(&old, &without), new);
    }
}

#[test]
fn not_an_executable_gets_no_transform() {
    let mut rng = Rng(77);
    let old = rng.text(50_000);
    let new = rng.edit(&old, 10);
    let patch = DiffOptions::new().diff_bytes(&old, &new).unwrap();
    assert_eq!(Header::decode(&patch).unwrap().flags & FLAG_EXE_REFS, 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    /// Any program pair round-trips, whatever the machine, the insertion point, or where
    /// references fall against the applier's 64 KiB read blocks.
    #[test]
    fn programs_round_trip(seed in any::<u64>(), arm in any::<bool>(), n in 20usize..300, at in 0usize..300,
                           chunk in prop_oneof![Just(64usize << 10), Just(4usize << 20)]) {
        let mut rng = Rng(seed | 1);
        let machine = if arm { 183 } else { 62 };
        let p = Program::random(&mut rng, machine, n);
        let q = p.edited(&mut rng, at % n);
        let (old, new) = (p.build(), q.build());
        let patch = DiffOptions::new().chunk_size(chunk).diff_bytes(&old, &new).unwrap();
        prop_assert_eq!(apply_bytes(&old, &patch), new);
    }
}
