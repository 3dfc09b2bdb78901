//! The mapping of file bytes to object bytes and back, and the file size implied by the
//! sizes of the objects.
//!
//! Inside a component, offsets are taken relative to the component's start:
//! `rel = file_offset - start`, `unit = rel / stripe_size`, `stripe = unit % stripe_count`,
//! `object_offset = (unit / stripe_count) * stripe_size + rel % stripe_size`.
//! This is a deliberate difference from Lustre, which maps a component's bytes with the
//! absolute file offset and so leaves a hole at the front of every object of a component
//! that does not start at 0; Nacre's objects are compact.

use std::collections::BTreeMap;

use crate::composite::{Component, Layout};
use crate::error::LayoutError;
use crate::limits::MAX_FILE_ID;
use crate::object::pack;

/// One piece of a file range: bytes that live contiguously in one object, inside one
/// stripe unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectExtent {
    /// Index of the component.
    pub component: u16,
    /// Index of the stripe within the component.
    pub stripe: u32,
    /// The target holding the object.
    pub target_id: u32,
    /// The object (see [`crate::object_id`]).
    pub object_id: u64,
    /// Offset of the bytes in the object.
    pub object_offset: u64,
    /// Number of bytes (never 0).
    pub len: u64,
    /// Offset of the bytes in the caller's buffer: file offset minus the range's offset.
    pub buf_offset: u64,
}

/// The size of one object, as its target reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectSize {
    /// Index of the component.
    pub component: u16,
    /// Index of the stripe within the component.
    pub stripe: u32,
    /// Bytes in the object.
    pub size_bytes: u64,
}

/// One object of a file's layout: which stripe of which component it holds, where, and its
/// id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayoutObject {
    /// Index of the component.
    pub component: u16,
    /// Index of the stripe within the component.
    pub stripe: u32,
    /// The target holding it.
    pub target_id: u32,
    /// Its id (see [`crate::object_id`]).
    pub object_id: u64,
}

/// Iterator over the [`ObjectExtent`]s of a range, in file order. Allocation-free: it
/// carries a cursor (component, stripe unit, stripe, row) and advances it with a few adds
/// per extent; divisions happen only on entering a component.
#[derive(Debug, Clone)]
pub struct Extents<'layout> {
    components: &'layout [Component],
    file_id: u64,
    range_offset_bytes: u64,
    cursor_bytes: u64,
    range_end_bytes: u64,
    component: usize,
    // Cursor within the current component, valid when `positioned`.
    positioned: bool,
    stripe: u32,
    row: u64,
    offset_in_unit_bytes: u64,
}

