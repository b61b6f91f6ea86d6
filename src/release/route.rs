//! Routes through a repository: which files a client at one release downloads to reach
//! another, cheapest in bytes.
//!
//! The graph: releases are nodes (yanked ones cannot be entered); every patch is an edge from
//! its base to its release weighing its size; every release's full blob is an edge from
//! anywhere (also from "nothing", an install the index does not know) weighing its size. A
//! release that `requires` an earlier one splits the route: a client published before the
//! required release goes there first. Dijkstra per segment; ties go to fewer steps, then to
//! the lower release index, so the same index always gives the same route.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::index::{Blob, Index};

/// One download and apply of a route.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// Apply the patch from release `from` to release `to` (indices into `Index::releases`).
    Patch {
        /// The release applied to.
        from: usize,
        /// The release made.
        to: usize,
        /// The patch file.
        blob: Blob,
    },
    /// Install release `to` whole (its full blob: a patch from nothing).
    Full {
        /// The release made.
        to: usize,
        /// The full blob.
        blob: Blob,
    },
}

impl Step {
    /// The blob this step downloads.
    pub fn blob(&self) -> &Blob {
        match self {
            Step::Patch { blob, .. } | Step::Full { blob, .. } => blob,
        }
    }

    /// The release this step makes.
    pub fn to(&self) -> usize {
        match self {
            Step::Patch { to, .. } | Step::Full { to, .. } => *to,
        }
    }
}

/// A route: its steps in order and the bytes they download.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// Bytes downloaded in all.
    pub bytes: u64,
}

/// The cheapest route from release `from` (`None`: an install the index does not know, or
/// nothing installed) to release `target`, or `None` when there is none (the target or a
/// required release is yanked). From the target itself: an empty route.
pub fn plan(ix: &Index, from: Option<usize>, target: usize) -> Option<Route> {
    plan_within(ix, from, target, &|_| true)
}

/// [`plan`] through only the releases `allowed` admits besides not being yanked (a client
/// passes only through releases it may install: its app-version bounds); `None` when the
/// target or a required release is not allowed.
pub fn plan_within(
    ix: &Index,
    from: Option<usize>,
    target: usize,
    allowed: &dyn Fn(usize) -> bool,
) -> Option<Route> {
    let ok = |i: usize| !ix.releases[i].yanked && allowed(i);
    if target >= ix.releases.len() || !ok(target) {
        return None;
    }
    if from == Some(target) {
        return Some(Route {
            steps: Vec::new(),
            bytes: 0,
        });
    }
    // Gates: releases a client at `from` must pass, in publication order.
    let mut gates: Vec<usize> = Vec::new();
    if let Some(f) = from {
        for r in &ix.releases[f + 1..=target.max(f)] {
            if let Some(req) = &r.requires {
                let g = ix.releases.iter().position(|x| &x.version == req)?;
                if g > f && g < target && !gates.contains(&g) {
                    if !ok(g) {
                        return None;
                    }
                    gates.push(g);
                }
            }
        }
        gates.sort_unstable();
    }
    let mut route = Route {
        steps: Vec::new(),
        bytes: 0,
    };
    let mut at = from;
    for stop in gates.into_iter().chain(std::iter::once(target)) {
        let seg = shortest(ix, at, stop, &ok)?;
        route.bytes += seg.bytes;
        route.steps.extend(seg.steps);
        at = Some(stop);
    }
    Some(route)
}

/// Dijkstra from `from` to `to` over every non-yanked release.
fn shortest(
    ix: &Index,
    from: Option<usize>,
    to: usize,
    ok: &dyn Fn(usize) -> bool,
) -> Option<Route> {
    let n = ix.releases.len();
    let start = n; // node n: "nothing / unknown"
    let src = from.unwrap_or(start);
    // Incoming edges of each release: (base node, bytes, step).
    let digest_at = |d: &str| ix.releases.iter().position(|r| r.digest == d);
    let mut best: Vec<Option<(u64, u32)>> = vec![None; n + 1];
    let mut prev: Vec<Option<Step>> = vec![None; n + 1];
    let mut heap = BinaryHeap::new();
    best[src] = Some((0, 0));
    heap.push(Reverse((0u64, 0u32, src)));
    while let Some(Reverse((cost, hops, u))) = heap.pop() {
        if best[u] != Some((cost, hops)) {
            continue;
        }
        if u == to {
            break;
        }
        for (v, r) in ix.releases.iter().enumerate() {
            if !ok(v) || v == u {
                continue;
            }
            let mut relax = |w: u64, step: Step| {
                let c = (cost.saturating_add(w), hops + 1);
                if best[v].is_none_or(|b| c < b) {
                    best[v] = Some(c);
                    prev[v] = Some(step);
                    heap.push(Reverse((c.0, c.1, v)));
                }
            };
            if u < n {
                for p in &r.patches {
                    if digest_at(&p.from) == Some(u) {
                        relax(
                            p.bytes,
                            Step::Patch {
                                from: u,
                                to: v,
                                blob: p.blob(),
                            },
                        );
                    }
                }
            }
            relax(
                r.full.bytes,
                Step::Full {
                    to: v,
                    blob: r.full.clone(),
                },
            );
        }
    }
    let (bytes, _) = best[to]?;
    let mut steps = Vec::new();
    let mut v = to;
    while v != src {
        let s = prev[v].clone()?;
        v = match &s {
            Step::Patch { from, .. } => *from,
            Step::Full { .. } => src,
        };
        steps.push(s);
    }
    steps.reverse();
    Some(Route { steps, bytes })
}

