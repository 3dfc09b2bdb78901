//! Criterion benchmarks of the wire format's hot functions: a message header's encoding
//! (with its CRC32C) and checked decoding, and a request's extent list both ways.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use nacre_transport::wire::{Extent, Header, Opcode, decode_extents, encode_extents};

/// Extents in the benchmark's request (a 4 MiB write over four 1 MiB stripes of one object
/// each sends a target one extent; four is a request gathering four files' stripes).
const EXTENTS_PER_REQUEST: usize = 4;
/// Bytes of each extent.
const EXTENT_LEN: u64 = 1 << 20;

fn request_body() -> (Vec<Extent>, Vec<u8>) {
    let extents: Vec<Extent> = (0..EXTENTS_PER_REQUEST as u64)
        .map(|i| Extent {
            object_id: 0x1000 + i,
            offset_bytes: i * EXTENT_LEN,
            len: EXTENT_LEN,
        })
        .collect();
    let mut body = Vec::new();
    encode_extents(&extents, &mut body);
    (extents, body)
}

fn header(c: &mut Criterion) {
    let (_, body) = request_body();
    let request = Header::request(Opcode::Write, 42, &body, 4 * EXTENT_LEN);
    let bytes = request.encode();

    c.bench_function("wire/header encode", |b| {
        b.iter(|| black_box(&request).encode());
    });
    c.bench_function("wire/header decode", |b| {
        b.iter(|| Header::decode(black_box(&bytes)).expect("an encoded header decodes"));
    });
    c.bench_function("wire/header request (body CRC) + encode", |b| {
        b.iter(|| {
            Header::request(
                Opcode::Write,
                black_box(42),
                black_box(&body),
                4 * EXTENT_LEN,
            )
            .encode()
        });
    });
    c.bench_function("wire/header decode + check_body", |b| {
        b.iter(|| {
            let h = Header::decode(black_box(&bytes)).expect("an encoded header decodes");
            h.check_body(black_box(&body))
                .expect("the body matches its header");
        });
    });
}

fn extents(c: &mut Criterion) {
    let (extents, body) = request_body();
    let mut out_bytes = Vec::with_capacity(body.len());
    let mut out_extents = Vec::with_capacity(extents.len());
    c.bench_function(
        &format!("wire/encode_extents ({EXTENTS_PER_REQUEST})"),
        |b| {
            b.iter(|| {
                out_bytes.clear();
                encode_extents(black_box(&extents), &mut out_bytes);
                black_box(&out_bytes);
            });
        },
    );
    c.bench_function(
        &format!("wire/decode_extents ({EXTENTS_PER_REQUEST})"),
        |b| {
            b.iter(|| {
                decode_extents(black_box(&body), &mut out_extents).expect("encoded extents decode")
            });
        },
    );
}

criterion_group!(benches, header, extents);
criterion_main!(benches);
