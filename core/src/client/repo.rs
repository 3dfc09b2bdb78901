//! The client's calls for data repositories (`crate::meta::repo`): associations, imports,
//! HSM state and restores, and the repository mover's own file handles.

use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use nacre_transport::wire::{Extent, Opcode};

use super::{Client, File, FileInner};
use crate::codec::Reader;
use crate::error::Error;
use crate::limits::{HYDRATE_REQUEST_BYTES, KEYS_LINKED_REQUEST_BYTES};
use crate::meta::proto::MetaRequest;
use crate::meta::repo::{
    AssocState, Association, HS_RELEASED, ImportOutcome, ImportedFile, ReleaseOutcome,
};
use crate::meta::types::{Access, Attr};

impl Client {
    fn meta_call<T>(
        &self,
        request: &MetaRequest,
        decode: impl FnOnce(&mut Reader<'_>) -> Result<T, crate::codec::CodecError>,
    ) -> Result<T, Error> {
        self.inner
            .meta
            .call_decode(&self.inner.options.cred, request, decode)
    }

    /// Links the directory `assoc.path` to its data repository (root only); the association
    /// as kept, with its id.
    pub fn repo_link(&self, assoc: &Association) -> Result<Association, Error> {
        let request = MetaRequest::RepoLink {
            assoc: assoc.clone(),
        };
        self.meta_call(&request, Association::decode)
    }

    /// Every association, in id order.
    pub fn repo_list(&self) -> Result<Vec<Association>, Error> {
        self.meta_call(&MetaRequest::RepoList, |r| {
            let count = r.u32("count")?;
            let mut all = Vec::new();
            for _ in 0..count {
                all.push(Association::decode(r)?);
            }
            Ok(all)
        })
    }

    /// Unlinks the association at `path` (root only).
    pub fn repo_unlink(&self, path: &str) -> Result<Association, Error> {
        let request = MetaRequest::RepoUnlink { path: path.into() };
        self.meta_call(&request, Association::decode)
    }

    /// Sets the state of the association at `path` (root only).
    pub fn repo_set_state(
        &self,
        path: &str,
        state: AssocState,
        reason: &str,
    ) -> Result<Association, Error> {
        let request = MetaRequest::RepoSetState {
            path: path.into(),
            state,
            reason: reason.into(),
        };
        self.meta_call(&request, Association::decode)
    }

    /// Creates or updates the released file of an imported object (root only): its
    /// attributes and what was done. The caller sets its size after
    /// ([`Client::open_for_mover`] and [`File::truncate`]).
    pub fn import_file(&self, file: &ImportedFile) -> Result<(Attr, ImportOutcome), Error> {
        let request = MetaRequest::ImportFile { file: file.clone() };
        self.meta_call(&request, |r| {
            Ok((Attr::decode(r)?, ImportOutcome::decode(r)?))
        })
    }

    /// Creates or updates the symbolic link of an imported object (root only), naming
    /// `target`: its attributes and what was done.
    pub fn import_symlink(
        &self,
        file: &ImportedFile,
        target: &str,
    ) -> Result<(Attr, ImportOutcome), Error> {
        let request = MetaRequest::ImportSymlink {
            file: file.clone(),
            target: target.to_owned(),
        };
        self.meta_call(&request, |r| {
            Ok((Attr::decode(r)?, ImportOutcome::decode(r)?))
        })
    }

    /// The HSM flags of `path` (Lustre's values; 0 for a file never imported) and, for an
    /// imported file, its object's URL.
    pub fn hsm_state(&self, path: &str) -> Result<(u32, Option<String>), Error> {
        let request = MetaRequest::HsmState { path: path.into() };
        self.meta_call(&request, |r| {
            let flags = r.u32("flags")?;
            let url = match r.u8("has object")? {
                0 => None,
                _ => Some(
                    r.str("object", crate::limits::MAX_REPO_URL_BYTES)?
                        .to_owned(),
                ),
            };
            Ok((flags, url))
        })
    }

    /// Sets `set` and clears `clear` of the HSM flags of `path` (`HS_NORELEASE`,
    /// `HS_DIRTY`; its owner or root), as `lfs hsm_set` and `hsm_clear`; its flags after.
    pub fn hsm_set(&self, path: &str, set: u32, clear: u32) -> Result<u32, Error> {
        let request = MetaRequest::HsmSet {
            path: path.into(),
            set,
            clear,
        };
        self.meta_call(&request, |r| r.u32("hsm flags"))
    }

    /// Records that `path` was exported as object `key` at `etag` of association `repo`
    /// (root only); its HSM flags after (archived, not dirty).
    pub fn mark_archived(
        &self,
        path: &str,
        repo: u32,
        key: &str,
        etag: &str,
        size: u64,
    ) -> Result<u32, Error> {
        let request = MetaRequest::Archived {
            path: path.into(),
            repo,
            key: key.into(),
            etag: etag.into(),
            size,
        };
        self.meta_call(&request, |r| r.u32("hsm flags"))
    }

    /// Which of `keys` of association `repo` a file still links to (root only), in order:
    /// asked in requests of at most [`KEYS_LINKED_REQUEST_BYTES`] of keys.
    pub fn keys_linked(&self, repo: u32, keys: &[String]) -> Result<Vec<bool>, Error> {
        let mut held = Vec::with_capacity(keys.len());
        let mut rest = keys;
        while !rest.is_empty() {
            let mut bytes = 0;
            let n = rest
                .iter()
                .take(crate::limits::MAX_TASK_PATHS)
                .take_while(|k| {
                    bytes += k.len() + 4;
                    bytes <= KEYS_LINKED_REQUEST_BYTES
                })
                .count()
                .max(1);
            let request = MetaRequest::KeysLinked {
                repo,
                keys: rest[..n].to_vec(),
            };
            let page = self.meta_call(&request, |r| {
                let count = r.u32("keys")?;
                if count as usize != n {
                    return Err(r.bad_value("keys", u64::from(count), "one per key asked"));
                }
                (0..n)
                    .map(|_| Ok(r.u8("held")? == 1))
                    .collect::<Result<Vec<bool>, _>>()
            })?;
            held.extend(page);
            rest = &rest[n..];
        }
        Ok(held)
    }

    /// Releases the file at `path` (root only): drops its data from the targets when it is
    /// archived, unchanged since and not accessed (atime, mtime or ctime) for `idle_days`
    /// (0: whatever its age), keeping its metadata; its next read fetches it again. A file
    /// with a handle open on it anywhere is refused (`EBUSY`, [`Error::errno`]).
    pub fn release(&self, path: &str, idle_days: u32) -> Result<ReleaseOutcome, Error> {
        let request = MetaRequest::Release {
            path: path.into(),
            idle_days,
        };
        self.meta_call(&request, ReleaseOutcome::decode)
    }

    /// A handle on the file `attr` at `path` for the repository mover and importer: it
    /// writes (and sets the size of) a released file's objects without opening it on the
    /// metadata service, so the file is neither marked dirty nor asked to be made present.
    /// For anything else, [`Client::open`].
    pub fn open_for_mover(&self, path: &str, attr: Attr) -> Result<File, Error> {
        let layout = super::file_layout(path, &attr)?;
        Ok(File {
            inner: Arc::new(FileInner {
                client: self.clone(),
                path: path.into(),
                attr,
                layout,
                access: Access::ReadWrite,
                hsm: AtomicU32::new(0),
                mover: true,
                notify_close: None,
            }),
        })
    }
}

impl File {
    /// Deallocates every byte of the file's objects on their targets, keeping their sizes
    /// (so the file's size), and makes that durable: what a release does to a file's data.
    /// For the repository mover's handle ([`Client::open_for_mover`]) only.
    pub fn punch_all(&self) -> Result<(), Error> {
        if !self.inner.mover {
            return Err(Error::BadHandle {
                what: self.inner.path.clone(),
                reason: "only the repository mover's handle drops a file's data",
            });
        }
        let size = self.size()?;
        let layout = &self.inner.layout;
        let per_target = layout.objects_by_target(self.inner.attr.ino)?;
        let requests: Vec<_> = per_target
            .iter()
            .map(|(&t, objects)| {
                let extents = objects
                    .iter()
                    .filter_map(|o| {
                        let len = layout.object_size(o.component, o.stripe, size);
                        (len > 0).then_some(Extent {
                            object_id: o.object_id,
                            offset_bytes: 0,
                            len,
                        })
                    })
                    .collect::<Vec<_>>();
                (t, extents)
            })
            .filter(|(_, extents)| !extents.is_empty())
            .collect();
        self.inner
            .client
            .plain_requests(Opcode::Punch, "punch", &requests)?;
        self.sync()
    }

    /// Makes the whole file present (`lfs hsm_restore`): fetches every released chunk from
    /// its data repository, calling `progress(bytes done, bytes in all)` after each request;
    /// when it breaks, the restore stops there (what was fetched stays present). Whether it
    /// went to the end. Nothing to do for a file not released.
    pub fn restore(
        &self,
        mut progress: impl FnMut(u64, u64) -> std::ops::ControlFlow<()>,
    ) -> Result<bool, Error> {
        let size = self.size()?;
        let mut at = 0;
        while at < size && self.hsm_flags() & HS_RELEASED != 0 {
            let piece = (size - at).min(HYDRATE_REQUEST_BYTES);
            self.make_present(at, piece)?;
            at += piece;
            if progress(at, size).is_break() {
                return Ok(at >= size);
            }
        }
        let _ = progress(size, size);
        Ok(true)
    }
}
