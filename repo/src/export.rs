//! Export: files of an association that are new (never imported nor exported) or dirty
//! (written since) are uploaded to their keys with FSx's POSIX metadata keys, and become
//! archived. A file of at most [`MULTIPART_THRESHOLD_BYTES`] goes in one PUT; a larger one in
//! a multipart upload of [`PART_BYTES`] parts, [`UPLOAD_PARALLEL`] in flight (an upload that
//! fails is aborted, so no parts are left behind). What cannot be exported (a key longer
//! than S3 allows, a file larger than an object may be) is reported per path and the export
//! goes on.
//!
//! A directory (below the association's own) is written as FSx writes it: an empty marker
//! object at `dir/` with the directory's POSIX metadata, put again only when that
//! metadata changed. A file moved since its object was written (renamed, or its directory
//! renamed) is exported at its new key even when clean.
//!
//! With the association's auto-export events including `deleted`:
//! - a file moved is exported at its new key, then the object it was linked to is deleted,
//!   unless a file still links to it. This is how a directory rename moves every object
//!   under it: the objects of files that were linked to them, and no others.
//! - a path that is gone (unlinked, or renamed away: the service queued it because it was
//!   linked to an object) has its object deleted, when no file links to it any more; a
//!   directory gone (queued as `dir/`) has its marker and the markers under it deleted,
//!   never an object of its name nor a file's under it.
//!
//! Objects under a directory that no file was linked to (never imported) stay: nothing is
//! deleted by prefix.

use std::collections::VecDeque;

use futures::{StreamExt, TryStreamExt};
use std::ops::ControlFlow;

use nacre::meta::repo::{Association, EVENT_DELETED, HS_ARCHIVED, HS_DIRTY};
use nacre::meta::types::{Attr, SYMLINK_MODE};
use nacre::{Client, OpenOptions};
use object_store::{
    Attribute, AttributeValue, Attributes, GetOptions, ObjectStore, ObjectStoreExt,
    PutMultipartOptions, PutOptions, PutPayload,
};

use crate::error::RepoError;
use crate::import::{ImportFailure, failure};
use crate::limits::{
    MAX_LISTED_OBJECTS, MAX_OBJECT_BYTES, MAX_PARTS, MULTIPART_THRESHOLD_BYTES, PART_BYTES,
    UPLOAD_PARALLEL,
};
use crate::mover::{S3Access, location, marker_location};
use crate::posix::{TYPE_DIR, TYPE_FILE, TYPE_SYMLINK, metadata_of};

/// The longest key S3 takes, in bytes.
const MAX_KEY_BYTES: usize = 1024;

/// What an export did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportReport {
    /// Files uploaded.
    pub exported: u64,
    /// Bytes uploaded.
    pub bytes: u64,
    /// Files archived already and not written since.
    pub unchanged: u64,
    /// Directory markers put (new directories, or their metadata changed).
    pub dirs: u64,
    /// Objects deleted (auto-export with `deleted`): of paths gone, the old objects of
    /// files moved, and directory markers.
    pub deleted: u64,
    /// Paths gone, left (auto-export without `deleted`).
    pub gone: u64,
    /// Paths gone whose object a file still links to: kept.
    pub kept: u64,
    /// Paths not exported, and why.
    pub failed: Vec<ImportFailure>,
    /// Paths handled: files, directories and paths gone, each once.
    pub paths: u64,
}

/// Whether an auto-export may delete the object of a path it finds gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    /// Yes (with the association's `deleted` event).
    Allowed,
    /// No: an export of the same task failed before (a renamed released file's only copy
    /// may be the old object); a report line says so.
    Refused,
    /// No: a file still links to the object (moved, not exported at its new path yet).
    Kept,
    /// If no file links to the object: the service is asked first.
    Ask,
}