#[cfg(test)]
mod tests {
    use super::super::index::{PatchRef, Release};
    use super::*;

    fn hx(i: usize) -> String {
        format!("{i:064x}")
    }

    /// Releases 0..n, full blob of each `full` bytes, patches (from, to, bytes).
    fn index(n: usize, full: u64, patches: &[(usize, usize, u64)]) -> Index {
        let mut ix = Index::new("t", true);
        for i in 0..n {
            let full = Blob {
                blake3: hx(1000 + i),
                bytes: full,
            };
            let mut r = Release::new(&format!("1.{i}"), hx(i), 1000, full);
            r.patches = patches
                .iter()
                .filter(|p| p.1 == i)
                .map(|&(f, t, b)| PatchRef {
                    from: hx(f),
                    blake3: hx(2000 + f * 100 + t),
                    bytes: b,
                })
                .collect();
            ix.releases.push(r);
        }
        ix
    }

    fn shape(r: &Route) -> Vec<(Option<usize>, usize)> {
        r.steps
            .iter()
            .map(|s| match s {
                Step::Patch { from, to, .. } => (Some(*from), *to),
                Step::Full { to, .. } => (None, *to),
            })
            .collect()
    }

    #[test]
    fn picks_direct_chain_or_full_by_bytes() {
        let ix = index(
            4,
            500,
            &[(0, 3, 300), (0, 1, 50), (1, 2, 50), (2, 3, 50), (1, 3, 400)],
        );
        // Chain 0->1->2->3 (150) beats direct (300) and full (500).
        let r = plan(&ix, Some(0), 3).unwrap();
        assert_eq!(
            (shape(&r), r.bytes),
            (vec![(Some(0), 1), (Some(1), 2), (Some(2), 3)], 150)
        );
        // From 1: 1->2->3 (100) beats 1->3 (400).
        assert_eq!(plan(&ix, Some(1), 3).unwrap().bytes, 100);
        // Unknown install: full.
        let r = plan(&ix, None, 3).unwrap();
        assert_eq!((shape(&r), r.bytes), (vec![(None, 3)], 500));
        // Already there.
        assert!(plan(&ix, Some(3), 3).unwrap().steps.is_empty());
        // A client that may not install 1.2: the direct patch (300) beats 0->1->3 (450).
        let r = plan_within(&ix, Some(0), 3, &|i| i != 2).unwrap();
        assert_eq!((shape(&r), r.bytes), (vec![(Some(0), 3)], 300));
        assert!(plan_within(&ix, Some(0), 3, &|i| i != 3).is_none());
    }

    #[test]
    fn yanked_releases_are_never_entered() {
        let mut ix = index(3, 500, &[(0, 1, 10), (1, 2, 10), (0, 2, 200)]);
        ix.releases[1].yanked = true;
        let r = plan(&ix, Some(0), 2).unwrap();
        assert_eq!((shape(&r), r.bytes), (vec![(Some(0), 2)], 200));
        assert!(plan(&ix, Some(0), 1).is_none());
        // A client on a yanked release still moves on.
        assert_eq!(plan(&ix, Some(1), 2).unwrap().bytes, 10);
    }

    #[test]
    fn requires_routes_through_the_required_release() {
        let mut ix = index(4, 500, &[(0, 3, 20), (0, 2, 30), (2, 3, 30)]);
        ix.releases[3].requires = Some("1.2".into());
        let r = plan(&ix, Some(0), 3).unwrap();
        assert_eq!((shape(&r), r.bytes), (vec![(Some(0), 2), (Some(2), 3)], 60));
        // Published after the gate: the direct patch is fine.
        ix.releases[3].patches.push(PatchRef {
            from: hx(2),
            blake3: hx(9999),
            bytes: 5,
        });
        assert_eq!(plan(&ix, Some(2), 3).unwrap().bytes, 5);
        // A yanked gate: no route.
        ix.releases[2].yanked = true;
        assert!(plan(&ix, Some(0), 3).is_none());
    }
}
