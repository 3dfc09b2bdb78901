//! Data repositories linked to the namespace (S3 prefixes, as FSx for Lustre's data
//! repository associations): the associations, the repository state of each imported file
//! (Lustre's HSM flags, its object's key and ETag, and which chunks of it are present on the
//! targets), and the hydration a metadata service asks of the repository mover.
//!
//! The mover itself (S3 through object_store) lives outside this crate, in `nacre-repo`,
//! behind [`Repository`]: a client library linked into C programs carries no HTTP stack.
//! Decision 0020 gives the design.

use crate::codec::{CodecError, Reader, Writer};
use crate::limits::{
    DEFAULT_REPO_CHUNK_BYTES, MAX_ETAG_BYTES, MAX_REPO_CHUNK_BYTES, MAX_REPO_CHUNKS_PER_FILE,
    MAX_REPO_FILE_BYTES, MAX_REPO_URL_BYTES, MAX_S3_KEY_BYTES, MIN_REPO_CHUNK_BYTES,
};
use crate::meta::types::{Attr, MAX_PATH_BYTES, MetaError, whole_record};

/// Lustre's `HS_EXISTS`: the file has a copy in the repository (or had, once).
pub const HS_EXISTS: u32 = 0x1;
/// Lustre's `HS_DIRTY`: the file changed since its copy was made.
pub const HS_DIRTY: u32 = 0x2;
/// Lustre's `HS_RELEASED`: some of the file's data is only in the repository.
pub const HS_RELEASED: u32 = 0x4;
/// Lustre's `HS_ARCHIVED`: the repository's copy is complete.
pub const HS_ARCHIVED: u32 = 0x8;
/// Lustre's `HS_NORELEASE`: the file is never released (set by an administrator).
pub const HS_NORELEASE: u32 = 0x10;
/// Lustre's `HS_LOST`: the repository's copy is gone (or changed under a released file).
pub const HS_LOST: u32 = 0x40;
/// The flags a file's owner may set and clear (`nacre hsm set`; Lustre's `HSM_USER_MASK`
/// without `NOARCHIVE`, which Nacre has no use for yet).
pub const HS_USER_MASK: u32 = HS_NORELEASE | HS_DIRTY;

/// The names of `flags` as `lfs hsm_state` prints them, in its order.
pub fn hsm_flag_names(flags: u32) -> Vec<&'static str> {
    [
        (HS_RELEASED, "released"),
        (HS_EXISTS, "exists"),
        (HS_DIRTY, "dirty"),
        (HS_ARCHIVED, "archived"),
        (HS_NORELEASE, "norelease"),
        (HS_LOST, "lost"),
    ]
    .iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|&(_, name)| name)
    .collect()
}

/// An association's lifecycle, as FSx's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssocState {
    /// Linked; not yet checked against its bucket.
    Creating,
    /// Its bucket answered.
    Available,
    /// Its bucket refused (credentials, a missing bucket): the reason says which.
    Misconfigured,
    /// Something else went wrong.
    Failed,
}

impl AssocState {
    /// Its name, as `nacre repo list` prints it.
    pub fn name(self) -> &'static str {
        match self {
            AssocState::Creating => "creating",
            AssocState::Available => "available",
            AssocState::Misconfigured => "misconfigured",
            AssocState::Failed => "failed",
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            AssocState::Creating => 0,
            AssocState::Available => 1,
            AssocState::Misconfigured => 2,
            AssocState::Failed => 3,
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<AssocState, CodecError> {
        Ok(match r.u8("state")? {
            0 => AssocState::Creating,
            1 => AssocState::Available,
            2 => AssocState::Misconfigured,
            3 => AssocState::Failed,
            v => return Err(r.bad_value("state", u64::from(v), "0..=3")),
        })
    }
}

/// Auto-import or auto-export events (FSx's `NEW | CHANGED | DELETED`), as bits.
pub const EVENT_NEW: u8 = 1;
/// A changed object or file.
pub const EVENT_CHANGED: u8 = 2;
/// A deleted object or file.
pub const EVENT_DELETED: u8 = 4;

/// Parses `new,changed,deleted` (any subset, comma-separated) into event bits.
pub fn parse_events(text: &str) -> Result<u8, MetaError> {
    let mut bits = 0;
    for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        bits |= match word.to_ascii_lowercase().as_str() {
            "new" => EVENT_NEW,
            "changed" => EVENT_CHANGED,
            "deleted" => EVENT_DELETED,
            _ => {
                return Err(MetaError::Invalid {
                    field: "events",
                    value: word.to_owned(),
                    allowed: "new, changed, deleted (comma-separated)".into(),
                });
            }
        };
    }
    Ok(bits)
}

