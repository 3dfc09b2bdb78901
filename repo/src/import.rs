//! Import: every object of an association's prefix becomes a file or directory of the
//! namespace, with no bytes copied (its files are released: their data comes on first
//! read). Directories come from keys ending in `/` (with their metadata) and from the
//! prefixes of other keys. An object already imported at the same ETag is left alone; a
//! released one whose object changed takes the new version. Symbolic links come from
//! objects FSx wrote for them (`file-permissions` `0120777`, the target as the body). What
//! cannot be imported (a name the namespace does not allow, a file there that is not the
//! repository's) is reported per path, as FSx's completion report does, and the import
//! goes on.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::ControlFlow;

use futures::StreamExt;
use nacre::Client;
use nacre::meta::repo::{
    Association, EVENT_CHANGED, EVENT_DELETED, EVENT_NEW, HS_DIRTY, ImportOutcome, ImportedFile,
};
use nacre::meta::types::{
    FileType, MAX_NAME_BYTES, MAX_PATH_BYTES, MAX_SYMLINK_TARGET_BYTES, SYMLINK_MODE,
};
use object_store::path::Path;
use object_store::{Attribute, GetOptions, ObjectMeta, ObjectStore};

use crate::error::RepoError;
use crate::limits::{HEAD_PARALLEL, MAX_LISTED_OBJECTS, MAX_OBJECT_BYTES};
use crate::mover::{S3Access, marker_location};
use crate::posix::{
    KEY_GROUP, KEY_OWNER, KEY_PERMISSIONS, PosixAttrs, TYPE_DIR, TYPE_SYMLINK, attrs_of,
};

/// One path an import could not bring in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportFailure {
    /// The namespace path (or the object key, when it has no valid path).
    pub path: String,
    /// FSx's error code (`PathSizeTooLong`, `S3Error`, …) or Nacre's own.
    pub code: &'static str,
    /// What was wrong.
    pub message: String,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Directories created.
    pub dirs: u64,
    /// Files created.
    pub created: u64,
    /// Files brought to a new object version.
    pub updated: u64,
    /// Files that hold their object's version already.
    pub unchanged: u64,
    /// Files removed because their object went away (auto-import of deletions only).
    pub deleted: u64,
    /// Paths not imported, and why.
    pub failed: Vec<ImportFailure>,
}

/// An object of the prefix, with its user metadata.
struct Listed {
    meta: ObjectMeta,
    user: HashMap<String, String>,
    /// A directory marker (a key ending in `/`). object_store's listing drops a key's
    /// trailing `/`, so a marker shows as the object named like the page that lists it;
    /// its metadata is read by a HEAD of the marker's own key.
    marker: bool,
}

