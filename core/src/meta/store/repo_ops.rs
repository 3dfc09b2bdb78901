//! The store's side of data repositories: associations, imported files and their hydration
//! maps, in the `repos` and `repo_files` tables (see `crate::meta::repo`).

use std::sync::atomic::Ordering;

use redb::{ReadableDatabase, ReadableTable};

use super::{FileType, MetaStore, NsPath, REPO_FILES, REPOS, ROOT_INO, corrupt, now_ns};
use crate::codec::Record;
use crate::limits::{
    HYDRATE_READAHEAD_CHUNKS, MAX_REPO_ASSOCIATIONS, MAX_REPO_CHUNK_BYTES, MAX_REPO_FILE_BYTES,
    MIN_REPO_CHUNK_BYTES,
};
use crate::meta::repo::{
    AssocState, Association, HS_DIRTY, HS_LOST, HS_NORELEASE, HydrateJob, ImportOutcome,
    ImportedFile, RepoFile, under,
};
use crate::meta::types::{
    Attr, Cred, LayoutSpec, MODE_PERMISSION_BITS, MetaError, check_symlink_target,
};

pub(super) fn root_only(cred: &Cred, path: &str, what: &str) -> Result<(), MetaError> {
    if cred.is_root() {
        return Ok(());
    }
    Err(MetaError::Perm {
        path: path.to_owned(),
        reason: format!("only root may {what}"),
    })
}

/// Refuses a file of several names (hard links) a repository record: its objects are one
/// per path, its records one per inode.
fn refuse_hard_linked(path: &str, attr: &Attr) -> Result<(), MetaError> {
    if attr.nlink > 1 && !attr.is_dir() {
        return Err(MetaError::CrossDevice {
            path: path.to_owned(),
            reason: format!(
                "it has {} names (hard links): a data repository keeps one object per path",
                attr.nlink
            ),
        });
    }
    Ok(())
}

impl<I, D> super::Ns<I, D>
where
    I: ReadableTable<u64, &'static [u8]>,
    D: ReadableTable<&'static [u8], &'static [u8]>,
{
    /// The parent and entry an import of `path` writes, refusing a path under no directory
    /// of `assoc` or one that reaches its parent through a symbolic link (a link made in
    /// the association, or imported, must not lead an import to write elsewhere).
    fn import_entry(
        &self,
        cred: &Cred,
        path: &NsPath<'_>,
        assoc: &Association,
    ) -> Result<(Attr, Option<Attr>), MetaError> {
        let full = path.full();
        if under(&assoc.path, &full).is_none_or(str::is_empty) {
            return Err(MetaError::Invalid {
                field: "path",
                value: full,
                allowed: format!("a path under {}, association {}", assoc.path, assoc.id),
            });
        }
        let resolved = self.resolve(cred, path, super::Last::Entry)?;
        if resolved.path != full {
            return Err(MetaError::Exists {
                path: format!(
                    "{full} (a symbolic link on the way leads to {}: not imported through it)",
                    resolved.path
                ),
            });
        }
        let (parent, _) = resolved.at.expect("a non-root path has a parent");
        Ok((parent, resolved.entry))
    }
}

