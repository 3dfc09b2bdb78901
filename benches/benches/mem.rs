//! Criterion benchmarks of the memory pool's hot path: taking a chunk and giving it back
//! (a lock-free free list), alone and with every chunk but one in use.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use nacre::mem::{MemPool, PoolConfig};

/// Chunks in the benchmark's pool.
const CHUNKS: usize = 64;
/// Bytes per chunk.
const CHUNK_BYTES: usize = 1 << 20;

fn pool() -> MemPool {
    MemPool::new(PoolConfig {
        chunk_bytes: CHUNK_BYTES,
        chunks: CHUNKS,
        // Backing and locking change nothing on the free list; keep the benchmark
        // independent of what the machine allows.
        huge_pages: false,
        lock: false,
    })
    .expect("a 64 MiB pool maps")
}

fn get_put(c: &mut Criterion) {
    let pool = pool();
    c.bench_function("mem/get + put (drop)", |b| {
        b.iter(|| drop(black_box(pool.get().expect("a chunk is free"))));
    });

    // The pool nearly empty: the free list's one entry cycles.
    let held: Vec<_> = (0..CHUNKS - 1)
        .map(|_| pool.get().expect("a chunk is free"))
        .collect();
    c.bench_function("mem/get + put, one chunk free", |b| {
        b.iter(|| drop(black_box(pool.get().expect("one chunk is free"))));
    });
    c.bench_function("mem/get from an empty pool", |b| {
        let last = pool.get().expect("one chunk is free");
        b.iter(|| assert!(black_box(pool.get()).is_none()));
        drop(last);
    });
    drop(held);

    // Take a batch, as a request of several extents does, then return it.
    let mut batch = Vec::with_capacity(8);
    c.bench_function("mem/get 8 + put 8", |b| {
        b.iter(|| {
            for _ in 0..8 {
                batch.push(pool.get().expect("8 chunks are free"));
            }
            batch.clear();
        });
    });
}

criterion_group!(benches, get_put);
criterion_main!(benches);
