//! A cluster in one process for the engine's tests: a metadata service and targets on
//! temporary directories, over loopback TCP. Everything is stopped and removed on drop.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use nacre::io::Target;
use nacre::mem::PoolConfig;
use nacre::{Client, ClientOptions, MetaServer, TargetConfig, TargetServer, TargetSpec};

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A directory removed on drop.
pub(crate) struct TempDir(pub PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("nacre-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) struct Cluster {
    pub targets: Vec<Option<TargetServer>>,
    pub meta: Option<MetaServer>,
    pub meta_addr: String,
    pub dir: TempDir,
}

pub(crate) fn target_config(meta: &str, listen: &str) -> TargetConfig {
    TargetConfig {
        listen: listen.into(),
        workers: 2,
        pool: PoolConfig {
            chunk_bytes: 1 << 20,
            chunks: 16,
            huge_pages: false,
            lock: false,
        },
        meta: Some(meta.into()),
        ..TargetConfig::default()
    }
}

impl Cluster {
    /// A metadata service and `n` targets over loopback TCP.
    pub(crate) fn start(tag: &str, n: u32) -> Cluster {
        Cluster::start_at(tag, n, "tcp://127.0.0.1:0")
    }

    /// A metadata service listening on `listen` (port 0), and no target yet.
    fn meta_only(tag: &str, listen: &str) -> Cluster {
        let dir = TempDir::new(tag);
        let meta = MetaServer::start(&dir.0.join("meta.redb"), listen).unwrap();
        let meta_addr = meta.endpoint().to_string();
        Cluster {
            targets: Vec::new(),
            meta: Some(meta),
            meta_addr,
            dir,
        }
    }

    /// A metadata service and `n` targets, each listening on `listen` (port 0).
    pub(crate) fn start_at(tag: &str, n: u32, listen: &str) -> Cluster {
        Cluster::start_with(tag, n, listen, None)
    }

    /// As [`Cluster::start_at`], with the targets' memory pool `pool` when given.
    #[allow(dead_code)] // Not every test binary uses it.
    pub(crate) fn start_with(tag: &str, n: u32, listen: &str, pool: Option<PoolConfig>) -> Cluster {
        let mut cluster = Cluster::meta_only(tag, listen);
        for i in 0..n {
            let tdir = cluster.target_dir(i);
            std::fs::create_dir_all(&tdir).unwrap();
            Target::format(&tdir, i).unwrap();
            let mut config = target_config(&cluster.meta_addr, listen);
            if let Some(pool) = pool {
                config.pool = pool;
            }
            let t = TargetServer::start(&tdir, &config).unwrap();
            cluster.targets.push(Some(t));
        }
        cluster
    }

    /// A metadata service and one target server serving targets of these ids with its
    /// two shared workers (decision 0015); the server is `targets[0]`.
    #[allow(dead_code)] // Not every test binary uses it.
    pub(crate) fn start_shared(tag: &str, ids: &[u32]) -> Cluster {
        Cluster::start_shared_with(tag, ids, nacre::io::StoreConfig::default())
    }

    /// As [`Cluster::start_shared`], with each store set up as `store` says.
    #[allow(dead_code)] // Not every test binary uses it.
    pub(crate) fn start_shared_with(
        tag: &str,
        ids: &[u32],
        store: nacre::io::StoreConfig,
    ) -> Cluster {
        let listen = "tcp://127.0.0.1:0";
        let mut cluster = Cluster::meta_only(tag, listen);
        let specs: Vec<TargetSpec> = ids
            .iter()
            .map(|&id| {
                let tdir = cluster.target_dir(id);
                std::fs::create_dir_all(&tdir).unwrap();
                Target::format(&tdir, id).unwrap();
                TargetSpec {
                    dir: tdir,
                    listen: listen.into(),
                    advertise: None,
                }
            })
            .collect();
        let mut config = target_config(&cluster.meta_addr, listen);
        config.store = store;
        let server = TargetServer::start_shared(&specs, &config).unwrap();
        cluster.targets.push(Some(server));
        cluster
    }

    pub(crate) fn target_dir(&self, i: u32) -> PathBuf {
        self.dir.0.join(format!("target{i}"))
    }

    pub(crate) fn meta_db(&self) -> PathBuf {
        self.dir.0.join("meta.redb")
    }

    pub(crate) fn client(&self) -> Client {
        Client::connect(&self.meta_addr).unwrap()
    }

    pub(crate) fn client_with(&self, options: ClientOptions) -> Client {
        Client::connect_with(&self.meta_addr, options).unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for t in self.targets.drain(..).flatten() {
            t.stop();
        }
        if let Some(m) = self.meta.take() {
            m.stop();
        }
    }
}

/// A plain layout of `count` stripes (-1: every target) of `size` bytes.
pub(crate) fn stripes(count: i32, size: u64) -> nacre::meta::types::LayoutSpec {
    nacre::meta::types::LayoutSpec::plain(nacre::layout::StripeSpec {
        stripe_count: count,
        stripe_size_bytes: size,
        ..nacre::layout::StripeSpec::default()
    })
}

/// The pattern byte of file offset `at` under `seed`.
pub(crate) fn pattern(seed: u64, at: u64) -> u8 {
    let x = (at ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 56) as u8 | 1
}

pub(crate) fn fill(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| pattern(seed, offset + i)).collect()
}

