//! A target: a directory on a local file system that holds a format stamp and one sparse
//! file per object, spread over [`OBJECT_SUBDIRS`] subdirectories. Metadata operations
//! (format, open, create, remove, stat, list, capacity) live here; data moves through an
//! [`crate::ObjectStore`] made from the target.

use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use crate::error::{IoError, Operation};
use crate::limits::{OBJECT_SUBDIRS, TARGET_FORMAT_VERSION};

/// Name of the format stamp file in a target directory.
pub const STAMP_FILE: &str = "nacre-target";
/// Name of the file a serving process holds locked ([`Target::open_exclusive`]); it
/// holds that process's pid, for the message that refuses another.
pub const LOCK_FILE: &str = "nacre-target.lock";
/// Name of the file naming the file system a target belongs to ([`Target::bind_filesystem`]):
/// written once, at its first registration.
pub const FILESYSTEM_FILE: &str = "nacre-filesystem";
const FILESYSTEM_MAGIC: u32 = u32::from_le_bytes(*b"NTFS");
/// Name of the directory holding the objects.
pub const OBJECTS_DIR: &str = "objects";
const STAMP_MAGIC: u32 = u32::from_le_bytes(*b"NTGT");
/// A file `format` creates with O_DIRECT to see that the file system allows it, then removes.
const DIRECT_IO_PROBE: &str = ".nacre-direct-io-probe";

/// The on-disk stamp, little-endian, checksummed.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct StampRecord {
    magic: u32,
    format_version: u32,
    target_id: u32,
    reserved: u32,
    uuid: [u8; 16],
    created_unix_secs: u64,
    /// CRC32C of the record with this field zeroed.
    crc32c: u32,
    padding: u32,
}

impl StampRecord {
    fn checksum(&self) -> u32 {
        let mut copy = *self;
        copy.crc32c = 0;
        crc32c::crc32c(bytemuck::bytes_of(&copy))
    }
}

/// What [`FILESYSTEM_FILE`] holds, little-endian, checksummed.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct FilesystemRecord {
    magic: u32,
    /// The target's uuid: the record is this target's, not one copied from another.
    target_uuid: [u8; 16],
    fs_uuid: [u8; 16],
    /// CRC32C of the record with this field zeroed.
    crc32c: u32,
}

impl FilesystemRecord {
    fn checksum(&self) -> u32 {
        let mut copy = *self;
        copy.crc32c = 0;
        crc32c::crc32c(bytemuck::bytes_of(&copy))
    }
}

/// What a target's format stamp says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetStamp {
    /// The target's id in its cluster.
    pub target_id: u32,
    /// A random id given at format time, so a target is never mistaken for another.
    pub uuid: [u8; 16],
    /// The on-disk format version.
    pub format_version: u32,
    /// When the target was formatted (seconds since the Unix epoch).
    pub created_unix_secs: u64,
}

impl TargetStamp {
    /// The uuid in its usual text form.
    pub fn uuid_string(&self) -> String {
        uuid_text(&self.uuid)
    }
}

/// A uuid in its usual text form (8-4-4-4-12 hex digits).
pub fn uuid_text(u: &[u8; 16]) -> String {
    let hex: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The uuid a text of [`uuid_text`]'s form names; `None` for any other text.
pub fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let groups: Vec<&str> = text.split('-').collect();
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    if lens != [8, 4, 4, 4, 12] {
        return None;
    }
    let hex: String = groups.concat();
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A random (version 4) uuid, from the kernel's random source.
pub fn random_uuid() -> Result<[u8; 16], IoError> {
    let mut uuid = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut uuid))
        .map_err(path_err(Operation::Format, Path::new("/dev/urandom")))?;
    uuid[6] = (uuid[6] & 0x0f) | 0x40; // version 4
    uuid[8] = (uuid[8] & 0x3f) | 0x80; // RFC 4122 variant
    Ok(uuid)
}

/// The size of an object as the file system sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectStat {
    /// Logical size in bytes.
    pub size_bytes: u64,
    /// Bytes the file system has allocated for it (holes take none).
    pub allocated_bytes: u64,
}

