//! Helpers shared by the io integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use nacre_io::{ObjectStore, StoreConfig, Target};

/// A directory under the system's temporary directory, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    /// A fresh, empty directory whose name carries `name`.
    pub(crate) fn new(name: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("nacre-io-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A formatted target in a fresh temporary directory and a store over it.
pub(crate) fn store(name: &str, config: StoreConfig) -> (TempDir, Target, ObjectStore) {
    let dir = TempDir::new(name);
    let tdir = dir.path().join("target");
    Target::format(&tdir, 7).expect("format");
    let target = Target::open(&tdir).expect("open");
    let store = ObjectStore::new(&target, config).expect("store");
    (dir, target, store)
}

/// A file system mounted for a test, lazily unmounted on drop.
pub(crate) struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Mounts a `fstype` file system (with `-o options` when given) on the new directory `at`;
/// `None` when this machine does not let the test mount.
pub(crate) fn mount(fstype: &str, options: Option<&str>, at: &Path) -> Option<Mounted> {
    std::fs::create_dir(at).expect("mkdir");
    let mut command = std::process::Command::new("mount");
    command.args(["-t", fstype]);
    if let Some(o) = options {
        command.args(["-o", o]);
    }
    let status = command
        .arg(fstype)
        .arg(at)
        .stderr(std::process::Stdio::null())
        .status();
    matches!(status, Ok(s) if s.success()).then(|| Mounted(at.to_path_buf()))
}

/// Deterministic bytes: a cheap xorshift stream.
pub(crate) struct Rng(pub u64);

impl Rng {
    /// The next value of the stream.
    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A value in `0..n`.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Fills `buf` from the stream.
    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}
