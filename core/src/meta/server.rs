//! The metadata server: answers [`MetaRequest`]s from a [`MetaStore`] (on event loops, see
//! `event_loop`; the store allows concurrent readers and serializes writers), and removes
//! the objects of unlinked files from their targets.
//!
//! Removal is logged: the transaction that removes a file also logs its objects (per
//! target), and an object leaves the log only once its target confirmed it gone. The server
//! works the log for a target after removing a file with objects there, and whenever that
//! target registers (it restarted) or reports its usage (every few seconds), so objects on a
//! target that was down at unlink are removed when it is back.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use nacre_transport::Endpoint;
use nacre_transport::client::{Bulk, Connection};
use nacre_transport::limits::{MAX_BODY_BYTES, MAX_EXTENTS_PER_REQUEST};
use nacre_transport::server::{Listener, ServerConnection};
use nacre_transport::wire::{Extent, Header, Opcode, encode_extents};

use crate::codec::Writer;
use crate::error::Error;
use crate::limits::{
    MAX_META_CONNECTIONS, MAX_META_THREAD_CONNECTIONS, META_RESERVED_FDS, OBJECT_ONLY_LEN,
    OBJECT_REMOVE_TIMEOUT_MS,
};
use crate::meta::event_loop;
use crate::meta::hydrate::Hydrator;
use crate::meta::link::link_options;
use crate::meta::proto::MetaRequest;
use crate::meta::repo::{HS_DIRTY, HydrateJob, Repository};
use crate::meta::store::{Linked, MetaStore};
use crate::meta::types::{Access, Attr, DirEntry, MAX_READDIR_ENTRIES, MetaError, TargetInfo};
use crate::server::{Threads, accept_loop, connection_bound, request_loop, spawn};

/// A running metadata server; stops when dropped.
pub struct MetaServer {
    endpoint: Endpoint,
    threads: Threads,
}

impl std::fmt::Debug for MetaServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaServer")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl MetaServer {
    /// Opens (or creates) the store at `db_path` and listens on `listen`. TCP clients are
    /// served by [`META_LOOPS`](crate::limits::META_LOOPS) event loops, whatever their number (at most
    /// [`MAX_META_CONNECTIONS`], and fewer when the open-file limit, raised to its hard
    /// limit first, leaves less room); RDMA clients by a thread each, at most
    /// [`MAX_META_THREAD_CONNECTIONS`].
    pub fn start(db_path: &Path, listen: &str) -> Result<MetaServer, Error> {
        MetaServer::start_with(db_path, listen, None)
    }

    /// As [`MetaServer::start`], with a repository mover that fetches the data of released
    /// files (imported from a data repository) when they are read.
    pub fn start_with(
        db_path: &Path,
        listen: &str,
        repository: Option<Arc<dyn Repository>>,
    ) -> Result<MetaServer, Error> {
        let store = Arc::new(MetaStore::open(db_path)?);
        let hydrator = Arc::new(Hydrator::new(repository));
        let listener = Listener::bind(&Endpoint::parse(listen)?)?;
        let endpoint = listener.endpoint().clone();
        let stop = Arc::new(AtomicBool::new(false));
        let bound = connection_bound("nacre meta", MAX_META_CONNECTIONS, META_RESERVED_FDS)?;
        let (loops, mut handles) = event_loop::start(&store, &hydrator, &stop, bound)?;
        let threaded = Arc::new(AtomicUsize::new(0));
        let accept_stop = Arc::clone(&stop);
        let acceptor = spawn("nacre-meta".into(), move || {
            accept_loop(
                listener,
                Arc::clone(&accept_stop),
                "nacre-meta".into(),
                move |conn: ServerConnection| {
                    let conn = match conn.into_stream() {
                        Ok(stream) => {
                            loops.adopt(stream);
                            return None;
                        }
                        Err(conn) => conn,
                    };
                    // An RDMA connection: a thread of its own, within its bound.
                    if threaded.fetch_add(1, Ordering::SeqCst) >= MAX_META_THREAD_CONNECTIONS {
                        threaded.fetch_sub(1, Ordering::SeqCst);
                        nacre_transport::log_line!(
                            "nacre meta: {} refused: {MAX_META_THREAD_CONNECTIONS} connections are served by threads already",
                            conn.peer()
                        );
                        return None;
                    }
                    let (store, stop, threaded, hydrator) = (
                        Arc::clone(&store),
                        Arc::clone(&accept_stop),
                        Arc::clone(&threaded),
                        Arc::clone(&hydrator),
                    );
                    let mut conn = conn;
                    Some(move || {
                        request_loop(&mut conn, &stop, "nacre meta", |conn, request, body| {
                            let answer =
                                answer(&store, &request.header, body).hydrated(&store, &hydrator);
                            for target_id in &answer.removals {
                                remove_logged(&store, *target_id);
                            }
                            conn.reply(request, answer.status, &answer.body, &[])
                        });
                        threaded.fetch_sub(1, Ordering::SeqCst);
                    })
                },
            )
        })?;
        handles.push(acceptor);
        Ok(MetaServer {
            endpoint,
            threads: Threads { stop, handles },
        })
    }

    /// Where clients reach it.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// A flag that stops the server when set.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.threads.stop)
    }

    /// Stops and waits for every thread.
    pub fn stop(mut self) {
        self.threads.shutdown();
    }
}