/// A target's capacity as the file system under it reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Size of the file system in bytes.
    pub total_bytes: u64,
    /// Bytes an unprivileged writer may still use.
    pub available_bytes: u64,
    /// Bytes in use.
    pub used_bytes: u64,
}

/// An opened, formatted target. Cheap to clone; each thread makes its own
/// [`crate::ObjectStore`] from it.
#[derive(Clone, Debug)]
pub struct Target {
    inner: Arc<TargetInner>,
}

#[derive(Debug)]
struct TargetInner {
    dir: PathBuf,
    stamp: TargetStamp,
    /// The file system it belongs to, once bound ([`Target::bind_filesystem`]).
    filesystem: std::sync::Mutex<Option<[u8; 16]>>,
    /// The locked [`LOCK_FILE`] of a target opened with [`Target::open_exclusive`]: the
    /// lock goes with the last clone.
    _lock: Option<fs::File>,
}

fn path_err(op: Operation, path: &Path) -> impl FnOnce(std::io::Error) -> IoError + '_ {
    move |source| IoError::Path {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Whether `file` opens with O_DIRECT (creating it when `create`): a file system without
/// it answers EINVAL, which becomes [`IoError::NoDirectIo`] naming `dir`.
fn check_direct_io(dir: &Path, file: &Path, create: bool, op: Operation) -> Result<(), IoError> {
    let opened = fs::OpenOptions::new()
        .read(true)
        .write(create)
        .create(create)
        .custom_flags(libc::O_DIRECT)
        .open(file);
    match opened {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Err(IoError::NoDirectIo {
            path: dir.to_path_buf(),
        }),
        Err(e) => Err(path_err(op, file)(e)),
    }
}

fn fsync_dir(path: &Path, op: Operation) -> Result<(), IoError> {
    fs::File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(path_err(op, path))
}

/// Writes `bytes` as file `name` of `dir`, durably and whole: under a temporary name, then
/// renamed, so that a crash leaves the old file or the new one, never half of one.
fn write_durably(dir: &Path, name: &str, bytes: &[u8], op: Operation) -> Result<(), IoError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = fs::File::create(&tmp).map_err(path_err(op, &tmp))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(path_err(op, &tmp))?;
    let path = dir.join(name);
    fs::rename(&tmp, &path).map_err(path_err(op, &path))?;
    fsync_dir(dir, op)
}