impl MetaStore {
    /// Links the directory `assoc.path` to its repository (root only). The directory must
    /// exist; associations may not overlap (neither path under the other) and are at most
    /// [`MAX_REPO_ASSOCIATIONS`]. The id is given here; the state starts as `creating`.
    pub fn repo_link(&self, cred: &Cred, assoc: &Association) -> Result<Association, MetaError> {
        root_only(cred, &assoc.path, "link a data repository")?;
        let path = NsPath::parse("path", &assoc.path)?;
        if !(MIN_REPO_CHUNK_BYTES..=MAX_REPO_CHUNK_BYTES).contains(&assoc.chunk_bytes) {
            return Err(MetaError::Invalid {
                field: "chunk size",
                value: assoc.chunk_bytes.to_string(),
                allowed: format!("{MIN_REPO_CHUNK_BYTES}..={MAX_REPO_CHUNK_BYTES} bytes"),
            });
        }
        self.write(|tx| {
            // The association is kept at the directory's one path: links on the way are
            // resolved (a link at the end is not a directory).
            let resolved = tx.ns.resolve(cred, &path, super::Last::Entry)?;
            let full = resolved.path;
            let dir = resolved
                .entry
                .ok_or_else(|| MetaError::NotFound { path: full.clone() })?;
            if !dir.is_dir() {
                return Err(MetaError::NotDir { path: full });
            }
            let existing = tx.associations()?;
            if let Some(other) = existing
                .iter()
                .find(|a| under(&a.path, &full).is_some() || under(&full, &a.path).is_some())
            {
                return Err(MetaError::Exists {
                    path: format!(
                        "{full} (overlaps association {} of {} with {})",
                        other.id,
                        other.path,
                        other.url()
                    ),
                });
            }
            if existing.len() >= MAX_REPO_ASSOCIATIONS {
                return Err(MetaError::Invalid {
                    field: "associations",
                    value: existing.len().to_string(),
                    allowed: format!("at most {MAX_REPO_ASSOCIATIONS} per file system"),
                });
            }
            let id = existing.iter().map(|a| a.id).max().unwrap_or(0) + 1;
            let linked = Association {
                id,
                path: full,
                state: AssocState::Creating,
                reason: String::new(),
                ..assoc.clone()
            };
            tx.repos.insert(id, linked.to_bytes().as_slice())?;
            Ok(linked)
        })
        .inspect(|_| self.has_repos.store(true, Ordering::Release))
    }