/// Writes `len` bytes of pattern `seed` from registered memory to a new file at `path`
/// striped over every target in 1 MiB stripes (few enough pieces per request for RDMA to
/// describe them in one message), reads them back into registered memory, checks them, and
/// unregisters both buffers. Returns the two registration ids (no longer registered).
pub(crate) fn registered_round_trip(
    client: &Client,
    path: &str,
    seed: u64,
    len: usize,
) -> (u64, u64) {
    let spec = nacre::meta::types::LayoutSpec::plain(nacre::layout::StripeSpec {
        stripe_count: -1,
        stripe_size_bytes: 1 << 20,
        ..nacre::layout::StripeSpec::default()
    });
    let file = client.create(path, 0o644, Some(spec)).unwrap();
    let mut out = fill(seed, 0, len);
    let mut back = vec![0u8; len];
    // SAFETY: (test) both vectors outlive their registrations, dropped below first.
    let (w, r) = unsafe {
        (
            client.register_memory(out.as_mut_ptr(), out.len()).unwrap(),
            client
                .register_memory(back.as_mut_ptr(), back.len())
                .unwrap(),
        )
    };
    file.write_at(&out, 0).unwrap();
    assert_eq!(file.read_at(&mut back, 0).unwrap(), len);
    assert!(back == out, "bytes through registered memory differ");
    client.unregister_memory(w).unwrap();
    client.unregister_memory(r).unwrap();
    (w, r)
}

/// One component of [`geometry`]: `[start, end)` (end `u64::MAX`: to the end of the file)
/// striped `count` wide (-1: every target) in `size`-byte stripes.
pub(crate) fn component(
    start: u64,
    end: u64,
    count: i32,
    size: u64,
    over: bool,
) -> nacre::meta::types::ComponentSpec {
    nacre::meta::types::ComponentSpec {
        start_bytes: start,
        end_bytes: end,
        stripe: nacre::layout::StripeSpec {
            stripe_count: count,
            stripe_size_bytes: size,
            overstriping: over,
            ..nacre::layout::StripeSpec::default()
        },
    }
}

/// Layouts that cover the legal space on a cluster of 4 targets, named: plain stripes from
/// Lustre's smallest (64 KiB) to 16 MiB over 1, 2, 3 and every target, overstriping (more
/// stripes than targets), and composite layouts of several components.
pub(crate) fn geometries() -> Vec<(String, nacre::meta::types::LayoutSpec)> {
    const K: u64 = 1024;
    const M: u64 = 1024 * K;
    let eof = u64::MAX;
    let mut out = Vec::new();
    for size in [64 * K, 128 * K, M, 4 * M, 16 * M] {
        for count in [1, 2, 3, -1] {
            out.push((format!("{count}x{}K", size / K), stripes(count, size)));
        }
    }
    for (count, size) in [(8, 64 * K), (6, M)] {
        out.push((
            format!("{count}x{}K overstriped", size / K),
            nacre::meta::types::LayoutSpec {
                components: vec![component(0, eof, count, size, true)],
            },
        ));
    }
    out.push((
        "composite 1x64K | 2x128K | -1x1M".into(),
        nacre::meta::types::LayoutSpec {
            components: vec![
                component(0, M, 1, 64 * K, false),
                component(M, 8 * M, 2, 128 * K, false),
                component(8 * M, eof, -1, M, false),
            ],
        },
    ));
    out.push((
        "composite 4x64K | 8x64K overstriped | 1x16M".into(),
        nacre::meta::types::LayoutSpec {
            components: vec![
                component(0, 256 * K, 4, 64 * K, false),
                component(256 * K, 16 * M, 8, 64 * K, true),
                component(16 * M, eof, 1, 16 * M, false),
            ],
        },
    ));
    out
}

/// The bytes and size a file should have: what the tests check reads and stats against.
#[derive(Debug, Default, Clone)]
pub(crate) struct Model {
    pub bytes: Vec<u8>,
}

impl Model {
    /// A write of `data` at `offset` (past the end: a hole of zeros before it).
    pub(crate) fn write(&mut self, offset: u64, data: &[u8]) {
        let end = offset as usize + data.len();
        if self.bytes.len() < end {
            self.bytes.resize(end, 0);
        }
        self.bytes[offset as usize..end].copy_from_slice(data);
    }