impl Layout {
    /// The object extents of the file bytes `[offset_bytes, offset_bytes + len)`, in file
    /// order, each inside one stripe unit, together covering the range exactly once.
    /// `len == 0` gives none.
    pub fn extents(
        &self,
        file_id: u64,
        offset_bytes: u64,
        len: u64,
    ) -> Result<Extents<'_>, LayoutError> {
        if file_id > MAX_FILE_ID {
            return Err(LayoutError::InvalidField {
                field: "file_id",
                value: file_id.to_string(),
                allowed: "0..=1099511627775 (2^40 - 1)",
            });
        }
        // EOF is u64::MAX (asserted in limits), so a range whose end does not overflow does
        // not end past EOF either.
        let range_end_bytes = offset_bytes
            .checked_add(len)
            .ok_or(LayoutError::RangeOverflow { offset_bytes, len })?;
        let components = self.components();
        let component = if len == 0 {
            0
        } else {
            components.partition_point(|component| component.end_bytes <= offset_bytes)
        };
        assert!(component < components.len());
        Ok(Extents {
            components,
            file_id,
            range_offset_bytes: offset_bytes,
            cursor_bytes: offset_bytes,
            range_end_bytes,
            component,
            positioned: false,
            stripe: 0,
            row: 0,
            offset_in_unit_bytes: 0,
        })
    }

    /// The file offset of byte `object_offset` of stripe `stripe` of component `component`,
    /// or `None` if there is no such stripe or the byte falls past the component's end.
    pub fn file_offset(&self, component: u16, stripe: u32, object_offset: u64) -> Option<u64> {
        let owner = self.component(component)?;
        let stripe_count = u64::from(owner.stripe.stripe_count());
        if u64::from(stripe) >= stripe_count {
            return None;
        }
        let stripe_size_bytes = owner.stripe.stripe_size_bytes();
        let row = object_offset / stripe_size_bytes;
        let unit = row
            .checked_mul(stripe_count)?
            .checked_add(u64::from(stripe))?;
        let relative_bytes = unit
            .checked_mul(stripe_size_bytes)?
            .checked_add(object_offset % stripe_size_bytes)?;
        let file_offset_bytes = owner.start_bytes.checked_add(relative_bytes)?;
        (file_offset_bytes < owner.end_bytes).then_some(file_offset_bytes)
    }

    /// Every object of file `file_id`, grouped by target in target-id order, each target's
    /// in component and stripe order: what requests about whole objects (sync, stat,
    /// truncate, remove) ask of each target.
    pub fn objects_by_target(
        &self,
        file_id: u64,
    ) -> Result<BTreeMap<u32, Vec<LayoutObject>>, LayoutError> {
        let mut per_target: BTreeMap<u32, Vec<LayoutObject>> = BTreeMap::new();
        for (c, component) in self.components().iter().enumerate() {
            for (s, &target_id) in component.stripe.target_ids().iter().enumerate() {
                let (component, stripe) = (c as u16, s as u32);
                let object_id = crate::object_id(file_id, component, stripe)?;
                per_target.entry(target_id).or_default().push(LayoutObject {
                    component,
                    stripe,
                    target_id,
                    object_id,
                });
            }
        }
        Ok(per_target)
    }

    /// The size object (`component`, `stripe`) has in a file of `file_size` bytes: the
    /// inverse of [`Layout::file_size`] (0 for a stripe the layout does not have).
    pub fn object_size(&self, component: u16, stripe: u32, file_size: u64) -> u64 {
        let Some(c) = self.component(component) else {
            return 0;
        };
        if file_size <= c.start_bytes {
            return 0;
        }
        let within = file_size.min(c.end_bytes) - c.start_bytes;
        let stripe_size = c.stripe.stripe_size_bytes();
        let row = stripe_size * u64::from(c.stripe.stripe_count());
        let full_rows = within / row;
        let rest = within % row;
        let in_last = rest
            .saturating_sub(u64::from(stripe) * stripe_size)
            .min(stripe_size);
        full_rows * stripe_size + in_last
    }

    /// The file size the object sizes imply: the largest (file offset of an object's last
    /// byte) + 1, or 0 when every object is empty.
    pub fn file_size(&self, sizes: &[ObjectSize]) -> Result<u64, LayoutError> {
        let mut file_size_bytes = 0;
        for size in sizes {
            let stripe_exists = self
                .component(size.component)
                .is_some_and(|owner| size.stripe < owner.stripe.stripe_count());
            if !stripe_exists {
                return Err(LayoutError::ObjectNotInLayout {
                    component: size.component,
                    stripe: size.stripe,
                });
            }
            if size.size_bytes == 0 {
                continue;
            }
            let last_byte = self
                .file_offset(size.component, size.stripe, size.size_bytes - 1)
                .ok_or(LayoutError::ObjectPastComponent {
                    component: size.component,
                    stripe: size.stripe,
                    size_bytes: size.size_bytes,
                })?;
            // last_byte < EOF_OFFSET_BYTES, so the + 1 cannot overflow.
            file_size_bytes = file_size_bytes.max(last_byte + 1);
        }
        Ok(file_size_bytes)
    }
}

