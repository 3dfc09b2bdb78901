//! The metadata server: answers [`MetaRequest`]s from a [`MetaStore`], one thread per
//! connection (the store allows concurrent readers and serializes writers), and removes the
//! objects of unlinked files from their targets.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use nacre_transport::wire::{Opcode, encode_extents};
use nacre_transport::{Bulk, Connection, Endpoint, Listener, Request, ServerConnection};

use crate::client::{objects_by_target, whole_object_requests};
use crate::codec::Writer;
use crate::error::Error;
use crate::limits::OBJECT_REMOVE_TIMEOUT_MS;
use crate::meta::link::link_options;
use crate::meta::proto::MetaRequest;
use crate::meta::store::MetaStore;
use crate::meta::types::{Attr, MAX_READDIR_ENTRIES, MetaError};
use crate::server::{Threads, accept_loop, request_loop, spawn};

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
    /// Opens (or creates) the store at `db_path` and listens on `listen`.
    pub fn start(db_path: &Path, listen: &str) -> Result<MetaServer, Error> {
        let store = Arc::new(MetaStore::open(db_path)?);
        let listener = Listener::bind(&Endpoint::parse(listen)?)?;
        let endpoint = listener.endpoint().clone();
        let stop = Arc::new(AtomicBool::new(false));
        let accept_stop = Arc::clone(&stop);
        let thread = spawn("nacre-meta".into(), move || {
            accept_loop(
                listener,
                Arc::clone(&accept_stop),
                "nacre-meta".into(),
                move |mut conn: ServerConnection| {
                    let store = Arc::clone(&store);
                    request_loop(
                        &mut conn,
                        &accept_stop,
                        "nacre meta",
                        |conn, request, body| answer(&store, conn, request, body),
                    );
                },
            )
        })?;
        Ok(MetaServer {
            endpoint,
            threads: Threads {
                stop,
                handles: vec![thread],
            },
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

fn answer(
    store: &MetaStore,
    conn: &mut ServerConnection,
    request: &Request,
    body: &[u8],
) -> Result<(), nacre_transport::TransportError> {
    if request.header.opcode != Opcode::Meta {
        let message = format!(
            "the metadata service does not serve {:?} requests",
            request.header.opcode
        );
        return conn.reply(request, libc::EOPNOTSUPP, message.as_bytes(), &[]);
    }
    let (cred, op) = match MetaRequest::decode(body) {
        Ok(decoded) => decoded,
        Err(e) => {
            let message = format!("malformed metadata request: {e}");
            return conn.reply(request, libc::EINVAL, message.as_bytes(), &[]);
        }
    };
    let mut out = Vec::new();
    match execute(store, &cred, &op, &mut out) {
        Ok(removed) => {
            // Before the reply, so that a file unlinked is gone from its targets too when
            // the caller hears so (and a test can count its objects without a race).
            if let Some(attr) = removed {
                remove_objects(store, &attr);
            }
            conn.reply(request, 0, &out, &[])
        }
        Err(e) => conn.reply(request, e.errno(), e.to_string().as_bytes(), &[]),
    }
}

/// Runs one request; returns the attributes of a file whose objects are to be removed.
fn execute(
    store: &MetaStore,
    cred: &crate::meta::types::Cred,
    op: &MetaRequest,
    out: &mut Vec<u8>,
) -> Result<Option<Attr>, MetaError> {
    match op {
        MetaRequest::Lookup { path } => store.lookup(cred, path)?.encode(out),
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
        }
        MetaRequest::Open { path, access } => store.open_file(cred, path, *access)?.encode(out),
        MetaRequest::Readdir { path, after, max } => {
            let max = (*max as usize).min(MAX_READDIR_ENTRIES);
            let entries = store.readdir(cred, path, after.as_deref(), max)?;
            Writer::new(out).u32(entries.len() as u32);
            for e in &entries {
                e.encode(out);
            }
        }
        MetaRequest::Unlink { path } => return Ok(Some(store.unlink(cred, path)?)),
        MetaRequest::Rmdir { path } => store.rmdir(cred, path)?,
        MetaRequest::Rename { from, to } => return store.rename(cred, from, to),
        MetaRequest::SetDefaultLayout { path, spec } => {
            store.set_default_layout(cred, path, spec.clone())?
        }
        MetaRequest::SetLayoutOnNewFile { path, spec, mode } => store
            .set_layout_on_new_file(cred, path, spec, *mode)?
            .encode(out),
        MetaRequest::Chmod { path, mode } => store.chmod(cred, path, *mode)?,
        MetaRequest::Chown { path, uid, gid } => store.chown(cred, path, *uid, *gid)?,
        MetaRequest::RegisterTarget { info } => store.register_target(info.clone())?,
        MetaRequest::Usage {
            target_id,
            capacity_bytes,
            free_bytes,
        } => store.update_usage(*target_id, *capacity_bytes, *free_bytes)?,
        MetaRequest::Targets => {
            let targets = store.targets();
            Writer::new(out).u32(targets.len() as u32);
            for t in &targets {
                t.encode(out);
            }
        }
        MetaRequest::Statfs => {
            let st = store.statfs()?;
            Writer::new(out).u64(st.files).u64(st.dirs);
        }
    }
    Ok(None)
}

/// Removes an unlinked file's objects from their targets. The namespace change is already
/// durable; a target that cannot be reached keeps its objects as orphans (logged).
fn remove_objects(store: &MetaStore, attr: &Attr) {
    let Some(layout) = &attr.layout else {
        return;
    };
    let Ok(per_target) = objects_by_target(attr.ino, layout) else {
        return;
    };
    let targets = store.targets();
    let options = link_options(Duration::from_millis(OBJECT_REMOVE_TIMEOUT_MS));
    for (target_id, extents) in whole_object_requests(&per_target, |_, _| 0) {
        let Some(info) = targets.iter().find(|t| t.target_id == target_id) else {
            continue;
        };
        let removed = Endpoint::parse(&info.endpoint)
            .map_err(Error::from)
            .and_then(|e| Connection::connect(&e, options).map_err(Error::from))
            .and_then(|mut conn| {
                let mut body = Vec::new();
                encode_extents(&extents, &mut body);
                let mut reply = Vec::new();
                let r = conn.call(Opcode::Remove, &body, Bulk::None, &mut reply)?;
                if r.status != 0 {
                    return Err(Error::TargetReply {
                        target_id,
                        endpoint: info.endpoint.clone(),
                        op: "remove",
                        errno: r.status,
                        message: String::from_utf8_lossy(&reply).into_owned(),
                    });
                }
                Ok(())
            });
        if let Err(e) = removed {
            nacre_transport::log_line!(
                "nacre meta: objects of inode {} on target {target_id} left as orphans: {e}",
                attr.ino
            );
        }
    }
}