impl ExportReport {
    /// This report's counts and failures with `other`'s added.
    pub fn plus(&self, other: &ExportReport) -> ExportReport {
        ExportReport {
            exported: self.exported + other.exported,
            bytes: self.bytes + other.bytes,
            unchanged: self.unchanged + other.unchanged,
            dirs: self.dirs + other.dirs,
            deleted: self.deleted + other.deleted,
            gone: self.gone + other.gone,
            kept: self.kept + other.kept,
            failed: self.failed.iter().chain(&other.failed).cloned().collect(),
            paths: self.paths + other.paths,
        }
    }

    /// Paths handled so far: files, directories and paths gone.
    pub fn handled(&self) -> u64 {
        self.paths
    }
}

/// Exports the files at and under `paths` (within `assoc`) that are new or dirty, or every
/// one with `force` (an auto-export after a close: a close racing an export that read the
/// file before the close's writes may find it marked clean). With `force`, a path that is
/// gone has its object deleted when the association asks (`deleted`) and `deletion`
/// allows it.
/// `progress(report so far)` is called before each file or directory; when it breaks, the
/// export stops there (a canceled task).
pub fn export(
    client: &Client,
    s3: &S3Access,
    assoc: &Association,
    paths: &[String],
    force: bool,
    deletion: Deletion,
    mut progress: impl FnMut(&ExportReport) -> ControlFlow<()>,
) -> Result<ExportReport, RepoError> {
    let mut report = ExportReport::default();
    let mut pending: Vec<String> = paths.to_vec();
    while let Some(path) = pending.pop() {
        if progress(&report).is_break() {
            return Ok(report);
        }
        report.paths += 1;
        // A directory queued as `dir/` (gone or moved) is looked up by its name, never
        // through a link: anything but a directory there now is not it (its markers go,
        // never that entry's object).
        let name = path.strip_suffix('/').unwrap_or(&path).to_owned();
        let looked = client.attr(&name).and_then(|attr| {
            if path.ends_with('/') && !attr.is_dir() {
                Err(nacre::Error::Meta {
                    op: "export",
                    path: name.clone(),
                    errno: libc::ENOENT,
                    message: format!("{name}: not a directory any more"),
                })
            } else {
                Ok(attr)
            }
        });
        let attr = match looked {
            Ok(attr) => attr,
            Err(e) if force && e.errno() == libc::ENOENT => {
                if assoc.auto_export & EVENT_DELETED == 0 {
                    report.gone += 1;
                    continue;
                }
                let linked = match (deletion, assoc.key_of(&path)) {
                    (Deletion::Kept, _) => true,
                    (Deletion::Ask, Some(key)) => match client.keys_linked(assoc.id, &[key]) {
                        Ok(held) => held.first() == Some(&true),
                        Err(e) => {
                            report.failed.push(failure(&path, "InternalError", e));
                            continue;
                        }
                    },
                    _ => false,
                };
                if linked {
                    report.kept += 1;
                    continue;
                }
                if deletion == Deletion::Refused {
                    report.failed.push(failure(
                        &path,
                        "InternalError",
                        "its objects were not deleted: an export of the same task failed \
                         first (export it again, or delete them)",
                    ));
                    continue;
                }
                match delete_gone(s3, assoc, &path) {
                    Ok(deleted) => report.deleted += deleted,
                    Err(f) => report.failed.push(f),
                }
                continue;
            }
            Err(e) => {
                report.failed.push(failure(&path, "InternalError", e));
                continue;
            }
        };
        let path = name;
        if attr.is_dir() {
            // The association's own directory is the prefix: no marker of its own.
            if assoc
                .key_of(&path)
                .is_some_and(|key| key.len() > assoc.prefix.len())
            {
                match export_dir(s3, assoc, &path, &attr) {
                    Ok(true) => report.dirs += 1,
                    Ok(false) => {}
                    Err(f) => report.failed.push(f),
                }
            }
            match client.readdir(&path) {
                Ok(entries) => {
                    let base = path.trim_end_matches('/');
                    for e in entries {
                        pending.push(format!("{base}/{}", e.name));
                    }
                }
                Err(e) => report.failed.push(failure(&path, "InternalError", e)),
            }
            continue;
        }
        if attr.nlink > 1 {
            report.failed.push(failure(
                &path,
                "HardLinked",
                format!(
                    "it has {} names (hard links): a data repository keeps one object per path",
                    attr.nlink
                ),
            ));
            continue;
        }
        let exported = if attr.is_symlink() {
            export_symlink(client, s3, assoc, &path, &attr)
        } else {
            export_file(client, s3, assoc, &path, force)
        };
        match exported {
            Ok(Exported::Uploaded { bytes, moved_from }) => {
                report.exported += 1;
                report.bytes += bytes;
                if let Some(old) = moved_from
                    && force
                    && assoc.auto_export & EVENT_DELETED != 0
                {
                    match delete_moved(client, s3, assoc, &path, &old) {
                        Ok(deleted) => report.deleted += u64::from(deleted),
                        Err(f) => report.failed.push(f),
                    }
                }
            }
            Ok(Exported::Unchanged) => report.unchanged += 1,
            Err(f) => report.failed.push(f),
        }
    }
    Ok(report)
}