/// Lists the association's prefix with every object's metadata; an object whose metadata
/// cannot be read is a failure of its own.
fn list(
    s3: &S3Access,
    assoc: &Association,
) -> Result<Vec<Result<Listed, ImportFailure>>, RepoError> {
    let store = s3.store(assoc)?;
    let s3_error = |e: object_store::Error| RepoError::S3 {
        what: assoc.url(),
        reason: e.to_string(),
    };
    s3.block_on(async {
        // A walk by directory (a delimited listing each): object_store refuses a whole page
        // holding a key it cannot name (an empty or "." segment), so a walk confines such a
        // key to its directory's page, reported, and lists the rest.
        let root = (!assoc.prefix.is_empty()).then(|| Path::from(assoc.prefix.as_str()));
        let mut pending = vec![root.clone()];
        let mut metas = Vec::new();
        let mut unlisted = Vec::new();
        while let Some(dir) = pending.pop() {
            match store.list_with_delimiter(dir.as_ref()).await {
                Ok(page) => {
                    // The page of `d/` lists its marker `d/` as `d` (object_store drops
                    // the `/`): the object named like the page is its marker, whether or
                    // not an object `d` exists beside it.
                    metas.extend(page.objects.into_iter().map(|meta| {
                        let marker = dir.as_ref() == Some(&meta.location);
                        (meta, marker)
                    }));
                    pending.extend(page.common_prefixes.into_iter().map(Some));
                }
                Err(e) if dir == root => return Err(s3_error(e)),
                Err(e) => {
                    let code = match e {
                        object_store::Error::InvalidPath { .. } => "InvalidName",
                        _ => "S3Error",
                    };
                    let shown = dir.as_ref().map_or(String::new(), |d| format!("{d}/"));
                    unlisted.push(Err(ImportFailure {
                        path: shown,
                        code,
                        message: format!("this directory's listing was refused: {e}"),
                    }));
                }
            }
            if metas.len() > MAX_LISTED_OBJECTS {
                return Err(RepoError::S3 {
                    what: assoc.url(),
                    reason: format!("more than {MAX_LISTED_OBJECTS} objects in one import"),
                });
            }
        }
        let heads = futures::stream::iter(metas.into_iter().map(|(meta, marker)| {
            let store = std::sync::Arc::clone(&store);
            async move {
                let options = GetOptions {
                    head: true,
                    ..GetOptions::default()
                };
                let at = if marker {
                    marker_location(meta.location.as_ref())
                } else {
                    meta.location.clone()
                };
                let got = store.get_opts(&at, options).await;
                let got = match got {
                    Ok(got) => got,
                    // Listed, then gone: a directory with defaults, as before its HEAD.
                    Err(object_store::Error::NotFound { .. }) if marker => {
                        return Ok(Listed {
                            meta,
                            user: HashMap::new(),
                            marker,
                        });
                    }
                    Err(e) => {
                        return Err(ImportFailure {
                            path: meta.location.as_ref().to_owned(),
                            code: "S3Error",
                            message: e.to_string(),
                        });
                    }
                };
                let mut user = HashMap::new();
                for (attribute, value) in got.attributes.iter() {
                    if let Attribute::Metadata(key) = attribute {
                        user.insert(key.to_string(), value.to_string());
                    }
                }
                Ok(Listed { meta, user, marker })
            }
        }))
        .buffer_unordered(HEAD_PARALLEL)
        .collect::<Vec<_>>()
        .await;
        Ok(heads.into_iter().chain(unlisted).collect())
    })?
}

/// The namespace path of the key's part `rel` under the association, or why it has none.
fn namespace_path(assoc: &Association, rel: &str) -> Result<String, (&'static str, String)> {
    for name in rel.split('/') {
        if name.is_empty() || name == "." || name == ".." || name.contains('\0') {
            return Err((
                "InvalidName",
                format!("{rel:?} has a name the namespace does not allow ({name:?})"),
            ));
        }
        if name.len() > MAX_NAME_BYTES {
            return Err((
                "InvalidName",
                format!("a name of {} bytes is over {MAX_NAME_BYTES}", name.len()),
            ));
        }
    }
    let path = if assoc.path == "/" {
        format!("/{rel}")
    } else {
        format!("{}/{rel}", assoc.path)
    };
    if path.len() > MAX_PATH_BYTES {
        return Err((
            "PathSizeTooLong",
            format!("its path is {} bytes, over {MAX_PATH_BYTES}", path.len()),
        ));
    }
    Ok(path)
}

/// Imports the association's prefix into the namespace (see the module's documentation).
/// An error stops it only when the listing itself fails (the bucket unreachable, say);
/// everything per path goes into the report. `progress(done, total)` is called before each
/// directory and object; when it breaks, the import stops there (a canceled task) and the
/// report says what was done.
pub fn import(
    client: &Client,
    s3: &S3Access,
    assoc: &Association,
    progress: impl FnMut(u64, u64) -> ControlFlow<()>,
) -> Result<ImportReport, RepoError> {
    import_events(client, s3, assoc, EVENT_NEW | EVENT_CHANGED, progress)
}

