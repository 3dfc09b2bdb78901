//! The metadata store on real redb files: every operation, POSIX permissions, name rules,
//! rename's edge cases, layout inheritance and target choice, durability across a reopen,
//! concurrent creates, and hostile bytes for every record.
#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on an unexpected result"
)]

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use nacre::codec::Reader;
use nacre::codec::Record;
use nacre::layout::limits::EOF_OFFSET_BYTES;
use nacre::layout::{LayoutError, StripeSpec};
use nacre::meta::store::MetaStore;
use nacre::meta::types::{
    Access, Attr, ComponentSpec, Cred, DirEntry, FileType, LayoutSpec, MAX_NAME_BYTES,
    MAX_PATH_BYTES, MAX_READDIR_ENTRIES, MetaError, ROOT_INO, StatFs, TargetInfo, check_name,
};

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

/// A directory under the system temp dir holding one test's database, removed on drop.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new(test: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "nacre-meta-{}-{}-{test}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir { path }
    }

    fn db(&self) -> PathBuf {
        self.path.join("meta.redb")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn open(dir: &TempDir) -> MetaStore {
    MetaStore::open(&dir.db()).unwrap()
}

fn root() -> Cred {
    Cred::root()
}

fn alice() -> Cred {
    Cred {
        uid: 1000,
        gid: 1000,
        groups: vec![3000],
    }
}

fn bob() -> Cred {
    Cred {
        uid: 1001,
        gid: 1001,
        groups: vec![],
    }
}

/// Someone in alice's primary group.
fn carol() -> Cred {
    Cred {
        uid: 1002,
        gid: 1002,
        groups: vec![1000],
    }
}

fn target(target_id: u32, free_bytes: u64, pools: &[&str]) -> TargetInfo {
    TargetInfo {
        target_id,
        uuid: format!("uuid-{target_id}"),
        endpoint: format!("tcp://127.0.0.1:{}", 9000 + target_id),
        pools: pools.iter().map(|pool| (*pool).to_owned()).collect(),
        capacity_bytes: 100 * GIB,
        free_bytes,
    }
}

fn with_targets(store: &MetaStore, count: u32) {
    for id in 0..count {
        store
            .register_target(target(id, 50 * GIB, &[]), None)
            .unwrap();
    }
}

fn stripes(count: i32, index: i64) -> StripeSpec {
    StripeSpec {
        stripe_count: count,
        stripe_index: index,
        ..StripeSpec::default()
    }
}

fn target_ids(attr: &Attr) -> Vec<Vec<u32>> {
    attr.layout
        .as_ref()
        .unwrap()
        .components()
        .iter()
        .map(|component| component.stripe.target_ids().to_vec())
        .collect()
}

fn names(entries: &[DirEntry]) -> Vec<&str> {
    entries.iter().map(|entry| entry.name.as_str()).collect()
}

#[track_caller]
fn assert_errno<T: std::fmt::Debug>(result: Result<T, MetaError>, errno: i32) -> MetaError {
    let error = result.expect_err("the call should fail");
    assert_eq!(error.errno(), errno, "{error}");
    error
}

#[test]
fn store_is_shareable_between_threads() {
    fn shared<T: Send + Sync>() {}
    shared::<MetaStore>();
}

#[test]
fn new_store_has_a_root() {
    let dir = TempDir::new("root");
    let store = open(&dir);
    let root_attr = store.lookup(&alice(), "/").unwrap();
    assert_eq!(root_attr.ino, ROOT_INO);
    assert_eq!(root_attr.file_type, FileType::Dir);
    assert_eq!(root_attr.mode, 0o755);
    assert_eq!((root_attr.uid, root_attr.gid, root_attr.nlink), (0, 0, 2));
    assert!(root_attr.layout.is_none() && root_attr.default_layout.is_none());
    let counts = store.statfs().unwrap();
    assert_eq!((counts.files, counts.dirs), (0, 1));
    assert!(store.targets().is_empty());
}

#[test]
fn every_operation_succeeds() {
    let dir = TempDir::new("ops");
    let store = open(&dir);
    with_targets(&store, 2);

    let d = store.mkdir(&root(), "/d", 0o17755).unwrap();
    assert_eq!(d.mode, 0o7755 & 0o7777);
    assert_eq!(
        (d.file_type, d.nlink, d.uid, d.gid),
        (FileType::Dir, 2, 0, 0)
    );
    assert_eq!(store.lookup(&root(), "/").unwrap().nlink, 3);

    let (f, created) = store.create(&root(), "/d/f", 0o644, false, None).unwrap();
    assert!(created);
    assert_eq!((f.file_type, f.nlink, f.mode), (FileType::File, 1, 0o644));
    assert!(f.ino > d.ino);
    assert_eq!(target_ids(&f).len(), 1);
    assert_eq!(target_ids(&f)[0].len(), 1);
    let (again, created) = store.create(&root(), "/d/f", 0o600, false, None).unwrap();
    assert!(!created);
    assert_eq!(again, f);
    assert_eq!(store.lookup(&root(), "/d/f").unwrap(), f);
    assert_eq!(
        store.open_file(&root(), "/d/f", Access::ReadWrite).unwrap(),
        f
    );
    assert_eq!(
        store.open_file(&root(), "/d", Access::Read).unwrap().ino,
        d.ino
    );

    let parent = store.lookup(&root(), "/d").unwrap();
    assert!(parent.mtime_ns >= d.mtime_ns && parent.ctime_ns >= d.ctime_ns);

    store.mkdir(&root(), "/d/sub", 0o755).unwrap();
    let listing = store.readdir(&root(), "/d", None, 10).unwrap();
    assert_eq!(names(&listing), ["f", "sub"]);
    assert_eq!(listing[0].ino, f.ino);
    assert_eq!(listing[1].file_type, FileType::Dir);

    store.chmod(&root(), "/d/f", 0o600).unwrap();
    store.chown(&root(), "/d/f", Some(7), Some(8)).unwrap();
    let changed = store.lookup(&root(), "/d/f").unwrap();
    assert_eq!((changed.mode, changed.uid, changed.gid), (0o600, 7, 8));
    assert!(changed.ctime_ns >= f.ctime_ns);

    let spec = LayoutSpec::plain(stripes(2, -1));
    store
        .set_default_layout(&root(), "/d", Some(spec.clone()))
        .unwrap();
    assert_eq!(
        store.lookup(&root(), "/d").unwrap().default_layout,
        Some(spec)
    );
    let striped = store
        .set_layout_on_new_file(&root(), "/d/g", &LayoutSpec::plain(stripes(2, 1)), 0o640)
        .unwrap();
    assert_eq!(target_ids(&striped), [vec![1, 0]]);
    assert_eq!(striped.mode, 0o640);

    assert_eq!(
        store.rename(&root(), "/d/g", "/d/h").unwrap(),
        None,
        "nothing replaced"
    );
    assert_eq!(store.lookup(&root(), "/d/h").unwrap().ino, striped.ino);
    let removed = store.unlink(&root(), "/d/h").unwrap();
    assert_eq!(removed.ino, striped.ino);
    assert_eq!(removed.layout, striped.layout);
    store.rmdir(&root(), "/d/sub").unwrap();
    assert_eq!(store.lookup(&root(), "/d").unwrap().nlink, 2);

    let counts = store.statfs().unwrap();
    assert_eq!((counts.files, counts.dirs), (1, 2));
    assert_eq!(counts.capacity_bytes, 200 * GIB);
    assert_eq!(counts.free_bytes, 100 * GIB);
    assert!(counts.free_inodes > 1 << 39);
}

#[test]
fn errors_map_to_errno() {
    let dir = TempDir::new("errno");
    let store = open(&dir);
    with_targets(&store, 1);
    store.mkdir(&root(), "/d", 0o755).unwrap();
    store.create(&root(), "/f", 0o644, false, None).unwrap();
    store.create(&root(), "/d/x", 0o644, false, None).unwrap();

    let missing = assert_errno(store.lookup(&root(), "/nope/x"), libc::ENOENT);
    assert_eq!(
        missing,
        MetaError::NotFound {
            path: "/nope".into()
        }
    );
    assert_errno(store.mkdir(&root(), "/d", 0o755), libc::EEXIST);
    assert_errno(store.mkdir(&root(), "/", 0o755), libc::EEXIST);
    assert_errno(store.create(&root(), "/f", 0o644, true, None), libc::EEXIST);
    assert_errno(store.create(&root(), "/d", 0o644, true, None), libc::EEXIST);
    assert_errno(
        store.create(&root(), "/d", 0o644, false, None),
        libc::EISDIR,
    );
    let not_dir = assert_errno(store.lookup(&root(), "/f/x"), libc::ENOTDIR);
    assert_eq!(not_dir, MetaError::NotDir { path: "/f".into() });
    assert_errno(
        store.create(&root(), "/f/x", 0o644, false, None),
        libc::ENOTDIR,
    );
    assert_errno(store.readdir(&root(), "/f", None, 10), libc::ENOTDIR);
    assert_errno(store.rmdir(&root(), "/f"), libc::ENOTDIR);
    assert_errno(store.unlink(&root(), "/d"), libc::EISDIR);
    assert_errno(store.unlink(&root(), "/"), libc::EISDIR);
    assert_errno(store.unlink(&root(), "/nope"), libc::ENOENT);
    assert_errno(store.rmdir(&root(), "/nope"), libc::ENOENT);
    assert_errno(store.rmdir(&root(), "/d"), libc::ENOTEMPTY);
    assert_errno(store.rmdir(&root(), "/"), libc::EPERM);
    assert_errno(store.open_file(&root(), "/d", Access::Write), libc::EISDIR);
    assert_errno(
        store.open_file(&root(), "/d", Access::ReadWrite),
        libc::EISDIR,
    );
    assert_errno(store.set_default_layout(&root(), "/f", None), libc::ENOTDIR);
    let spec = LayoutSpec::plain(StripeSpec::default());
    assert_errno(
        store.set_layout_on_new_file(&root(), "/f", &spec, 0o644),
        libc::EEXIST,
    );
    assert_errno(
        store.set_layout_on_new_file(&root(), "/d", &spec, 0o644),
        libc::EISDIR,
    );
    assert_errno(store.update_usage(42, 10, 5), libc::EINVAL);
    assert_errno(store.update_usage(0, 10, 50), libc::EINVAL);

    let store_error = MetaError::Store {
        op: "commit",
        reason: "disk".into(),
    };
    assert_eq!(store_error.errno(), libc::EIO);
    assert_eq!(MetaError::NoTargets { pool: None }.errno(), libc::ENOSPC);
    assert_eq!(MetaError::NoInodes { max: 1 }.errno(), libc::ENOSPC);
    let codec = Attr::from_bytes(&[]).unwrap_err();
    assert_eq!(MetaError::from(codec).errno(), libc::EIO);
}

#[test]
fn search_write_and_read_permissions() {
    let dir = TempDir::new("perm");
    let store = open(&dir);
    with_targets(&store, 1);

    // Search.
    store.mkdir(&root(), "/private", 0o700).unwrap();
    store.mkdir(&root(), "/private/inner", 0o777).unwrap();
    let denied = assert_errno(store.lookup(&alice(), "/private/inner"), libc::EACCES);
    assert_eq!(
        denied,
        MetaError::Access {
            path: "/private".into(),
            need: "search"
        }
    );
    assert_errno(
        store.create(&alice(), "/private/inner/f", 0o644, false, None),
        libc::EACCES,
    );
    // The directory itself can be looked up: only its parent (the root) is searched.
    assert_eq!(store.lookup(&alice(), "/private").unwrap().mode, 0o700);
    store.lookup(&root(), "/private/inner").unwrap();

    // Write on the parent.
    store.mkdir(&root(), "/ro", 0o755).unwrap();
    store.create(&root(), "/ro/f", 0o666, false, None).unwrap();
    let denied = assert_errno(
        store.create(&alice(), "/ro/g", 0o644, false, None),
        libc::EACCES,
    );
    assert_eq!(
        denied,
        MetaError::Access {
            path: "/ro".into(),
            need: "write"
        }
    );
    assert_errno(store.mkdir(&alice(), "/ro/d", 0o755), libc::EACCES);
    assert_errno(store.unlink(&alice(), "/ro/f"), libc::EACCES);
    assert_errno(store.rename(&alice(), "/ro/f", "/ro/g"), libc::EACCES);
    // An existing file may be "created" (opened) by whoever may write it.
    let (existing, created) = store.create(&alice(), "/ro/f", 0o644, false, None).unwrap();
    assert!(!created);
    assert_eq!(existing.uid, 0);

    // Read on a directory for readdir; search alone does not list.
    store.mkdir(&root(), "/noread", 0o711).unwrap();
    store
        .create(&root(), "/noread/visible", 0o644, false, None)
        .unwrap();
    let denied = assert_errno(store.readdir(&alice(), "/noread", None, 10), libc::EACCES);
    assert_eq!(
        denied,
        MetaError::Access {
            path: "/noread".into(),
            need: "read"
        }
    );
    store.lookup(&alice(), "/noread/visible").unwrap();

    // Open: owner bits, then group bits, then other bits, each deciding alone.
    store.mkdir(&root(), "/home", 0o777).unwrap();
    store
        .create(&alice(), "/home/a", 0o640, false, None)
        .unwrap();
    store
        .open_file(&alice(), "/home/a", Access::ReadWrite)
        .unwrap();
    store.open_file(&carol(), "/home/a", Access::Read).unwrap();
    let denied = assert_errno(
        store.open_file(&carol(), "/home/a", Access::Write),
        libc::EACCES,
    );
    assert!(matches!(denied, MetaError::Access { need: "write", .. }));
    assert_errno(
        store.open_file(&bob(), "/home/a", Access::Read),
        libc::EACCES,
    );
    store
        .create(&alice(), "/home/others", 0o077, false, None)
        .unwrap();
    assert_errno(
        store.open_file(&alice(), "/home/others", Access::Read),
        libc::EACCES,
    );
    store
        .open_file(&bob(), "/home/others", Access::ReadWrite)
        .unwrap();
    // A supplementary group counts.
    store
        .chown(&root(), "/home/others", None, Some(3000))
        .unwrap();
    store.chmod(&root(), "/home/others", 0o060).unwrap();
    store
        .open_file(&alice(), "/home/others", Access::ReadWrite)
        .unwrap_err();
    let member = Cred {
        uid: 5,
        gid: 5,
        groups: vec![1, 3000],
    };
    store
        .open_file(&member, "/home/others", Access::ReadWrite)
        .unwrap();

    // Root bypasses read and write bits and searches any directory.
    store.chmod(&root(), "/home/a", 0o000).unwrap();
    store
        .open_file(&root(), "/home/a", Access::ReadWrite)
        .unwrap();
    store.chmod(&root(), "/private", 0o000).unwrap();
    store.lookup(&root(), "/private/inner").unwrap();
    store.readdir(&root(), "/private", None, 10).unwrap();
}

#[test]
fn sticky_directories() {
    let dir = TempDir::new("sticky");
    let store = open(&dir);
    with_targets(&store, 1);
    store.mkdir(&root(), "/tmp", 0o1777).unwrap();
    store
        .create(&alice(), "/tmp/a", 0o666, false, None)
        .unwrap();
    store
        .create(&alice(), "/tmp/a2", 0o666, false, None)
        .unwrap();
    store.mkdir(&alice(), "/tmp/ad", 0o777).unwrap();
    store.create(&bob(), "/tmp/b", 0o666, false, None).unwrap();

    let refused = assert_errno(store.unlink(&bob(), "/tmp/a"), libc::EPERM);
    assert!(matches!(refused, MetaError::Perm { ref path, .. } if path == "/tmp/a"));
    assert_errno(store.rmdir(&bob(), "/tmp/ad"), libc::EPERM);
    assert_errno(store.rename(&bob(), "/tmp/a", "/tmp/c"), libc::EPERM);
    // Replacing someone else's entry is removing it.
    assert_errno(store.rename(&bob(), "/tmp/b", "/tmp/a"), libc::EPERM);

    store.unlink(&alice(), "/tmp/a").unwrap();
    store.rename(&alice(), "/tmp/a2", "/tmp/moved").unwrap();
    store.rmdir(&alice(), "/tmp/ad").unwrap();
    // The directory's owner and root may remove anyone's entries.
    store.unlink(&root(), "/tmp/b").unwrap();
    store.mkdir(&root(), "/mine", 0o1777).unwrap();
    store.chown(&root(), "/mine", Some(1000), None).unwrap();
    store.create(&bob(), "/mine/b", 0o644, false, None).unwrap();
    store.unlink(&alice(), "/mine/b").unwrap();
}

#[test]
fn chmod_and_chown_rules() {
    let dir = TempDir::new("chown");
    let store = open(&dir);
    with_targets(&store, 1);
    store.mkdir(&root(), "/home", 0o777).unwrap();
    store
        .create(&alice(), "/home/f", 0o644, false, None)
        .unwrap();

    assert_errno(store.chmod(&bob(), "/home/f", 0o777), libc::EPERM);
    store.chmod(&alice(), "/home/f", 0o4755).unwrap();
    assert_eq!(store.lookup(&alice(), "/home/f").unwrap().mode, 0o4755);

    // Only root changes the owner.
    assert_errno(
        store.chown(&alice(), "/home/f", Some(1001), None),
        libc::EPERM,
    );
    // Naming the current owner is not a change.
    store.chown(&alice(), "/home/f", Some(1000), None).unwrap();
    // The owner may pick one of its own groups, not another.
    let refused = assert_errno(
        store.chown(&alice(), "/home/f", None, Some(42)),
        libc::EPERM,
    );
    assert!(refused.to_string().contains("42"), "{refused}");
    store.chown(&alice(), "/home/f", None, Some(3000)).unwrap();
    let attr = store.lookup(&alice(), "/home/f").unwrap();
    assert_eq!(attr.gid, 3000);
    assert_eq!(attr.mode & 0o4000, 0, "a chown clears setuid");
    // Others may not change the group at all.
    assert_errno(
        store.chown(&bob(), "/home/f", None, Some(1001)),
        libc::EPERM,
    );
    store
        .chown(&root(), "/home/f", Some(1001), Some(1001))
        .unwrap();
    let attr = store.lookup(&root(), "/home/f").unwrap();
    assert_eq!((attr.uid, attr.gid), (1001, 1001));

    // A caller outside the file's group loses setgid on chmod.
    store.chmod(&bob(), "/home/f", 0o2755).unwrap();
    assert_eq!(store.lookup(&bob(), "/home/f").unwrap().mode, 0o2755);
    store.chown(&root(), "/home/f", None, Some(77)).unwrap();
    store.chmod(&bob(), "/home/f", 0o2755).unwrap();
    assert_eq!(store.lookup(&bob(), "/home/f").unwrap().mode, 0o755);
}

#[test]
fn setgid_directories_pass_their_group_on() {
    let dir = TempDir::new("setgid");
    let store = open(&dir);
    with_targets(&store, 1);
    store.mkdir(&root(), "/proj", 0o2777).unwrap();
    store.chown(&root(), "/proj", None, Some(500)).unwrap();
    let sub = store.mkdir(&alice(), "/proj/sub", 0o755).unwrap();
    assert_eq!((sub.gid, sub.mode), (500, 0o2755));
    let (file, _) = store
        .create(&alice(), "/proj/f", 0o644, false, None)
        .unwrap();
    assert_eq!((file.gid, file.mode), (500, 0o644));
    let plain = store.mkdir(&alice(), "/proj/sub/../x", 0o755);
    assert_errno(plain, libc::EINVAL);
    store.mkdir(&root(), "/plain", 0o777).unwrap();
    let normal = store.mkdir(&alice(), "/plain/d", 0o755).unwrap();
    assert_eq!((normal.gid, normal.mode), (1000, 0o755));
}

#[test]
fn names_and_paths_are_checked() {
    let dir = TempDir::new("names");
    let store = open(&dir);
    with_targets(&store, 1);

    let longest = "n".repeat(MAX_NAME_BYTES);
    store.mkdir(&root(), &format!("/{longest}"), 0o755).unwrap();
    let too_long = "n".repeat(MAX_NAME_BYTES + 1);
    let error = assert_errno(
        store.create(&root(), &format!("/{too_long}"), 0o644, false, None),
        libc::ENAMETOOLONG,
    );
    assert!(matches!(
        error,
        MetaError::NameTooLong {
            what: "name",
            len_bytes: 256,
            ..
        }
    ));
    let long_path = format!("/{}", "a/".repeat(MAX_PATH_BYTES / 2));
    let error = assert_errno(store.lookup(&root(), &long_path), libc::ENAMETOOLONG);
    assert!(matches!(error, MetaError::NameTooLong { what: "path", .. }));

    for bad in ["/a/./b", "/.", "/..", "/a/..", "relative", "", "/a\0b"] {
        let error = assert_errno(store.mkdir(&root(), bad, 0o755), libc::EINVAL);
        assert!(
            matches!(
                error,
                MetaError::Invalid {
                    field: "path" | "name",
                    ..
                }
            ),
            "{bad:?}: {error}"
        );
    }
    assert_errno(store.rename(&root(), "/x/..", "/y"), libc::EINVAL);
    let error = assert_errno(store.rename(&root(), "/x", "y"), libc::EINVAL);
    assert!(matches!(error, MetaError::Invalid { field: "to", .. }));

    for bad in ["", ".", "..", "a/b", "a\0"] {
        assert_errno(check_name(bad), libc::EINVAL);
    }
    assert_errno(check_name(&too_long), libc::ENAMETOOLONG);
    check_name(&longest).unwrap();
    check_name("...").unwrap();
    check_name("é").unwrap();

    // Repeated slashes collapse; trailing ones say "a directory", as on Linux.
    let made = store.mkdir(&root(), "//a///", 0o755).unwrap();
    let (file, _) = store.create(&root(), "/a//b", 0o644, false, None).unwrap();
    assert_eq!(store.lookup(&root(), "/a").unwrap().ino, made.ino);
    assert_eq!(store.lookup(&root(), "///a//").unwrap().ino, made.ino);
    assert_eq!(store.lookup(&root(), "///a//b").unwrap().ino, file.ino);
    assert_errno(store.lookup(&root(), "///a/b//"), libc::ENOTDIR);
    assert_errno(
        store.create(&root(), "/a/new/", 0o644, false, None),
        libc::EISDIR,
    );
    assert_eq!(store.lookup(&root(), "//").unwrap().ino, ROOT_INO);
}

#[test]
fn rename_edge_cases() {
    let dir = TempDir::new("rename");
    let store = open(&dir);
    with_targets(&store, 1);
    let (a, _) = store.create(&root(), "/a", 0o644, false, None).unwrap();
    let (b, _) = store.create(&root(), "/b", 0o644, false, None).unwrap();
    store.mkdir(&root(), "/d1", 0o755).unwrap();
    store.mkdir(&root(), "/d2", 0o755).unwrap();
    store.mkdir(&root(), "/full", 0o755).unwrap();
    store
        .create(&root(), "/full/x", 0o644, false, None)
        .unwrap();
    assert_eq!(store.lookup(&root(), "/").unwrap().nlink, 5);

    // A file replaces a file: the old one comes back for its objects.
    let replaced = store.rename(&root(), "/a", "/b").unwrap();
    assert_eq!(replaced, Some(b.clone()));
    assert_eq!(store.lookup(&root(), "/b").unwrap().ino, a.ino);
    assert_errno(store.lookup(&root(), "/a"), libc::ENOENT);
    assert_eq!(store.statfs().unwrap().files, 2);

    // Onto itself: nothing happens.
    assert_eq!(store.rename(&root(), "/b", "//b").unwrap(), None);
    assert_eq!(store.lookup(&root(), "/b").unwrap().ino, a.ino);
    assert_eq!(store.rename(&root(), "/d1", "/d1").unwrap(), None);

    // Type mismatches and non-empty targets.
    assert_errno(store.rename(&root(), "/b", "/d1"), libc::EISDIR);
    assert_errno(store.rename(&root(), "/d1", "/b"), libc::ENOTDIR);
    assert_errno(store.rename(&root(), "/d1", "/full"), libc::ENOTEMPTY);
    assert_errno(store.rename(&root(), "/nope", "/z"), libc::ENOENT);
    assert_errno(store.rename(&root(), "/b", "/nope/z"), libc::ENOENT);
    assert_errno(store.rename(&root(), "/b", "/b/z"), libc::ENOTDIR);
    // A target that is an ancestor of the source is not empty.
    assert_errno(store.rename(&root(), "/full/x", "/full"), libc::ENOTEMPTY);

    // A directory into its own subtree.
    store.mkdir(&root(), "/d1/inner", 0o755).unwrap();
    let error = assert_errno(store.rename(&root(), "/d1", "/d1/inner/d"), libc::EINVAL);
    assert!(matches!(error, MetaError::Invalid { field: "to", .. }));
    assert_errno(store.rename(&root(), "/d1", "/d1/new"), libc::EINVAL);
    // A sibling sharing the prefix is not the subtree.
    store.rename(&root(), "/d2", "/d1x").unwrap();
    store.rename(&root(), "/d1x", "/d2").unwrap();

    // A directory over an empty directory; nlinks follow.
    let d1 = store.lookup(&root(), "/d1").unwrap();
    assert_eq!(store.rename(&root(), "/d1", "/d2").unwrap(), None);
    assert_eq!(store.lookup(&root(), "/d2").unwrap().ino, d1.ino);
    assert_eq!(store.lookup(&root(), "/").unwrap().nlink, 4);
    assert_eq!(store.statfs().unwrap().dirs, 3 + 1);

    // A directory moves to another parent: both parents' nlinks follow.
    store.rename(&root(), "/d2", "/full/d2").unwrap();
    assert_eq!(store.lookup(&root(), "/").unwrap().nlink, 3);
    assert_eq!(store.lookup(&root(), "/full").unwrap().nlink, 3);
    assert_eq!(
        store.lookup(&root(), "/full/d2/inner").unwrap().file_type,
        FileType::Dir
    );
    // And over an empty directory in another parent.
    store.mkdir(&root(), "/empty", 0o755).unwrap();
    store.rename(&root(), "/full/d2/inner", "/empty").unwrap();
    assert_eq!(store.lookup(&root(), "/").unwrap().nlink, 4);
    assert_eq!(store.lookup(&root(), "/full/d2").unwrap().nlink, 2);
    assert_eq!(
        names(&store.readdir(&root(), "/", None, 10).unwrap()),
        ["b", "empty", "full"]
    );

    // A directory changing parent needs write permission on itself (its "..").
    store.mkdir(&root(), "/shared", 0o777).unwrap();
    store.mkdir(&root(), "/shared/rootdir", 0o755).unwrap();
    store.mkdir(&root(), "/shared/other", 0o777).unwrap();
    assert_errno(
        store.rename(&alice(), "/shared/rootdir", "/shared/other/rootdir"),
        libc::EACCES,
    );
    store
        .rename(&alice(), "/shared/rootdir", "/shared/renamed")
        .unwrap();

    // The root cannot move or be replaced.
    assert_errno(store.rename(&root(), "/", "/x"), libc::EPERM);
    assert_errno(store.rename(&root(), "/empty", "/"), libc::EPERM);

    let counts = store.statfs().unwrap();
    assert_eq!(counts.files, 2);
    let listed = store.readdir(&root(), "/", None, 100).unwrap().len()
        + store.readdir(&root(), "/full", None, 100).unwrap().len();
    assert_eq!(listed, 6);
}

#[test]
fn layouts_are_inherited() {
    let dir = TempDir::new("inherit");
    let store = open(&dir);
    with_targets(&store, 4);
    store.mkdir(&root(), "/early", 0o755).unwrap();

    // Without defaults: the filesystem's, one 1 MiB stripe.
    let (plain, _) = store.create(&root(), "/plain", 0o644, false, None).unwrap();
    let layout = plain.layout.as_ref().unwrap();
    assert!(!layout.is_composite());
    assert_eq!(layout.components()[0].stripe.stripe_size_bytes(), MIB);
    assert_eq!(layout.components()[0].stripe.stripe_count(), 1);

    // The root's default reaches files in directories made before it was set.
    let root_default = LayoutSpec::plain(StripeSpec {
        stripe_size_bytes: 2 * MIB,
        ..stripes(2, -1)
    });
    store
        .set_default_layout(&root(), "/", Some(root_default.clone()))
        .unwrap();
    let (early, _) = store
        .create(&root(), "/early/f", 0o644, false, None)
        .unwrap();
    let early_layout = early.layout.unwrap();
    assert_eq!(early_layout.components()[0].stripe.stripe_count(), 2);
    assert_eq!(
        early_layout.components()[0].stripe.stripe_size_bytes(),
        2 * MIB
    );

    // mkdir copies the parent's default.
    let child = store.mkdir(&root(), "/child", 0o755).unwrap();
    assert_eq!(child.default_layout, Some(root_default));
    let dir_default = LayoutSpec::plain(stripes(3, -1));
    store
        .set_default_layout(&root(), "/child", Some(dir_default.clone()))
        .unwrap();
    let grandchild = store.mkdir(&root(), "/child/g", 0o755).unwrap();
    assert_eq!(grandchild.default_layout, Some(dir_default));
    let (f, _) = store
        .create(&root(), "/child/g/f", 0o644, false, None)
        .unwrap();
    assert_eq!(target_ids(&f)[0].len(), 3);

    // An explicit layout wins.
    let explicit = LayoutSpec::plain(stripes(1, 3));
    let (f, _) = store
        .create(&root(), "/child/x", 0o644, false, Some(&explicit))
        .unwrap();
    assert_eq!(target_ids(&f), [vec![3]]);

    // A composite request resolves component by component.
    let composite = LayoutSpec {
        components: vec![
            ComponentSpec {
                start_bytes: 0,
                end_bytes: 4 * MIB,
                stripe: stripes(1, 2),
            },
            ComponentSpec {
                start_bytes: 4 * MIB,
                end_bytes: EOF_OFFSET_BYTES,
                stripe: StripeSpec {
                    stripe_size_bytes: 4 * MIB,
                    ..stripes(-1, 1)
                },
            },
        ],
    };
    store
        .set_default_layout(&root(), "/child", Some(composite.clone()))
        .unwrap();
    let (pfl, _) = store
        .create(&root(), "/child/pfl", 0o644, false, None)
        .unwrap();
    let layout = pfl.layout.as_ref().unwrap();
    assert!(layout.is_composite());
    assert_eq!(target_ids(&pfl), [vec![2], vec![1, 2, 3, 0]]);
    assert_eq!(layout.components()[1].start_bytes, 4 * MIB);
    assert_eq!(layout.components()[1].stripe.stripe_size_bytes(), 4 * MIB);
    // Object ids derive from the inode number.
    nacre::layout::object_id(pfl.ino, 1, 3).unwrap();

    // Clearing a default falls back to the root's.
    store.set_default_layout(&root(), "/child", None).unwrap();
    let (f, _) = store
        .create(&root(), "/child/y", 0o644, false, None)
        .unwrap();
    assert_eq!(target_ids(&f)[0].len(), 2);
}

#[test]
fn layout_requests_are_validated() {
    let dir = TempDir::new("validate");
    let store = open(&dir);
    with_targets(&store, 2);
    store.mkdir(&root(), "/d", 0o777).unwrap();

    let bad_size = LayoutSpec::plain(StripeSpec {
        stripe_size_bytes: 1000,
        ..StripeSpec::default()
    });
    let error = assert_errno(
        store.set_default_layout(&root(), "/d", Some(bad_size.clone())),
        libc::EINVAL,
    );
    assert!(
        matches!(
            error,
            MetaError::Layout {
                ref path,
                source: LayoutError::InvalidField { field: "stripe_size_bytes", .. }
            } if path == "/d"
        ),
        "{error}"
    );
    assert!(error.to_string().contains("stripe_size_bytes"), "{error}");
    assert_errno(
        store.create(&root(), "/d/f", 0o644, false, Some(&bad_size)),
        libc::EINVAL,
    );
    for (count, index) in [(0, -1), (-2, -1), (2001, -1), (1, -2), (1, 1 << 32)] {
        let spec = LayoutSpec::plain(stripes(count, index));
        assert_errno(
            store.set_default_layout(&root(), "/d", Some(spec)),
            libc::EINVAL,
        );
    }
    let gap = LayoutSpec {
        components: vec![
            ComponentSpec {
                start_bytes: 0,
                end_bytes: 3 * MIB,
                stripe: StripeSpec {
                    stripe_size_bytes: 2 * MIB,
                    ..StripeSpec::default()
                },
            },
            ComponentSpec {
                start_bytes: 3 * MIB,
                end_bytes: EOF_OFFSET_BYTES,
                stripe: StripeSpec::default(),
            },
        ],
    };
    let error = assert_errno(
        store.set_default_layout(&root(), "/d", Some(gap)),
        libc::EINVAL,
    );
    assert!(matches!(
        error,
        MetaError::Layout {
            source: LayoutError::UnalignedBoundary { .. },
            ..
        }
    ));
    let short = LayoutSpec {
        components: vec![ComponentSpec {
            start_bytes: 0,
            end_bytes: 4 * MIB,
            stripe: StripeSpec::default(),
        }],
    };
    assert_errno(
        store.set_default_layout(&root(), "/d", Some(short)),
        libc::EINVAL,
    );
    let none = LayoutSpec { components: vec![] };
    assert_errno(
        store.set_default_layout(&root(), "/d", Some(none)),
        libc::EINVAL,
    );
    let bad_pool = LayoutSpec::plain(StripeSpec {
        pool: Some("bad pool".into()),
        ..StripeSpec::default()
    });
    assert_errno(
        store.set_default_layout(&root(), "/d", Some(bad_pool)),
        libc::EINVAL,
    );

    // A pool or an index no target has yet is fine for a default, not for a file.
    let future = LayoutSpec::plain(StripeSpec {
        pool: Some("future".into()),
        ..stripes(1, 99)
    });
    store
        .set_default_layout(&root(), "/d", Some(future.clone()))
        .unwrap();
    assert_errno(
        store.create(&root(), "/d/f", 0o644, false, None),
        libc::ENOSPC,
    );
    let missing_index = LayoutSpec::plain(stripes(1, 99));
    let error = assert_errno(
        store.create(&root(), "/f", 0o644, false, Some(&missing_index)),
        libc::EINVAL,
    );
    assert!(matches!(
        error,
        MetaError::Layout {
            source: LayoutError::TargetNotInPool { target_id: 99, .. },
            ..
        }
    ));
    // Too many stripes for the targets.
    let wide = LayoutSpec::plain(stripes(3, -1));
    assert_errno(
        store.create(&root(), "/f", 0o644, false, Some(&wide)),
        libc::EINVAL,
    );
    // Only the owner or root sets a default.
    assert_errno(store.set_default_layout(&alice(), "/d", None), libc::EPERM);
    // Nothing was created by the failures.
    assert_eq!(store.statfs().unwrap().files, 0);
}

#[test]
fn stripe_count_all_and_pools() {
    let dir = TempDir::new("pools");
    let store = open(&dir);
    assert_eq!(
        assert_errno(
            store.create(&root(), "/f", 0o644, false, None),
            libc::ENOSPC
        ),
        MetaError::NoTargets { pool: None }
    );
    store
        .register_target(target(3, 50 * GIB, &["fast"]), None)
        .unwrap();
    store
        .register_target(target(1, 50 * GIB, &["fast", "all"]), None)
        .unwrap();
    store
        .register_target(target(2, 50 * GIB, &["slow"]), None)
        .unwrap();
    store
        .register_target(target(0, 50 * GIB, &["slow", "all"]), None)
        .unwrap();
    let ids: Vec<u32> = store.targets().iter().map(|info| info.target_id).collect();
    assert_eq!(ids, [0, 1, 2, 3]);

    let all = LayoutSpec::plain(stripes(-1, 0));
    let (f, _) = store
        .create(&root(), "/all", 0o644, false, Some(&all))
        .unwrap();
    assert_eq!(target_ids(&f), [vec![0, 1, 2, 3]]);

    let fast = LayoutSpec::plain(StripeSpec {
        pool: Some("fast".into()),
        ..stripes(-1, -1)
    });
    for index in 0..4 {
        let (f, _) = store
            .create(&root(), &format!("/fast{index}"), 0o644, false, Some(&fast))
            .unwrap();
        let ids = &target_ids(&f)[0];
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [1, 3]);
        let layout = f.layout.unwrap();
        assert_eq!(
            layout.components()[0].stripe.pool().unwrap().as_str(),
            "fast"
        );
    }
    let slow_one = LayoutSpec::plain(StripeSpec {
        pool: Some("slow".into()),
        ..stripes(1, -1)
    });
    let mut seen = HashSet::new();
    for index in 0..4 {
        let (f, _) = store
            .create(
                &root(),
                &format!("/slow{index}"),
                0o644,
                false,
                Some(&slow_one),
            )
            .unwrap();
        seen.insert(target_ids(&f)[0][0]);
    }
    assert_eq!(seen, HashSet::from([0, 2]));

    let empty = LayoutSpec::plain(StripeSpec {
        pool: Some("nothing".into()),
        ..StripeSpec::default()
    });
    let error = assert_errno(
        store.create(&root(), "/none", 0o644, false, Some(&empty)),
        libc::ENOSPC,
    );
    assert_eq!(
        error,
        MetaError::NoTargets {
            pool: Some("nothing".into())
        }
    );
    assert!(error.to_string().contains("nothing"), "{error}");
}