/// What a metadata request gets: its reply, and the targets whose removal logs are to be
/// worked before the reply goes (a file unlinked is gone from its reachable targets when
/// the caller hears so, and a target that registers finds its old objects gone when it
/// starts serving).
pub(super) struct Answer {
    pub(super) status: i32,
    pub(super) body: Vec<u8>,
    pub(super) removals: Vec<u32>,
    /// The removals' target is the caller (registering, or reporting its usage): reachable
    /// now, whatever failed before.
    pub(super) from_target: bool,
    /// Work on a released file's data to do before the reply goes, on a hydrator thread.
    pub(super) hydrate: Option<Box<RepoWork>>,
}

/// What a hydrator thread does for a request before its reply goes.
pub(super) enum RepoWork {
    /// Makes the job's chunks present; the reply's body then ends with the file's HSM flags
    /// after.
    Hydrate(HydrateJob),
    /// Releases the job's file; the reply's body is the
    /// [`ReleaseOutcome`](crate::meta::repo::ReleaseOutcome).
    Release(HydrateJob),
}

impl Answer {
    /// Runs the hydration the reply waits for (if any) and completes the reply: the file's
    /// flags after, or the error that stopped it.
    pub(super) fn hydrated(mut self, store: &MetaStore, hydrator: &Hydrator) -> Answer {
        let Some(work) = self.hydrate.take() else {
            return self;
        };
        let done = match *work {
            RepoWork::Hydrate(job) => hydrator
                .run(store, &job)
                .map(|flags| self.body.extend_from_slice(&flags.to_le_bytes())),
            RepoWork::Release(job) => hydrator
                .release(store, &job)
                .map(|outcome| outcome.encode(&mut self.body)),
        };
        match done {
            Ok(()) => self,
            Err(e) => Answer {
                status: e.errno(),
                body: e.to_string().into_bytes(),
                removals: Vec::new(),
                from_target: false,
                hydrate: None,
            },
        }
    }
}

/// Answers one request (any opcode: only `Meta` is served).
pub(super) fn answer(store: &MetaStore, header: &Header, body: &[u8]) -> Answer {
    let failed = |status: i32, message: String| Answer {
        status,
        body: message.into_bytes(),
        removals: Vec::new(),
        from_target: false,
        hydrate: None,
    };
    if header.opcode != Opcode::Meta {
        return failed(
            libc::EOPNOTSUPP,
            format!(
                "the metadata service does not serve {:?} requests",
                header.opcode
            ),
        );
    }
    let (cred, op) = match MetaRequest::decode(body) {
        Ok(decoded) => decoded,
        Err(e) => return failed(libc::EINVAL, format!("malformed metadata request: {e}")),
    };
    let mut out = Vec::new();
    let from_target = matches!(
        op,
        MetaRequest::RegisterTarget { .. } | MetaRequest::Usage { .. }
    );
    let mut hydrate = None;
    match execute(store, &cred, &op, &mut out, &mut hydrate) {
        Ok(removals) => Answer {
            status: 0,
            body: out,
            removals,
            from_target,
            hydrate,
        },
        Err(e) => failed(e.errno(), e.to_string()),
    }
}