/// Deletes what S3 holds of `path`, gone from the namespace: a file's object at its key
/// (no file links to it: the caller asked the service), or for a directory (queued as
/// `dir/`) its marker and those under it, never an object of the same name nor a file's
/// under it. How many objects it deleted.
fn delete_gone(s3: &S3Access, assoc: &Association, path: &str) -> Result<u64, ImportFailure> {
    let key = assoc
        .key_of(path)
        .ok_or_else(|| failure(path, "InternalError", "not under its association"))?;
    let store = s3.store(assoc).map_err(|e| failure(path, "S3Error", e))?;
    let s3_failed = |e: object_store::Error| failure(path, "S3Error", e);
    let mut doomed = Vec::new();
    if !key.ends_with('/') {
        doomed.push((location(&key), key.clone()));
    } else if key.len() <= MAX_KEY_BYTES {
        // The markers under it: zero-length objects whose key a HEAD of the listed name
        // (which lost its `/`) does not find. At most as many as an import lists.
        let under = location(&key);
        let listing = store.list(Some(&under)).take(MAX_LISTED_OBJECTS);
        let listed: Vec<_> = s3
            .block_on(listing.try_collect::<Vec<_>>())
            .map_err(|e| failure(path, "InternalError", e))?
            .map_err(s3_failed)?;
        doomed.push((marker_location(&key), key.clone()));
        for meta in listed.into_iter().filter(|m| m.size == 0) {
            match s3
                .block_on(store.head(&meta.location))
                .map_err(|e| failure(path, "InternalError", e))?
            {
                Err(object_store::Error::NotFound { .. }) => {}
                Ok(_) => continue,
                Err(e) => return Err(s3_failed(e)),
            }
            let shown = format!("{}/", meta.location);
            doomed.push((marker_location(meta.location.as_ref()), shown));
        }
    }
    let mut deleted = 0;
    for (at, shown) in doomed {
        // S3 answers a delete of a key it does not hold as done: asked first, so that the
        // count is of objects that were there (a moved file's old object may be gone
        // already, deleted after its export).
        match s3
            .block_on(store.head(&at))
            .map_err(|e| failure(path, "InternalError", e))?
        {
            Ok(_) => {}
            Err(object_store::Error::NotFound { .. }) => continue,
            Err(e) => return Err(s3_failed(e)),
        }
        s3.block_on(store.delete(&at))
            .map_err(|e| failure(path, "InternalError", e))?
            .map_err(s3_failed)?;
        nacre::transport::log_line!(
            "nacre meta: deleted s3://{}/{shown} ({path} is gone)",
            assoc.bucket
        );
        deleted += 1;
    }
    Ok(deleted)
}