#[test]
fn first_target_spreads_or_takes_the_freest() {
    let dir = TempDir::new("spread");
    let store = open(&dir);
    // Within 10% of each other: round-robin.
    for (id, free) in [(0, 100 * GIB), (1, 95 * GIB), (2, 91 * GIB), (3, 99 * GIB)] {
        store.register_target(target(id, free, &[]), None).unwrap();
    }
    let mut firsts: BTreeMap<u32, usize> = BTreeMap::new();
    for index in 0..8 {
        let (f, _) = store
            .create(&root(), &format!("/rr{index}"), 0o644, false, None)
            .unwrap();
        *firsts.entry(target_ids(&f)[0][0]).or_default() += 1;
    }
    assert_eq!(firsts, BTreeMap::from([(0, 2), (1, 2), (2, 2), (3, 2)]));

    // Unbalanced: the freest, every time.
    store.update_usage(2, 100 * GIB, 99 * GIB).unwrap();
    store.update_usage(0, 100 * GIB, 10 * GIB).unwrap();
    for index in 0..4 {
        let (f, _) = store
            .create(&root(), &format!("/free{index}"), 0o644, false, None)
            .unwrap();
        assert_eq!(target_ids(&f)[0][0], 2);
    }
    // A two-stripe file starts at the freest and goes on in id order.
    let two = LayoutSpec::plain(stripes(2, -1));
    let (f, _) = store
        .create(&root(), "/two", 0o644, false, Some(&two))
        .unwrap();
    assert_eq!(target_ids(&f), [vec![2, 3]]);
    let usage = store.targets();
    assert_eq!(usage[2].free_bytes, 99 * GIB);
    assert_eq!(
        store.statfs().unwrap().free_bytes,
        (10 + 95 + 99 + 99) * GIB
    );
}

