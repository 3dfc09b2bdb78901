//! The values the metadata service speaks in: who asks ([`Cred`]), what a file or directory
//! is ([`Attr`], [`DirEntry`]), how a file is to be striped ([`LayoutSpec`]), which targets
//! exist ([`TargetInfo`]), and why a request was refused ([`MetaError`], with its errno).
//!
//! Every record has one binary form, written with [`crate::codec::Writer`] and read back with
//! [`crate::codec::Reader`]: the same bytes are the store's records and the network's
//! messages. Decoding treats every byte as hostile; every list and string has a bound below.

use nacre_layout::limits::{
    EOF_OFFSET_BYTES, MAX_COMPONENTS, MAX_ENCODED_LAYOUT_BYTES, MAX_FILE_ID, MAX_POOL_NAME_BYTES,
    MAX_STRIPE_COUNT,
};
use nacre_layout::{Component, Layout, LayoutError, StripeLayout, StripeSpec};
use thiserror::Error;

use crate::codec::{CodecError, Reader, Writer};

/// The longest name of a directory entry, in bytes (Linux's `NAME_MAX`).
pub const MAX_NAME_BYTES: usize = 255;
/// The longest path, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;
/// The most supplementary groups a [`Cred`] carries.
pub const MAX_GROUPS: usize = 256;
/// The longest target uuid, in bytes.
pub const MAX_TARGET_UUID_BYTES: usize = 64;
/// The longest target endpoint (`tcp://host:port`, ...), in bytes.
pub const MAX_ENDPOINT_BYTES: usize = 256;
/// The most pools one target belongs to.
pub const MAX_POOLS_PER_TARGET: usize = 64;
/// The most entries one [`crate::meta::store::MetaStore::readdir`] call returns.
pub const MAX_READDIR_ENTRIES: usize = 1024;
/// The inode number of the root directory.
pub const ROOT_INO: u64 = 1;
/// The largest inode number: a file's object ids embed its inode number
/// ([`nacre_layout::object_id`]), which must fit their file id bits.
pub const MAX_INO: u64 = MAX_FILE_ID;
/// The permission bits of a mode, setuid, setgid and sticky included.
pub const MODE_PERMISSION_BITS: u32 = 0o7777;
/// The setuid bit of a mode.
pub const MODE_SETUID: u32 = 0o4000;
/// The setgid bit of a mode (on a directory: new entries take its group).
pub const MODE_SETGID: u32 = 0o2000;
/// The longest symbolic link target, in bytes (Linux's: `PATH_MAX` less its NUL).
pub const MAX_SYMLINK_TARGET_BYTES: usize = MAX_PATH_BYTES - 1;
/// The mode of every symbolic link (its bits are not used, as on Linux).
pub const SYMLINK_MODE: u32 = 0o777;
/// The sticky bit of a mode (on a directory: only owners may remove entries).
pub const MODE_STICKY: u32 = 0o1000;

/// The smallest encoded [`ComponentSpec`], in bytes: five fixed fields, two flag bytes.
const MIN_COMPONENT_SPEC_BYTES: usize = 8 + 8 + 8 + 4 + 8 + 1 + 1;

