//! Property tests of the mapping and the codecs, over layouts drawn by a strategy.

use std::collections::{BTreeMap, BTreeSet};

use nacre_layout::limits::{EOF_OFFSET_BYTES, MAX_FILE_ID, STRIPE_SIZE_UNIT_BYTES};
use nacre_layout::{
    Component, Layout, LayoutError, ObjectSize, PoolName, StripeLayout, object_id, object_id_parts,
};
use proptest::prelude::*;

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// A striping of `1..=max_units` stripe units of 64 KiB and 1 to 8 stripes.
fn arb_stripe(max_units: u64) -> impl Strategy<Value = StripeLayout> {
    (
        1..=max_units,
        1usize..=8,
        any::<bool>(),
        proptest::option::of("[A-Za-z0-9_.-]{1,15}"),
    )
        .prop_flat_map(|(units, stripe_count, overstriping, pool)| {
            let target_ids = if overstriping {
                proptest::collection::vec(0u32..6, stripe_count).boxed()
            } else {
                proptest::collection::btree_set(any::<u32>(), stripe_count)
                    .prop_map(|targets| targets.into_iter().collect::<Vec<u32>>())
                    .prop_shuffle()
                    .boxed()
            };
            (
                Just(units * STRIPE_SIZE_UNIT_BYTES),
                target_ids,
                Just(overstriping),
                Just(pool),
            )
        })
        .prop_map(|(stripe_size_bytes, target_ids, overstriping, pool)| {
            let pool = pool.map(|name| PoolName::new(&name).expect("the regex draws valid names"));
            StripeLayout::new(stripe_size_bytes, target_ids, pool, overstriping)
                .expect("the strategy draws valid stripings")
        })
}

/// A plain or composite layout of up to 5 components with small stripe sizes, so that
/// ranges cross component boundaries often.
fn arb_layout() -> impl Strategy<Value = Layout> {
    (
        proptest::collection::vec(arb_stripe(16), 1..=5),
        proptest::collection::vec(1u64..=3, 4),
        any::<bool>(),
        any::<u32>(),
    )
        .prop_map(|(stripes, multipliers, composite, generation)| {
            if stripes.len() == 1 && !composite {
                let stripe = stripes.into_iter().next().expect("one striping");
                return Layout::plain(stripe).with_generation(generation);
            }
            let mut components = Vec::with_capacity(stripes.len());
            let mut start_bytes = 0;
            for (index, stripe) in stripes.iter().enumerate() {
                let end_bytes = match stripes.get(index + 1) {
                    None => EOF_OFFSET_BYTES,
                    Some(next) => {
                        let (a, b) = (stripe.stripe_size_bytes(), next.stripe_size_bytes());
                        let boundary_bytes = a / gcd(a, b) * b;
                        (start_bytes / boundary_bytes + multipliers[index]) * boundary_bytes
                    }
                };
                components.push(Component::new(start_bytes, end_bytes, stripe.clone()));
                start_bytes = end_bytes;
            }
            Layout::composite(components)
                .expect("the strategy draws valid layouts")
                .with_generation(generation)
        })
}

/// The end of the last bounded component, or 0 for a single one.
fn bounded_span_bytes(layout: &Layout) -> u64 {
    layout
        .components()
        .last()
        .map_or(0, |last| last.start_bytes)
}

/// A layout with a range: near the start (crossing components) or near EOF.
fn arb_layout_and_range() -> impl Strategy<Value = (Layout, u64, u64, u64)> {
    arb_layout().prop_flat_map(|layout| {
        let reach_bytes = bounded_span_bytes(&layout) + 48 * STRIPE_SIZE_UNIT_BYTES;
        let offset = prop_oneof![
            3 => 0..=reach_bytes,
            1 => (EOF_OFFSET_BYTES - reach_bytes)..=EOF_OFFSET_BYTES,
        ];
        (Just(layout), offset, 0..=MAX_FILE_ID).prop_flat_map(
            move |(layout, offset_bytes, file_id)| {
                let max_len = reach_bytes.min(EOF_OFFSET_BYTES - offset_bytes);
                (Just(layout), Just(file_id), Just(offset_bytes), 0..=max_len)
            },
        )
    })
}