#[test]
fn targets_register_update_and_conflict() {
    let dir = TempDir::new("targets");
    {
        let store = open(&dir);
        store
            .register_target(target(7, 10 * GIB, &["a"]), None)
            .unwrap();
        // A restart: same id and uuid, new endpoint, pools and usage.
        let restarted = TargetInfo {
            endpoint: "tcp://10.0.0.7:9999".into(),
            pools: vec!["b".into()],
            free_bytes: 20 * GIB,
            ..target(7, 0, &[])
        };
        store.register_target(restarted.clone(), None).unwrap();
        assert_eq!(store.targets(), std::slice::from_ref(&restarted));
        // Another disk claiming the id.
        let impostor = TargetInfo {
            uuid: "another-disk".into(),
            ..restarted.clone()
        };
        let error = assert_errno(store.register_target(impostor, None), libc::EEXIST);
        assert!(matches!(
            error,
            MetaError::TargetConflict { target_id: 7, .. }
        ));
        assert!(error.to_string().contains("another-disk"), "{error}");
        assert_eq!(store.targets(), [restarted]);

        // Usage is kept in memory only.
        store.update_usage(7, 100 * GIB, 1).unwrap();
        assert_eq!(store.targets()[0].free_bytes, 1);

        for bad in [
            TargetInfo {
                uuid: String::new(),
                ..target(8, 0, &[])
            },
            TargetInfo {
                endpoint: String::new(),
                ..target(8, 0, &[])
            },
            TargetInfo {
                free_bytes: 200 * GIB,
                ..target(8, 0, &[])
            },
            target(8, 0, &["bad pool"]),
            target(8, 0, &["a", "a"]),
        ] {
            assert_errno(store.register_target(bad, None), libc::EINVAL);
        }
        assert_eq!(store.targets().len(), 1);
    }
    let store = open(&dir);
    let targets = store.targets();
    assert_eq!(targets.len(), 1);
    assert_eq!(targets[0].endpoint, "tcp://10.0.0.7:9999");
    assert_eq!(targets[0].pools, ["b"]);
    assert_eq!(targets[0].free_bytes, 20 * GIB, "the registration's usage");
}