/// The names of event bits, comma-separated (`-` for none).
pub fn event_names(bits: u8) -> String {
    let names: Vec<&str> = [
        (EVENT_NEW, "new"),
        (EVENT_CHANGED, "changed"),
        (EVENT_DELETED, "deleted"),
    ]
    .iter()
    .filter(|(bit, _)| bits & bit != 0)
    .map(|&(_, n)| n)
    .collect();
    if names.is_empty() {
        "-".into()
    } else {
        names.join(",")
    }
}

/// One data repository association: a directory of the namespace linked to an S3 prefix.
/// Credentials are never part of it: the processes that reach S3 take them from their
/// environment or credentials file, as S3 tools do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Association {
    /// Its id, given at link (1 and up).
    pub id: u32,
    /// The directory of the namespace (an absolute path).
    pub path: String,
    /// The bucket.
    pub bucket: String,
    /// The key prefix: empty (the whole bucket) or ending in `/`.
    pub prefix: String,
    /// An S3 endpoint other than AWS's (`http://127.0.0.1:5000`).
    pub endpoint: Option<String>,
    /// The region.
    pub region: Option<String>,
    /// Bytes released files are fetched by.
    pub chunk_bytes: u64,
    /// Auto-import events.
    pub auto_import: u8,
    /// Auto-export events.
    pub auto_export: u8,
    /// Its state.
    pub state: AssocState,
    /// Why it is misconfigured or failed (empty otherwise).
    pub reason: String,
}

impl Association {
    /// Its repository as a URL, `s3://bucket/prefix`.
    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    /// The object key of the namespace path `path`, which lies under the association.
    pub fn key_of(&self, path: &str) -> Option<String> {
        let rest = under(&self.path, path)?;
        Some(format!("{}{}", self.prefix, rest))
    }

    /// Appends the binary form.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut w = Writer::new(out);
        w.u32(self.id)
            .str(&self.path)
            .str(&self.bucket)
            .str(&self.prefix);
        put_opt_str(&mut w, self.endpoint.as_deref());
        put_opt_str(&mut w, self.region.as_deref());
        w.u64(self.chunk_bytes)
            .u8(self.auto_import)
            .u8(self.auto_export)
            .u8(self.state.to_u8())
            .str(&self.reason);
    }

    /// Reads the binary form.
    pub fn decode(r: &mut Reader<'_>) -> Result<Association, CodecError> {
        let id = r.u32("id")?;
        let path = r.str("path", MAX_PATH_BYTES)?.to_owned();
        let bucket = r.str("bucket", MAX_REPO_URL_BYTES)?.to_owned();
        let prefix = r.str("prefix", MAX_S3_KEY_BYTES)?.to_owned();
        let endpoint = opt_str(r, "endpoint")?;
        let region = opt_str(r, "region")?;
        let chunk_bytes = r.u64("chunk_bytes")?;
        if !(MIN_REPO_CHUNK_BYTES..=MAX_REPO_CHUNK_BYTES).contains(&chunk_bytes) {
            return Err(r.bad_value("chunk_bytes", chunk_bytes, "64 KiB..=1 GiB"));
        }
        Ok(Association {
            id,
            path,
            bucket,
            prefix,
            endpoint,
            region,
            chunk_bytes,
            auto_import: r.u8("auto_import")?,
            auto_export: r.u8("auto_export")?,
            state: AssocState::decode(r)?,
            reason: r.str("reason", MAX_REPO_URL_BYTES)?.to_owned(),
        })
    }
}

