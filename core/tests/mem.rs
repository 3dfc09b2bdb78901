//! The memory pool: bounds, exclusivity of chunks across threads, and registration with a
//! real io_uring object store.

use std::collections::HashSet;
use std::sync::Arc;

use nacre::mem::{Backing, MemError, MemPool, PoolConfig};

fn small(chunk_bytes: usize, chunks: usize) -> PoolConfig {
    PoolConfig {
        chunk_bytes,
        chunks,
        ..PoolConfig::default()
    }
}

#[test]
fn bad_configs_name_the_field() {
    for (config, field) in [
        (small(0, 4), "chunk_bytes"),
        (small(5000, 4), "chunk_bytes"),
        (small(128 << 20, 4), "chunk_bytes"),
        (small(4096, 0), "chunks"),
        (small(64 << 20, 2000), "chunks"),
    ] {
        let err = MemPool::new(config).expect_err("refused");
        assert!(
            matches!(err, MemError::InvalidConfig { field: f, .. } if f == field),
            "{err}"
        );
        assert!(err.to_string().contains(field), "{err}");
    }
}

#[test]
fn a_slab_on_huge_pages_starts_on_one_and_is_whole_ones() {
    const HUGE: usize = 2 << 20;
    for (huge_pages, chunks) in [(true, 1), (true, 33), (false, 3)] {
        let pool = MemPool::new(PoolConfig {
            huge_pages,
            ..small(64 * 1024, chunks)
        })
        .expect("pool");
        let regions: Vec<_> = pool.registrations().collect();
        let (base, len) = regions[0];
        assert_eq!(regions.len(), 1, "a slab under 1 GiB is one region");
        assert_eq!(len % HUGE, 0, "{len} bytes: not whole huge pages");
        assert!(len >= 64 * 1024 * chunks);
        if huge_pages {
            assert_eq!(base as usize % HUGE, 0, "backing {:?}", pool.backing());
            assert_ne!(pool.backing(), Backing::Pages, "the hint was refused");
        } else {
            assert_eq!(pool.backing(), Backing::Pages);
        }
    }
}

#[test]
fn chunks_are_aligned_distinct_and_come_back() {
    let pool = MemPool::new(small(64 * 1024, 32)).expect("pool");
    eprintln!(
        "pool backing {:?}, locked {}",
        pool.backing(),
        pool.locked()
    );
    let mut taken: Vec<_> = (0..32).map(|_| pool.get().expect("a free chunk")).collect();
    assert!(pool.get().is_none(), "33rd chunk from a pool of 32");
    assert_eq!(pool.free_chunks(), 0);
    let starts: HashSet<usize> = taken.iter().map(|b| b.as_ptr() as usize).collect();
    assert_eq!(starts.len(), 32, "two holders got the same chunk");
    for b in &taken {
        assert_eq!(b.as_ptr() as usize % 4096, 0);
        assert_eq!(b.len(), 64 * 1024);
    }
    let (base, len) = pool.registrations().next().expect("one region");
    for b in &taken {
        let at = b.as_ptr() as usize;
        assert!(
            at >= base as usize && at + b.len() <= base as usize + len,
            "chunk outside the slab"
        );
    }
    for (i, b) in taken.iter_mut().enumerate() {
        b.fill(i as u8);
    }
    assert!(
        taken
            .iter()
            .enumerate()
            .all(|(i, b)| b.iter().all(|&v| v == i as u8))
    );
    taken.truncate(10);
    assert_eq!(pool.free_chunks(), 22);
    drop(taken);
    assert_eq!(pool.free_chunks(), 32);
}

#[test]
fn threads_never_share_a_chunk() {
    let pool = MemPool::new(small(4096, 8)).expect("pool");
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                let mut got = 0u32;
                for round in 0..20_000u32 {
                    let Some(mut b) = pool.get() else { continue };
                    got += 1;
                    let stamp = [t, round as u8, (round >> 8) as u8, 0xA5];
                    b[..4].copy_from_slice(&stamp);
                    b[4092..].copy_from_slice(&stamp);
                    std::hint::spin_loop();
                    assert_eq!(&b[..4], &stamp, "another thread wrote this chunk");
                    assert_eq!(&b[4092..], &stamp, "another thread wrote this chunk");
                }
                got
            })
        })
        .collect();
    let got: u32 = threads.into_iter().map(|t| t.join().expect("thread")).sum();
    assert!(got > 0);
    assert_eq!(pool.free_chunks(), 8, "every chunk came back");
}

#[test]
fn a_registered_pool_moves_object_bytes_through_io_uring() {
    let dir = std::env::temp_dir().join(format!("nacre-mem-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    nacre::io::Target::format(&dir, 1).expect("format");
    let target = nacre::io::Target::open(&dir).expect("open");
    let pool = Arc::new(MemPool::new(small(1 << 20, 8)).expect("pool"));
    let mut store =
        nacre::io::ObjectStore::new(&target, nacre::io::StoreConfig::default()).expect("store");
    for (ptr, len) in pool.registrations() {
        // SAFETY: `pool` outlives `store`: the store is dropped explicitly below first.
        unsafe { store.register_memory(ptr, len) }.expect("register the slab");
    }
    target.create(5).expect("create");
    let mut out = pool.get().expect("chunk");
    for (i, v) in out.iter_mut().enumerate() {
        *v = (i % 249) as u8;
    }
    store.write(5, 0, &out).expect("write from the pool");
    let mut back = pool.get().expect("chunk");
    assert_eq!(
        store.read(5, 0, &mut back).expect("read into the pool"),
        1 << 20
    );
    assert!(back[..] == out[..]);
    drop(store);
    drop((out, back));
    let _ = std::fs::remove_dir_all(&dir);
}
