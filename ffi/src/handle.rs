//! The handle table. A handle C holds is a number naming an entry here, never a pointer the
//! library follows, so a closed, freed or made-up handle finds nothing and is answered with
//! EBADF. Numbers are never reused. Every call clones what it needs out of the table and
//! runs without holding the table's lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};

use crate::boundary::Failure;
use crate::limits::FIRST_HANDLE;

/// What a handle names.
#[derive(Clone)]
pub(crate) enum Object {
    Client(engine::Client),
    File(engine::File),
    Queue(Arc<crate::queue::QueueState>),
    Layout(Arc<crate::layout::LayoutState>),
    Dir(Arc<crate::client::DirState>),
    Mem(Arc<crate::client::MemState>),
}

static TABLE: LazyLock<RwLock<HashMap<u64, Object>>> =
    LazyLock::new(|| RwLock::new(HashMap::new()));
static NEXT_HANDLE: AtomicU64 = AtomicU64::new(FIRST_HANDLE);

/// Keeps `object` and returns its handle as the C pointer type `T`.
pub(crate) fn insert<T>(object: Object) -> *mut T {
    let id = NEXT_HANDLE.fetch_add(1, Ordering::Relaxed);
    TABLE
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, object);
    id as usize as *mut T
}

/// What handle `h` names now, if anything.
pub(crate) fn get<T>(h: *const T) -> Option<Object> {
    TABLE
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&(h as usize as u64))
        .cloned()
}

/// Takes the entry of `h` out of the table if `keep` accepts it (it is of the right kind).
pub(crate) fn remove<T>(
    h: *const T,
    kind: &str,
    keep: impl Fn(&Object) -> bool,
) -> Result<Object, Failure> {
    let mut table = TABLE.write().unwrap_or_else(|p| p.into_inner());
    let id = h as usize as u64;
    let removed = match table.get(&id) {
        Some(o) if keep(o) => table.remove(&id).ok_or_else(|| Failure::bad_handle(kind)),
        _ => Err(Failure::bad_handle(kind)),
    };
    if table.is_empty() {
        // A program that closed every handle holds no memory of ours (valgrind sees none).
        *table = HashMap::new();
    }
    removed
}

/// The client `h` names.
pub(crate) fn client<T>(h: *const T) -> Result<engine::Client, Failure> {
    match get(h) {
        Some(Object::Client(c)) => Ok(c),
        _ => Err(Failure::bad_handle("client")),
    }
}

/// The file `h` names.
pub(crate) fn file<T>(h: *const T) -> Result<engine::File, Failure> {
    match get(h) {
        Some(Object::File(f)) => Ok(f),
        _ => Err(Failure::bad_handle("file")),
    }
}

/// The layout `h` names.
pub(crate) fn layout<T>(h: *const T) -> Result<Arc<crate::layout::LayoutState>, Failure> {
    match get(h) {
        Some(Object::Layout(l)) => Ok(l),
        _ => Err(Failure::bad_handle("layout")),
    }
}

/// The queue `h` names.
pub(crate) fn queue<T>(h: *const T) -> Result<Arc<crate::queue::QueueState>, Failure> {
    match get(h) {
        Some(Object::Queue(q)) => Ok(q),
        _ => Err(Failure::bad_handle("queue")),
    }
}