/// What is left of `path` under directory `dir` (`""` for `dir` itself), when it lies there.
pub fn under<'p>(dir: &str, path: &'p str) -> Option<&'p str> {
    if dir == "/" {
        return Some(path.trim_start_matches('/'));
    }
    let rest = path.strip_prefix(dir)?;
    if rest.is_empty() {
        return Some("");
    }
    rest.strip_prefix('/')
}

/// Splits `s3://bucket/prefix` into the bucket and the prefix (empty, or ending in `/`).
pub fn parse_s3_url(url: &str) -> Result<(String, String), MetaError> {
    let bad = |why: &str| MetaError::Invalid {
        field: "repository",
        value: url.to_owned(),
        allowed: format!("s3://BUCKET or s3://BUCKET/PREFIX ({why})"),
    };
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| bad("it must start with s3://"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !bucket_ok {
        return Err(bad(
            "a bucket name is 3 to 63 lowercase letters, digits, dots and hyphens",
        ));
    }
    if prefix.len() > MAX_S3_KEY_BYTES {
        return Err(bad("the prefix is longer than a key may be"));
    }
    let mut prefix = prefix.trim_start_matches('/').to_owned();
    if !prefix.is_empty() && !prefix.ends_with('/') {
        prefix.push('/');
    }
    Ok((bucket.to_owned(), prefix))
}

/// What importing one object did to its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportOutcome {
    /// A new file.
    Created,
    /// A released file whose object changed: its attributes, size and ETag are the new
    /// object's, nothing of it present.
    Updated,
    /// The file holds this object version already.
    Unchanged,
}

/// What an imported object says its file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedFile {
    /// Where in the namespace.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Last access, ns since the epoch.
    pub atime_ns: i64,
    /// Last change, ns since the epoch.
    pub mtime_ns: i64,
    /// Its association.
    pub repo: u32,
    /// Its object's key.
    pub key: String,
    /// Its object's ETag.
    pub etag: String,
    /// Its object's size.
    pub size: u64,
}

impl ImportedFile {
    /// Appends the binary form.
    pub fn encode(&self, out: &mut Vec<u8>) {
        Writer::new(out)
            .str(&self.path)
            .u32(self.mode)
            .u32(self.uid)
            .u32(self.gid)
            .i64(self.atime_ns)
            .i64(self.mtime_ns)
            .u32(self.repo)
            .str(&self.key)
            .str(&self.etag)
            .u64(self.size);
    }

    /// Reads the binary form.
    pub fn decode(r: &mut Reader<'_>) -> Result<ImportedFile, CodecError> {
        Ok(ImportedFile {
            path: r.str("path", MAX_PATH_BYTES)?.to_owned(),
            mode: r.u32("mode")?,
            uid: r.u32("uid")?,
            gid: r.u32("gid")?,
            atime_ns: r.i64("atime_ns")?,
            mtime_ns: r.i64("mtime_ns")?,
            repo: r.u32("repo")?,
            key: r.str("key", MAX_S3_KEY_BYTES)?.to_owned(),
            etag: r.str("etag", MAX_ETAG_BYTES)?.to_owned(),
            size: r.u64("size")?,
        })
    }
}

/// What a release did to one file (`nacre task release`, FSx's
/// `RELEASE_DATA_FROM_FILESYSTEM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// Its data was dropped from the targets: this many bytes (the file's size).
    Released(u64),
    /// It was released already.
    AlreadyReleased,
    /// Not released, and why (not an error: the task goes on).
    Skipped(ReleaseSkip),
}

/// Why a release left a file as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseSkip {
    /// Never exported or imported: its data is only here.
    NotArchived,
    /// Written since its export: the repository's copy is old.
    Dirty,
    /// Accessed (atime, mtime or ctime) within the idle time asked for.
    Recent,
    /// Marked never to be released (`HS_NORELEASE`).
    NoRelease,
    /// Empty: nothing to drop.
    Empty,
}