/// Deletes `old`, the object the file now at `path` was linked to before it moved and was
/// exported at its new key, unless a file still links to it. Whether it did.
fn delete_moved(
    client: &Client,
    s3: &S3Access,
    assoc: &Association,
    path: &str,
    old: &str,
) -> Result<bool, ImportFailure> {
    let held = client
        .keys_linked(assoc.id, &[old.to_owned()])
        .map_err(|e| failure(path, "InternalError", e))?;
    if held.first() != Some(&false) {
        return Ok(false);
    }
    let store = s3.store(assoc).map_err(|e| failure(path, "S3Error", e))?;
    s3.block_on(store.delete(&location(old)))
        .map_err(|e| failure(path, "InternalError", e))?
        .map_err(|e| failure(path, "S3Error", e))?;
    nacre::transport::log_line!(
        "nacre meta: deleted s3://{}/{old} ({path} moved)",
        assoc.bucket
    );
    Ok(true)
}

/// Puts the marker of the directory at `path` (`key/`, empty, with the directory's POSIX
/// metadata) unless S3 holds one with that metadata already. Whether it put one.
fn export_dir(
    s3: &S3Access,
    assoc: &Association,
    path: &str,
    attr: &Attr,
) -> Result<bool, ImportFailure> {
    let key = assoc
        .key_of(path)
        .ok_or_else(|| failure(path, "InternalError", "not under its association"))?;
    if key.len() + 1 > MAX_KEY_BYTES {
        return Err(failure(
            path,
            "PathSizeTooLong",
            format!(
                "its marker's key is {} bytes, over S3's {MAX_KEY_BYTES}",
                key.len() + 1
            ),
        ));
    }
    let metadata = metadata_of(
        TYPE_DIR | attr.mode,
        attr.uid,
        attr.gid,
        attr.atime_ns,
        attr.mtime_ns,
    );
    let store = s3.store(assoc).map_err(|e| failure(path, "S3Error", e))?;
    let at = marker_location(&key);
    let options = GetOptions {
        head: true,
        ..GetOptions::default()
    };
    match s3
        .block_on(store.get_opts(&at, options))
        .map_err(|e| failure(path, "InternalError", e))?
    {
        Ok(got) => {
            let same = metadata.iter().all(|(k, v)| {
                got.attributes
                    .get(&Attribute::Metadata(k.clone().into()))
                    .is_some_and(|have| have.as_ref() == v)
            });
            if same {
                return Ok(false);
            }
        }
        Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(failure(path, "S3Error", e)),
    }
    let options = PutOptions {
        attributes: attributes_of(metadata),
        ..PutOptions::default()
    };
    s3.block_on(store.put_opts(&at, PutPayload::new(), options))
        .map_err(|e| failure(path, "InternalError", e))?
        .map_err(|e| failure(path, "S3Error", e))?;
    Ok(true)
}

/// The S3 attributes of FSx's POSIX `metadata`, with the user agent FSx writes beside it.
fn attributes_of(metadata: Vec<(String, String)>) -> Attributes {
    let mut attributes = Attributes::new();
    for (k, v) in metadata {
        attributes.insert(Attribute::Metadata(k.into()), AttributeValue::from(v));
    }
    attributes.insert(
        Attribute::Metadata("user-agent".into()),
        AttributeValue::from("nacre"),
    );
    attributes
}

/// Refuses to overwrite the object at `key`, not `path`'s own, while another file is linked
/// to it (files swapped, or one renamed over another's old name, not exported yet): that
/// file may hold its data only there, until it is exported at its own new key.
fn refuse_if_linked(
    client: &Client,
    assoc: &Association,
    path: &str,
    key: &str,
) -> Result<(), ImportFailure> {
    let held = client
        .keys_linked(assoc.id, &[key.to_owned()])
        .map_err(|e| failure(path, "InternalError", e))?;
    if held.first() == Some(&true) {
        return Err(failure(
            path,
            "ResourceBusy",
            "another file is linked to the object at its key (moved, not exported at its new \
             key yet): export that one first",
        ));
    }
    Ok(())
}

/// Where the file at `path` exports to: its key, its HSM flags, and the key of the
/// association's object it is linked to now, if any.
struct ExportKey {
    key: String,
    flags: u32,
    linked: Option<String>,
}