/// As [`import`], reflecting only `events` (FSx's auto-import policy): new objects become
/// files, changed ones update released files, and with [`EVENT_DELETED`] a file whose
/// object is gone from the listing (and that was not written since) is removed. A file
/// under a directory whose listing was refused is never taken as deleted.
pub fn import_events(
    client: &Client,
    s3: &S3Access,
    assoc: &Association,
    events: u8,
    mut progress: impl FnMut(u64, u64) -> ControlFlow<()>,
) -> Result<ImportReport, RepoError> {
    let listed = list(s3, assoc)?;
    let mut keys = HashSet::new();
    let mut unlisted = Vec::new();
    for item in &listed {
        match item {
            Ok(item) => {
                keys.insert(item.meta.location.as_ref().to_owned());
            }
            Err(failure) => unlisted.push(failure.path.clone()),
        }
    }
    let mut report = ImportReport::default();
    // Directories (path → the metadata of its marker, when it has one) and files.
    let mut dirs: BTreeMap<String, Option<HashMap<String, String>>> = BTreeMap::new();
    let mut files: Vec<(String, Listed)> = Vec::new();
    for item in listed {
        let item = match item {
            Ok(item) => item,
            Err(failure) => {
                report.failed.push(failure);
                continue;
            }
        };
        let key = item.meta.location.as_ref().to_owned();
        let Some(rel) = key.strip_prefix(assoc.prefix.as_str()) else {
            continue;
        };
        let is_dir = rel.ends_with('/') || item.marker;
        let rel = rel.trim_end_matches('/');
        if rel.is_empty() {
            continue;
        }
        let path = match namespace_path(assoc, rel) {
            Ok(path) => path,
            Err((code, message)) => {
                report.failed.push(ImportFailure {
                    path: key,
                    code,
                    message,
                });
                continue;
            }
        };
        // Every parent is a directory too.
        let mut parent = path.as_str();
        while let Some((p, _)) = parent.rsplit_once('/') {
            if p.len() <= assoc.path.len() {
                break;
            }
            dirs.entry(p.to_owned()).or_insert(None);
            parent = p;
        }
        if is_dir {
            dirs.insert(path, Some(item.user));
        } else {
            files.push((path, item));
        }
    }
    let total = (dirs.len() + files.len()) as u64;
    let mut done = 0u64;
    // Parents before children: a path sorts after its prefixes.
    // A directory that could not be made (a file or a symbolic link of the namespace where
    // the repository has a directory) holds nothing of the import: a mkdir under a link
    // would make its directories where the link leads.
    let mut refused: Vec<String> = Vec::new();
    let under_refused = |refused: &[String], path: &str| {
        refused
            .iter()
            .find(|d| {
                path.strip_prefix(d.as_str())
                    .is_some_and(|r| r.starts_with('/'))
            })
            .map(|d| failure(path, "ResourceBusy", format!("{d} could not be imported")))
    };
    for (path, user) in &dirs {
        done += 1;
        if progress(done, total).is_break() {
            return Ok(report);
        }
        if let Some(f) = under_refused(&refused, path) {
            report.failed.push(f);
            refused.push(path.clone());
            continue;
        }
        if let Err(failure) = import_dir(client, path, user.as_ref(), &mut report) {
            report.failed.push(failure);
            refused.push(path.clone());
        }
    }
    for (path, item) in &files {
        done += 1;
        if progress(done, total).is_break() {
            return Ok(report);
        }
        if let Some(f) = under_refused(&refused, path) {
            report.failed.push(f);
            continue;
        }
        if events & (EVENT_NEW | EVENT_CHANGED) != EVENT_NEW | EVENT_CHANGED {
            let exists = client.attr(path).is_ok();
            let wanted = if exists { EVENT_CHANGED } else { EVENT_NEW };
            if events & wanted == 0 {
                continue;
            }
        }
        if let Err(failure) = import_file(client, s3, assoc, path, item, &mut report) {
            report.failed.push(failure);
        }
    }
    if events & EVENT_DELETED != 0 {
        remove_deleted(client, assoc, &keys, &unlisted, &mut report);
    }
    Ok(report)
}

