//! Criterion benchmarks of layout mapping and of the binary form of a layout.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use nacre_layout::limits::EOF_OFFSET_BYTES;
use nacre_layout::{Component, Layout, ObjectExtent, StripeLayout};

const MIB: u64 = 1024 * 1024;

fn four_stripe_layout() -> Layout {
    let stripe = StripeLayout::new(MIB, vec![0, 1, 2, 3], None, false)
        .expect("a 4-stripe 1 MiB striping is valid");
    Layout::plain(stripe)
}

fn composite_layout() -> Layout {
    let striping = |stripe_size_bytes: u64, target_ids: Vec<u32>| {
        StripeLayout::new(stripe_size_bytes, target_ids, None, false)
            .expect("the benchmark's stripings are valid")
    };
    Layout::composite(vec![
        Component::new(0, 4 * MIB, striping(MIB, vec![0])),
        Component::new(4 * MIB, 256 * MIB, striping(4 * MIB, vec![1, 2, 3, 4])),
        Component::new(
            256 * MIB,
            EOF_OFFSET_BYTES,
            striping(4 * MIB, (0..32).collect()),
        ),
    ])
    .expect("the benchmark's composite layout is valid")
}

fn map_into(layout: &Layout, offset_bytes: u64, len: u64, extents: &mut Vec<ObjectExtent>) {
    extents.clear();
    extents.extend(
        layout
            .extents(black_box(7), black_box(offset_bytes), black_box(len))
            .expect("the benchmark's range is valid"),
    );
    black_box(&extents);
}

fn mapping(c: &mut Criterion) {
    let layout = four_stripe_layout();
    let mut extents = Vec::with_capacity(128);

    // 4 MiB starting mid-unit: touches all 4 stripes (5 extents).
    c.bench_function("layout/extents 4 stripes (4 MiB, unaligned)", |b| {
        b.iter(|| map_into(&layout, 64 * MIB + MIB / 2, 4 * MIB, &mut extents));
    });
    // 4 MiB aligned: exactly one extent per stripe.
    c.bench_function("layout/extents 4 stripes (4 MiB, aligned)", |b| {
        b.iter(|| map_into(&layout, 64 * MIB, 4 * MIB, &mut extents));
    });
    c.bench_function("layout/extents 64 units (64 MiB)", |b| {
        b.iter(|| map_into(&layout, 64 * MIB, 64 * MIB, &mut extents));
    });
    c.bench_function("layout/extents fold 64 units (64 MiB)", |b| {
        b.iter(|| {
            layout
                .extents(black_box(7), black_box(64 * MIB), black_box(64 * MIB))
                .expect("the benchmark's range is valid")
                .fold(0u64, |sum, extent| sum ^ extent.object_offset ^ extent.len)
        });
    });

    let composite = composite_layout();
    c.bench_function("layout/extents composite crossing (8 MiB)", |b| {
        b.iter(|| map_into(&composite, 252 * MIB, 8 * MIB, &mut extents));
    });
}

fn binary(c: &mut Criterion) {
    for (name, layout) in [
        ("4 stripes", four_stripe_layout()),
        ("3 components", composite_layout()),
    ] {
        let encoding = layout.encode();
        let mut buffer = Vec::with_capacity(encoding.len());
        c.bench_function(
            &format!("layout/encode_into {name} ({} B)", encoding.len()),
            |b| {
                b.iter(|| {
                    buffer.clear();
                    black_box(&layout).encode_into(&mut buffer);
                    black_box(&buffer);
                });
            },
        );
        c.bench_function(
            &format!("layout/decode {name} ({} B)", encoding.len()),
            |b| {
                b.iter(|| Layout::decode(black_box(&encoding)).expect("a valid encoding decodes"));
            },
        );
    }
}

criterion_group!(benches, mapping, binary);
criterion_main!(benches);