impl ExportKey {
    fn of(client: &Client, assoc: &Association, path: &str) -> Result<Self, ImportFailure> {
        let key = assoc
            .key_of(path)
            .ok_or_else(|| failure(path, "InternalError", "not under its association"))?;
        let (flags, url) = client
            .hsm_state(path)
            .map_err(|e| failure(path, "InternalError", e))?;
        let bucket = format!("s3://{}/", assoc.bucket);
        let linked = url
            .as_deref()
            .and_then(|u| u.strip_prefix(bucket.as_str()))
            .filter(|old| old.starts_with(assoc.prefix.as_str()))
            .map(str::to_owned);
        Ok(ExportKey { key, flags, linked })
    }

    /// Whether the file is linked to the object at its own key.
    fn own(&self) -> bool {
        self.linked.as_deref() == Some(self.key.as_str())
    }

    /// The key of the object it was linked to before it moved, if another.
    fn moved_from(&self) -> Option<String> {
        self.linked.clone().filter(|old| *old != self.key)
    }

    /// Refuses a key S3 cannot take, and one not its own that another file is linked to.
    fn check(&self, client: &Client, assoc: &Association, path: &str) -> Result<(), ImportFailure> {
        if self.key.len() > MAX_KEY_BYTES {
            return Err(failure(
                path,
                "PathSizeTooLong",
                format!(
                    "its key is {} bytes, over S3's {MAX_KEY_BYTES}",
                    self.key.len()
                ),
            ));
        }
        if !self.own() {
            refuse_if_linked(client, assoc, path, &self.key)?;
        }
        Ok(())
    }
}

/// Puts the symbolic link at `path` as FSx does (its target as the body, `file-permissions`
/// `0120777`), unless it is archived at its own key already: a link cannot change without
/// being made anew (a new one is not archived).
fn export_symlink(
    client: &Client,
    s3: &S3Access,
    assoc: &Association,
    path: &str,
    attr: &Attr,
) -> Result<Exported, ImportFailure> {
    let at = ExportKey::of(client, assoc, path)?;
    if at.own() && at.flags & HS_ARCHIVED != 0 {
        return Ok(Exported::Unchanged);
    }
    at.check(client, assoc, path)?;
    let key = &at.key;
    let target = attr.symlink.clone().unwrap_or_default();
    let size = target.len() as u64;
    let options = PutOptions {
        attributes: attributes_of(metadata_of(
            TYPE_SYMLINK | SYMLINK_MODE,
            attr.uid,
            attr.gid,
            attr.atime_ns,
            attr.mtime_ns,
        )),
        ..PutOptions::default()
    };
    let store = s3.store(assoc).map_err(|e| failure(path, "S3Error", e))?;
    let put = s3
        .block_on(store.put_opts(
            &location(key),
            PutPayload::from(target.into_bytes()),
            options,
        ))
        .map_err(|e| failure(path, "InternalError", e))?
        .map_err(|e| failure(path, "S3Error", e))?;
    let etag = put
        .e_tag
        .ok_or_else(|| failure(path, "S3Error", "S3 gave the upload no ETag"))?;
    client
        .mark_archived(path, assoc.id, key, &etag, size)
        .map_err(|e| failure(path, "InternalError", e))?;
    Ok(Exported::Uploaded {
        bytes: size,
        moved_from: at.moved_from(),
    })
}

/// What exporting a file did.
enum Exported {
    /// It was archived, clean and not moved: left.
    Unchanged,
    /// It was uploaded (`bytes`); `moved_from`: the key of the object it was linked to
    /// before, when that was another of the association's.
    Uploaded {
        bytes: u64,
        moved_from: Option<String>,
    },
}