/// Why a metadata request was refused. [`MetaError::errno`] gives the errno a client sees.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MetaError {
    /// A path, or a component of it, does not exist (`ENOENT`).
    #[error("{path}: no such file or directory")]
    NotFound {
        /// The path (or the prefix of it) that does not exist.
        path: String,
    },
    /// The path exists already (`EEXIST`).
    #[error("{path}: already exists")]
    Exists {
        /// The path.
        path: String,
    },
    /// A directory was needed (`ENOTDIR`).
    #[error("{path}: not a directory")]
    NotDir {
        /// The path (or the prefix of it) that is not a directory.
        path: String,
    },
    /// A directory was given where it is not allowed (`EISDIR`).
    #[error("{path}: is a directory")]
    IsDir {
        /// The path.
        path: String,
    },
    /// A directory to remove or replace has entries (`ENOTEMPTY`).
    #[error("{path}: directory not empty")]
    NotEmpty {
        /// The path.
        path: String,
    },
    /// The permission bits deny the caller (`EACCES`).
    #[error("{path}: permission denied ({need} permission needed)")]
    Access {
        /// The file or directory whose bits deny.
        path: String,
        /// The permission needed: `"search"`, `"write"` or `"read"` (or `"read and write"`).
        need: &'static str,
    },
    /// The caller is not allowed the operation whatever the bits say (`EPERM`).
    #[error("{path}: operation not permitted: {reason}")]
    Perm {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// An argument is outside what is allowed (`EINVAL`).
    #[error("invalid {field}: {value} (allowed: {allowed})")]
    Invalid {
        /// The argument, named as in the API.
        field: &'static str,
        /// The value found, printed.
        value: String,
        /// What the argument allows.
        allowed: String,
    },
    /// A name or a path is longer than allowed (`ENAMETOOLONG`).
    #[error("{what} of {len_bytes} bytes is longer than the {max_bytes} allowed: {excerpt:?}")]
    NameTooLong {
        /// `"name"`, `"path"` or `"symlink target"`.
        what: &'static str,
        /// Its length.
        len_bytes: usize,
        /// [`MAX_NAME_BYTES`] or [`MAX_PATH_BYTES`].
        max_bytes: usize,
        /// Its first bytes.
        excerpt: String,
    },
    /// A layout or layout request is invalid (`EINVAL`).
    #[error("{path}: invalid layout: {source}")]
    Layout {
        /// The file or directory it was for.
        path: String,
        /// Why, from the layout crate.
        source: LayoutError,
    },
    /// No target to put a file's objects on: none registered, or none in the pool
    /// (`ENOSPC`, as Lustre answers when it finds no OST to allocate on).
    #[error("no targets{}", match pool { Some(pool) => format!(" in pool {pool:?}"), None => " registered".to_owned() })]
    NoTargets {
        /// The pool asked for, if any.
        pool: Option<String>,
    },
    /// Every inode number has been used (`ENOSPC`).
    #[error("no inode numbers left: all of 2..={max} have been used")]
    NoInodes {
        /// [`MAX_INO`].
        max: u64,
    },
    /// A target registration contradicts the registered one (`EEXIST`).
    #[error("target {target_id}: {reason}")]
    TargetConflict {
        /// The target id claimed.
        target_id: u32,
        /// What contradicts.
        reason: String,
    },
    /// The embedded store failed (`EIO`).
    #[error("metadata store {op} failed: {reason}")]
    Store {
        /// The store step that failed.
        op: &'static str,
        /// The store's own message.
        reason: String,
    },
    /// Reading or writing the store's file failed (`EIO`): the store opens its database
    /// again (at most once a second) before the next operation.
    #[error("metadata store {op} failed: {reason}")]
    StoreIo {
        /// The store step that failed.
        op: &'static str,
        /// The store's own message.
        reason: String,
    },
    /// The device holding the store is full (`ENOSPC`): nothing was changed, and the store
    /// takes changes again once there is room, without a restart.
    #[error("metadata store {op}: no space left on the device holding it ({reason})")]
    NoSpace {
        /// The store step that failed.
        op: &'static str,
        /// The store's own message.
        reason: String,
    },
    /// A released file's data cannot be fetched from its data repository (`EIO`).
    #[error("{path}: {reason}")]
    Repository {
        /// The file.
        path: String,
        /// Why (the object, and what the repository said).
        reason: String,
    },
    /// The file is in use, so the operation cannot be done now (`EBUSY`; FSx's
    /// `ResourceBusy`).
    #[error("{path}: busy: {reason}")]
    Busy {
        /// The file.
        path: String,
        /// What holds it.
        reason: String,
    },
    /// The operation cannot join the two places (`EXDEV`): a hard link into or out of a
    /// data repository association.
    #[error("{path}: {reason}")]
    CrossDevice {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// A file has as many names as it may have (`EMLINK`).
    #[error("{path}: too many links (at most {max} names)")]
    TooManyLinks {
        /// The file.
        path: String,
        /// [`crate::limits::MAX_LINKS`].
        max: u32,
    },
    /// Resolving a path followed more symbolic links than allowed (`ELOOP`).
    #[error("{path}: too many levels of symbolic links (more than {max} followed)")]
    Loop {
        /// The path, as far as it was resolved.
        path: String,
        /// [`crate::limits::MAX_SYMLINK_FOLLOWS`].
        max: usize,
    },
    /// A stored record or a message did not decode (`EIO`).
    #[error("metadata record: {0}")]
    Codec(#[from] CodecError),
}

impl MetaError {
    /// [`MetaError::NameTooLong`] for `text`, a `what` longer than `max_bytes`.
    pub(crate) fn too_long(what: &'static str, text: &str, max_bytes: usize) -> MetaError {
        MetaError::NameTooLong {
            what,
            len_bytes: text.len(),
            max_bytes,
            excerpt: excerpt(text),
        }
    }

    /// The errno a client sees for this error (a positive `libc` constant).
    pub fn errno(&self) -> i32 {
        match self {
            MetaError::NotFound { .. } => libc::ENOENT,
            MetaError::Exists { .. } | MetaError::TargetConflict { .. } => libc::EEXIST,
            MetaError::NotDir { .. } => libc::ENOTDIR,
            MetaError::IsDir { .. } => libc::EISDIR,
            MetaError::NotEmpty { .. } => libc::ENOTEMPTY,
            MetaError::Busy { .. } => libc::EBUSY,
            MetaError::Access { .. } => libc::EACCES,
            MetaError::Perm { .. } => libc::EPERM,
            MetaError::Invalid { .. } | MetaError::Layout { .. } => libc::EINVAL,
            MetaError::NameTooLong { .. } => libc::ENAMETOOLONG,
            MetaError::Loop { .. } => libc::ELOOP,
            MetaError::CrossDevice { .. } => libc::EXDEV,
            MetaError::TooManyLinks { .. } => libc::EMLINK,
            MetaError::NoTargets { .. }
            | MetaError::NoInodes { .. }
            | MetaError::NoSpace { .. } => libc::ENOSPC,
            MetaError::Store { .. }
            | MetaError::StoreIo { .. }
            | MetaError::Repository { .. }
            | MetaError::Codec(_) => libc::EIO,
        }
    }
}

/// The first bytes of `text` (at most 64, cut on a character boundary), for error messages.
pub(crate) fn excerpt(text: &str) -> String {
    const EXCERPT_BYTES: usize = 64;
    let mut end = text.len().min(EXCERPT_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Checks one directory entry name: 1 to [`MAX_NAME_BYTES`] bytes, no `/` or NUL, not `.`
/// or `..`.
pub fn check_name(name: &str) -> Result<(), MetaError> {
    if name.len() > MAX_NAME_BYTES {
        return Err(MetaError::too_long("name", name, MAX_NAME_BYTES));
    }
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(MetaError::Invalid {
            field: "name",
            value: format!("{:?}", excerpt(name)),
            allowed: format!("1 to {MAX_NAME_BYTES} bytes without '/' or NUL, not \".\" or \"..\""),
        });
    }
    Ok(())
}

/// Checks a symbolic link's target as Linux's `symlink(2)` does: 1 to
/// [`MAX_SYMLINK_TARGET_BYTES`] bytes (an empty one is `ENOENT`, a longer one
/// `ENAMETOOLONG`), no NUL; `.`, `..` and relative targets are allowed and resolved when the
/// link is followed.
pub fn check_symlink_target(target: &str) -> Result<(), MetaError> {
    if target.len() > MAX_SYMLINK_TARGET_BYTES {
        return Err(MetaError::too_long(
            "symlink target",
            target,
            MAX_SYMLINK_TARGET_BYTES,
        ));
    }
    if target.is_empty() {
        return Err(MetaError::NotFound {
            path: "\"\" (an empty symbolic link target)".to_owned(),
        });
    }
    if target.contains('\0') {
        return Err(MetaError::Invalid {
            field: "target",
            value: format!("{:?}", excerpt(target)),
            allowed: format!("1 to {MAX_SYMLINK_TARGET_BYTES} bytes without NUL"),
        });
    }
    Ok(())
}

/// Makes a type with inherent `encode` and `decode` a [`Record`](crate::codec::Record)
/// named `$name` (its bytes alone, and back, come with the trait).
macro_rules! whole_record {
    ($type:ty, $name:literal) => {
        impl $crate::codec::Record for $type {
            const NAME: &'static str = $name;

            fn encode(&self, out: &mut Vec<u8>) {
                <$type>::encode(self, out)
            }

            fn decode(
                reader: &mut $crate::codec::Reader<'_>,
            ) -> Result<Self, $crate::codec::CodecError> {
                <$type>::decode(reader)
            }
        }
    };
}
pub(crate) use whole_record;

/// The caller's identity, trusted as NFS AUTH_SYS trusts it. uid 0 is root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cred {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids (at most [`MAX_GROUPS`]).
    pub groups: Vec<u32>,
}

impl Cred {
    /// The superuser.
    pub fn root() -> Cred {
        Cred {
            uid: 0,
            gid: 0,
            groups: Vec::new(),
        }
    }

    /// Whether the caller is the superuser.
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// Whether `gid` is the caller's primary or one of its supplementary groups.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }

    /// Appends the binary form. Only the first [`MAX_GROUPS`] groups are written (as NFS
    /// AUTH_SYS clients cut the list): a caller with more is judged by fewer groups, which
    /// can only deny it more.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let groups = &self.groups[..self.groups.len().min(MAX_GROUPS)];
        let mut writer = Writer::new(out);
        writer.u32(self.uid).u32(self.gid).u32(groups.len() as u32);
        for &gid in groups {
            writer.u32(gid);
        }
    }

    /// Reads the binary form.
    pub fn decode(reader: &mut Reader<'_>) -> Result<Cred, CodecError> {
        let uid = reader.u32("uid")?;
        let gid = reader.u32("gid")?;
        let count = reader.count("groups", MAX_GROUPS, 4)?;
        let mut groups = Vec::with_capacity(count);
        for _ in 0..count {
            groups.push(reader.u32("groups")?);
        }
        Ok(Cred { uid, gid, groups })
    }
}
whole_record!(Cred, "Cred");

/// What an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileType {
    /// A regular file, striped over objects.
    File,
    /// A directory.
    Dir,
    /// A symbolic link: its target is in [`Attr::symlink`].
    Symlink,
}