/// The mapping written the slow, obvious way: search the component, divide.
fn model(layout: &Layout, file_offset_bytes: u64) -> (u16, u32, u32, u64) {
    let (index, component) = layout
        .components()
        .iter()
        .enumerate()
        .find(|(_, component)| file_offset_bytes < component.end_bytes)
        .expect("every offset below EOF is in a component");
    let stripe_size_bytes = component.stripe.stripe_size_bytes();
    let stripe_count = u64::from(component.stripe.stripe_count());
    let relative_bytes = file_offset_bytes - component.start_bytes;
    let unit = relative_bytes / stripe_size_bytes;
    let stripe = (unit % stripe_count) as u32;
    let object_offset =
        (unit / stripe_count) * stripe_size_bytes + relative_bytes % stripe_size_bytes;
    (
        index as u16,
        stripe,
        component.stripe.target_ids()[stripe as usize],
        object_offset,
    )
}

/// Checks every property of the extents of one range.
fn check_range(
    layout: &Layout,
    file_id: u64,
    offset_bytes: u64,
    len: u64,
) -> Result<(), TestCaseError> {
    let mut cursor_bytes = offset_bytes;
    let mut object_sizes: BTreeMap<(u16, u32), u64> = BTreeMap::new();
    for extent in layout
        .extents(file_id, offset_bytes, len)
        .expect("a valid range")
    {
        prop_assert!(extent.len > 0);
        prop_assert_eq!(extent.buf_offset, cursor_bytes - offset_bytes);
        let (component, stripe, target_id, object_offset) = model(layout, cursor_bytes);
        prop_assert_eq!(
            (
                extent.component,
                extent.stripe,
                extent.target_id,
                extent.object_offset
            ),
            (component, stripe, target_id, object_offset)
        );
        prop_assert_eq!(Ok(extent.object_id), object_id(file_id, component, stripe));
        prop_assert_eq!(
            object_id_parts(extent.object_id),
            (file_id, component, stripe)
        );

        let owner = &layout.components()[usize::from(component)];
        let stripe_size_bytes = owner.stripe.stripe_size_bytes();
        prop_assert_eq!(
            extent.object_offset / stripe_size_bytes,
            (extent.object_offset + extent.len - 1) / stripe_size_bytes,
            "an extent stays inside one stripe unit"
        );
        let last_bytes = cursor_bytes + (extent.len - 1);
        prop_assert!(last_bytes < owner.end_bytes);
        for inside_bytes in [0, extent.len / 2, extent.len - 1] {
            prop_assert_eq!(
                layout.file_offset(component, stripe, extent.object_offset + inside_bytes),
                Some(cursor_bytes + inside_bytes)
            );
        }
        let size = object_sizes.entry((component, stripe)).or_insert(0);
        *size = (*size).max(extent.object_offset + extent.len);
        cursor_bytes += extent.len;
    }
    prop_assert_eq!(
        cursor_bytes,
        offset_bytes + len,
        "the extents cover the range"
    );

    let sizes: Vec<ObjectSize> = object_sizes
        .iter()
        .map(|(&(component, stripe), &size_bytes)| ObjectSize {
            component,
            stripe,
            size_bytes,
        })
        .collect();
    let expected_size_bytes = if len == 0 { 0 } else { offset_bytes + len };
    prop_assert_eq!(layout.file_size(&sizes), Ok(expected_size_bytes));
    Ok(())
}

