//! Planning a transfer: the object extents of a file range grouped into requests, one
//! target each, within a request's bounds, and each extent's bytes found in the caller's
//! memory. Pure arithmetic over offsets and lengths, shared by every path that moves file
//! bytes; the engine turns the pieces into memory and the requests into messages.

use crate::map::ObjectExtent;

/// The bounds of one request: how many extents it may carry and how many bytes they may
/// add up to (the wire's bounds, which this crate does not know).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestBounds {
    /// Most extents in one request (at least 1).
    pub max_extents: usize,
    /// Most bytes of all its extents together (at least 1).
    pub max_bytes: u64,
}

/// One request to one target: extents in the order they were given, whose lengths add up
/// to `bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedRequest {
    /// The target all its extents are on.
    pub target_id: u32,
    /// Its extents (pieces of the extents given, when one was longer than the bound).
    pub extents: Vec<ObjectExtent>,
    /// Bytes of all its extents.
    pub bytes: u64,
}

/// Groups `extents` by target into requests within `bounds`: each target's extents in the
/// order given, a new request whenever the next would take the current one past a bound,
/// and an extent longer than `bounds.max_bytes` cut into pieces of at most that (in object
/// and buffer order), so that no legal layout (stripes of up to 4 GiB) makes a request the
/// wire refuses. Requests come out by target id, then in order.
pub fn plan_requests(
    extents: impl IntoIterator<Item = ObjectExtent>,
    bounds: RequestBounds,
) -> Vec<PlannedRequest> {
    let max_extents = bounds.max_extents.max(1);
    let max_bytes = bounds.max_bytes.max(1);
    let mut per_target: std::collections::BTreeMap<u32, Vec<PlannedRequest>> =
        std::collections::BTreeMap::new();
    for extent in extents {
        let list = per_target.entry(extent.target_id).or_default();
        let mut done = 0;
        while done < extent.len {
            let len = (extent.len - done).min(max_bytes);
            let piece = ObjectExtent {
                object_offset: extent.object_offset + done,
                buf_offset: extent.buf_offset + done,
                len,
                ..extent
            };
            let fits = list
                .last()
                .is_some_and(|r| r.extents.len() < max_extents && r.bytes + len <= max_bytes);
            if !fits {
                list.push(PlannedRequest {
                    target_id: extent.target_id,
                    extents: Vec::new(),
                    bytes: 0,
                });
            }
            if let Some(r) = list.last_mut() {
                r.extents.push(piece);
                r.bytes += len;
            }
            done += len;
        }
    }
    per_target.into_values().flatten().collect()
}

/// A piece of the caller's memory: `len` bytes at `offset` of segment `segment`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPiece {
    /// Index of the segment (the caller's buffers, in order).
    pub segment: usize,
    /// Offset in the segment.
    pub offset: usize,
    /// Bytes (never 0).
    pub len: usize,
}

/// The caller's memory as segments of the given lengths laid end to end: where any range of
/// the logical buffer lies in them.
#[derive(Debug, Clone)]
pub struct MemoryMap {
    /// Logical offset just past each segment's last byte (a segment starts where the one
    /// before it ends).
    ends: Vec<u64>,
}

impl MemoryMap {
    /// The map of segments of `lens` bytes, in order.
    pub fn new(lens: impl IntoIterator<Item = usize>) -> MemoryMap {
        let mut at = 0u64;
        let ends = lens
            .into_iter()
            .map(|len| {
                at += len as u64;
                at
            })
            .collect();
        MemoryMap { ends }
    }

    /// Bytes of all segments.
    pub fn len(&self) -> u64 {
        self.ends.last().copied().unwrap_or(0)
    }