/// Uploads one file if it is new, dirty or moved.
fn export_file(
    client: &Client,
    s3: &S3Access,
    assoc: &Association,
    path: &str,
    force: bool,
) -> Result<Exported, ImportFailure> {
    let at = ExportKey::of(client, assoc, path)?;
    let moved_from = at.moved_from();
    let flags = at.flags;
    if !force && flags & HS_ARCHIVED != 0 && flags & HS_DIRTY == 0 && moved_from.is_none() {
        return Ok(Exported::Unchanged);
    }
    at.check(client, assoc, path)?;
    let key = at.key;
    let file = client
        .open(path, &OpenOptions::new().read(true))
        .map_err(|e| failure(path, "InternalError", e))?;
    let st = file.stat().map_err(|e| failure(path, "InternalError", e))?;
    let size = st.size_bytes;
    if size > MAX_OBJECT_BYTES {
        return Err(failure(
            path,
            "FileSizeTooLarge",
            format!("{size} bytes, over S3's object limit of {MAX_OBJECT_BYTES}"),
        ));
    }
    let a = &st.attr;
    let attributes = attributes_of(metadata_of(
        TYPE_FILE | a.mode,
        a.uid,
        a.gid,
        a.atime_ns,
        a.mtime_ns,
    ));
    let store = s3
        .upload_store(assoc)
        .map_err(|e| failure(path, "S3Error", e))?;
    let at = location(&key);
    let read = |offset: u64, len: u64| -> Result<Vec<u8>, ImportFailure> {
        let mut buf = vec![0u8; len as usize];
        let n = file
            .read_at(&mut buf, offset)
            .map_err(|e| failure(path, "InternalError", e))?;
        if n as u64 != len {
            return Err(failure(
                path,
                "ResourceBusy",
                format!(
                    "it shrank to {} bytes while being exported",
                    offset + n as u64
                ),
            ));
        }
        Ok(buf)
    };
    let s3_failed = |e: object_store::Error| {
        let code = if matches!(e, object_store::Error::PermissionDenied { .. }) {
            "S3AccessDenied"
        } else {
            "S3Error"
        };
        failure(path, code, e)
    };
    let etag = if size <= MULTIPART_THRESHOLD_BYTES {
        let payload = PutPayload::from(read(0, size)?);
        let options = PutOptions {
            attributes,
            ..PutOptions::default()
        };
        let put = s3
            .block_on(store.put_opts(&at, payload, options))
            .map_err(|e| failure(path, "InternalError", e))?;
        put.map_err(s3_failed)?.e_tag
    } else {
        let options = PutMultipartOptions {
            attributes,
            ..PutMultipartOptions::default()
        };
        let runtime = s3.handle().map_err(|e| failure(path, "InternalError", e))?;
        // S3 takes at most MAX_PARTS parts: a huge file goes in larger ones.
        let part_bytes = PART_BYTES.max(size.div_ceil(MAX_PARTS));
        let mut upload = runtime
            .block_on(store.put_multipart_opts(&at, options))
            .map_err(s3_failed)?;
        let uploaded = (|| {
            let mut window = VecDeque::with_capacity(UPLOAD_PARALLEL);
            let mut offset = 0;
            while offset < size || !window.is_empty() {
                if offset < size && window.len() < UPLOAD_PARALLEL {
                    let len = part_bytes.min(size - offset);
                    let part = upload.put_part(PutPayload::from(read(offset, len)?));
                    window.push_back(runtime.spawn(part));
                    offset += len;
                    continue;
                }
                if let Some(task) = window.pop_front() {
                    runtime
                        .block_on(task)
                        .map_err(|e| failure(path, "InternalError", e))?
                        .map_err(s3_failed)?;
                }
            }
            runtime.block_on(upload.complete()).map_err(s3_failed)
        })();
        match uploaded {
            Ok(put) => put.e_tag,
            Err(f) => {
                let _ = runtime.block_on(upload.abort());
                return Err(f);
            }
        }
    };
    let etag = etag.ok_or_else(|| failure(path, "S3Error", "S3 gave the upload no ETag"))?;
    client
        .mark_archived(path, assoc.id, &key, &etag, size)
        .map_err(|e| failure(path, "InternalError", e))?;
    Ok(Exported::Uploaded {
        bytes: size,
        moved_from,
    })
}