/// The targets of a removed file's objects, whose removal log is to be worked.
fn targets_of(removed: Option<Attr>) -> Vec<u32> {
    removed
        .and_then(|attr| attr.layout.as_ref()?.objects_by_target(attr.ino).ok())
        .map(|per_target| per_target.into_keys().collect())
        .unwrap_or_default()
}

/// Runs one request; returns the targets whose removal log is to be worked before replying.
fn execute(
    store: &MetaStore,
    cred: &crate::meta::types::Cred,
    op: &MetaRequest,
    out: &mut Vec<u8>,
    hydrate: &mut Option<Box<RepoWork>>,
) -> Result<Vec<u32>, MetaError> {
    match op {
        MetaRequest::Lookup { path } => store.lookup(cred, path)?.encode(out),
        MetaRequest::Stat { path } => store.stat(cred, path)?.encode(out),
        MetaRequest::Symlink { path, target } => {
            let link = store.symlink(cred, path, target)?;
            link.encode(out);
            // The link is made: a failure to queue its export is logged, not the request's
            // (the next export task takes it).
            if let Err(e) = store.symlink_made(cred, path) {
                nacre_transport::log_line!("nacre meta: auto-export of the link {path}: {e}");
            }
        }
        MetaRequest::Link { from, to } => store.link(cred, from, to)?.encode(out),
        MetaRequest::SetTimes {
            path,
            atime,
            mtime,
            follow,
        } => store.set_times(cred, path, *atime, *mtime, *follow)?,
        MetaRequest::ImportSymlink { file, target } => {
            let (attr, outcome) = store.import_symlink(cred, file, target)?;
            attr.encode(out);
            out.push(outcome.to_u8());
        }
        MetaRequest::Mkdir { path, mode } => store.mkdir(cred, path, *mode)?.encode(out),
        MetaRequest::Create {
            path,
            mode,
            exclusive,
            layout,
        } => {
            let (attr, created) = store.create(cred, path, *mode, *exclusive, layout.as_ref())?;
            attr.encode(out);
            out.push(u8::from(created));
            repo_flags(store, &attr, true, out)?;
        }
        MetaRequest::Open { path, access } => {
            let attr = store.open_file(cred, path, *access)?;
            attr.encode(out);
            repo_flags(store, &attr, *access != Access::Read, out)?;
        }
        MetaRequest::HsmSet { path, set, clear } => {
            let flags = store.hsm_set(cred, path, *set, *clear)?;
            out.extend_from_slice(&flags.to_le_bytes());
        }
        MetaRequest::KeysLinked { repo, keys } => {
            let held = store.keys_linked(cred, *repo, keys)?;
            Writer::new(out).u32(held.len() as u32);
            out.extend(held.into_iter().map(u8::from));
        }
        MetaRequest::Release { path, idle_days } => {
            match store.release_plan(cred, path, *idle_days)? {
                Ok(job) => *hydrate = Some(Box::new(RepoWork::Release(job))),
                Err(outcome) => outcome.encode(out),
            }
        }
        MetaRequest::Readdir { path, after, max } => {
            let max = (*max as usize).min(MAX_READDIR_ENTRIES);
            let entries = store.readdir(cred, path, after.as_deref(), max)?;
            // A full page may have more after it; the next one says.
            let full = entries.len() == max;
            encode_page(out, &entries, full, DirEntry::encode);
        }
        MetaRequest::Unlink { path } => {
            let at = canonical(store, cred, path);
            let linked = store.linked_to_object(cred, &at)?;
            let removed = store.unlink(cred, path)?;
            if let Some(linked) = linked {
                deletion_noticed(store, Some((&at, linked)), None);
            }
            return Ok(targets_of(Some(removed)));
        }
        MetaRequest::Rmdir { path } => {
            // A directory's marker object goes with it (auto-export with `deleted`).
            let at = canonical(store, cred, path);
            let linked = store.linked_to_object(cred, &at)?;
            store.rmdir(cred, path)?;
            if let Some(linked) = linked {
                deletion_noticed(store, Some((&at, linked)), None);
            }
        }
        MetaRequest::Rename { from, to } => {
            let (from_at, to_at) = (canonical(store, cred, from), canonical(store, cred, to));
            let linked = store.linked_to_object(cred, &from_at)?;
            let replaced = store.rename(cred, from, to)?;
            if store.has_associations() {
                deletion_noticed(store, linked.map(|l| (from_at.as_str(), l)), Some(&to_at));
            }
            return Ok(targets_of(replaced));
        }
        MetaRequest::SetDefaultLayout { path, spec } => {
            store.set_default_layout(cred, path, spec.clone())?
        }
        MetaRequest::SetLayoutOnNewFile { path, spec, mode } => store
            .set_layout_on_new_file(cred, path, spec, *mode)?
            .encode(out),
        MetaRequest::Chmod { path, mode } => store.chmod(cred, path, *mode)?,
        MetaRequest::Chown {
            path,
            uid,
            gid,
            follow: true,
        } => store.chown(cred, path, *uid, *gid)?,
        MetaRequest::Chown {
            path,
            uid,
            gid,
            follow: false,
        } => store.lchown(cred, path, *uid, *gid)?,
        MetaRequest::RegisterTarget { info, filesystem } => {
            let fs = store.register_target(info.clone(), filesystem.as_deref())?;
            Writer::new(out).str(&fs);
            return Ok(vec![info.target_id]);
        }
        MetaRequest::Usage {
            target_id,
            capacity_bytes,
            free_bytes,
        } => {
            store.update_usage(*target_id, *capacity_bytes, *free_bytes)?;
            return Ok(vec![*target_id]);
        }
        MetaRequest::Targets { after } => {
            let targets: Vec<TargetInfo> = store
                .targets()
                .into_iter()
                .filter(|t| after.is_none_or(|a| t.target_id > a))
                .collect();
            encode_page(out, &targets, false, TargetInfo::encode);
        }
        MetaRequest::Statfs => {
            let st = store.statfs()?;
            Writer::new(out).u64(st.files).u64(st.dirs);
        }
        MetaRequest::RepoLink { assoc } => store.repo_link(cred, assoc)?.encode(out),
        MetaRequest::RepoList => {
            let all = store.repo_list()?;
            Writer::new(out).u32(all.len() as u32);
            for a in &all {
                a.encode(out);
            }
        }
        MetaRequest::RepoUnlink { path } => store.repo_unlink(cred, path)?.encode(out),
        MetaRequest::RepoSetState {
            path,
            state,
            reason,
        } => store
            .repo_set_state(cred, path, *state, reason)?
            .encode(out),
        MetaRequest::ImportFile { file } => {
            let (attr, outcome) = store.import_file(cred, file)?;
            attr.encode(out);
            out.push(outcome.to_u8());
        }
        MetaRequest::HsmState { path } => {
            let (flags, object) = store.hsm_state(cred, path)?;
            let mut w = Writer::new(out);
            w.u32(flags);
            match object {
                Some((url, _)) => w.u8(1).str(&url),
                None => w.u8(0),
            };
        }
        MetaRequest::Archived {
            path,
            repo,
            key,
            etag,
            size,
        } => {
            let flags = store.mark_archived(cred, path, *repo, key, etag, *size)?;
            out.extend_from_slice(&flags.to_le_bytes());
        }
        MetaRequest::Hydrate {
            path,
            ino,
            offset,
            len,
        } => {
            let attr = store.open_file(cred, path, Access::Read)?;
            if attr.ino != *ino {
                return Err(MetaError::NotFound {
                    path: format!("{path} (inode {ino}: renamed or replaced since it was opened)"),
                });
            }
            match store.hydrate_plan(path, &attr, *offset, *len)? {
                Some(job) => *hydrate = Some(Box::new(RepoWork::Hydrate(job))),
                None => {
                    let flags = store.repo_file(attr.ino)?.map_or(0, |f| f.flags);
                    out.extend_from_slice(&flags.to_le_bytes());
                }
            }
        }
        MetaRequest::TaskCreate { kind, paths } => {
            store.task_create(cred, *kind, paths)?.encode(out)
        }
        MetaRequest::TaskList { after } => {
            let (page, more) = store.task_list(cred, *after)?;
            Writer::new(out).u8(u8::from(more)).u32(page.len() as u32);
            for t in &page {
                t.encode(out);
            }
        }
        MetaRequest::TaskShow { id } => store.task(cred, *id)?.encode(out),
        MetaRequest::TaskReport { id, from } => {
            let page = store.task_report(cred, *id, *from)?;
            Writer::new(out).u32(page.len() as u32);
            for line in &page {
                line.encode(out);
            }
        }
        MetaRequest::TaskCancel { id } => store.task_cancel(cred, *id)?.encode(out),
        MetaRequest::TaskClaim => match store.task_claim(cred)? {
            Some(task) => {
                out.push(1);
                task.encode(out);
            }
            None => out.push(0),
        },
        MetaRequest::TaskUpdate {
            id,
            counts,
            failures,
            end,
        } => store
            .task_update(cred, *id, counts, failures, end.as_ref())?
            .encode(out),
        MetaRequest::Closed {
            path,
            ino,
            instance,
            wrote,
        } => {
            store.handle_closed(*ino, *instance);
            let queued = *wrote && store.file_closed(cred, path, *ino)?;
            out.push(u8::from(queued));
        }
    }
    Ok(Vec::new())
}