impl FileType {
    /// The byte of the binary form.
    pub fn to_u8(self) -> u8 {
        match self {
            FileType::File => 1,
            FileType::Dir => 2,
            FileType::Symlink => 3,
        }
    }

    /// Reads the byte of the binary form.
    pub fn decode(reader: &mut Reader<'_>) -> Result<FileType, CodecError> {
        match reader.u8("file_type")? {
            1 => Ok(FileType::File),
            2 => Ok(FileType::Dir),
            3 => Ok(FileType::Symlink),
            other => Err(reader.bad_value(
                "file_type",
                u64::from(other),
                "1 (file), 2 (dir) or 3 (symlink)",
            )),
        }
    }
}

/// What `utimensat` does with one of a file's times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeSet {
    /// Leave it (`UTIME_OMIT`).
    Omit,
    /// The metadata service's clock now (`UTIME_NOW`).
    Now,
    /// This time, nanoseconds since the Unix epoch.
    At(i64),
}

impl TimeSet {
    /// Appends the binary form.
    pub fn encode(self, out: &mut Vec<u8>) {
        let mut w = Writer::new(out);
        match self {
            TimeSet::Omit => w.u8(0).i64(0),
            TimeSet::Now => w.u8(1).i64(0),
            TimeSet::At(ns) => w.u8(2).i64(ns),
        };
    }