impl Target {
    /// Formats `dir` as target `target_id`: creates it if missing, writes the stamp and the
    /// object directories, and makes all of it durable. A directory that is already a
    /// target, or that holds anything else, or whose file system refuses O_DIRECT, is
    /// refused.
    pub fn format(dir: &Path, target_id: u32) -> Result<TargetStamp, IoError> {
        let op = Operation::Format;
        fs::create_dir_all(dir).map_err(path_err(op, dir))?;
        if dir.join(STAMP_FILE).exists() {
            return Err(IoError::FormatRefused {
                path: dir.to_path_buf(),
                reason: "it is a nacre target already".into(),
            });
        }
        if fs::read_dir(dir)
            .map_err(path_err(op, dir))?
            .next()
            .is_some()
        {
            return Err(IoError::FormatRefused {
                path: dir.to_path_buf(),
                reason: "the directory is not empty".into(),
            });
        }
        let probe = dir.join(DIRECT_IO_PROBE);
        let direct = check_direct_io(dir, &probe, true, op);
        fs::remove_file(&probe).or_else(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Ok(()),
            _ => Err(path_err(op, &probe)(e)),
        })?;
        direct?;
        let objects = dir.join(OBJECTS_DIR);
        fs::create_dir(&objects).map_err(path_err(op, &objects))?;
        for sub in 0..OBJECT_SUBDIRS {
            let p = objects.join(format!("{sub:02x}"));
            fs::create_dir(&p).map_err(path_err(op, &p))?;
        }
        fsync_dir(&objects, op)?;
        let created_unix_secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut record = StampRecord {
            magic: STAMP_MAGIC,
            format_version: TARGET_FORMAT_VERSION,
            target_id,
            reserved: 0,
            uuid: random_uuid()?,
            created_unix_secs,
            crc32c: 0,
            padding: 0,
        };
        record.crc32c = record.checksum();
        write_durably(dir, STAMP_FILE, bytemuck::bytes_of(&record), op)?;
        Ok(stamp_from_record(&record))
    }

    /// Opens a formatted target. A directory without a valid stamp, or with a stamp of a
    /// newer format version, is a clear error.
    pub fn open(dir: &Path) -> Result<Target, IoError> {
        let stamp_path = dir.join(STAMP_FILE);
        let not_target = |reason: String| IoError::NotATarget {
            path: dir.to_path_buf(),
            reason,
        };
        if !dir.is_dir() {
            return Err(not_target("it is not a directory".into()));
        }
        let bytes = match fs::read(&stamp_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(not_target(format!("it has no {STAMP_FILE} stamp")));
            }
            Err(e) => return Err(path_err(Operation::Open, &stamp_path)(e)),
        };
        let want = std::mem::size_of::<StampRecord>();
        if bytes.len() != want {
            return Err(not_target(format!(
                "its stamp is {} bytes long, expected {want}",
                bytes.len()
            )));
        }
        let record: StampRecord = bytemuck::pod_read_unaligned(&bytes);
        if record.magic != STAMP_MAGIC {
            return Err(not_target(format!(
                "its stamp has magic {:#010x}, expected {STAMP_MAGIC:#010x}",
                record.magic
            )));
        }
        if record.format_version > TARGET_FORMAT_VERSION {
            return Err(IoError::NewerFormat {
                path: dir.to_path_buf(),
                found: record.format_version,
                supported: TARGET_FORMAT_VERSION,
            });
        }
        let crc = record.checksum();
        if crc != record.crc32c {
            return Err(not_target(format!(
                "its stamp's checksum is {:#010x}, computed {crc:#010x}: the stamp is corrupt",
                record.crc32c
            )));
        }
        let objects = dir.join(OBJECTS_DIR);
        if !objects.is_dir() {
            return Err(not_target(format!("it has no {OBJECTS_DIR} directory")));
        }
        // Said now, not at the first transfer (a target moved to a file system without it).
        check_direct_io(dir, &stamp_path, false, Operation::Open)?;
        let filesystem = read_filesystem(dir, &record.uuid)?;
        Ok(Target {
            inner: Arc::new(TargetInner {
                dir: dir.to_path_buf(),
                stamp: stamp_from_record(&record),
                filesystem: std::sync::Mutex::new(filesystem),
                _lock: None,
            }),
        })
    }

    /// Opens a formatted target to serve it: as [`Target::open`], and holds [`LOCK_FILE`]
    /// locked while this target (or a clone) lives, so that a second process serving the
    /// directory is refused ([`IoError::TargetBusy`], naming the holder's pid) instead of
    /// writing the same objects unaware of the first. The lock is the kernel's (flock):
    /// a process that dies lets it go.
    pub fn open_exclusive(dir: &Path) -> Result<Target, IoError> {
        let target = Target::open(dir)?;
        let lock_path = dir.join(LOCK_FILE);
        let mut lock = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(path_err(Operation::Open, &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let holder = fs::read_to_string(&lock_path)
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
                return Err(IoError::TargetBusy {
                    path: dir.to_path_buf(),
                    holder,
                });
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(path_err(Operation::Open, &lock_path)(e));
            }
        }
        lock.set_len(0)
            .and_then(|()| {
                std::io::Seek::rewind(&mut lock)?;
                writeln!(lock, "{}", std::process::id())
            })
            .map_err(path_err(Operation::Open, &lock_path))?;
        let inner = match Arc::try_unwrap(target.inner) {
            Ok(inner) => inner,
            Err(_) => unreachable!("a target just opened has no other clone"),
        };
        Ok(Target {
            inner: Arc::new(TargetInner {
                _lock: Some(lock),
                ..inner
            }),
        })
    }

    /// The file system the target belongs to, once bound.
    pub fn filesystem(&self) -> Option<[u8; 16]> {
        *self
            .inner
            .filesystem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Binds the target to file system `fs_uuid` (what its metadata service says at the
    /// first registration), durably: from then on it belongs to that file system only,
    /// since its object ids are that file system's. Binding again to the same one does
    /// nothing; to another is refused ([`IoError::OtherFilesystem`]).
    pub fn bind_filesystem(&self, fs_uuid: [u8; 16]) -> Result<(), IoError> {
        let mut bound = self
            .inner
            .filesystem
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match *bound {
            Some(existing) if existing == fs_uuid => return Ok(()),
            Some(existing) => {
                return Err(IoError::OtherFilesystem {
                    path: self.inner.dir.clone(),
                    bound: uuid_text(&existing),
                    asked: uuid_text(&fs_uuid),
                });
            }
            None => {}
        }
        let op = Operation::Format;
        let mut record = FilesystemRecord {
            magic: FILESYSTEM_MAGIC,
            target_uuid: self.inner.stamp.uuid,
            fs_uuid,
            crc32c: 0,
        };
        record.crc32c = record.checksum();
        write_durably(
            &self.inner.dir,
            FILESYSTEM_FILE,
            bytemuck::bytes_of(&record),
            op,
        )?;
        *bound = Some(fs_uuid);
        Ok(())
    }

    /// The target's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The target's stamp.
    pub fn stamp(&self) -> &TargetStamp {
        &self.inner.stamp
    }

    /// The target's id.
    pub fn target_id(&self) -> u32 {
        self.inner.stamp.target_id
    }

    /// Where object `object_id` lives. The subdirectory is chosen by a mixing hash, since
    /// layouts put the stripe number in the low bits of object ids.
    pub fn object_path(&self, object_id: u64) -> PathBuf {
        let sub = object_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56;
        debug_assert!(sub < OBJECT_SUBDIRS);
        self.inner
            .dir
            .join(OBJECTS_DIR)
            .join(format!("{sub:02x}"))
            .join(format!("{object_id:016x}"))
    }

    /// Creates an empty object; an existing one is an error. The directory entry is made
    /// durable, so a later `sync` of the object's data is enough for it to survive a crash.
    pub fn create(&self, object_id: u64) -> Result<(), IoError> {
        let path = self.object_path(object_id);
        let created = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path);
        match created {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(IoError::ObjectExists { object_id });
            }
            Err(e) => {
                return Err(IoError::Object {
                    op: Operation::Create,
                    object_id,
                    source: e,
                });
            }
        }
        let parent = path.parent().unwrap_or(self.dir());
        fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|source| IoError::Object {
                op: Operation::Create,
                object_id,
                source,
            })
    }

    /// Removes an object. A store that has the object open keeps its open file until it
    /// evicts it; remove objects a store is not using.
    pub fn remove(&self, object_id: u64) -> Result<(), IoError> {
        fs::remove_file(self.object_path(object_id)).map_err(|source| {
            IoError::object(
                Operation::Remove,
                object_id,
                source.raw_os_error().unwrap_or(libc::EIO),
            )
        })
    }

    /// An object's logical size and allocated bytes.
    pub fn stat(&self, object_id: u64) -> Result<ObjectStat, IoError> {
        let meta = fs::metadata(self.object_path(object_id)).map_err(|source| {
            IoError::object(
                Operation::Stat,
                object_id,
                source.raw_os_error().unwrap_or(libc::EIO),
            )
        })?;
        Ok(ObjectStat {
            size_bytes: meta.size(),
            allocated_bytes: meta.blocks() * 512,
        })
    }

    /// The ids of every object on the target, in ascending order.
    pub fn list(&self) -> Result<Vec<u64>, IoError> {
        let op = Operation::List;
        let objects = self.inner.dir.join(OBJECTS_DIR);
        let mut ids = Vec::new();
        for sub in 0..OBJECT_SUBDIRS {
            let p = objects.join(format!("{sub:02x}"));
            for entry in fs::read_dir(&p).map_err(path_err(op, &p))? {
                let entry = entry.map_err(path_err(op, &p))?;
                let name = entry.file_name();
                let parsed = std::str::from_utf8(name.as_bytes())
                    .ok()
                    .filter(|s| s.len() == 16)
                    .and_then(|s| u64::from_str_radix(s, 16).ok());
                // Anything else in the directory (an editor's backup, say) is not an object.
                if let Some(id) = parsed {
                    ids.push(id);
                }
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// Size and free space of the file system under the target.
    pub fn capacity(&self) -> Result<Capacity, IoError> {
        let st = statvfs(&self.inner.dir)?;
        let frsize = st.f_frsize;
        let total_bytes = st.f_blocks.saturating_mul(frsize);
        let free_bytes = st.f_bfree.saturating_mul(frsize);
        Ok(Capacity {
            total_bytes,
            available_bytes: st.f_bavail.saturating_mul(frsize),
            used_bytes: total_bytes.saturating_sub(free_bytes),
        })
    }
}

/// The fields of statvfs(3) the target uses, widened to u64.
struct StatVfs {
    f_frsize: u64,
    f_blocks: u64,
    f_bfree: u64,
    f_bavail: u64,
}

fn statvfs(dir: &Path) -> Result<StatVfs, IoError> {
    let st = rustix::fs::statvfs(dir)
        .map_err(|e| path_err(Operation::Capacity, dir)(std::io::Error::from(e)))?;
    Ok(StatVfs {
        f_frsize: st.f_frsize,
        f_blocks: st.f_blocks,
        f_bfree: st.f_bfree,
        f_bavail: st.f_bavail,
    })
}

/// The file system [`FILESYSTEM_FILE`] binds the target of uuid `target_uuid` to, if the
/// file is there; a file that is damaged, or another target's, is an error naming it.
fn read_filesystem(dir: &Path, target_uuid: &[u8; 16]) -> Result<Option<[u8; 16]>, IoError> {
    let path = dir.join(FILESYSTEM_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(path_err(Operation::Open, &path)(e)),
    };
    let not_target = |reason: String| IoError::NotATarget {
        path: dir.to_path_buf(),
        reason,
    };
    if bytes.len() != std::mem::size_of::<FilesystemRecord>() {
        return Err(not_target(format!(
            "its {FILESYSTEM_FILE} is {} bytes long, expected {}",
            bytes.len(),
            std::mem::size_of::<FilesystemRecord>()
        )));
    }
    let record: FilesystemRecord = bytemuck::pod_read_unaligned(&bytes);
    if record.magic != FILESYSTEM_MAGIC || record.checksum() != record.crc32c {
        return Err(not_target(format!(
            "its {FILESYSTEM_FILE} is corrupt (bad magic or checksum)"
        )));
    }
    if &record.target_uuid != target_uuid {
        return Err(not_target(format!(
            "its {FILESYSTEM_FILE} is target {}'s, not this target's ({})",
            uuid_text(&record.target_uuid),
            uuid_text(target_uuid)
        )));
    }
    Ok(Some(record.fs_uuid))
}

fn stamp_from_record(record: &StampRecord) -> TargetStamp {
    TargetStamp {
        target_id: record.target_id,
        uuid: record.uuid,
        format_version: record.format_version,
        created_unix_secs: record.created_unix_secs,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn stamp_record_has_no_padding_surprises() {
        assert_eq!(std::mem::size_of::<StampRecord>(), 48);
        assert_eq!(std::mem::size_of::<FilesystemRecord>(), 40);
    }

    #[test]
    fn uuids_round_trip_through_text() {
        let u = random_uuid().expect("uuid");
        assert_eq!(parse_uuid(&uuid_text(&u)), Some(u));
        for bad in [
            "",
            "x",
            "0123456789abcdef0123456789abcdef",
            "0123456-89ab-cdef-0123-456789abcdef0",
        ] {
            assert_eq!(parse_uuid(bad), None, "{bad:?}");
        }
        assert_eq!(parse_uuid("zz234567-89ab-cdef-0123-456789abcdef"), None);
        assert_eq!(parse_uuid("+1234567-89ab-cdef-0123-456789abcdef"), None);
    }
}