impl ReleaseSkip {
    /// Why, in words, as the task's summary counts it.
    pub fn name(self) -> &'static str {
        match self {
            ReleaseSkip::NotArchived => "not exported",
            ReleaseSkip::Dirty => "changed since exported",
            ReleaseSkip::Recent => "accessed within the idle time",
            ReleaseSkip::NoRelease => "marked norelease",
            ReleaseSkip::Empty => "empty",
        }
    }
}

impl ReleaseOutcome {
    /// Appends the binary form (a byte, and the bytes released).
    pub fn encode(self, out: &mut Vec<u8>) {
        let (code, bytes) = match self {
            ReleaseOutcome::Released(bytes) => (0, bytes),
            ReleaseOutcome::AlreadyReleased => (1, 0),
            ReleaseOutcome::Skipped(ReleaseSkip::NotArchived) => (2, 0),
            ReleaseOutcome::Skipped(ReleaseSkip::Dirty) => (3, 0),
            ReleaseOutcome::Skipped(ReleaseSkip::Recent) => (4, 0),
            ReleaseOutcome::Skipped(ReleaseSkip::NoRelease) => (5, 0),
            ReleaseOutcome::Skipped(ReleaseSkip::Empty) => (6, 0),
        };
        Writer::new(out).u8(code).u64(bytes);
    }

    /// Reads the binary form.
    pub fn decode(r: &mut Reader<'_>) -> Result<ReleaseOutcome, CodecError> {
        let code = r.u8("release outcome")?;
        let bytes = r.u64("bytes released")?;
        Ok(match code {
            0 => ReleaseOutcome::Released(bytes),
            1 => ReleaseOutcome::AlreadyReleased,
            2 => ReleaseOutcome::Skipped(ReleaseSkip::NotArchived),
            3 => ReleaseOutcome::Skipped(ReleaseSkip::Dirty),
            4 => ReleaseOutcome::Skipped(ReleaseSkip::Recent),
            5 => ReleaseOutcome::Skipped(ReleaseSkip::NoRelease),
            6 => ReleaseOutcome::Skipped(ReleaseSkip::Empty),
            v => return Err(r.bad_value("release outcome", u64::from(v), "0..=6")),
        })
    }
}

impl ImportOutcome {
    /// Its wire value.
    pub fn to_u8(self) -> u8 {
        match self {
            ImportOutcome::Created => 0,
            ImportOutcome::Updated => 1,
            ImportOutcome::Unchanged => 2,
        }
    }

    /// Reads it back.
    pub fn decode(r: &mut Reader<'_>) -> Result<ImportOutcome, CodecError> {
        Ok(match r.u8("outcome")? {
            0 => ImportOutcome::Created,
            1 => ImportOutcome::Updated,
            2 => ImportOutcome::Unchanged,
            v => return Err(r.bad_value("outcome", u64::from(v), "0..=2")),
        })
    }
}

impl AssocState {
    /// Its wire value.
    pub fn code(self) -> u8 {
        self.to_u8()
    }

    /// Reads it back.
    pub fn read(r: &mut Reader<'_>) -> Result<AssocState, CodecError> {
        AssocState::decode(r)
    }
}

/// The chunk a file of `size_bytes` is fetched by: the association's, or larger when the
/// file would have more than [`MAX_REPO_CHUNKS_PER_FILE`] chunks.
pub fn chunk_bytes_for(size_bytes: u64, assoc_chunk_bytes: u64) -> u64 {
    let chunk = if assoc_chunk_bytes == 0 {
        DEFAULT_REPO_CHUNK_BYTES
    } else {
        assoc_chunk_bytes
    };
    chunk.max(size_bytes.div_ceil(MAX_REPO_CHUNKS_PER_FILE))
}

/// The repository state of one imported file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoFile {
    /// Its association.
    pub repo: u32,
    /// Its object's key.
    pub key: String,
    /// Its object's ETag when imported (a fetch asks for that version only).
    pub etag: String,
    /// Its object's size.
    pub size: u64,
    /// Bytes it is fetched by.
    pub chunk_bytes: u64,
    /// Lustre's HSM flags.
    pub flags: u32,
    /// One bit per chunk: present on the targets.
    pub present: Vec<u8>,
}