    /// Reads the binary form.
    pub fn decode(reader: &mut Reader<'_>) -> Result<TimeSet, CodecError> {
        let tag = reader.u8("time_set")?;
        let ns = reader.i64("time_ns")?;
        match tag {
            0 => Ok(TimeSet::Omit),
            1 => Ok(TimeSet::Now),
            2 => Ok(TimeSet::At(ns)),
            other => Err(reader.bad_value(
                "time_set",
                u64::from(other),
                "0 (omit), 1 (now) or 2 (a time)",
            )),
        }
    }
}

/// How a file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Read only (needs `r`).
    Read,
    /// Write only (needs `w`).
    Write,
    /// Read and write (needs `rw`).
    ReadWrite,
}

impl Access {
    /// The byte of the binary form.
    pub fn to_u8(self) -> u8 {
        match self {
            Access::Read => 1,
            Access::Write => 2,
            Access::ReadWrite => 3,
        }
    }

    /// Reads the byte of the binary form.
    pub fn decode(reader: &mut Reader<'_>) -> Result<Access, CodecError> {
        match reader.u8("access")? {
            1 => Ok(Access::Read),
            2 => Ok(Access::Write),
            3 => Ok(Access::ReadWrite),
            other => Err(reader.bad_value(
                "access",
                u64::from(other),
                "1 (read), 2 (write) or 3 (read-write)",
            )),
        }
    }
}

fn bool_u8(reader: &mut Reader<'_>, field: &'static str) -> Result<bool, CodecError> {
    match reader.u8(field)? {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(reader.bad_value(field, u64::from(other), "0 or 1")),
    }
}