impl Extents<'_> {
    fn position(&mut self, owner: &Component) {
        let relative_bytes = self.cursor_bytes - owner.start_bytes;
        let stripe_size_bytes = owner.stripe.stripe_size_bytes();
        let stripe_count = u64::from(owner.stripe.stripe_count());
        let unit = relative_bytes / stripe_size_bytes;
        self.offset_in_unit_bytes = relative_bytes % stripe_size_bytes;
        self.row = unit / stripe_count;
        // Less than stripe_count, which is at most MAX_STRIPE_COUNT.
        self.stripe = (unit % stripe_count) as u32;
        self.positioned = true;
    }
}

impl Iterator for Extents<'_> {
    type Item = ObjectExtent;

    #[inline]
    fn next(&mut self) -> Option<ObjectExtent> {
        if self.cursor_bytes >= self.range_end_bytes {
            return None;
        }
        let components = self.components;
        let mut owner = &components[self.component];
        if self.cursor_bytes >= owner.end_bytes {
            // Boundaries are unit-aligned, so an extent never spans two components and the
            // cursor lands exactly on the next one's start.
            self.component += 1;
            owner = &components[self.component];
            debug_assert_eq!(owner.start_bytes, self.cursor_bytes);
            self.positioned = false;
        }
        if !self.positioned {
            self.position(owner);
        }
        let stripe_size_bytes = owner.stripe.stripe_size_bytes();
        let len = (stripe_size_bytes - self.offset_in_unit_bytes)
            .min(self.range_end_bytes - self.cursor_bytes)
            .min(owner.end_bytes - self.cursor_bytes);
        debug_assert!(len > 0);
        // The component index is below MAX_COMPONENTS, checked at construction.
        let component = self.component as u16;
        let extent = ObjectExtent {
            component,
            stripe: self.stripe,
            target_id: owner.stripe.target_ids()[self.stripe as usize],
            object_id: pack(self.file_id, component, self.stripe),
            object_offset: self.row * stripe_size_bytes + self.offset_in_unit_bytes,
            len,
            buf_offset: self.cursor_bytes - self.range_offset_bytes,
        };
        self.cursor_bytes += len;
        // Next unit: the following stripe, wrapping to the next row.
        self.offset_in_unit_bytes = 0;
        self.stripe += 1;
        if self.stripe == owner.stripe.stripe_count() {
            self.stripe = 0;
            self.row += 1;
        }
        Some(extent)
    }
}

impl std::iter::FusedIterator for Extents<'_> {}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on an unexpected result"
)]
mod tests {
    use super::*;
    use crate::limits::EOF_OFFSET_BYTES;
    use crate::stripe::StripeLayout;

    const MIB: u64 = 1024 * 1024;

    fn four_stripes() -> Layout {
        Layout::plain(StripeLayout::new(MIB, vec![2, 3, 0, 1], None, false).expect("valid"))
    }

    #[test]
    fn four_stripe_range() {
        let layout = four_stripes();
        let extents: Vec<ObjectExtent> = layout
            .extents(7, MIB / 2, 4 * MIB)
            .expect("valid range")
            .collect();
        assert_eq!(extents.len(), 5);
        assert_eq!(extents[0].stripe, 0);
        assert_eq!(extents[0].target_id, 2);
        assert_eq!(extents[0].object_offset, MIB / 2);
        assert_eq!(extents[0].len, MIB / 2);
        assert_eq!(extents[1].stripe, 1);
        assert_eq!(extents[1].object_offset, 0);
        assert_eq!(extents[1].buf_offset, MIB / 2);
        assert_eq!(extents[4].stripe, 0);
        assert_eq!(extents[4].object_offset, MIB);
        assert_eq!(extents[4].len, MIB / 2);
        assert_eq!(extents[4].object_id, pack(7, 0, 0));
    }