impl RepoFile {
    /// A file just imported: nothing of it present (released, unless empty).
    pub fn imported(repo: u32, key: String, etag: String, size: u64, chunk_bytes: u64) -> Self {
        let chunk_bytes = chunk_bytes_for(size, chunk_bytes);
        let chunks = size.div_ceil(chunk_bytes);
        let released = if size > 0 { HS_RELEASED } else { 0 };
        RepoFile {
            repo,
            key,
            etag,
            size,
            chunk_bytes,
            flags: HS_EXISTS | HS_ARCHIVED | released,
            present: vec![0; chunks.div_ceil(8) as usize],
        }
    }

    /// How many chunks it has.
    pub fn chunks(&self) -> u64 {
        self.size.div_ceil(self.chunk_bytes)
    }

    /// Whether chunk `c` is present.
    pub fn is_present(&self, c: u64) -> bool {
        self.present
            .get((c / 8) as usize)
            .is_some_and(|b| b & (1 << (c % 8)) != 0)
    }

    /// Marks chunk `c` present; clears [`HS_RELEASED`] once every chunk is.
    pub fn set_present(&mut self, c: u64) {
        self.set_present_all(&[c]);
    }

    /// Marks `chunks` present; clears [`HS_RELEASED`] once every chunk is (one look at the
    /// map, whatever the number of chunks).
    pub fn set_present_all(&mut self, chunks: &[u64]) {
        for &c in chunks {
            if let Some(b) = self.present.get_mut((c / 8) as usize) {
                *b |= 1 << (c % 8);
            }
        }
        self.update_released();
    }

    /// Marks every chunk present: the file is whole on its targets.
    pub fn set_whole(&mut self) {
        self.present.fill(0xff);
        self.flags &= !HS_RELEASED;
    }

    /// Marks every chunk absent: the file's data is only in its repository now.
    pub fn set_released(&mut self) {
        self.present.fill(0);
        self.flags |= HS_RELEASED;
    }

    fn update_released(&mut self) {
        let chunks = self.chunks();
        let full = (chunks / 8) as usize;
        let whole = self.present[..full].iter().all(|&b| b == 0xff)
            && (full..self.present.len()).all(|i| {
                let bits = chunks - 8 * i as u64;
                let want = if bits >= 8 { 0xff } else { (1u8 << bits) - 1 };
                self.present[i] & want == want
            });
        if whole {
            self.flags &= !HS_RELEASED;
        }
    }

    /// The chunks of `offset..offset + len` not present, in order (none past the end).
    pub fn missing(&self, offset: u64, len: u64) -> Vec<u64> {
        if self.flags & HS_RELEASED == 0 || len == 0 || offset >= self.size {
            return Vec::new();
        }
        let end = offset.saturating_add(len).min(self.size);
        let first = offset / self.chunk_bytes;
        let last = (end - 1) / self.chunk_bytes;
        (first..=last).filter(|&c| !self.is_present(c)).collect()
    }

    /// The byte range of chunk `c`.
    pub fn chunk_range(&self, c: u64) -> std::ops::Range<u64> {
        let start = c * self.chunk_bytes;
        start..(start + self.chunk_bytes).min(self.size)
    }

    /// Appends the binary form.
    pub fn encode(&self, out: &mut Vec<u8>) {
        Writer::new(out)
            .u32(self.repo)
            .str(&self.key)
            .str(&self.etag)
            .u64(self.size)
            .u64(self.chunk_bytes)
            .u32(self.flags)
            .bytes(&self.present);
    }