/// One component of a layout request: the file bytes `[start_bytes, end_bytes)` and the
/// striping asked for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentSpec {
    /// First file offset of the component.
    pub start_bytes: u64,
    /// One past its last; [`EOF_OFFSET_BYTES`] for the last component.
    pub end_bytes: u64,
    /// The striping asked for.
    pub stripe: StripeSpec,
}

impl ComponentSpec {
    /// Appends the binary form.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let stripe = &self.stripe;
        let mut writer = Writer::new(out);
        writer
            .u64(self.start_bytes)
            .u64(self.end_bytes)
            .u64(stripe.stripe_size_bytes)
            // The i32's bits; decode takes them back.
            .u32(stripe.stripe_count as u32)
            .i64(stripe.stripe_index);
        match &stripe.pool {
            Some(pool) => writer.u8(1).str(pool),
            None => writer.u8(0),
        };
        writer.u8(u8::from(stripe.overstriping));
    }

    /// Reads the binary form. The values are checked for shape by [`LayoutSpec::check`], not
    /// here; only sizes are bounded here.
    pub fn decode(reader: &mut Reader<'_>) -> Result<ComponentSpec, CodecError> {
        let start_bytes = reader.u64("start_bytes")?;
        let end_bytes = reader.u64("end_bytes")?;
        let stripe_size_bytes = reader.u64("stripe_size_bytes")?;
        let stripe_count = reader.u32("stripe_count")? as i32;
        let stripe_index = reader.i64("stripe_index")?;
        let pool = if bool_u8(reader, "pool")? {
            Some(reader.str("pool", MAX_POOL_NAME_BYTES)?.to_owned())
        } else {
            None
        };
        let overstriping = bool_u8(reader, "overstriping")?;
        Ok(ComponentSpec {
            start_bytes,
            end_bytes,
            stripe: StripeSpec {
                stripe_size_bytes,
                stripe_count,
                stripe_index,
                pool,
                overstriping,
            },
        })
    }
}

/// A layout request, unresolved: what `lfs setstripe` takes. One component covering
/// `[0, EOF)` is a plain layout; several make a composite (progressive) layout: contiguous,
/// the first starting at 0, the last ending at EOF, each boundary a multiple of the stripe
/// sizes of both components it separates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutSpec {
    /// The components, in file order (1 to [`MAX_COMPONENTS`]).
    pub components: Vec<ComponentSpec>,
}