    #[test]
    fn composite_objects_are_compact() {
        let small = StripeLayout::new(MIB, vec![0], None, false).expect("valid");
        let wide = StripeLayout::new(MIB, vec![1, 2], None, false).expect("valid");
        let layout = Layout::composite(vec![
            Component::new(0, 2 * MIB, small),
            Component::new(2 * MIB, EOF_OFFSET_BYTES, wide),
        ])
        .expect("valid");
        let extents: Vec<ObjectExtent> = layout
            .extents(1, MIB, 3 * MIB)
            .expect("valid range")
            .collect();
        let summary: Vec<(u16, u32, u64)> = extents
            .iter()
            .map(|e| (e.component, e.stripe, e.object_offset))
            .collect();
        assert_eq!(summary, vec![(0, 0, MIB), (1, 0, 0), (1, 1, 0)]);
        assert_eq!(layout.file_offset(1, 1, 0), Some(3 * MIB));
        assert_eq!(layout.file_offset(0, 0, 2 * MIB), None);
        assert_eq!(layout.file_offset(1, 2, 0), None);
        assert_eq!(layout.file_offset(2, 0, 0), None);
    }

    #[test]
    fn range_errors_and_empty() {
        let layout = four_stripes();
        assert_eq!(layout.extents(0, 5, 0).expect("empty range").count(), 0);
        assert_eq!(
            layout.extents(0, u64::MAX, 0).expect("empty range").count(),
            0
        );
        assert_eq!(
            layout.extents(0, u64::MAX, 1).unwrap_err(),
            LayoutError::RangeOverflow {
                offset_bytes: u64::MAX,
                len: 1
            }
        );
        assert!(matches!(
            layout.extents(MAX_FILE_ID + 1, 0, 1).unwrap_err(),
            LayoutError::InvalidField {
                field: "file_id",
                ..
            }
        ));
        let last: Vec<ObjectExtent> = layout
            .extents(0, u64::MAX - 1, 1)
            .expect("last byte")
            .collect();
        assert_eq!(last.len(), 1);
        assert_eq!(
            layout.file_offset(last[0].component, last[0].stripe, last[0].object_offset),
            Some(u64::MAX - 1)
        );
    }

    #[test]
    fn file_size_rules() {
        let layout = four_stripes();
        assert_eq!(layout.file_size(&[]), Ok(0));
        let sizes = [
            ObjectSize {
                component: 0,
                stripe: 0,
                size_bytes: MIB + 10,
            },
            ObjectSize {
                component: 0,
                stripe: 3,
                size_bytes: MIB,
            },
            ObjectSize {
                component: 0,
                stripe: 1,
                size_bytes: 0,
            },
        ];
        assert_eq!(layout.file_size(&sizes), Ok(4 * MIB + 10));
        assert_eq!(
            layout.file_size(&[ObjectSize {
                component: 0,
                stripe: 4,
                size_bytes: 1
            }]),
            Err(LayoutError::ObjectNotInLayout {
                component: 0,
                stripe: 4
            })
        );
        assert_eq!(
            layout.file_size(&[ObjectSize {
                component: 1,
                stripe: 0,
                size_bytes: 1
            }]),
            Err(LayoutError::ObjectNotInLayout {
                component: 1,
                stripe: 0
            })
        );
        let bounded = Layout::composite(vec![
            Component::new(
                0,
                2 * MIB,
                StripeLayout::new(MIB, vec![0], None, false).expect("valid"),
            ),
            Component::new(
                2 * MIB,
                EOF_OFFSET_BYTES,
                StripeLayout::new(MIB, vec![1], None, false).expect("valid"),
            ),
        ])
        .expect("valid");
        assert_eq!(
            bounded.file_size(&[ObjectSize {
                component: 0,
                stripe: 0,
                size_bytes: 2 * MIB
            }]),
            Ok(2 * MIB)
        );
        assert_eq!(
            bounded.file_size(&[ObjectSize {
                component: 0,
                stripe: 0,
                size_bytes: 2 * MIB + 1
            }]),
            Err(LayoutError::ObjectPastComponent {
                component: 0,
                stripe: 0,
                size_bytes: 2 * MIB + 1
            })
        );
    }
}
