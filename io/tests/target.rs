//! Formatting and opening targets, and their metadata operations.

mod common;

use common::TempDir;
use nacre_io::{IoError, STAMP_FILE, Target, limits::TARGET_FORMAT_VERSION};

#[test]
fn format_then_open_gives_the_same_stamp() {
    let dir = TempDir::new("fmt");
    let tdir = dir.path().join("t");
    let stamp = Target::format(&tdir, 42).expect("format");
    assert_eq!(stamp.target_id, 42);
    assert_eq!(stamp.format_version, TARGET_FORMAT_VERSION);
    let target = Target::open(&tdir).expect("open");
    assert_eq!(*target.stamp(), stamp);
    assert_eq!(target.stamp().uuid_string().len(), 36);
    let other = dir.path().join("u");
    let stamp2 = Target::format(&other, 42).expect("format");
    assert_ne!(stamp.uuid, stamp2.uuid, "two formats get two uuids");
}

#[test]
fn format_refuses_a_target_and_a_non_empty_directory() {
    let dir = TempDir::new("refuse");
    let tdir = dir.path().join("t");
    Target::format(&tdir, 1).expect("format");
    let err = Target::format(&tdir, 1).expect_err("second format");
    assert!(matches!(err, IoError::FormatRefused { .. }), "{err}");
    assert!(err.to_string().contains("already"), "{err}");
    let full = dir.path().join("full");
    std::fs::create_dir(&full).expect("mkdir");
    std::fs::write(full.join("precious"), b"x").expect("write");
    let err = Target::format(&full, 1).expect_err("non-empty");
    assert!(err.to_string().contains("not empty"), "{err}");
    assert!(full.join("precious").exists());
}

#[test]
fn open_refuses_what_is_not_a_target() {
    let dir = TempDir::new("notarget");
    let err = Target::open(dir.path()).expect_err("empty dir");
    assert!(matches!(err, IoError::NotATarget { .. }), "{err}");
    assert!(err.to_string().contains("no nacre-target stamp"), "{err}");
    let err = Target::open(&dir.path().join("missing")).expect_err("missing dir");
    assert!(matches!(err, IoError::NotATarget { .. }), "{err}");

    let tdir = dir.path().join("t");
    Target::format(&tdir, 3).expect("format");
    let stamp_path = tdir.join(STAMP_FILE);
    let good = std::fs::read(&stamp_path).expect("read stamp");

    let mut corrupt = good.clone();
    corrupt[20] ^= 0xff;
    std::fs::write(&stamp_path, &corrupt).expect("write");
    let err = Target::open(&tdir).expect_err("corrupt");
    assert!(err.to_string().contains("checksum"), "{err}");

    let mut magic = good.clone();
    magic[0] = b'X';
    std::fs::write(&stamp_path, &magic).expect("write");
    let err = Target::open(&tdir).expect_err("bad magic");
    assert!(err.to_string().contains("magic"), "{err}");

    std::fs::write(&stamp_path, &good[..10]).expect("write");
    let err = Target::open(&tdir).expect_err("short");
    assert!(err.to_string().contains("10 bytes"), "{err}");

    // A newer format version, with a checksum that is right for it.
    let mut newer = good.clone();
    newer[4..8].copy_from_slice(&(TARGET_FORMAT_VERSION + 1).to_le_bytes());
    newer[40..44].copy_from_slice(&[0; 4]);
    let crc = crc32c_of(&newer);
    newer[40..44].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&stamp_path, &newer).expect("write");
    let err = Target::open(&tdir).expect_err("newer");
    assert!(
        matches!(err, IoError::NewerFormat { found, supported, .. } if found == TARGET_FORMAT_VERSION + 1 && supported == TARGET_FORMAT_VERSION),
        "{err}"
    );
    std::fs::write(&stamp_path, &good).expect("write");
    Target::open(&tdir).expect("the good stamp opens again");
}