/// The text `getstripe` prints for a layout request (a directory's default), one line per
/// component in Lustre's shape; -1 stands for "every target" and "the service picks".
impl std::fmt::Display for LayoutSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in &self.components {
            if self.components.len() > 1 {
                write!(
                    f,
                    "  lcme_extent.e_start: {}  lcme_extent.e_end: ",
                    c.start_bytes
                )?;
                if c.end_bytes == EOF_OFFSET_BYTES {
                    write!(f, "EOF\n  ")?;
                } else {
                    write!(f, "{}\n  ", c.end_bytes)?;
                }
            }
            let s = &c.stripe;
            let pattern = if s.overstriping {
                "raid0,overstriped"
            } else {
                "raid0"
            };
            write!(
                f,
                "stripe_count:  {} stripe_size:   {} pattern:       {pattern} stripe_offset: {}",
                s.stripe_count, s.stripe_size_bytes, s.stripe_index
            )?;
            if let Some(p) = &s.pool {
                write!(f, " pool:          {p}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

impl LayoutSpec {
    /// A plain layout request: one striping over the whole file.
    pub fn plain(stripe: StripeSpec) -> LayoutSpec {
        LayoutSpec {
            components: vec![ComponentSpec {
                start_bytes: 0,
                end_bytes: EOF_OFFSET_BYTES,
                stripe,
            }],
        }
    }

    /// The request a resolved layout answers: each component's striping with its real
    /// stripe count and its first target as the stripe index.
    pub fn from_layout(layout: &Layout) -> LayoutSpec {
        LayoutSpec {
            components: layout
                .components()
                .iter()
                .map(|c| ComponentSpec {
                    start_bytes: c.start_bytes,
                    end_bytes: c.end_bytes,
                    stripe: StripeSpec {
                        stripe_size_bytes: c.stripe.stripe_size_bytes(),
                        stripe_count: c.stripe.stripe_count() as i32,
                        stripe_index: i64::from(c.stripe.first_target_id()),
                        pool: c.stripe.pool().map(|p| p.as_str().to_string()),
                        overstriping: c.stripe.overstriping(),
                    },
                })
                .collect(),
        }
    }

    /// The filesystem's default: Lustre's (1 MiB stripes, one stripe, first target picked
    /// by the metadata service).
    pub fn filesystem_default() -> LayoutSpec {
        LayoutSpec::plain(StripeSpec::default())
    }

    /// Checks the request's shape without any real target: stripe sizes, counts, indexes,
    /// pool names and component boundaries. A pool or a stripe index that no target has (yet)
    /// passes: that is checked when a file is created.
    pub fn check(&self) -> Result<(), LayoutError> {
        self.check_component_count()?;
        let mut stripes = Vec::with_capacity(self.components.len());
        for component in &self.components {
            let stripe = &component.stripe;
            // Stand-in targets: the stripe index (when it is a target id) first, so that the
            // index is found, then as many others as the count asks for.
            let first_target_id = u32::try_from(stripe.stripe_index).unwrap_or(0);
            let stand_in_count = u32::try_from(stripe.stripe_count)
                .ok()
                .filter(|count| (1..=MAX_STRIPE_COUNT).contains(count))
                .unwrap_or(1);
            let stand_ins: Vec<u32> = std::iter::once(first_target_id)
                .chain((0..=u32::MAX).filter(|&target_id| target_id != first_target_id))
                .take(stand_in_count as usize)
                .collect();
            stripes.push(stripe.resolve(&stand_ins, first_target_id)?);
        }
        self.build(stripes).map(|_| ())
    }

    /// Puts resolved stripings (one per component, in order) together with the components'
    /// extents into a layout, checking the boundaries.
    pub fn build(&self, stripes: Vec<StripeLayout>) -> Result<Layout, LayoutError> {
        self.check_component_count()?;
        assert_eq!(
            stripes.len(),
            self.components.len(),
            "one resolved striping per component"
        );
        let is_plain = self.components.len() == 1
            && self.components[0].start_bytes == 0
            && self.components[0].end_bytes == EOF_OFFSET_BYTES;
        let mut components: Vec<Component> = self
            .components
            .iter()
            .zip(stripes)
            .map(|(spec, stripe)| Component::new(spec.start_bytes, spec.end_bytes, stripe))
            .collect();
        match components.pop() {
            Some(only) if is_plain => Ok(Layout::plain(only.stripe)),
            Some(last) => {
                components.push(last);
                Layout::composite(components)
            }
            None => Err(LayoutError::NoComponents),
        }
    }

    fn check_component_count(&self) -> Result<(), LayoutError> {
        if self.components.is_empty() {
            return Err(LayoutError::NoComponents);
        }
        if self.components.len() > MAX_COMPONENTS {
            return Err(LayoutError::TooManyComponents {
                count: self.components.len(),
                max: MAX_COMPONENTS,
            });
        }
        Ok(())
    }

    /// Appends the binary form. Every component is written: a request with more than
    /// [`MAX_COMPONENTS`] is refused by the decoder, not cut short here.
    pub fn encode(&self, out: &mut Vec<u8>) {
        Writer::new(out).u32(self.components.len() as u32);
        for component in &self.components {
            component.encode(out);
        }
    }

    /// Reads the binary form (sizes bounded; shape checked by [`LayoutSpec::check`]).
    pub fn decode(reader: &mut Reader<'_>) -> Result<LayoutSpec, CodecError> {
        let count = reader.count("components", MAX_COMPONENTS, MIN_COMPONENT_SPEC_BYTES)?;
        let mut components = Vec::with_capacity(count);
        for _ in 0..count {
            components.push(ComponentSpec::decode(reader)?);
        }
        Ok(LayoutSpec { components })
    }
}
whole_record!(LayoutSpec, "LayoutSpec");

/// The attributes of a file or directory. The metadata service keeps no file size: a
/// client derives it from the sizes of the file's objects, as Lustre's glimpse does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    /// Inode number, `1..=`[`MAX_INO`], never reused; a file's object ids derive from it
    /// ([`nacre_layout::object_id`]`(ino, component, stripe)`).
    pub ino: u64,
    /// File or directory.
    pub file_type: FileType,
    /// Permission bits, setuid, setgid and sticky included (within [`MODE_PERMISSION_BITS`]).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Links: a file's (or symbolic link's) names; 2 plus the number of subdirectories for
    /// a directory.
    pub nlink: u32,
    /// Last access, nanoseconds since the Unix epoch (set at creation; opens do not update
    /// it, as with `noatime`).
    pub atime_ns: i64,
    /// Last change of the contents (for a directory: of its entries), ns since the epoch.
    pub mtime_ns: i64,
    /// Last change of the attributes or the contents, ns since the epoch.
    pub ctime_ns: i64,
    /// A file's resolved layout (directories have none).
    pub layout: Option<Layout>,
    /// A directory's default layout, which new files and subdirectories inherit.
    pub default_layout: Option<LayoutSpec>,
    /// A symbolic link's target (1 to [`MAX_SYMLINK_TARGET_BYTES`] bytes, no NUL), as given when it
    /// was made; `None` for anything else.
    pub symlink: Option<String>,
}

impl Attr {
    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.file_type == FileType::Dir
    }

    /// Whether this is a regular file (striped over objects).
    pub fn is_file(&self) -> bool {
        self.file_type == FileType::File
    }

    /// Whether this is a symbolic link.
    pub fn is_symlink(&self) -> bool {
        self.file_type == FileType::Symlink
    }

    /// Appends the binary form.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut writer = Writer::new(out);
        writer
            .u64(self.ino)
            .u8(self.file_type.to_u8())
            .u32(self.mode)
            .u32(self.uid)
            .u32(self.gid)
            .u32(self.nlink)
            .i64(self.atime_ns)
            .i64(self.mtime_ns)
            .i64(self.ctime_ns);
        match &self.layout {
            Some(layout) => {
                writer.u8(1).bytes(&layout.encode());
            }
            None => {
                writer.u8(0);
            }
        }
        match &self.default_layout {
            Some(spec) => {
                writer.u8(1);
                spec.encode(out);
            }
            None => {
                writer.u8(0);
            }
        }
        // Only a symlink has the field: records written before symlinks read unchanged.
        if self.file_type == FileType::Symlink {
            Writer::new(out).str(self.symlink.as_deref().unwrap_or(""));
        }
    }