    /// Every association, in id order.
    pub fn repo_list(&self) -> Result<Vec<Association>, MetaError> {
        self.with_db(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(REPOS)?;
            let mut all = Vec::new();
            for item in table.range::<u32>(..)? {
                let (_, value) = item?;
                all.push(Association::from_bytes(value.value())?);
            }
            Ok(all)
        })
    }

    /// The association `path` lies at or under, if any.
    pub fn association_over(&self, path: &str) -> Result<Option<Association>, MetaError> {
        if !self.has_repos.load(Ordering::Acquire) {
            return Ok(None);
        }
        let path = NsPath::parse("path", path)?.full();
        let path = path.as_str();
        Ok(self
            .repo_list()?
            .into_iter()
            .find(|a| under(&a.path, path).is_some()))
    }

    /// Whether any association was linked (it may have been unlinked since): opens for
    /// writing look for theirs only then.
    pub fn has_associations(&self) -> bool {
        self.has_repos.load(Ordering::Acquire)
    }

    /// Association `id`, which `path` (named in the error) is to be under.
    fn repo_by_id(&self, id: u32, path: &str) -> Result<Association, MetaError> {
        self.repo_list()?
            .into_iter()
            .find(|a| a.id == id)
            .ok_or_else(|| MetaError::NotFound {
                path: format!("{path} (association {id} is not linked)"),
            })
    }

    /// The association linked at exactly `path`.
    fn repo_at(&self, path: &str) -> Result<Association, MetaError> {
        let full = NsPath::parse("path", path)?.full();
        self.repo_list()?
            .into_iter()
            .find(|a| a.path == full)
            .ok_or_else(|| MetaError::NotFound {
                path: format!("{full} (no data repository is linked there)"),
            })
    }

    /// Unlinks the association at `path` (root only). Its files stay; those still released
    /// can no longer be read (EIO naming why) until it is linked again.
    pub fn repo_unlink(&self, cred: &Cred, path: &str) -> Result<Association, MetaError> {
        root_only(cred, path, "unlink a data repository")?;
        let assoc = self.repo_at(path)?;
        self.write(|tx| {
            tx.repos.remove(assoc.id)?;
            Ok(assoc)
        })
    }

    /// Sets the state of the association at `path` (root only), with its reason.
    pub fn repo_set_state(
        &self,
        cred: &Cred,
        path: &str,
        state: AssocState,
        reason: &str,
    ) -> Result<Association, MetaError> {
        root_only(cred, path, "change a data repository's state")?;
        let assoc = self.repo_at(path)?;
        self.write(|tx| {
            let changed = Association {
                state,
                reason: reason.to_owned(),
                ..assoc
            };
            tx.repos.insert(changed.id, changed.to_bytes().as_slice())?;
            Ok(changed)
        })
    }

    /// Creates (or brings up to date) the released file of an imported object (root only):
    /// its parent must exist; it takes the object's attributes and the parent's default
    /// layout; its size is set on its objects by the importer after. A file there already
    /// that holds the same object version is left as it is (and is no longer lost, if it
    /// was); one not written since its import or export takes the new version (released
    /// again); anything else there → [`MetaError::Exists`].
    pub fn import_file(
        &self,
        cred: &Cred,
        file: &ImportedFile,
    ) -> Result<(Attr, ImportOutcome), MetaError> {
        root_only(cred, &file.path, "import from a data repository")?;
        if file.size > MAX_REPO_FILE_BYTES {
            return Err(MetaError::Invalid {
                field: "size",
                value: file.size.to_string(),
                allowed: format!("at most {MAX_REPO_FILE_BYTES} bytes (S3's largest object)"),
            });
        }
        let path = NsPath::parse("path", &file.path)?;
        if path.is_root() {
            return Err(MetaError::IsDir { path: path.full() });
        }
        let assoc = self.repo_by_id(file.repo, &file.path)?;
        let record = RepoFile::imported(
            assoc.id,
            file.key.clone(),
            file.etag.clone(),
            file.size,
            assoc.chunk_bytes,
        );
        // The layout is resolved outside the write, as create does.
        let (parent, existing) = self.read(|ns| ns.import_entry(cred, &path, &assoc))?;
        if let Some(existing) = existing {
            return self.reimport(cred, &path, existing, file, record);
        }
        let spec = match &parent.default_layout {
            Some(spec) => spec.clone(),
            None => self
                .read(|ns| ns.attr(ROOT_INO))?
                .default_layout
                .unwrap_or_else(LayoutSpec::filesystem_default),
        };
        let layout = self.resolve_layout(&path.full(), &spec)?;
        // Before the record can be seen: an open after it must look.
        self.has_repo_files.store(true, Ordering::Release);
        self.write(|tx| {
            let (parent, existing) = tx.ns.import_entry(cred, &path, &assoc)?;
            if existing.is_some() {
                return Err(MetaError::Exists { path: path.full() });
            }
            let now = now_ns();
            let attr = Attr {
                ino: tx.alloc_ino()?,
                file_type: FileType::File,
                mode: file.mode & MODE_PERMISSION_BITS,
                uid: file.uid,
                gid: file.gid,
                nlink: 1,
                atime_ns: file.atime_ns,
                mtime_ns: file.mtime_ns,
                ctime_ns: now,
                layout: Some(layout),
                default_layout: None,
                symlink: None,
            };
            tx.ns.put_attr(&attr)?;
            tx.ns.link(parent.ino, path.last(), &attr)?;
            tx.ns.touch_dir(parent.ino, now, 0)?;
            tx.counters.files += 1;
            tx.repo_files
                .insert(attr.ino, record.to_bytes().as_slice())?;
            Ok((attr, ImportOutcome::Created))
        })
    }

    /// Creates (or brings up to date) the symbolic link of an imported object (root only),
    /// naming `target` (the object's body), with the object's owner, group and times; its
    /// parent must exist. A link imported before takes the new target and version; anything
    /// else there (a file, a directory, a link made here) → [`MetaError::Exists`].
    pub fn import_symlink(
        &self,
        cred: &Cred,
        file: &ImportedFile,
        target: &str,
    ) -> Result<(Attr, ImportOutcome), MetaError> {
        root_only(cred, &file.path, "import from a data repository")?;
        check_symlink_target(target)?;
        let path = NsPath::parse("path", &file.path)?;
        if path.is_root() {
            return Err(MetaError::Exists { path: path.full() });
        }
        let assoc = self.repo_by_id(file.repo, &file.path)?;
        // A link is whole once made: archived, never released.
        let mut record = RepoFile::imported(
            assoc.id,
            file.key.clone(),
            file.etag.clone(),
            target.len() as u64,
            assoc.chunk_bytes,
        );
        record.set_whole();
        self.has_repo_files.store(true, Ordering::Release);
        self.write(|tx| {
            let (parent, existing) = tx.ns.import_entry(cred, &path, &assoc)?;
            let now = now_ns();
            if let Some(existing) = existing {
                let imported = existing.is_symlink() && tx.repo_files.get(existing.ino)?.is_some();
                if !imported {
                    return Err(MetaError::Exists {
                        path: format!(
                            "{} (not a symbolic link imported from the repository)",
                            path.full()
                        ),
                    });
                }
                let outcome = if existing.symlink.as_deref() == Some(target) {
                    ImportOutcome::Unchanged
                } else {
                    ImportOutcome::Updated
                };
                let attr = if outcome == ImportOutcome::Updated {
                    tx.ns.update(existing.ino, |a| {
                        a.symlink = Some(target.to_owned());
                        a.uid = file.uid;
                        a.gid = file.gid;
                        a.atime_ns = file.atime_ns;
                        a.mtime_ns = file.mtime_ns;
                        a.ctime_ns = now;
                    })?
                } else {
                    existing
                };
                tx.repo_files
                    .insert(attr.ino, record.to_bytes().as_slice())?;
                return Ok((attr, outcome));
            }
            let link =
                tx.new_symlink(target, file.uid, file.gid, (file.atime_ns, file.mtime_ns))?;
            tx.ns.link(parent.ino, path.last(), &link)?;
            tx.ns.touch_dir(parent.ino, now, 0)?;
            tx.repo_files
                .insert(link.ino, record.to_bytes().as_slice())?;
            Ok((link, ImportOutcome::Created))
        })
    }

    fn reimport(
        &self,
        cred: &Cred,
        path: &NsPath<'_>,
        existing: Attr,
        file: &ImportedFile,
        record: RepoFile,
    ) -> Result<(Attr, ImportOutcome), MetaError> {
        if existing.is_dir() {
            return Err(MetaError::IsDir { path: path.full() });
        }
        refuse_hard_linked(&path.full(), &existing)?;
        if existing.is_symlink() {
            return Err(MetaError::Exists {
                path: format!(
                    "{} (a symbolic link, where the repository has a file)",
                    path.full()
                ),
            });
        }
        self.write(|tx| {
            let current = match tx.repo_files.get(existing.ino)? {
                Some(guard) => Some(RepoFile::from_bytes(guard.value())?),
                None => None,
            };
            let Some(current) = current else {
                return Err(MetaError::Exists {
                    path: format!("{} (a file not imported from the repository)", path.full()),
                });
            };
            if current.etag == record.etag && current.key == record.key {
                if current.flags & HS_LOST != 0 {
                    // The same version answers again (a bucket fixed): readable again.
                    let found = RepoFile {
                        flags: current.flags & !HS_LOST,
                        ..current
                    };
                    tx.repo_files
                        .insert(existing.ino, found.to_bytes().as_slice())?;
                }
                return Ok((existing.clone(), ImportOutcome::Unchanged));
            }
            if current.flags & HS_DIRTY != 0 {
                return Err(MetaError::Exists {
                    path: format!(
                        "{} (its object changed in the repository, and the file was written \
                         since its import: it is kept)",
                        path.full()
                    ),
                });
            }
            let now = now_ns();
            let attr = tx.ns.update(existing.ino, |a| {
                a.mode = file.mode & MODE_PERMISSION_BITS;
                a.uid = file.uid;
                a.gid = file.gid;
                a.atime_ns = file.atime_ns;
                a.mtime_ns = file.mtime_ns;
                a.ctime_ns = now;
            })?;
            tx.repo_files
                .insert(existing.ino, record.to_bytes().as_slice())?;
            let _ = cred;
            Ok((attr, ImportOutcome::Updated))
        })
    }

    /// The repository state of file `ino`, if it was imported (or exported). A store that
    /// never held one answers without a transaction: every open asks.
    pub fn repo_file(&self, ino: u64) -> Result<Option<RepoFile>, MetaError> {
        if !self.has_repo_files.load(Ordering::Acquire) {
            return Ok(None);
        }
        self.with_db(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(REPO_FILES)?;
            let record = table.get(ino)?;
            record
                .map(|guard| RepoFile::from_bytes(guard.value()).map_err(MetaError::from))
                .transpose()
        })
    }

    /// The HSM flags of `path` (0 for a file never imported) and, for an imported one, its
    /// repository's URL and object key.
    pub fn hsm_state(
        &self,
        cred: &Cred,
        path: &str,
    ) -> Result<(u32, Option<(String, String)>), MetaError> {
        let attr = self.lookup(cred, path)?;
        let Some(file) = self.repo_file(attr.ino)? else {
            return Ok((0, None));
        };
        let url = self
            .repo_list()?
            .into_iter()
            .find(|a| a.id == file.repo)
            .map(|a| format!("s3://{}/{}", a.bucket, file.key))
            .unwrap_or_else(|| format!("(association {} unlinked)", file.repo));
        Ok((file.flags, Some((url, file.key))))
    }

    /// What reading `len` bytes at `offset` of the file `attr` (at `path`) needs fetched
    /// first: `None` when nothing (not imported, or those chunks are present). A file whose
    /// association is gone, or whose object was found changed, cannot be hydrated
    /// ([`MetaError::Repository`]).
    pub fn hydrate_plan(
        &self,
        path: &str,
        attr: &Attr,
        offset: u64,
        len: u64,
    ) -> Result<Option<HydrateJob>, MetaError> {
        let Some(file) = self.repo_file(attr.ino)? else {
            return Ok(None);
        };
        let mut chunks = file.missing(offset, len);
        let Some(&first) = chunks.first() else {
            return Ok(None);
        };
        // A reader going forward: read ahead.
        if first == 0 || file.is_present(first - 1) {
            let last = chunks.last().copied().unwrap_or(first);
            let ahead = (last + 1..file.chunks())
                .filter(|&c| !file.is_present(c))
                .take(HYDRATE_READAHEAD_CHUNKS as usize);
            chunks.extend(ahead);
        }
        if file.flags & HS_LOST != 0 {
            return Err(MetaError::Repository {
                path: path.to_owned(),
                reason: format!(
                    "its object {} changed or went away in the repository since it was \
                     imported; import it again",
                    file.key
                ),
            });
        }
        let assoc = self.association_of_file(path, &file)?;
        Ok(Some(HydrateJob {
            path: path.to_owned(),
            attr: attr.clone(),
            assoc,
            file,
            chunks,
        }))
    }

    /// Which of `keys` of association `repo` an imported or exported file's record still
    /// holds (root only), in order: one pass over the records, whatever the count.
    pub fn keys_linked(
        &self,
        cred: &Cred,
        repo: u32,
        keys: &[String],
    ) -> Result<Vec<bool>, MetaError> {
        root_only(cred, "/", "ask which objects are linked")?;
        let mut held = vec![false; keys.len()];
        if keys.is_empty() || !self.has_repo_files.load(Ordering::Acquire) {
            return Ok(held);
        }
        let wanted: std::collections::HashMap<&str, Vec<usize>> =
            keys.iter()
                .enumerate()
                .fold(Default::default(), |mut m, (i, k)| {
                    m.entry(k.as_str()).or_insert_with(Vec::new).push(i);
                    m
                });
        self.with_db(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(REPO_FILES)?;
            for item in table.range::<u64>(..)? {
                let (_, value) = item?;
                let record = RepoFile::from_bytes(value.value())?;
                if record.repo == repo
                    && let Some(at) = wanted.get(record.key.as_str())
                {
                    for &i in at {
                        held[i] = true;
                    }
                }
            }
            Ok(())
        })?;
        Ok(held)
    }

    /// The association the imported or exported file at `path` belongs to; one unlinked
    /// since is [`MetaError::Repository`].
    pub(super) fn association_of_file(
        &self,
        path: &str,
        file: &RepoFile,
    ) -> Result<Association, MetaError> {
        self.repo_list()?
            .into_iter()
            .find(|a| a.id == file.repo)
            .ok_or_else(|| MetaError::Repository {
                path: path.to_owned(),
                reason: format!(
                    "its data repository (association {}) is no longer linked",
                    file.repo
                ),
            })
    }

    /// Marks `chunks` of file `ino` present, if it still holds object version `etag`;
    /// returns its flags after.
    pub fn mark_present(&self, ino: u64, etag: &str, chunks: &[u64]) -> Result<u32, MetaError> {
        self.write(|tx| {
            let record = match tx.repo_files.get(ino)? {
                Some(guard) => RepoFile::from_bytes(guard.value())?,
                None => return Ok(0),
            };
            let mut record = record;
            if record.etag != etag {
                return Ok(record.flags);
            }
            if let Some(&c) = chunks.iter().find(|&&c| c >= record.chunks()) {
                return Err(corrupt(format!("chunk {c} of inode {ino} is past its end")));
            }
            record.set_present_all(chunks);
            tx.repo_files.insert(ino, record.to_bytes().as_slice())?;
            Ok(record.flags)
        })
    }

    /// Records that the file at `path` was exported as object `key` at `etag` of association
    /// `repo` (root only): it is archived, present and no longer dirty, and later imports
    /// of that version leave it alone. Its flags after.
    pub fn mark_archived(
        &self,
        cred: &Cred,
        path: &str,
        repo: u32,
        key: &str,
        etag: &str,
        size: u64,
    ) -> Result<u32, MetaError> {
        root_only(cred, path, "archive to a data repository")?;
        let attr = self.lookup(cred, path)?;
        if attr.is_dir() {
            return Err(MetaError::IsDir {
                path: path.to_owned(),
            });
        }
        refuse_hard_linked(path, &attr)?;
        let assoc = self.repo_by_id(repo, path)?;
        // The object is the one at the file's own key: a path through a link names a file
        // whose key is another.
        let own = assoc.key_of(&self.canonical(cred, path, false)?);
        if own.as_deref() != Some(key) {
            return Err(MetaError::Invalid {
                field: "key",
                value: key.to_owned(),
                allowed: format!("{path}'s own key in association {repo} ({own:?})"),
            });
        }
        let mut record = RepoFile::imported(
            repo,
            key.to_owned(),
            etag.to_owned(),
            size,
            assoc.chunk_bytes,
        );
        record.set_whole();
        // Before the record can be seen: an open after it must look.
        self.has_repo_files.store(true, Ordering::Release);
        self.write(|tx| {
            // An administrator's norelease stays across exports.
            let kept = match tx.repo_files.get(attr.ino)? {
                Some(guard) => RepoFile::from_bytes(guard.value())?.flags & HS_NORELEASE,
                None => 0,
            };
            let record = RepoFile {
                flags: record.flags | kept,
                ..record.clone()
            };
            tx.repo_files
                .insert(attr.ino, record.to_bytes().as_slice())?;
            Ok(record.flags)
        })
    }

    /// Marks file `ino` lost if it still holds object version `etag` (a fetch of that
    /// version found it changed or gone); its flags after.
    pub fn mark_lost(&self, ino: u64, etag: &str) -> Result<u32, MetaError> {
        Ok(self
            .change_flags(ino, HS_LOST, 0, |r| r.etag == etag)?
            .unwrap_or(0))
    }

    /// Adds `flags` to file `ino`'s (an imported file's only); its flags after.
    pub fn add_hsm_flags(&self, ino: u64, flags: u32) -> Result<u32, MetaError> {
        Ok(self.change_flags(ino, flags, 0, |_| true)?.unwrap_or(0))
    }

    /// Adds `set` to and takes `clear` from file `ino`'s flags when `when` holds for its
    /// record (written only if that changes them); its flags after, `None` for a file not
    /// imported or exported.
    pub(super) fn change_flags(
        &self,
        ino: u64,
        set: u32,
        clear: u32,
        when: impl FnOnce(&RepoFile) -> bool,
    ) -> Result<Option<u32>, MetaError> {
        self.write(|tx| {
            let record = match tx.repo_files.get(ino)? {
                Some(guard) => RepoFile::from_bytes(guard.value())?,
                None => return Ok(None),
            };
            let flags = (record.flags | set) & !clear;
            if !when(&record) || flags == record.flags {
                return Ok(Some(record.flags));
            }
            let record = RepoFile { flags, ..record };
            tx.repo_files.insert(ino, record.to_bytes().as_slice())?;
            Ok(Some(flags))
        })
    }
}