fn reseal(encoding: &mut [u8]) {
    encoding[20..24].fill(0);
    let crc = crc32c::crc32c(encoding);
    encoding[20..24].copy_from_slice(&crc.to_le_bytes());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(768))]

    #[test]
    fn extents_cover_the_range((layout, file_id, offset_bytes, len) in arb_layout_and_range()) {
        check_range(&layout, file_id, offset_bytes, len)?;
    }

    #[test]
    fn extents_with_large_stripes(
        stripe in arb_stripe(65536),
        offset_bytes in any::<u64>(),
        units in 0u64..=6,
        extra_bytes in 0..STRIPE_SIZE_UNIT_BYTES,
        file_id in 0..=MAX_FILE_ID,
    ) {
        let len = (units * stripe.stripe_size_bytes() + extra_bytes).min(EOF_OFFSET_BYTES - offset_bytes);
        let layout = Layout::plain(stripe);
        check_range(&layout, file_id, offset_bytes, len)?;
    }

    #[test]
    fn ranges_past_eof_are_refused(layout in arb_layout(), offset_bytes in any::<u64>(), len in 1..=u64::MAX) {
        let result = layout.extents(0, offset_bytes, len);
        if offset_bytes.checked_add(len).is_none() {
            prop_assert_eq!(result.err(), Some(LayoutError::RangeOverflow { offset_bytes, len }));
        } else {
            prop_assert!(result.is_ok());
        }
    }

    #[test]
    fn object_id_round_trips(file_id in 0..=MAX_FILE_ID, component in 0u16..=255, stripe in 0u32..=65535) {
        let id = object_id(file_id, component, stripe).expect("parts in range");
        prop_assert_eq!(object_id_parts(id), (file_id, component, stripe));
    }

    #[test]
    fn file_offset_is_none_past_a_component(layout in arb_layout(), component in 0u16..6, stripe in 0u32..10, object_offset in any::<u64>()) {
        match layout.file_offset(component, stripe, object_offset) {
            Some(file_offset_bytes) => {
                let owner = layout.component(component).expect("a mapped component exists");
                prop_assert!(owner.start_bytes <= file_offset_bytes && file_offset_bytes < owner.end_bytes);
                prop_assert!(stripe < owner.stripe.stripe_count());
            }
            None => {
                let in_layout = layout.component(component).is_some_and(|owner| stripe < owner.stripe.stripe_count());
                if in_layout {
                    let result = layout.file_size(&[ObjectSize { component, stripe, size_bytes: object_offset.saturating_add(1) }]);
                    prop_assert!(matches!(result, Err(LayoutError::ObjectPastComponent { .. })), "{:?}", result);
                }
            }
        }
    }

    #[test]
    fn text_round_trips(layout in arb_layout()) {
        let text = layout.to_string();
        prop_assert_eq!(Layout::parse_text(&text), Ok(layout));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn binary_round_trips(layout in arb_layout()) {
        let encoding = layout.encode();
        prop_assert_eq!(encoding.len(), layout.encoded_len_bytes());
        prop_assert_eq!(Layout::decode(&encoding), Ok(layout));
    }

    #[test]
    fn every_truncation_is_refused(layout in arb_layout()) {
        let encoding = layout.encode();
        for len in 0..encoding.len() {
            prop_assert!(Layout::decode(&encoding[..len]).is_err(), "prefix of {} bytes", len);
        }
    }

    #[test]
    fn every_single_byte_corruption_is_refused(layout in arb_layout(), flip in 1u8..=255) {
        let mut encoding = layout.encode();
        for index in 0..encoding.len() {
            encoding[index] ^= flip;
            prop_assert!(Layout::decode(&encoding).is_err(), "byte {} ^ {:#x}", index, flip);
            encoding[index] ^= flip;
        }
    }

    #[test]
    fn resealed_corruption_never_panics(layout in arb_layout(), edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)) {
        // With the checksum rewritten, the corruption reaches the component parser.
        let mut encoding = layout.encode();
        for (index, byte) in edits {
            let at = index.index(encoding.len());
            if !(16..24).contains(&at) {
                encoding[at] = byte;
            }
        }
        reseal(&mut encoding);
        if let Ok(decoded) = Layout::decode(&encoding) {
            prop_assert_eq!(decoded.encode(), encoding);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn random_bytes_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        prop_assert!(Layout::decode(&bytes).is_err());
    }

    #[test]
    fn random_bodies_behind_a_good_header_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..400),
        component_count in 0u16..4,
        flags in 0u16..2,
    ) {
        let total_len_bytes = 24 + body.len();
        let mut encoding = Vec::with_capacity(total_len_bytes);
        encoding.extend_from_slice(b"NCLY");
        encoding.extend_from_slice(&1u16.to_le_bytes());
        encoding.extend_from_slice(&flags.to_le_bytes());
        encoding.extend_from_slice(&component_count.to_le_bytes());
        encoding.extend_from_slice(&0u16.to_le_bytes());
        encoding.extend_from_slice(&0u32.to_le_bytes());
        encoding.extend_from_slice(&(total_len_bytes as u32).to_le_bytes());
        encoding.extend_from_slice(&0u32.to_le_bytes());
        encoding.extend_from_slice(&body);
        reseal(&mut encoding);
        if let Ok(decoded) = Layout::decode(&encoding) {
            prop_assert_eq!(decoded.encode(), encoding);
        }
    }

    #[test]
    fn random_text_never_panics(text in "(lmm_|lcm_|lcme_|obdidx|[ :0-9a-z_.\t\n]){0,40}") {
        if let Ok(layout) = Layout::parse_text(&text) {
            prop_assert_eq!(Layout::parse_text(&layout.to_string()), Ok(layout));
        }
    }
}