    /// Reads the binary form; the layout's own binary form is checked by
    /// [`Layout::decode`] (its error is reported as a bad `layout` field).
    pub fn decode(reader: &mut Reader<'_>) -> Result<Attr, CodecError> {
        let ino = reader.u64("ino")?;
        if !(1..=MAX_INO).contains(&ino) {
            return Err(reader.bad_value("ino", ino, "1..=2^40-1"));
        }
        let file_type = FileType::decode(reader)?;
        let mode = reader.u32("mode")?;
        if mode & !MODE_PERMISSION_BITS != 0 {
            return Err(reader.bad_value("mode", u64::from(mode), "permission bits within 0o7777"));
        }
        let uid = reader.u32("uid")?;
        let gid = reader.u32("gid")?;
        let nlink = reader.u32("nlink")?;
        let atime_ns = reader.i64("atime_ns")?;
        let mtime_ns = reader.i64("mtime_ns")?;
        let ctime_ns = reader.i64("ctime_ns")?;
        let layout = if bool_u8(reader, "layout")? {
            let bytes = reader.bytes("layout", MAX_ENCODED_LAYOUT_BYTES)?;
            let layout = Layout::decode(bytes).map_err(|_| {
                reader.bad_value(
                    "layout",
                    bytes.len() as u64,
                    "a valid nacre-layout binary form",
                )
            })?;
            Some(layout)
        } else {
            None
        };
        let default_layout = if bool_u8(reader, "default_layout")? {
            Some(LayoutSpec::decode(reader)?)
        } else {
            None
        };
        let symlink = if file_type == FileType::Symlink {
            let target = reader.str("symlink", MAX_SYMLINK_TARGET_BYTES)?;
            check_symlink_target(target).map_err(|_| {
                reader.bad_value(
                    "symlink",
                    target.len() as u64,
                    "1 to 4095 bytes without NUL",
                )
            })?;
            Some(target.to_owned())
        } else {
            None
        };
        Ok(Attr {
            ino,
            file_type,
            mode,
            uid,
            gid,
            nlink,
            atime_ns,
            mtime_ns,
            ctime_ns,
            layout,
            default_layout,
            symlink,
        })
    }
}
whole_record!(Attr, "Attr");