    /// A truncate to `size` (growing: zeros).
    pub(crate) fn truncate(&mut self, size: u64) {
        self.bytes.resize(size as usize, 0);
    }

    /// The file's size.
    pub(crate) fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Checks what a read of `buf.len()` bytes at `offset` returned (`n`, the bytes in
    /// `buf`): as many as the file holds there, the model's bytes, and zeros after them
    /// (libnacre's promise for a read short at the end of the file). `what` names the read
    /// in the panic.
    pub(crate) fn check_read(&self, offset: u64, buf: &[u8], n: usize, what: &str) {
        self.check_read_growing(self.size(), offset, buf, n, what);
    }

    /// [`Model::check_read`] for a read that ran while writes elsewhere grew the file from
    /// `old_size` to this model's size: it may have seen any size between.
    pub(crate) fn check_read_growing(
        &self,
        old_size: u64,
        offset: u64,
        buf: &[u8],
        n: usize,
        what: &str,
    ) {
        let holds = |size: u64| size.saturating_sub(offset).min(buf.len() as u64) as usize;
        let (least, most) = (holds(old_size), holds(self.size()));
        assert!(
            (least..=most).contains(&n),
            "{what}: read of {} at {offset} returned {n} bytes, the file holds {least} to {most} there (size {old_size} to {})",
            buf.len(),
            self.size()
        );
        let expected = &self.bytes[offset.min(self.size()) as usize..][..n];
        if buf[..n] != *expected {
            let at = buf[..n]
                .iter()
                .zip(expected)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            panic!(
                "{what}: read of {} at {offset}: byte {} (file offset {}) is {:#04x}, the model has {:#04x}",
                buf.len(),
                at,
                offset + at as u64,
                buf[at],
                expected[at]
            );
        }
        let zeros = [0u8; 4096];
        let tail_is_zero = buf[n..].chunks(zeros.len()).all(|c| *c == zeros[..c.len()]);
        if !tail_is_zero {
            let at = buf[n..].iter().position(|&b| b != 0).unwrap_or(0);
            panic!(
                "{what}: read of {} at {offset} short at {n}: byte {} past the end is {:#04x}, not 0",
                buf.len(),
                n + at,
                buf[n + at]
            );
        }
    }
}

/// A small xorshift stream for seeded tests.
#[derive(Debug, Clone)]
pub(crate) struct Rng(pub u64);

impl Rng {
    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A value in `0..n` (`n` > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A length from 1 to `max`, spread evenly over its powers of two: tiny ones as often as
    /// huge ones.
    pub(crate) fn len_up_to(&mut self, max: u64) -> u64 {
        let bits = 64 - max.leading_zeros() as u64;
        let top = 1u64 << self.below(bits);
        (top + self.below(top)).clamp(1, max)
    }

    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Bytes for writes, fast to make even in a debug build: windows of one random block whose
/// length is a prime, so that the bytes at two file offsets match only when the offsets are
/// a multiple of that prime apart (never a stripe or block size).
pub(crate) struct Bytes {
    block: Vec<u8>,
}

/// The length of [`Bytes`]'s block: the largest prime below 1 MiB.
const BYTES_PERIOD: usize = 1_048_573;

impl Bytes {
    pub(crate) fn new(seed: u64) -> Bytes {
        let mut block = vec![0u8; BYTES_PERIOD];
        Rng(seed | 1).fill(&mut block);
        Bytes { block }
    }

    /// Fills `buf` with the bytes of stream `stream` for file offset `offset`.
    pub(crate) fn fill(&self, buf: &mut [u8], stream: u64, offset: u64) {
        let mut at =
            ((offset.wrapping_add(stream.wrapping_mul(7919))) % BYTES_PERIOD as u64) as usize;
        let mut done = 0;
        while done < buf.len() {
            let n = (buf.len() - done).min(BYTES_PERIOD - at);
            buf[done..done + n].copy_from_slice(&self.block[at..at + n]);
            done += n;
            at = 0;
        }
    }

    /// `len` bytes of stream `stream` for file offset `offset`.
    pub(crate) fn make(&self, len: usize, stream: u64, offset: u64) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.fill(&mut buf, stream, offset);
        buf
    }
}

/// The number in environment variable `name`, or `default` when it is unset or not a
/// number: how the heavy tests are sized down where time is short (scripts/kernel-test.sh
/// runs them under an emulated CPU) or up for a long run (scripts/fsx.sh).
pub(crate) fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The seed of a seeded test: `NACRE_TEST_SEED` when set (to replay a failure), else one
/// from the clock. Printed, so that a failing run says how to replay it.
pub(crate) fn seed(test: &str) -> u64 {
    let seed = std::env::var("NACRE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    println!("{test}: seed {seed} (replay with NACRE_TEST_SEED={seed})");
    seed
}
