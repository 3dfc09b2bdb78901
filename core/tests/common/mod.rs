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
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
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

pub struct Cluster {
    pub targets: Vec<Option<TargetServer>>,
    pub meta: Option<MetaServer>,
    pub meta_addr: String,
    pub dir: TempDir,
}

pub fn target_config(meta: &str, listen: &str) -> TargetConfig {
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
    pub fn start(tag: &str, n: u32) -> Cluster {
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
    pub fn start_at(tag: &str, n: u32, listen: &str) -> Cluster {
        Cluster::start_with(tag, n, listen, None)
    }

    /// As [`Cluster::start_at`], with the targets' memory pool `pool` when given.
    #[allow(dead_code)] // Not every test binary uses it.
    pub fn start_with(tag: &str, n: u32, listen: &str, pool: Option<PoolConfig>) -> Cluster {
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
    pub fn start_shared(tag: &str, ids: &[u32]) -> Cluster {
        Cluster::start_shared_with(tag, ids, nacre::io::StoreConfig::default())
    }

    /// As [`Cluster::start_shared`], with each store set up as `store` says.
    #[allow(dead_code)] // Not every test binary uses it.
    pub fn start_shared_with(tag: &str, ids: &[u32], store: nacre::io::StoreConfig) -> Cluster {
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

    pub fn target_dir(&self, i: u32) -> PathBuf {
        self.dir.0.join(format!("target{i}"))
    }

    pub fn meta_db(&self) -> PathBuf {
        self.dir.0.join("meta.redb")
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.meta_addr).unwrap()
    }

    pub fn client_with(&self, options: ClientOptions) -> Client {
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
pub fn stripes(count: i32, size: u64) -> nacre::meta::types::LayoutSpec {
    nacre::meta::types::LayoutSpec::plain(nacre::layout::StripeSpec {
        stripe_count: count,
        stripe_size_bytes: size,
        ..nacre::layout::StripeSpec::default()
    })
}

/// The pattern byte of file offset `at` under `seed`.
pub fn pattern(seed: u64, at: u64) -> u8 {
    let x = (at ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 56) as u8 | 1
}

pub fn fill(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| pattern(seed, offset + i)).collect()
}

/// Writes `len` bytes of pattern `seed` from registered memory to a new file at `path`
/// striped over every target in 1 MiB stripes (few enough pieces per request for RDMA to
/// describe them in one message), reads them back into registered memory, checks them, and
/// unregisters both buffers. Returns the two registration ids (no longer registered).
pub fn registered_round_trip(client: &Client, path: &str, seed: u64, len: usize) -> (u64, u64) {
    let spec = nacre::meta::types::LayoutSpec::plain(nacre::layout::StripeSpec {
        stripe_count: -1,
        stripe_size_bytes: 1 << 20,
        ..nacre::layout::StripeSpec::default()
    });
    let file = client.create(path, 0o644, Some(spec)).unwrap();
    let mut out = fill(seed, 0, len);
    let mut back = vec![0u8; len];
    // SAFETY (test): both vectors outlive their registrations, dropped below first.
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