    /// Whether there are no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pieces holding `[buf_offset, buf_offset + len)` of the logical buffer, in order
    /// (empty segments skipped). A range past the end yields only what lies inside.
    pub fn pieces(&self, buf_offset: u64, len: u64) -> impl Iterator<Item = MemoryPiece> + '_ {
        // The first segment that ends past the range's start holds its first byte.
        let first = self.ends.partition_point(|&end| end <= buf_offset);
        let range_end = buf_offset.saturating_add(len);
        (first..self.ends.len())
            .map(move |i| {
                let start = if i == 0 { 0 } else { self.ends[i - 1] };
                let from = start.max(buf_offset);
                let to = self.ends[i].min(range_end);
                (i, start, from, to)
            })
            .take_while(move |&(_, start, _, _)| start < range_end)
            .filter(|&(_, _, from, to)| to > from)
            .map(|(segment, start, from, to)| MemoryPiece {
                segment,
                offset: (from - start) as usize,
                len: (to - from) as usize,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Layout, StripeLayout};
    use proptest::prelude::*;

    fn extent(target_id: u32, object_offset: u64, len: u64, buf_offset: u64) -> ObjectExtent {
        ObjectExtent {
            component: 0,
            stripe: 0,
            target_id,
            object_id: u64::from(target_id) + 1,
            object_offset,
            len,
            buf_offset,
        }
    }

    const BOUNDS: RequestBounds = RequestBounds {
        max_extents: 2,
        max_bytes: 100,
    };

    #[test]
    fn an_extent_past_the_byte_bound_is_cut_in_order() {
        let plan = plan_requests([extent(3, 1000, 250, 7)], BOUNDS);
        let pieces: Vec<_> = plan
            .iter()
            .flat_map(|r| {
                r.extents
                    .iter()
                    .map(|e| (e.object_offset, e.len, e.buf_offset))
            })
            .collect();
        assert_eq!(pieces, [(1000, 100, 7), (1100, 100, 107), (1200, 50, 207)]);
        assert!(plan.iter().all(|r| r.bytes <= 100 && r.target_id == 3));
    }

    #[test]
    fn requests_are_by_target_then_in_order() {
        let given = [
            extent(2, 0, 10, 0),
            extent(1, 0, 10, 10),
            extent(2, 10, 10, 20),
            extent(2, 20, 10, 30),
        ];
        let plan = plan_requests(given, BOUNDS);
        let shape: Vec<(u32, usize)> = plan
            .iter()
            .map(|r| (r.target_id, r.extents.len()))
            .collect();
        assert_eq!(shape, [(1, 1), (2, 2), (2, 1)]);
    }

    #[test]
    fn memory_pieces_skip_empty_segments_and_stop_at_the_end() {
        let map = MemoryMap::new([3, 0, 5, 2]);
        assert_eq!(map.len(), 10);
        let p = |segment, offset, len| MemoryPiece {
            segment,
            offset,
            len,
        };
        let pieces = |at, len| map.pieces(at, len).collect::<Vec<_>>();
        assert_eq!(pieces(2, 4), [p(0, 2, 1), p(2, 0, 3)]);
        assert_eq!(pieces(8, 5), [p(3, 0, 2)]);
        assert_eq!(pieces(10, 1), []);
        assert_eq!(MemoryMap::new([]).pieces(0, 4).count(), 0);
    }

    fn layouts() -> impl Strategy<Value = Layout> {
        // Stripes of 64 KiB to 8 MiB over 1 to 8 stripes starting at target `first`, or
        // overstriped over three targets.
        (1u64..=128, 1u32..=8, 0u32..8, any::<bool>()).prop_map(
            |(units, count, first, overstriping)| {
                let targets: Vec<u32> = (0..count)
                    .map(|i| if overstriping { i % 3 } else { (first + i) % 8 })
                    .collect();
                let size = units * crate::limits::STRIPE_SIZE_UNIT_BYTES;
                let stripe =
                    StripeLayout::new(size, targets, None, overstriping).expect("legal striping");
                Layout::plain(stripe)
            },
        )
    }

    proptest! {
        /// Every byte of the range is in exactly one request, once, at the object offset the
        /// layout gives it, and its memory is the matching bytes of the caller's segments;
        /// no request passes a bound.
        #[test]
        fn a_plan_covers_the_range_once_within_the_bounds(
            layout in layouts(),
            offset in 0u64..(64 << 20),
            len in 1u64..(24 << 20),
            max_extents in 1usize..6,
            max_bytes in 1u64..(6 << 20),
            cuts in proptest::collection::vec(0u64..(24 << 20), 0..5),
        ) {
            let bounds = RequestBounds { max_extents, max_bytes };
            let given: Vec<ObjectExtent> = layout.extents(9, offset, len).expect("range").collect();
            let plan = plan_requests(given.iter().copied(), bounds);
            // Segments cut where `cuts` say, empty ones included.
            let mut edges: Vec<u64> = cuts.into_iter().map(|c| c.min(len)).collect();
            edges.sort_unstable();
            let mut lens = Vec::new();
            let mut at = 0;
            for e in edges.into_iter().chain([len]) {
                lens.push((e - at) as usize);
                at = e;
            }
            let map = MemoryMap::new(lens.iter().copied());
            prop_assert_eq!(map.len(), len);
            let mut covered = Vec::new();
            for r in &plan {
                prop_assert!(!r.extents.is_empty());
                prop_assert!(r.extents.len() <= max_extents);
                prop_assert!(r.bytes <= max_bytes);
                prop_assert_eq!(r.bytes, r.extents.iter().map(|e| e.len).sum::<u64>());
                for e in &r.extents {
                    prop_assert_eq!(e.target_id, r.target_id);
                    // The layout maps the piece's first file byte to the same place.
                    let first = layout.extents(9, offset + e.buf_offset, 1).expect("byte").next();
                    let first = first.expect("one extent");
                    prop_assert_eq!((first.object_id, first.object_offset), (e.object_id, e.object_offset));
                    let pieces: Vec<_> = map.pieces(e.buf_offset, e.len).collect();
                    prop_assert_eq!(pieces.iter().map(|p| p.len as u64).sum::<u64>(), e.len);
                    let mut logical = e.buf_offset;
                    for p in pieces {
                        prop_assert!(p.len > 0 && p.offset + p.len <= lens[p.segment]);
                        let start: u64 = lens[..p.segment].iter().map(|&l| l as u64).sum();
                        prop_assert_eq!(start + p.offset as u64, logical);
                        logical += p.len as u64;
                    }
                    covered.push((e.buf_offset, e.len));
                }
            }
            // Laid end to end, the extents cover [0, len) with no gap and no overlap.
            covered.sort_unstable();
            let mut next = 0;
            for (at, n) in covered {
                prop_assert_eq!(at, next, "a gap or an overlap at byte {}", next);
                next = at + n;
            }
            prop_assert_eq!(next, len);
        }
    }
}