#[test]
fn composite_distinct_from_plain_in_both_forms() {
    let stripe = StripeLayout::new(1 << 20, vec![1, 2], None, false).expect("valid");
    let plain = Layout::plain(stripe.clone());
    let composite =
        Layout::composite(vec![Component::new(0, EOF_OFFSET_BYTES, stripe)]).expect("valid");
    assert_ne!(plain, composite);
    assert_eq!(Layout::decode(&composite.encode()), Ok(composite.clone()));
    assert_eq!(
        Layout::parse_text(&composite.to_string()),
        Ok(composite.clone())
    );
    assert!(composite.to_string().starts_with("lcm_layout_gen:"));
    assert!(plain.to_string().starts_with("lmm_stripe_count:"));
    let distinct: BTreeSet<Vec<u8>> = [plain.encode(), composite.encode()].into_iter().collect();
    assert_eq!(distinct.len(), 2);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The object sizes a file of `size` bytes has give back that size, and add up to it:
    /// every byte lives in exactly one object, and objects are dense from their start.
    #[test]
    fn object_sizes_give_back_the_file_size(layout in arb_layout(), size in 0u64..(48 << 20)) {
        let sizes: Vec<ObjectSize> = layout
            .objects_by_target(1)
            .expect("a valid file id")
            .values()
            .flatten()
            .map(|o| ObjectSize {
                component: o.component,
                stripe: o.stripe,
                size_bytes: layout.object_size(o.component, o.stripe, size),
            })
            .collect();
        prop_assert_eq!(layout.file_size(&sizes), Ok(size));
        prop_assert_eq!(sizes.iter().map(|s| s.size_bytes).sum::<u64>(), size);
        // And they grow with the file: a byte more never shrinks an object.
        for s in &sizes {
            prop_assert!(layout.object_size(s.component, s.stripe, size + 1) >= s.size_bytes);
        }
    }

    /// Every stripe of every component is listed once, on its own target, with the id its
    /// component and stripe give, and no id twice.
    #[test]
    fn objects_by_target_lists_every_stripe_once(layout in arb_layout(), file_id in 0..=MAX_FILE_ID) {
        let per_target = layout.objects_by_target(file_id).expect("a valid file id");
        let mut seen = BTreeSet::new();
        let mut stripes = 0usize;
        for (&target_id, objects) in &per_target {
            for o in objects {
                prop_assert_eq!(o.target_id, target_id);
                let component = &layout.components()[o.component as usize];
                prop_assert_eq!(component.stripe.target_ids()[o.stripe as usize], target_id);
                prop_assert_eq!(Ok(o.object_id), object_id(file_id, o.component, o.stripe));
                prop_assert!(seen.insert(o.object_id), "object {:#x} twice", o.object_id);
                stripes += 1;
            }
        }
        let want: usize = layout.components().iter().map(|c| c.stripe.target_ids().len()).sum();
        prop_assert_eq!(stripes, want);
    }
}