    /// Reads the binary form.
    pub fn decode(r: &mut Reader<'_>) -> Result<RepoFile, CodecError> {
        let repo = r.u32("repo")?;
        let key = r.str("key", MAX_S3_KEY_BYTES)?.to_owned();
        let etag = r.str("etag", MAX_ETAG_BYTES)?.to_owned();
        let size = r.u64("size")?;
        if size > MAX_REPO_FILE_BYTES {
            return Err(r.bad_value("size", size, "at most 5 TiB (S3's largest object)"));
        }
        let chunk_bytes = r.u64("chunk_bytes")?;
        if chunk_bytes == 0 || size.div_ceil(chunk_bytes) > MAX_REPO_CHUNKS_PER_FILE {
            return Err(r.bad_value("chunk_bytes", chunk_bytes, "a chunk count within bound"));
        }
        let flags = r.u32("flags")?;
        let max_map = MAX_REPO_CHUNKS_PER_FILE.div_ceil(8) as usize;
        let present = r.bytes("present", max_map)?.to_vec();
        if present.len() as u64 != size.div_ceil(chunk_bytes).div_ceil(8) {
            return Err(r.bad_value("present", present.len() as u64, "a bit per chunk"));
        }
        Ok(RepoFile {
            repo,
            key,
            etag,
            size,
            chunk_bytes,
            flags,
            present,
        })
    }
}

whole_record!(Association, "repository association");
whole_record!(RepoFile, "repository file");

/// Chunks of a released file to fetch from its repository and write into its objects.
#[derive(Debug, Clone)]
pub struct HydrateJob {
    /// The file's path (for messages).
    pub path: String,
    /// Its attributes (its layout says where its objects are).
    pub attr: Attr,
    /// Its association.
    pub assoc: Association,
    /// Its repository state.
    pub file: RepoFile,
    /// The chunks to fetch, in order.
    pub chunks: Vec<u64>,
}

/// The repository mover, as the metadata service sees it: fetches chunks of released files
/// and writes them into the files' objects on the targets. Implemented by `nacre-repo`
/// (S3); a service without one answers reads of released files with EIO.
pub trait Repository: Send + Sync {
    /// Fetches `job.chunks` of `job.file` (the object version of `job.file.etag` only) and
    /// writes each into the file's objects, durably, before returning. An error names the
    /// object and why (unreachable, refused, changed since import, gone); nothing of a
    /// chunk it failed on is taken as present. An object changed or gone since its import
    /// is a [`FetchError::lost`] one: the file is then marked lost.
    fn fetch(&self, job: &HydrateJob) -> Result<(), FetchError>;

    /// Drops the data of `job.attr`'s objects on the targets, keeping their sizes (a
    /// release: the file is marked released before, and no hydration of it runs until
    /// this returns), and makes that durable.
    fn punch(&self, job: &HydrateJob) -> Result<(), FetchError>;
}

/// Why a [`Repository`] could not fetch chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchError {
    /// The object changed or went away since its import (the file is marked lost), rather
    /// than a failure that may pass (S3 unreachable, refusing).
    pub lost: bool,
    /// What went wrong, naming the object.
    pub message: String,
}

impl FetchError {
    /// The object is lost: changed or gone since its import.
    pub fn lost(message: String) -> FetchError {
        FetchError {
            lost: true,
            message,
        }
    }
}

impl From<String> for FetchError {
    /// A failure that may pass.
    fn from(message: String) -> FetchError {
        FetchError {
            lost: false,
            message,
        }
    }
}

fn put_opt_str(w: &mut Writer<'_>, value: Option<&str>) {
    match value {
        Some(s) => {
            w.u8(1).str(s);
        }
        None => {
            w.u8(0);
        }
    }
}