/// Removes the files of `assoc` whose object is not among `keys` (and not under a
/// directory of `unlisted`), unless written since their import or export.
fn remove_deleted(
    client: &Client,
    assoc: &Association,
    keys: &HashSet<String>,
    unlisted: &[String],
    report: &mut ImportReport,
) {
    let object_prefix = format!("s3://{}/", assoc.bucket);
    let mut pending = vec![assoc.path.clone()];
    while let Some(dir) = pending.pop() {
        let entries = match client.readdir(&dir) {
            Ok(entries) => entries,
            Err(e) => {
                report.failed.push(failure(&dir, "InternalError", e));
                continue;
            }
        };
        let base = dir.trim_end_matches('/');
        for e in entries {
            let path = format!("{base}/{}", e.name);
            if e.file_type == FileType::Dir {
                pending.push(path);
                continue;
            }
            let Ok((flags, Some(url))) = client.hsm_state(&path) else {
                continue;
            };
            let Some(key) = url.strip_prefix(&object_prefix) else {
                continue;
            };
            let gone = !keys.contains(key) && !unlisted.iter().any(|p| key.starts_with(p.as_str()));
            if gone && flags & HS_DIRTY == 0 {
                match client.unlink(&path) {
                    Ok(()) => report.deleted += 1,
                    Err(e) => report.failed.push(failure(&path, "InternalError", e)),
                }
            }
        }
    }
}

/// Imports the symbolic link FSx stores as object `item` (`file-permissions` `0120777`):
/// its body, read at the listed version, is what the link names.
fn import_symlink(
    client: &Client,
    s3: &S3Access,
    assoc: &Association,
    path: &str,
    item: &Listed,
    attrs: &PosixAttrs,
    report: &mut ImportReport,
) -> Result<(), ImportFailure> {
    if item.meta.size == 0 || item.meta.size > MAX_SYMLINK_TARGET_BYTES as u64 {
        return Err(failure(
            path,
            "InvalidSymlink",
            format!(
                "a symlink's object of {} bytes: its body, the link's target, is 1 to \
                 {MAX_SYMLINK_TARGET_BYTES} bytes",
                item.meta.size
            ),
        ));
    }
    let etag = etag_of(item, path)?;
    let store = s3.store(assoc).map_err(|e| failure(path, "S3Error", e))?;
    // The version listed: one changed since is read by the next import.
    let options = GetOptions {
        if_match: Some(etag.clone()),
        ..GetOptions::default()
    };
    let body = s3
        .block_on(async {
            let got = store.get_opts(&item.meta.location, options).await?;
            got.bytes().await
        })
        .map_err(|e| failure(path, "InternalError", e))?
        .map_err(|e| failure(path, "S3Error", e))?;
    let target = std::str::from_utf8(&body)
        .map_err(|_| failure(path, "InvalidSymlink", "its target is not UTF-8"))?;
    let imported = imported_at(assoc, path, item, attrs, SYMLINK_MODE, etag);
    let (_, outcome) = client.import_symlink(&imported, target).map_err(|e| {
        let code = match e.errno() {
            libc::EEXIST => "ResourceBusy",
            libc::EINVAL | libc::ENAMETOOLONG => "InvalidSymlink",
            _ => "InternalError",
        };
        failure(path, code, e)
    })?;
    match outcome {
        ImportOutcome::Created => report.created += 1,
        ImportOutcome::Updated => report.updated += 1,
        ImportOutcome::Unchanged => report.unchanged += 1,
    }
    Ok(())
}

/// What the service is asked to make at `path` for object `item` of `assoc`, with the
/// object's attributes and permission bits `mode`, at version `etag`.
fn imported_at(
    assoc: &Association,
    path: &str,
    item: &Listed,
    attrs: &PosixAttrs,
    mode: u32,
    etag: String,
) -> ImportedFile {
    ImportedFile {
        path: path.to_owned(),
        mode,
        uid: attrs.uid,
        gid: attrs.gid,
        atime_ns: attrs.atime_ns,
        mtime_ns: attrs.mtime_ns,
        repo: assoc.id,
        key: item.meta.location.as_ref().to_owned(),
        etag,
        size: item.meta.size,
    }
}