/// `path` with its symbolic links resolved (not one at its end), while associations exist:
/// their paths are compared with what a path names, not how it was spelt. The operation
/// itself is given the path as asked (it resolves it again in its own transaction): this one
/// only says what auto-export is to look at, and the runner checks what is there before it
/// deletes anything. A path that does not resolve, or resolves longer than a path may be, is
/// kept as given.
fn canonical(store: &MetaStore, cred: &crate::meta::types::Cred, path: &str) -> String {
    if !store.has_associations() {
        return path.to_owned();
    }
    store
        .canonical(cred, path, false)
        .unwrap_or_else(|_| path.to_owned())
}

/// Queues what an unlink, rmdir or rename of a linked file (or a directory) means for
/// auto-export ([`MetaStore::path_gone`]). The namespace has changed already: a failure
/// here is logged, not the request's (the next export of the new path still takes it; the
/// old object stays).
fn deletion_noticed(store: &MetaStore, gone: Option<(&str, Linked)>, to: Option<&str>) {
    if let Err(e) = store.path_gone(gone, to) {
        let what = gone.map(|(p, _)| p).or(to).unwrap_or_default();
        nacre_transport::log_line!("nacre meta: auto-export after the move of {what}: {e}");
    }
}

/// Ends an open's reply with the HSM flags of an imported file (nothing for another); an
/// open for writing marks it dirty first. Its released chunks are fetched as they are read
/// or written, not here. While any association exists, an open of any file adds a byte
/// (1) and this start's number ([`MetaStore::instance`]) after the flags (0 for a file never imported):
/// its handle is counted open (a release waits for none to be), and the client sends
/// [`MetaRequest::Closed`] when it is closed (dirty again, auto-export, the count down).
fn repo_flags(
    store: &MetaStore,
    attr: &Attr,
    write: bool,
    out: &mut Vec<u8>,
) -> Result<(), MetaError> {
    // Every open while an association exists: a file moved into an association, or out of
    // one (keeping its link to its object), is released by the same rules.
    let notice = store.has_associations();
    if notice {
        // Counted before the flags are read: a release either sees the handle or has
        // marked the file released by then (and this open's reads fetch what they need).
        store.handle_opened(attr.ino);
    }
    let flags = (|| -> Result<Option<u32>, MetaError> {
        Ok(match store.repo_file(attr.ino)? {
            Some(_) if write => Some(store.add_hsm_flags(attr.ino, HS_DIRTY)?),
            Some(f) => Some(f.flags),
            None if notice => Some(0),
            None => None,
        })
    })();
    let flags = match flags {
        Ok(Some(flags)) => flags,
        Ok(None) => return Ok(()),
        Err(e) => {
            if notice {
                // The open fails: no close notice will come.
                store.handle_closed(attr.ino, store.instance());
            }
            return Err(e);
        }
    };
    out.extend_from_slice(&flags.to_le_bytes());
    if notice {
        out.push(1);
        out.extend_from_slice(&store.instance().to_le_bytes());
    }
    Ok(())
}