/// CRC32C (Castagnoli), bit by bit: an independent check of the stamp's checksum.
fn crc32c_of(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn create_stat_list_remove_and_capacity() {
    let dir = TempDir::new("meta");
    let tdir = dir.path().join("t");
    Target::format(&tdir, 5).expect("format");
    let target = Target::open(&tdir).expect("open");
    assert_eq!(target.list().expect("list"), Vec::<u64>::new());
    for id in [3u64, 0x1_0000_0001, 1, u64::MAX] {
        target.create(id).expect("create");
    }
    let err = target.create(1).expect_err("exists");
    assert!(
        matches!(err, IoError::ObjectExists { object_id: 1 }),
        "{err}"
    );
    assert_eq!(err.errno(), libc::EEXIST);
    assert_eq!(
        target.list().expect("list"),
        vec![1, 3, 0x1_0000_0001, u64::MAX]
    );
    let st = target.stat(3).expect("stat");
    assert_eq!((st.size_bytes, st.allocated_bytes), (0, 0));
    target.remove(3).expect("remove");
    let err = target.stat(3).expect_err("stat removed");
    assert!(
        matches!(err, IoError::NoSuchObject { object_id: 3, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("stat of object 0x3"), "{err}");
    let err = target.remove(3).expect_err("remove twice");
    assert_eq!(err.errno(), libc::ENOENT);
    let cap = target.capacity().expect("capacity");
    assert!(cap.total_bytes > 0);
    assert!(cap.available_bytes <= cap.total_bytes);
    assert!(cap.used_bytes <= cap.total_bytes);
}

/// A file system without O_DIRECT (ramfs; tmpfs before Linux 6.6) is refused when the
/// target is formatted, and when a target moved onto one is opened, naming the directory;
/// not at its first transfer.
#[test]
fn a_file_system_without_direct_io_is_refused_by_name() {
    let dir = TempDir::new("no-direct-io");
    let mnt = dir.path().join("mnt");
    let Some(_mounted) = common::mount("ramfs", None, &mnt) else {
        eprintln!("SKIPPED a_file_system_without_direct_io_is_refused_by_name: cannot mount ramfs");
        return;
    };
    let tdir = mnt.join("t");
    let e = Target::format(&tdir, 3).expect_err("format on ramfs");
    assert!(matches!(e, IoError::NoDirectIo { .. }), "{e}");
    let message = e.to_string();
    assert!(
        message.contains(&tdir.display().to_string()) && message.contains("O_DIRECT"),
        "{message}"
    );
    assert_eq!(e.errno(), libc::EINVAL);
    // Nothing was left behind: the directory is still empty.
    assert_eq!(std::fs::read_dir(&tdir).expect("list").count(), 0);
    // A target copied onto it: formatted elsewhere, then moved.
    let good = dir.path().join("good");
    Target::format(&good, 4).expect("format on the temporary directory");
    let moved = mnt.join("moved");
    std::fs::create_dir_all(moved.join(nacre_io::OBJECTS_DIR)).expect("mkdir");
    std::fs::copy(good.join(STAMP_FILE), moved.join(STAMP_FILE)).expect("copy stamp");
    let e = Target::open(&moved).expect_err("open on ramfs");
    assert!(matches!(e, IoError::NoDirectIo { .. }), "{e}");
}

/// A target opened to serve it holds its directory's lock: another open to serve it is
/// refused by name while the first (or a clone of it) lives, and allowed after. Plain
/// opens (to look at objects) are not refused.
#[test]
fn one_opener_serves_a_target_at_a_time() {
    let dir = TempDir::new("lock");
    let tdir = dir.path().join("t");
    Target::format(&tdir, 3).expect("format");
    let first = Target::open_exclusive(&tdir).expect("first");
    let clone = first.clone();
    drop(first);
    let err = Target::open_exclusive(&tdir).expect_err("second while the clone lives");
    assert!(matches!(err, IoError::TargetBusy { .. }), "{err}");
    assert_eq!(err.errno(), libc::EBUSY);
    let message = err.to_string();
    assert!(
        message.contains(&format!("pid {}", std::process::id())),
        "{message}"
    );
    assert!(message.contains(&tdir.display().to_string()), "{message}");
    Target::open(&tdir).expect("a plain open is not refused");
    drop(clone);
    Target::open_exclusive(&tdir).expect("free again");
}

/// A target is bound to one file system, durably; binding it to another is refused, and a
/// damaged binding, or another target's copied in, is named at open.
#[test]
fn a_target_belongs_to_the_file_system_it_was_bound_to() {
    let dir = TempDir::new("bind");
    let tdir = dir.path().join("t");
    Target::format(&tdir, 3).expect("format");
    let target = Target::open(&tdir).expect("open");
    assert_eq!(target.filesystem(), None);
    let fs = nacre_io::random_uuid().expect("uuid");
    target.bind_filesystem(fs).expect("bind");
    target
        .bind_filesystem(fs)
        .expect("binding again to the same is nothing");
    assert_eq!(Target::open(&tdir).expect("reopen").filesystem(), Some(fs));
    let other = nacre_io::random_uuid().expect("uuid");
    let err = target
        .bind_filesystem(other)
        .expect_err("another file system");
    assert!(matches!(err, IoError::OtherFilesystem { .. }), "{err}");
    assert!(err.to_string().contains(&nacre_io::uuid_text(&fs)), "{err}");
    // Another target's binding copied in is refused, and so is a damaged one.
    let udir = dir.path().join("u");
    Target::format(&udir, 4).expect("format");
    let binding = tdir.join(nacre_io::FILESYSTEM_FILE);
    std::fs::copy(&binding, udir.join(nacre_io::FILESYSTEM_FILE)).expect("copy");
    let err = Target::open(&udir).expect_err("another target's binding");
    assert!(err.to_string().contains("not this target's"), "{err}");
    let mut bytes = std::fs::read(&binding).expect("read");
    bytes[20] ^= 1;
    std::fs::write(&binding, &bytes).expect("write");
    let err = Target::open(&tdir).expect_err("damaged");
    assert!(err.to_string().contains("corrupt"), "{err}");
}