fn opt_str(r: &mut Reader<'_>, field: &'static str) -> Result<Option<String>, CodecError> {
    Ok(match r.u8(field)? {
        0 => None,
        1 => Some(r.str(field, MAX_REPO_URL_BYTES)?.to_owned()),
        v => return Err(r.bad_value(field, u64::from(v), "0 or 1")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls_split_into_bucket_and_a_slash_ended_prefix() {
        assert_eq!(
            parse_s3_url("s3://data-1/train").ok(),
            Some(("data-1".into(), "train/".into()))
        );
        assert_eq!(
            parse_s3_url("s3://data-1").ok(),
            Some(("data-1".into(), String::new()))
        );
        assert_eq!(
            parse_s3_url("s3://data-1/a/b/").ok(),
            Some(("data-1".into(), "a/b/".into()))
        );
        for bad in ["http://x/y", "s3://", "s3://AB/x", "s3://a_b/c", "s3://ab"] {
            assert!(parse_s3_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_under_a_directory_map_to_keys_under_the_prefix() {
        assert_eq!(under("/data", "/data/a/b"), Some("a/b"));
        assert_eq!(under("/data", "/data"), Some(""));
        assert_eq!(under("/data", "/database/x"), None);
        assert_eq!(under("/", "/x/y"), Some("x/y"));
    }

    #[test]
    fn chunks_go_present_one_by_one_and_the_last_clears_released() {
        let mut f = RepoFile::imported(1, "k".into(), "e".into(), 10 << 20, 4 << 20);
        assert_eq!(f.chunks(), 3);
        assert_eq!(f.flags, HS_EXISTS | HS_ARCHIVED | HS_RELEASED);
        assert_eq!(f.missing(0, 1), vec![0]);
        assert_eq!(f.missing((4 << 20) - 1, 2), vec![0, 1]);
        assert_eq!(f.missing(9 << 20, 100 << 20), vec![2]);
        assert_eq!(f.chunk_range(2), (8 << 20)..(10 << 20));
        f.set_present(0);
        f.set_present(2);
        assert_eq!(f.missing(0, 10 << 20), vec![1]);
        assert_ne!(f.flags & HS_RELEASED, 0);
        f.set_present(1);
        assert_eq!(f.flags, HS_EXISTS | HS_ARCHIVED);
        assert!(f.missing(0, 10 << 20).is_empty());
        let mut bytes = Vec::new();
        f.encode(&mut bytes);
        let mut r = Reader::new(&bytes, "repo file");
        assert_eq!(RepoFile::decode(&mut r).ok(), Some(f));
    }

    #[test]
    fn released_clears_only_when_the_last_partial_byte_of_the_map_is_full() {
        // 9 chunks: a map of two bytes, the second with one bit in use.
        let mut f = RepoFile::imported(1, "k".into(), "e".into(), 9 << 20, 1 << 20);
        f.set_present_all(&(0..8).collect::<Vec<u64>>());
        assert_ne!(f.flags & HS_RELEASED, 0);
        assert_eq!(f.missing(0, 9 << 20), vec![8]);
        f.set_present_all(&[8]);
        assert_eq!(f.flags & HS_RELEASED, 0);
        let mut g = RepoFile::imported(1, "k".into(), "e".into(), 9 << 20, 1 << 20);
        g.set_whole();
        assert!(g.missing(0, u64::MAX).is_empty());
        assert_eq!(g.flags, HS_EXISTS | HS_ARCHIVED);
    }

    #[test]
    fn a_huge_file_gets_larger_chunks_and_an_empty_one_is_not_released() {
        let size = 5u64 << 40;
        let f = RepoFile::imported(1, "k".into(), "e".into(), size, 1 << 20);
        assert!(f.chunks() <= MAX_REPO_CHUNKS_PER_FILE);
        let empty = RepoFile::imported(1, "k".into(), "e".into(), 0, 1 << 20);
        assert_eq!(empty.flags & HS_RELEASED, 0);
        assert!(empty.missing(0, 10).is_empty());
    }

    #[test]
    fn events_parse_and_print_back() {
        assert_eq!(
            parse_events("new,changed").ok(),
            Some(EVENT_NEW | EVENT_CHANGED)
        );
        assert_eq!(event_names(EVENT_NEW | EVENT_DELETED), "new,deleted");
        assert_eq!(event_names(0), "-");
        assert!(parse_events("new,moved").is_err());
    }

    #[test]
    fn flags_print_as_lfs_hsm_state_does() {
        assert_eq!(
            hsm_flag_names(HS_EXISTS | HS_ARCHIVED | HS_RELEASED),
            vec!["released", "exists", "archived"]
        );
    }
}