/// Encodes a page of records: their count, as many of them (in order) as fit in one
/// reply's body, and whether more remain: those cut for room, or `more_after` (the source
/// may have more past the last). Replies that grow with the data (a directory's entries,
/// the targets) page by bytes, not only by count, so that none outgrows the wire's bound.
fn encode_page<T>(
    out: &mut Vec<u8>,
    records: &[T],
    more_after: bool,
    encode: impl Fn(&T, &mut Vec<u8>),
) {
    // The count, patched below, and the flag after the records.
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    let room = MAX_BODY_BYTES as usize - 1;
    let mut count = 0u32;
    let mut record = Vec::new();
    for r in records {
        record.clear();
        encode(r, &mut record);
        if out.len() + record.len() > room {
            break;
        }
        out.extend_from_slice(&record);
        count += 1;
    }
    out[start..start + 4].copy_from_slice(&count.to_le_bytes());
    let more = (count as usize) < records.len() || more_after;
    out.push(u8::from(more));
}

/// Works target `target_id`'s removal log: asks the target to remove the logged objects, in
/// requests of at most [`MAX_EXTENTS_PER_REQUEST`], and forgets those it confirmed. A target
/// that cannot be reached keeps its log for the next time (logged on stderr). Whether the
/// log is empty now.
pub(super) fn remove_logged(store: &MetaStore, target_id: u32) -> bool {
    let options = link_options(Duration::from_millis(OBJECT_REMOVE_TIMEOUT_MS));
    let mut conn: Option<Connection> = None;
    loop {
        // Most calls (every heartbeat) find the log empty and stop here.
        let object_ids = match store.pending_removals(target_id, MAX_EXTENTS_PER_REQUEST) {
            Ok(ids) if ids.is_empty() => return true,
            Ok(ids) => ids,
            Err(e) => {
                nacre_transport::log_line!("nacre meta: removal log of target {target_id}: {e}");
                return false;
            }
        };
        let Some(info) = store
            .targets()
            .into_iter()
            .find(|t| t.target_id == target_id)
        else {
            return false;
        };
        let extents: Vec<Extent> = object_ids
            .iter()
            .map(|&object_id| Extent {
                object_id,
                offset_bytes: 0,
                len: OBJECT_ONLY_LEN,
            })
            .collect();
        let removed = match conn.take() {
            Some(c) => Ok(c),
            None => Endpoint::parse(&info.endpoint)
                .map_err(Error::from)
                .and_then(|e| Connection::connect(&e, options).map_err(Error::from)),
        }
        .and_then(|mut c| {
            // Named, so that whatever listens there now removes nothing of another target's.
            c.set_target(target_id);
            let mut body = Vec::new();
            encode_extents(&extents, &mut body);
            let mut reply = Vec::new();
            let r = c.call(Opcode::Remove, &body, Bulk::None, &mut reply)?;
            if r.status != 0 {
                return Err(Error::TargetReply {
                    target_id,
                    endpoint: info.endpoint.clone(),
                    op: "remove",
                    errno: r.status,
                    message: String::from_utf8_lossy(&reply).into_owned(),
                });
            }
            Ok(c)
        });
        match removed {
            Ok(c) => {
                if let Err(e) = store.removals_done(target_id, &object_ids) {
                    nacre_transport::log_line!(
                        "nacre meta: removal log of target {target_id}: {e}"
                    );
                    return false;
                }
                conn = Some(c);
            }
            Err(e) => {
                nacre_transport::log_line!(
                    "nacre meta: {} objects on target {target_id} stay logged for removal: {e}",
                    object_ids.len()
                );
                return false;
            }
        }
    }
}