/// The ETag the listing gave `item` (a version is asked for by it).
fn etag_of(item: &Listed, path: &str) -> Result<String, ImportFailure> {
    item.meta
        .e_tag
        .clone()
        .ok_or_else(|| failure(path, "S3Error", "the listing gave the object no ETag"))
}

/// A path's failure with FSx's error `code` and what was wrong.
pub(crate) fn failure(path: &str, code: &'static str, e: impl std::fmt::Display) -> ImportFailure {
    ImportFailure {
        path: path.to_owned(),
        code,
        message: e.to_string(),
    }
}

fn import_dir(
    client: &Client,
    path: &str,
    user: Option<&HashMap<String, String>>,
    report: &mut ImportReport,
) -> Result<(), ImportFailure> {
    // Only a marker's FSx metadata sets anything, and only on a directory made now: an
    // existing one keeps what was set here since (a chmod not exported yet), and a marker
    // without metadata imports with the defaults, as FSx does.
    let attrs = user
        .filter(|u| {
            [KEY_PERMISSIONS, KEY_OWNER, KEY_GROUP]
                .iter()
                .any(|k| u.contains_key(*k))
        })
        .map(|u| attrs_of(u, 0));
    let mode = attrs.map_or(0o755, |a| a.mode);
    match client.mkdir(path, mode) {
        Ok(_) => report.dirs += 1,
        Err(e) if e.errno() == libc::EEXIST => match client.attr(path) {
            Ok(attr) if attr.is_dir() => return Ok(()),
            Ok(attr) => {
                let what = if attr.is_symlink() {
                    "a symbolic link"
                } else {
                    "a file"
                };
                return Err(failure(
                    path,
                    "ResourceBusy",
                    format!("{what} of the namespace is where the repository has a directory"),
                ));
            }
            Err(e) => return Err(failure(path, "InternalError", e)),
        },
        Err(e) => return Err(failure(path, "InternalError", e)),
    }
    if let Some(a) = attrs {
        client
            .chmod(path, a.mode)
            .and_then(|()| client.chown(path, Some(a.uid), Some(a.gid)))
            .map_err(|e| failure(path, "InternalError", e))?;
    }
    Ok(())
}

fn import_file(
    client: &Client,
    s3: &S3Access,
    assoc: &Association,
    path: &str,
    item: &Listed,
    report: &mut ImportReport,
) -> Result<(), ImportFailure> {
    let modified = item.meta.last_modified.timestamp_nanos_opt().unwrap_or(0);
    let attrs = attrs_of(&item.user, modified);
    match attrs.file_type {
        Some(TYPE_SYMLINK) => {
            return import_symlink(client, s3, assoc, path, item, &attrs, report);
        }
        Some(TYPE_DIR) => {
            return import_dir(client, path, Some(&item.user), report);
        }
        _ => {}
    }
    if item.meta.size > MAX_OBJECT_BYTES {
        return Err(failure(
            path,
            "FileSizeTooLarge",
            format!(
                "the listing says {} bytes, over S3's object limit of {MAX_OBJECT_BYTES}",
                item.meta.size
            ),
        ));
    }
    let etag = etag_of(item, path)?;
    let imported = imported_at(assoc, path, item, &attrs, attrs.mode, etag);
    let (attr, outcome) = client.import_file(&imported).map_err(|e| {
        let code = if e.errno() == libc::EEXIST {
            "ResourceBusy"
        } else {
            "InternalError"
        };
        failure(path, code, e)
    })?;
    let file = client
        .open_for_mover(path, attr)
        .map_err(|e| failure(path, "InternalError", e))?;
    match outcome {
        ImportOutcome::Unchanged => {
            report.unchanged += 1;
            // Its size was set by an import whose truncate may have failed (a target down):
            // set again when the objects disagree.
            let size = file.size().map_err(|e| failure(path, "InternalError", e))?;
            if size == item.meta.size {
                return Ok(());
            }
        }
        ImportOutcome::Created => report.created += 1,
        ImportOutcome::Updated => report.updated += 1,
    }
    // Its size, on its objects (holes: the data comes on first read).
    file.truncate(item.meta.size)
        .map_err(|e| failure(path, "InternalError", e))
}