#[test]
fn readdir_pages_through_many_entries() {
    let dir = TempDir::new("readdir");
    let store = open(&dir);
    with_targets(&store, 1);
    store.mkdir(&root(), "/big", 0o755).unwrap();
    store.mkdir(&root(), "/big/sub", 0o755).unwrap();
    store
        .create(&root(), "/big/sub/hidden", 0o644, false, None)
        .unwrap();
    store
        .create(&root(), "/bigger", 0o644, false, None)
        .unwrap();
    let count = MAX_READDIR_ENTRIES + 30;
    let mut expected: Vec<String> = (0..count).map(|index| format!("e{index:05}")).collect();
    for name in expected.iter().rev() {
        store
            .create(&root(), &format!("/big/{name}"), 0o644, false, None)
            .unwrap();
    }
    expected.push("sub".into());
    expected.sort();

    let mut listed = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = store
            .readdir(&root(), "/big", after.as_deref(), 97)
            .unwrap();
        assert!(page.len() <= 97);
        pages += 1;
        let Some(last) = page.last() else { break };
        after = Some(last.name.clone());
        listed.extend(page.into_iter().map(|entry| entry.name));
        assert!(pages <= count, "paging ends");
    }
    assert_eq!(listed, expected);
    assert_eq!(
        store
            .readdir(&root(), "/big", None, usize::MAX)
            .unwrap()
            .len(),
        MAX_READDIR_ENTRIES
    );
    assert!(store.readdir(&root(), "/big", None, 0).unwrap().is_empty());
    // `after` need not name an entry.
    let page = store.readdir(&root(), "/big", Some("e00010x"), 2).unwrap();
    assert_eq!(names(&page), ["e00011", "e00012"]);
    assert!(
        store
            .readdir(&root(), "/big", Some("zzz"), 5)
            .unwrap()
            .is_empty()
    );
    assert_errno(
        store.readdir(&root(), "/big", Some(&"z".repeat(300)), 5),
        libc::ENAMETOOLONG,
    );
    assert!(
        store
            .readdir(&root(), "/big/sub/", Some("hidden"), 5)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn everything_survives_a_reopen_and_inodes_are_never_reused() {
    let dir = TempDir::new("durable");
    let highest_ino;
    let spec = LayoutSpec::plain(stripes(2, -1));
    {
        let store = open(&dir);
        with_targets(&store, 3);
        store.mkdir(&root(), "/d", 0o750).unwrap();
        store
            .set_default_layout(&root(), "/d", Some(spec.clone()))
            .unwrap();
        store.chmod(&root(), "/d", 0o777).unwrap();
        let (kept, _) = store
            .create(&alice(), "/d/kept", 0o600, false, None)
            .unwrap();
        let (gone, _) = store
            .create(&alice(), "/d/gone", 0o600, false, None)
            .unwrap();
        assert!(gone.ino > kept.ino);
        highest_ino = gone.ino;
        store.unlink(&alice(), "/d/gone").unwrap();
        store.rename(&alice(), "/d/kept", "/kept").unwrap_err();
        store.chmod(&root(), "/", 0o777).unwrap();
        store.rename(&alice(), "/d/kept", "/kept").unwrap();
        store.chown(&root(), "/kept", None, Some(3000)).unwrap();
        // The store is dropped here, as a killed process would leave it.
    }
    let store = open(&dir);
    assert_eq!(store.targets().len(), 3);
    let d = store.lookup(&root(), "/d").unwrap();
    assert_eq!(d.mode, 0o777);
    assert_eq!(d.default_layout, Some(spec));
    let kept = store.lookup(&root(), "/kept").unwrap();
    assert_eq!((kept.uid, kept.gid, kept.mode), (1000, 3000, 0o600));
    assert_eq!(target_ids(&kept)[0].len(), 2);
    assert_errno(store.lookup(&root(), "/d/gone"), libc::ENOENT);
    assert!(store.readdir(&root(), "/d", None, 10).unwrap().is_empty());
    assert_eq!(store.lookup(&root(), "/").unwrap().mode, 0o777);
    let counts = store.statfs().unwrap();
    assert_eq!((counts.files, counts.dirs), (1, 2));

    let (fresh, _) = store.create(&root(), "/fresh", 0o644, false, None).unwrap();
    assert!(
        fresh.ino > highest_ino,
        "inode {} reused (highest before was {highest_ino})",
        fresh.ino
    );
    let fresh_dir = store.mkdir(&root(), "/fresh_dir", 0o755).unwrap();
    assert_eq!(fresh_dir.ino, fresh.ino + 1);
}

#[test]
fn concurrent_creates_in_one_directory() {
    const THREADS: usize = 8;
    const FILES_PER_THREAD: usize = 16;
    let dir = TempDir::new("concurrent");
    let store = Arc::new(open(&dir));
    with_targets(&store, 4);
    store.mkdir(&root(), "/shared", 0o777).unwrap();
    let workers: Vec<_> = (0..THREADS)
        .map(|thread| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let cred = Cred {
                    uid: 2000 + thread as u32,
                    gid: 2000,
                    groups: vec![],
                };
                (0..FILES_PER_THREAD)
                    .map(|index| {
                        let path = format!("/shared/t{thread}-{index}");
                        let (attr, created) =
                            store.create(&cred, &path, 0o644, true, None).unwrap();
                        assert!(created);
                        store.lookup(&cred, &path).unwrap();
                        attr.ino
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut inos = HashSet::new();
    for worker in workers {
        for ino in worker.join().unwrap() {
            assert!(inos.insert(ino), "inode {ino} handed out twice");
        }
    }
    assert_eq!(inos.len(), THREADS * FILES_PER_THREAD);
    let listing = store.readdir(&root(), "/shared", None, 1000).unwrap();
    assert_eq!(listing.len(), THREADS * FILES_PER_THREAD);
    let listed: HashSet<u64> = listing.iter().map(|entry| entry.ino).collect();
    assert_eq!(listed, inos);
    assert_eq!(
        store.statfs().unwrap().files,
        (THREADS * FILES_PER_THREAD) as u64
    );
}

/// Every truncation of a real encoding is an error; so are trailing bytes.
#[track_caller]
fn check_truncations<T: std::fmt::Debug + PartialEq>(
    bytes: &[u8],
    value: &T,
    from_bytes: impl Fn(&[u8]) -> Result<T, nacre::codec::CodecError>,
) {
    assert_eq!(&from_bytes(bytes).unwrap(), value);
    for cut in 0..bytes.len() {
        assert!(from_bytes(&bytes[..cut]).is_err(), "cut at {cut} decoded");
    }
    let mut longer = bytes.to_vec();
    longer.push(0);
    assert!(from_bytes(&longer).is_err());
}

/// Flipped bytes and random garbage decode or fail, never panic.
fn check_garbage<T>(
    bytes: &[u8],
    from_bytes: impl Fn(&[u8]) -> Result<T, nacre::codec::CodecError>,
) {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for position in 0..bytes.len() {
        let mut flipped = bytes.to_vec();
        flipped[position] ^= (next() as u8) | 1;
        let _ = from_bytes(&flipped);
    }
    for len in 0..200 {
        let garbage: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let _ = from_bytes(&garbage);
    }
    let _ = from_bytes(&[0xff; 64]);
}

#[test]
fn every_record_survives_hostile_bytes() {
    let dir = TempDir::new("codec");
    let store = open(&dir);
    with_targets(&store, 3);
    let composite = LayoutSpec {
        components: vec![
            ComponentSpec {
                start_bytes: 0,
                end_bytes: 2 * MIB,
                stripe: StripeSpec {
                    pool: Some("fast".into()),
                    overstriping: true,
                    ..stripes(2, 1)
                },
            },
            ComponentSpec {
                start_bytes: 2 * MIB,
                end_bytes: EOF_OFFSET_BYTES,
                stripe: stripes(-1, -1),
            },
        ],
    };
    let mut file_layout = composite.clone();
    file_layout.components[0].stripe.pool = None;
    let (file, _) = store
        .create(&root(), "/f", 0o4755, false, Some(&file_layout))
        .unwrap();
    store
        .set_default_layout(&root(), "/", Some(composite.clone()))
        .unwrap();
    let dir_attr = store.lookup(&root(), "/").unwrap();
    let cred = Cred {
        uid: 12,
        gid: 34,
        groups: vec![1, 2, 3],
    };
    let target = target(9, 5, &["fast", "slow"]);
    let entry = DirEntry {
        name: "entry-é".into(),
        ino: 77,
        file_type: FileType::Dir,
    };
    let statfs = StatFs {
        files: 1,
        dirs: 2,
        free_inodes: 3,
        capacity_bytes: 4,
        free_bytes: 5,
    };

    check_truncations(&file.to_bytes(), &file, Attr::from_bytes);
    check_truncations(&dir_attr.to_bytes(), &dir_attr, Attr::from_bytes);
    check_truncations(&composite.to_bytes(), &composite, LayoutSpec::from_bytes);
    check_truncations(&cred.to_bytes(), &cred, Cred::from_bytes);
    check_truncations(&target.to_bytes(), &target, TargetInfo::from_bytes);
    check_truncations(&entry.to_bytes(), &entry, DirEntry::from_bytes);
    check_truncations(&statfs.to_bytes(), &statfs, StatFs::from_bytes);

    check_garbage(&file.to_bytes(), Attr::from_bytes);
    check_garbage(&dir_attr.to_bytes(), Attr::from_bytes);
    check_garbage(&composite.to_bytes(), LayoutSpec::from_bytes);
    check_garbage(&cred.to_bytes(), Cred::from_bytes);
    check_garbage(&target.to_bytes(), TargetInfo::from_bytes);
    check_garbage(&entry.to_bytes(), DirEntry::from_bytes);
    check_garbage(&statfs.to_bytes(), StatFs::from_bytes);

    // Out-of-range values are named.
    let mut bad_type = entry.to_bytes();
    *bad_type.last_mut().unwrap() = 9;
    let error = DirEntry::from_bytes(&bad_type).unwrap_err();
    assert!(error.to_string().contains("file_type"), "{error}");
    let mut bad_mode = file.to_bytes();
    bad_mode[9..13].copy_from_slice(&0o10000u32.to_le_bytes());
    let error = Attr::from_bytes(&bad_mode).unwrap_err();
    assert!(error.to_string().contains("mode"), "{error}");
    // A count the input cannot hold is refused before any allocation.
    let mut huge_groups = Vec::new();
    huge_groups.extend_from_slice(&[0; 8]);
    huge_groups.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(Cred::from_bytes(&huge_groups).is_err());
    // Over-long lists are written whole and refused by the decoder.
    let too_many = LayoutSpec {
        components: vec![composite.components[1].clone(); 65],
    };
    assert!(LayoutSpec::from_bytes(&too_many.to_bytes()).is_err());
    let mut crowded = target.clone();
    crowded.pools = (0..65).map(|index| format!("p{index}")).collect();
    assert!(TargetInfo::from_bytes(&crowded.to_bytes()).is_err());
    let many_groups = Cred {
        groups: (0..1000).collect(),
        ..cred.clone()
    };
    assert_eq!(
        Cred::from_bytes(&many_groups.to_bytes())
            .unwrap()
            .groups
            .len(),
        256
    );
    let mut reader = Reader::new(&[2], "access");
    assert_eq!(Access::decode(&mut reader).unwrap(), Access::Write);
    let mut reader = Reader::new(&[0], "access");
    assert!(Access::decode(&mut reader).is_err());
    assert_eq!(Access::ReadWrite.to_u8(), 3);
}

#[test]
fn removed_files_log_their_objects_until_the_targets_confirm() {
    let dir = TempDir::new("removals");
    let store = open(&dir);
    with_targets(&store, 3);
    let spec = LayoutSpec::plain(stripes(-1, -1));
    let a = store
        .create(&root(), "/a", 0o644, false, Some(&spec))
        .unwrap()
        .0;
    let b = store
        .create(&root(), "/b", 0o644, false, Some(&spec))
        .unwrap()
        .0;
    let object_of = |attr: &Attr, target_id: u32| {
        let stripe = target_ids(attr)[0]
            .iter()
            .position(|&t| t == target_id)
            .unwrap();
        nacre::layout::object_id(attr.ino, 0, stripe as u32).unwrap()
    };
    for t in 0..3 {
        assert!(store.pending_removals(t, 100).unwrap().is_empty());
    }

    // unlink logs every object of the file, per target, in the same transaction
    store.unlink(&root(), "/a").unwrap();
    for t in 0..3 {
        assert_eq!(
            store.pending_removals(t, 100).unwrap(),
            vec![object_of(&a, t)]
        );
    }
    // a rename over a file logs the replaced file's objects
    store
        .create(&root(), "/c", 0o644, false, Some(&spec))
        .unwrap();
    store.rename(&root(), "/c", "/b").unwrap();
    let mut on_1 = vec![object_of(&a, 1), object_of(&b, 1)];
    on_1.sort_unstable();
    assert_eq!(store.pending_removals(1, 100).unwrap(), on_1);
    assert_eq!(
        store.pending_removals(1, 1).unwrap().len(),
        1,
        "max is kept"
    );

    // confirmed removals are forgotten, durably; others stay across a reopen
    store.removals_done(1, &on_1).unwrap();
    drop(store);
    let store = open(&dir);
    assert!(store.pending_removals(1, 100).unwrap().is_empty());
    assert_eq!(store.pending_removals(0, 100).unwrap().len(), 2);
    assert_eq!(store.pending_removals(2, 100).unwrap().len(), 2);
}

fn task_paths(paths: &[&str]) -> Vec<String> {
    paths.iter().map(|p| (*p).to_owned()).collect()
}

#[test]
fn tasks_are_claimed_in_order_updated_canceled_and_requeued_at_restart() {
    use nacre::meta::store::TaskEnd;
    use nacre::meta::task::{TaskCounts, TaskFailure, TaskKind, TaskState};
    let dir = TempDir::new("tasks");
    let store = open(&dir);
    // Imports and exports are root's; a restore anyone's.
    let err = store
        .task_create(&alice(), TaskKind::Import, &task_paths(&["/data"]))
        .unwrap_err();
    assert!(matches!(err, MetaError::Perm { .. }), "{err}");
    let restore = store
        .task_create(&alice(), TaskKind::Restore, &task_paths(&["/data/f"]))
        .unwrap();
    let import = store
        .task_create(&root(), TaskKind::Import, &task_paths(&["/data/"]))
        .unwrap();
    assert_eq!((restore.id, import.id), (1, 2));
    assert_eq!(import.paths, ["/data"]);
    assert_eq!(import.state, TaskState::Pending);
    let err = store
        .task_create(&root(), TaskKind::Export, &[])
        .unwrap_err();
    assert!(err.to_string().contains("paths"), "{err}");
    assert!(store.task_claim(&alice()).is_err(), "only root runs tasks");

    // Claimed oldest first; a pending one is canceled at once.
    let claimed = store.task_claim(&root()).unwrap().unwrap();
    assert_eq!((claimed.id, claimed.state), (1, TaskState::Executing));
    assert_eq!(
        store.task_cancel(&root(), 2).unwrap().state,
        TaskState::Canceled
    );
    assert!(store.task_claim(&root()).unwrap().is_none());
    assert!(store.task_cancel(&root(), 2).is_err(), "finished already");

    // Updates carry counts and report lines; a cancel of an executing task is a request
    // the runner sees in the update's reply.
    let line = TaskFailure {
        path: "/data/x".into(),
        code: "S3Error".into(),
        message: "gone".into(),
    };
    let counts = TaskCounts {
        total: 3,
        done: 1,
        failed: 1,
        bytes: 10,
        summary: "1 files restored".into(),
    };
    let after = store
        .task_update(&root(), 1, &counts, std::slice::from_ref(&line), None)
        .unwrap();
    assert_eq!((after.reported, after.cancel_requested), (1, false));
    // A user sees and cancels only the tasks they asked for.
    assert!(store.task_cancel(&bob(), 1).is_err());
    assert!(store.task(&bob(), 1).is_err());
    assert!(store.task_report(&bob(), 1, 0).is_err());
    let (theirs, _) = store.task_list(&alice(), 0).unwrap();
    assert_eq!(theirs.iter().map(|t| t.id).collect::<Vec<_>>(), [1]);
    assert!(store.task_cancel(&alice(), 1).unwrap().cancel_requested);
    let after = store.task_update(&root(), 1, &counts, &[], None).unwrap();
    assert!(after.cancel_requested);
    assert_eq!(
        store.task_report(&root(), 1, 0).unwrap(),
        std::slice::from_ref(&line)
    );
    assert!(store.task_report(&root(), 1, 1).unwrap().is_empty());

    // Stopped while executing with a cancel asked for: canceled after a restart.
    drop(store);
    let store = open(&dir);
    assert_eq!(store.task(&root(), 1).unwrap().state, TaskState::Canceled);
    // Stopped while executing: pending again after a restart, counts and report cleared.
    let export = store
        .task_create(&root(), TaskKind::Export, &task_paths(&["/data"]))
        .unwrap();
    assert_eq!(store.task_claim(&root()).unwrap().unwrap().id, export.id);
    store
        .task_update(
            &root(),
            export.id,
            &counts,
            std::slice::from_ref(&line),
            None,
        )
        .unwrap();
    drop(store);
    let store = open(&dir);
    let back = store.task(&root(), export.id).unwrap();
    assert_eq!(back.state, TaskState::Pending);
    assert_eq!((back.counts.done, back.reported), (0, 0));
    assert!(store.task_report(&root(), export.id, 0).unwrap().is_empty());
    let again = store.task_claim(&root()).unwrap().unwrap();
    assert_eq!(again.id, export.id);
    let end = TaskEnd {
        state: TaskState::Succeeded,
        message: String::new(),
    };
    let done = store
        .task_update(&root(), export.id, &counts, &[], Some(&end))
        .unwrap();
    assert_eq!(done.state, TaskState::Succeeded);
    assert!(done.ended_ns >= done.started_ns && done.started_ns > 0);
    assert!(
        store
            .task_update(&root(), export.id, &counts, &[], None)
            .is_err(),
        "a finished task takes no updates"
    );
    assert!(store.task_claim(&root()).unwrap().is_none());
    let (all, more) = store.task_list(&root(), 0).unwrap();
    assert_eq!(all.iter().map(|t| t.id).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(!more);
    assert!(matches!(
        store.task(&root(), 9).unwrap_err(),
        MetaError::NotFound { .. }
    ));
}

#[test]
fn the_oldest_finished_task_makes_room_and_ids_are_never_reused() {
    use nacre::limits::MAX_TASKS;
    use nacre::meta::task::{TaskKind, TaskState};
    let dir = TempDir::new("tasks-full");
    let store = open(&dir);
    let paths = task_paths(&["/"]);
    for _ in 0..MAX_TASKS {
        store
            .task_create(&root(), TaskKind::Import, &paths)
            .unwrap();
    }
    // All unfinished: refused, naming why.
    let err = store
        .task_create(&root(), TaskKind::Import, &paths)
        .unwrap_err();
    assert!(err.to_string().contains("unfinished"), "{err}");
    store.task_cancel(&root(), 5).unwrap();
    let next = store
        .task_create(&root(), TaskKind::Import, &paths)
        .unwrap();
    assert_eq!(next.id, MAX_TASKS as u64 + 1);
    assert!(
        store.task(&root(), 5).is_err(),
        "the finished one made room"
    );
    assert_eq!(store.task(&root(), 6).unwrap().state, TaskState::Pending);
    // Every task listed, in pages.
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let (page, more) = store.task_list(&root(), after).unwrap();
        seen.extend(page.iter().map(|t| t.id));
        after = *seen.last().unwrap();
        if !more {
            break;
        }
    }
    assert_eq!(seen.len(), MAX_TASKS);
}

#[test]
fn a_release_waits_for_open_handles_and_leaves_what_is_not_archived_and_clean() {
    use nacre::meta::repo::{
        AssocState, Association, HS_ARCHIVED, HS_DIRTY, HS_EXISTS, HS_RELEASED, ReleaseOutcome,
        ReleaseSkip,
    };
    let dir = TempDir::new("release");
    let store = open(&dir);
    with_targets(&store, 2);
    store.mkdir(&root(), "/data", 0o777).unwrap();
    let assoc = store
        .repo_link(
            &root(),
            &Association {
                id: 0,
                path: "/data".into(),
                bucket: "bucket".into(),
                prefix: String::new(),
                endpoint: None,
                region: None,
                chunk_bytes: 64 << 10,
                auto_import: 0,
                auto_export: 0,
                state: AssocState::Available,
                reason: String::new(),
            },
        )
        .unwrap();
    let (f, _) = store
        .create(&root(), "/data/f", 0o666, false, None)
        .unwrap();
    store
        .create(&root(), "/data/only-here", 0o666, false, None)
        .unwrap();
    let skipped =
        |path: &str, idle_days: u32| store.release_plan(&root(), path, idle_days).unwrap().err();
    assert_eq!(
        skipped("/data/only-here", 0),
        Some(ReleaseOutcome::Skipped(ReleaseSkip::NotArchived))
    );
    store
        .mark_archived(&root(), "/data/f", assoc.id, "f", "\"e1\"", 1000)
        .unwrap();
    assert_errno(store.release_plan(&alice(), "/data/f", 0), libc::EPERM);
    assert_errno(store.release_plan(&root(), "/data", 0), libc::EISDIR);
    // Just made: not idle for a day.
    assert_eq!(
        skipped("/data/f", 1),
        Some(ReleaseOutcome::Skipped(ReleaseSkip::Recent))
    );

    let job = store.release_plan(&root(), "/data/f", 0).unwrap().unwrap();
    store.handle_opened(f.ino);
    store.handle_opened(f.ino);
    assert_errno(store.mark_released(&job), libc::EBUSY);
    store.handle_closed(f.ino, store.instance());
    // A close of a handle a start before this one counted takes nothing from this one's.
    store.handle_closed(f.ino, store.instance().wrapping_add(1));
    assert_eq!(store.open_handles(f.ino), 1);
    assert_errno(store.mark_released(&job), libc::EBUSY);
    assert_eq!(
        store.repo_file(f.ino).unwrap().unwrap().flags,
        HS_EXISTS | HS_ARCHIVED
    );
    store.handle_closed(f.ino, store.instance());
    assert_eq!(store.open_handles(f.ino), 0);
    assert_eq!(
        store.mark_released(&job).unwrap(),
        ReleaseOutcome::Released(1000)
    );
    let record = store.repo_file(f.ino).unwrap().unwrap();
    assert_eq!(record.flags, HS_EXISTS | HS_ARCHIVED | HS_RELEASED);
    assert!((0..record.chunks()).all(|c| !record.is_present(c)));
    assert_eq!(skipped("/data/f", 0), Some(ReleaseOutcome::AlreadyReleased));

    // Exported again (present, archived), then written: dirty, left.
    store
        .mark_archived(&root(), "/data/f", assoc.id, "f", "\"e2\"", 1000)
        .unwrap();
    let job = store.release_plan(&root(), "/data/f", 0).unwrap().unwrap();
    store.add_hsm_flags(f.ino, HS_DIRTY).unwrap();
    assert_eq!(
        skipped("/data/f", 0),
        Some(ReleaseOutcome::Skipped(ReleaseSkip::Dirty))
    );
    // A plan made before the write does not release it either.
    assert_eq!(
        store.mark_released(&job).unwrap(),
        ReleaseOutcome::Skipped(ReleaseSkip::Dirty)
    );
    // Nor one of an object version exported since.
    store
        .mark_archived(&root(), "/data/f", assoc.id, "f", "\"e3\"", 1000)
        .unwrap();
    assert_errno(store.mark_released(&job), libc::EBUSY);
    // The owner's flags: norelease keeps it; only its owner or root; only those flags; only
    // files linked to an object.
    use nacre::meta::repo::HS_NORELEASE;
    assert_errno(
        store.hsm_set(&alice(), "/data/f", HS_NORELEASE, 0),
        libc::EPERM,
    );
    assert_errno(
        store.hsm_set(&root(), "/data/f", HS_RELEASED, 0),
        libc::EINVAL,
    );
    assert_errno(
        store.hsm_set(&root(), "/data/only-here", HS_NORELEASE, 0),
        libc::EINVAL,
    );
    store.hsm_set(&root(), "/data/f", 0, HS_DIRTY).unwrap();
    let flags = store.hsm_set(&root(), "/data/f", HS_NORELEASE, 0).unwrap();
    assert_eq!(flags, HS_EXISTS | HS_ARCHIVED | HS_NORELEASE);
    assert_eq!(
        skipped("/data/f", 0),
        Some(ReleaseOutcome::Skipped(ReleaseSkip::NoRelease))
    );
    // Which objects a file still links to: an auto-export deletes only the others.
    let keys = ["f".to_owned(), "gone".to_owned(), "f".to_owned()];
    assert_eq!(
        store.keys_linked(&root(), assoc.id, &keys).unwrap(),
        [true, false, true]
    );
    assert_eq!(
        store.keys_linked(&root(), assoc.id + 1, &keys).unwrap(),
        [false, false, false]
    );
    assert_errno(store.keys_linked(&alice(), assoc.id, &keys), libc::EPERM);

    // Every start has a number of its own.
    let first = store.instance();
    drop(store);
    let store = open(&dir);
    assert_ne!(store.instance(), first);
}

#[test]
fn symbolic_links_are_made_read_and_followed() {
    let dir = TempDir::new("symlinks");
    let store = open(&dir);
    with_targets(&store, 1);
    store.mkdir(&root(), "/a", 0o755).unwrap();
    store.mkdir(&root(), "/a/b", 0o777).unwrap();
    let (f, _) = store.create(&root(), "/a/b/f", 0o644, false, None).unwrap();
    let b = store.lookup(&root(), "/a/b").unwrap();

    let link = store.symlink(&root(), "/l", "a/b").unwrap();
    assert_eq!(link.file_type, FileType::Symlink);
    assert_eq!((link.mode, link.uid, link.nlink), (0o777, 0, 1));
    assert_eq!(link.symlink.as_deref(), Some("a/b"));
    let mine = store.symlink(&alice(), "/a/b/mine", "f").unwrap();
    assert_eq!((mine.uid, mine.gid), (1000, 1000));
    assert_eq!(store.stat(&alice(), "/a/b/mine").unwrap().ino, f.ino);
    store.symlink(&root(), "/a/up", "../a/b/f").unwrap();
    store.symlink(&root(), "/abs", "/a/b/f").unwrap();

    // lstat shows the link, stat what it names; links inside a path are always followed.
    assert!(store.lookup(&root(), "/l").unwrap().is_symlink());
    assert_eq!(store.stat(&root(), "/l").unwrap().ino, b.ino);
    assert_eq!(store.lookup(&root(), "/l/f").unwrap().ino, f.ino);
    assert_eq!(store.stat(&root(), "/a/up").unwrap().ino, f.ino);
    for path in ["/abs", "/a/up", "/l/f"] {
        let opened = store.open_file(&root(), path, Access::Read).unwrap();
        assert_eq!(opened.ino, f.ino, "{path}");
    }
    assert_eq!(
        names(&store.readdir(&root(), "/l", None, 10).unwrap()),
        ["f", "mine"]
    );
    let top = store.readdir(&root(), "/", None, 10).unwrap();
    let l = top.iter().find(|e| e.name == "l").unwrap();
    assert_eq!(l.file_type, FileType::Symlink);
    let missing = assert_errno(store.stat(&root(), "/l/nothing"), libc::ENOENT);
    assert!(missing.to_string().contains("/a/b/nothing"), "{missing}");

    // O_CREAT through a dangling link makes what it names; O_EXCL finds the link.
    store.symlink(&root(), "/dangling", "/a/b/new").unwrap();
    let (made, created) = store
        .create(&root(), "/dangling", 0o600, false, None)
        .unwrap();
    assert!(created);
    assert_eq!(store.lookup(&root(), "/a/b/new").unwrap().ino, made.ino);
    assert_errno(store.create(&root(), "/l", 0o600, true, None), libc::EEXIST);
    assert_errno(
        store.create(&root(), "/l", 0o600, false, None),
        libc::EISDIR,
    );
    assert_errno(store.mkdir(&root(), "/abs", 0o755), libc::EEXIST);

    // A loop fails with ELOOP once followed; the links themselves are still there.
    store.symlink(&root(), "/loop1", "/loop2").unwrap();
    store.symlink(&root(), "/loop2", "loop1").unwrap();
    let looped = assert_errno(store.stat(&root(), "/loop1"), libc::ELOOP);
    assert!(looped.to_string().contains("symbolic links"), "{looped}");
    assert_errno(
        store.open_file(&root(), "/loop2/x", Access::Read),
        libc::ELOOP,
    );
    assert!(store.lookup(&root(), "/loop1").unwrap().is_symlink());

    // chmod and chown follow; lchown changes the link.
    store.chmod(&root(), "/abs", 0o600).unwrap();
    assert_eq!(store.lookup(&root(), "/a/b/f").unwrap().mode, 0o600);
    assert_eq!(store.lookup(&root(), "/abs").unwrap().mode, 0o777);
    store.lchown(&root(), "/abs", Some(5), Some(6)).unwrap();
    store.chown(&root(), "/a/up", Some(7), None).unwrap();
    let (l_attr, f_attr) = (
        store.lookup(&root(), "/abs").unwrap(),
        store.lookup(&root(), "/a/b/f").unwrap(),
    );
    assert_eq!((l_attr.uid, l_attr.gid, f_attr.uid), (5, 6, 7));

    // Search permission holds through links.
    store.mkdir(&root(), "/priv", 0o700).unwrap();
    store
        .create(&root(), "/priv/s", 0o644, false, None)
        .unwrap();
    store.symlink(&root(), "/p", "/priv/s").unwrap();
    assert_errno(store.stat(&alice(), "/p"), libc::EACCES);
    assert!(store.lookup(&alice(), "/p").unwrap().is_symlink());

    // A directory cannot be moved into itself by way of a link.
    store.symlink(&root(), "/into", "/a/b").unwrap();
    assert_errno(store.rename(&root(), "/a", "/into/x"), libc::EINVAL);
    assert!(store.lookup(&root(), "/a/b/f").is_ok());

    // Unlink and rename act on the link, never on what it names.
    assert_errno(store.rmdir(&root(), "/l"), libc::ENOTDIR);
    store.rename(&root(), "/abs", "/a/abs").unwrap();
    assert_eq!(store.stat(&root(), "/a/abs").unwrap().ino, f.ino);
    store.unlink(&root(), "/l").unwrap();
    assert_errno(store.lookup(&root(), "/l"), libc::ENOENT);
    assert_eq!(store.lookup(&root(), "/a/b").unwrap().ino, b.ino);

    // Bad targets are refused, naming what was wrong.
    assert_errno(store.symlink(&root(), "/e", ""), libc::ENOENT);
    assert_errno(store.symlink(&root(), "/e", "a\0b"), libc::EINVAL);
    let long = "x".repeat(4096);
    assert_errno(store.symlink(&root(), "/e", &long), libc::ENAMETOOLONG);
    assert_errno(store.symlink(&root(), "/a/up", "x"), libc::EEXIST);
    assert_errno(store.symlink(&bob(), "/a/x", "f"), libc::EACCES);

    // Links are inodes: counted, and kept across a reopen.
    let counted = store.statfs().unwrap().files;
    drop(store);
    let store = open(&dir);
    assert_eq!(store.statfs().unwrap().files, counted);
    let kept = store.lookup(&root(), "/a/up").unwrap();
    assert_eq!(kept.symlink.as_deref(), Some("../a/b/f"));
    assert_eq!(store.stat(&root(), "/a/abs").unwrap().ino, f.ino);
}

#[test]
fn hard_links_share_an_inode_until_its_last_name_goes() {
    let dir = TempDir::new("hardlinks");
    let store = open(&dir);
    with_targets(&store, 1);
    store.mkdir(&root(), "/d", 0o777).unwrap();
    let (f, _) = store.create(&alice(), "/d/f", 0o600, false, None).unwrap();
    let files = store.statfs().unwrap().files;

    let linked = store.link(&alice(), "/d/f", "/d/g").unwrap();
    assert_eq!((linked.ino, linked.nlink), (f.ino, 2));
    assert_eq!(store.lookup(&root(), "/d/f").unwrap().nlink, 2);
    assert_eq!(store.statfs().unwrap().files, files, "one inode, two names");
    let entries = store.readdir(&root(), "/d", None, 10).unwrap();
    assert!(
        entries
            .iter()
            .all(|e| e.ino == f.ino && e.file_type == FileType::File)
    );

    // As Linux's protected_hardlinks: another user may not link a file it cannot read and
    // write; a directory has one name; the new name must be free.
    assert_errno(store.link(&bob(), "/d/f", "/d/h"), libc::EPERM);
    assert_errno(store.link(&root(), "/d", "/e"), libc::EPERM);
    assert_errno(store.link(&alice(), "/d/f", "/d/g"), libc::EEXIST);
    assert_errno(store.link(&alice(), "/d/missing", "/d/h"), libc::ENOENT);
    assert_errno(store.link(&alice(), "/d/f", "/d/h/"), libc::ENOENT);
    store.mkdir(&root(), "/ro", 0o755).unwrap();
    assert_errno(store.link(&alice(), "/d/f", "/ro/f"), libc::EACCES);
    // A symbolic link is linked itself.
    store.symlink(&alice(), "/d/s", "f").unwrap();
    let s2 = store.link(&alice(), "/d/s", "/d/s2").unwrap();
    assert!(s2.is_symlink() && s2.nlink == 2);

    // Removing a name leaves the others, the objects with the last.
    store.unlink(&alice(), "/d/f").unwrap();
    let g = store.lookup(&root(), "/d/g").unwrap();
    assert_eq!((g.ino, g.nlink), (f.ino, 1));
    assert!(store.pending_removals(0, 100).unwrap().is_empty());
    // A rename over a name of the same inode does nothing; over another name it drops one.
    store.link(&alice(), "/d/g", "/d/k").unwrap();
    store.rename(&alice(), "/d/g", "/d/k").unwrap();
    assert_eq!(store.lookup(&root(), "/d/g").unwrap().nlink, 2);
    let (other, _) = store.create(&alice(), "/d/o", 0o600, false, None).unwrap();
    store.rename(&alice(), "/d/o", "/d/k").unwrap();
    assert_eq!(store.lookup(&root(), "/d/k").unwrap().ino, other.ino);
    assert_eq!(store.lookup(&root(), "/d/g").unwrap().nlink, 1);
    assert!(store.pending_removals(0, 100).unwrap().is_empty());
    store.unlink(&alice(), "/d/g").unwrap();
    assert!(!store.pending_removals(0, 100).unwrap().is_empty());

    drop(store);
    let store = open(&dir);
    assert_eq!(store.lookup(&root(), "/d/s2").unwrap().nlink, 2);
}