/// A target as registered with the metadata service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetInfo {
    /// The target's id (what layouts name).
    pub target_id: u32,
    /// The uuid in the target's format stamp: tells a restart from another disk claiming
    /// the id. 1 to [`MAX_TARGET_UUID_BYTES`] bytes.
    pub uuid: String,
    /// Where clients reach it (`tcp://host:port`, ...). 1 to [`MAX_ENDPOINT_BYTES`] bytes.
    pub endpoint: String,
    /// The pools it belongs to (valid pool names, at most [`MAX_POOLS_PER_TARGET`]).
    pub pools: Vec<String>,
    /// Its capacity.
    pub capacity_bytes: u64,
    /// Its free space (at most the capacity).
    pub free_bytes: u64,
}

impl TargetInfo {
    /// Appends the binary form. Everything is written: a field over its bound is refused by
    /// the decoder (and by [`crate::meta::store::MetaStore::register_target`]).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut writer = Writer::new(out);
        writer
            .u32(self.target_id)
            .str(&self.uuid)
            .str(&self.endpoint)
            .u32(self.pools.len() as u32);
        for pool in &self.pools {
            writer.str(pool);
        }
        writer.u64(self.capacity_bytes).u64(self.free_bytes);
    }

    /// Reads the binary form (sizes bounded; contents checked at registration).
    pub fn decode(reader: &mut Reader<'_>) -> Result<TargetInfo, CodecError> {
        let target_id = reader.u32("target_id")?;
        let uuid = reader.str("uuid", MAX_TARGET_UUID_BYTES)?.to_owned();
        let endpoint = reader.str("endpoint", MAX_ENDPOINT_BYTES)?.to_owned();
        let count = reader.count("pools", MAX_POOLS_PER_TARGET, 4)?;
        let mut pools = Vec::with_capacity(count);
        for _ in 0..count {
            pools.push(reader.str("pools", MAX_POOL_NAME_BYTES)?.to_owned());
        }
        let capacity_bytes = reader.u64("capacity_bytes")?;
        let free_bytes = reader.u64("free_bytes")?;
        Ok(TargetInfo {
            target_id,
            uuid,
            endpoint,
            pools,
            capacity_bytes,
            free_bytes,
        })
    }
}
whole_record!(TargetInfo, "TargetInfo");

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Its name (a valid name, see [`check_name`]).
    pub name: String,
    /// Its inode number.
    pub ino: u64,
    /// File or directory.
    pub file_type: FileType,
}

impl DirEntry {
    /// Appends the binary form.
    pub fn encode(&self, out: &mut Vec<u8>) {
        Writer::new(out)
            .str(&self.name)
            .u64(self.ino)
            .u8(self.file_type.to_u8());
    }

    /// Reads the binary form.
    pub fn decode(reader: &mut Reader<'_>) -> Result<DirEntry, CodecError> {
        let name = reader.str("name", MAX_NAME_BYTES)?.to_owned();
        let ino = reader.u64("ino")?;
        let file_type = FileType::decode(reader)?;
        Ok(DirEntry {
            name,
            ino,
            file_type,
        })
    }
}
whole_record!(DirEntry, "DirEntry");

/// Counts for `df`: inodes from the namespace, bytes from the targets' last reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFs {
    /// Files in the namespace.
    pub files: u64,
    /// Directories in the namespace, the root included.
    pub dirs: u64,
    /// Inode numbers not handed out yet.
    pub free_inodes: u64,
    /// Sum of the targets' capacities.
    pub capacity_bytes: u64,
    /// Sum of the targets' free space.
    pub free_bytes: u64,
}

impl StatFs {
    /// Appends the binary form.
    pub fn encode(&self, out: &mut Vec<u8>) {
        Writer::new(out)
            .u64(self.files)
            .u64(self.dirs)
            .u64(self.free_inodes)
            .u64(self.capacity_bytes)
            .u64(self.free_bytes);
    }

    /// Reads the binary form.
    pub fn decode(reader: &mut Reader<'_>) -> Result<StatFs, CodecError> {
        Ok(StatFs {
            files: reader.u64("files")?,
            dirs: reader.u64("dirs")?,
            free_inodes: reader.u64("free_inodes")?,
            capacity_bytes: reader.u64("capacity_bytes")?,
            free_bytes: reader.u64("free_bytes")?,
        })
    }
}
whole_record!(StatFs, "StatFs");
