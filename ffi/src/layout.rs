//! The layout builder, in the style of Lustre's llapi_layout: a layout is a list of
//! components, one of them current; the setters and getters act on the current one. A
//! layout from `nacre_getstripe` or `nacre_file_layout` also knows its targets.

use std::ffi::{c_char, c_int};
use std::sync::{Arc, Mutex, MutexGuard};

use engine::layout::limits::EOF_OFFSET_BYTES;
use engine::layout::{Layout, StripeSpec};
use engine::meta::types::{ComponentSpec, LayoutSpec};

use crate::boundary::{Failure, check_out, copy_c_string, path_arg, run_int, str_arg};
use crate::client::nacre_client;
use crate::file::nacre_file;
use crate::handle::{self, Object};
use crate::limits::NACRE_POOL_NAME_MAX;

/// A layout: a request being built, or a file's resolved layout (opaque).
pub struct nacre_layout {
    _opaque: [u8; 0],
}

/// What a `nacre_layout` handle holds.
pub(crate) struct LayoutState {
    inner: Mutex<Built>,
}

struct Built {
    spec: LayoutSpec,
    /// The component the setters and getters act on.
    current: usize,
    /// The resolved layout it came from, until a setter changes it.
    resolved: Option<Layout>,
}

impl LayoutState {
    fn new(spec: LayoutSpec, resolved: Option<Layout>) -> Arc<LayoutState> {
        Arc::new(LayoutState {
            inner: Mutex::new(Built {
                spec,
                current: 0,
                resolved,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Built> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The request this layout stands for (checked when it is used).
    pub(crate) fn spec(&self) -> LayoutSpec {
        self.lock().spec.clone()
    }
}

impl Built {
    fn stripe(&mut self) -> &mut StripeSpec {
        // `current` always names a component: components are only added, never removed.
        &mut self.spec.components[self.current].stripe
    }

    /// Changes the current component's striping if the change is valid on its own.
    fn set_stripe(&mut self, change: impl FnOnce(&mut StripeSpec)) -> Result<i64, Failure> {
        let mut stripe = self.stripe().clone();
        change(&mut stripe);
        LayoutSpec::plain(stripe.clone()).check()?;
        *self.stripe() = stripe;
        self.resolved = None;
        Ok(0)
    }
}

/// Hands out a layout handle.
pub(crate) fn new_handle(spec: LayoutSpec, resolved: Option<Layout>) -> *mut nacre_layout {
    handle::insert(Object::Layout(LayoutState::new(spec, resolved)))
}

/// Runs `f` on the layout `l` names.
fn with_layout(
    name: &str,
    l: *const nacre_layout,
    f: impl FnOnce(&mut Built) -> Result<i64, Failure>,
) -> c_int {
    run_int(name, || {
        let state = handle::layout(l)?;
        let mut built = state.lock();
        f(&mut built)
    })
}

/// Stores in `*out` a new layout with one component over the whole file and Lustre's
/// defaults: 1 MiB stripes, 1 stripe, first target picked by the metadata service, no pool.
///
/// Thread safety: safe from any thread. A layout handle may be used by several threads at
/// once; each call sees the layout before or after another's change, never halfway.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_layout_new(out: *mut *mut nacre_layout) -> c_int {
    run_int("nacre_layout_new", || {
        check_out(out, "out")?;
        // SAFETY: not NULL; by the header's contract it points to a handle.
        unsafe { *out = new_handle(LayoutSpec::filesystem_default(), None) };
        Ok(0)
    })
}

/// Frees a layout. Returns 0, or `-EBADF`.
///
/// Thread safety: safe from any thread; other threads' later calls on it get `-EBADF`.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_layout_free(layout: *mut nacre_layout) -> c_int {
    run_int("nacre_layout_free", || {
        handle::remove(layout, "layout", |o| matches!(o, Object::Layout(_))).map(|_| 0)
    })
}

/// Sets the current component's stripe size: a non-zero multiple of 64 KiB, at most 4 GiB.
/// Returns 0, or `-EINVAL` naming what is allowed.
///
/// Thread safety: see `nacre_layout_new`.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_layout_stripe_size_set(layout: *mut nacre_layout, bytes: u64) -> c_int {
    with_layout("nacre_layout_stripe_size_set", layout, |b| {
        b.set_stripe(|s| s.stripe_size_bytes = bytes)
    })
}

/// Stores the current component's stripe size in `*bytes`.
///
/// Thread safety: see `nacre_layout_new`.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_layout_stripe_size_get(
    layout: *const nacre_layout,
    bytes: *mut u64,
) -> c_int {
    with_layout("nacre_layout_stripe_size_get", layout, |b| {
        check_out(bytes, "bytes")?;
        // SAFETY: not NULL; by the header's contract a u64 the caller owns.
        unsafe { *bytes = b.stripe().stripe_size_bytes };
        Ok(0)
    })
}

/// Sets the current component's stripe count: 1 to 2000, or `NACRE_STRIPE_COUNT_ALL` (-1)
/// for every target of the pool. Returns 0, or `-EINVAL`.
///
/// Thread safety: see `nacre_layout_new`.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_layout_stripe_count_set(layout: *mut nacre_layout, count: i64) -> c_int {
    with_layout("nacre_layout_stripe_count_set", layout, |b| {
        let count = i32::try_from(count)
            .map_err(|_| Failure::invalid(&format!("stripe count {count}"), "1 to 2000, or -1"))?;
        b.set_stripe(|s| s.stripe_count = count)
    })
}

/// Stores the current component's stripe count in `*count` (-1: every target; a layout
/// from `nacre_getstripe` of a file has the real count).
///
/// Thread safety: see `nacre_layout_new`.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_layout_stripe_count_get(
    layout: *const nacre_layout,
    count: *mut i64,
) -> c_int {
    with_layout("nacre_layout_stripe_count_get", layout, |b| {
        check_out(count, "count")?;
        // SAFETY: not NULL; by the header's contract an int64_t the caller owns.
        unsafe { *count = i64::from(b.stripe().stripe_count) };
        Ok(0)
    })
}

/// Sets the target of the current component's first stripe, or `NACRE_STRIPE_INDEX_ANY`
/// (-1) to let the metadata service pick (it balances free space). Returns 0, or `-EINVAL`.
///
/// Thread safety: see `nacre_layout_new`.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_layout_stripe_index_set(layout: *mut nacre_layout, index: i64) -> c_int {
    with_layout("nacre_layout_stripe_index_set", layout, |b| {
        b.set_stripe(|s| s.stripe_index = index)
    })
}

/// Stores the current component's first target in `*index` (-1: picked at creation).
///
/// Thread safety: see `nacre_layout_new`.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_layout_stripe_index_get(
    layout: *const nacre_layout,
    index: *mut i64,
) -> c_int {
    with_layout("nacre_layout_stripe_index_get", layout, |b| {
        check_out(index, "index")?;
        // SAFETY: not NULL; by the header's contract an int64_t the caller owns.
        unsafe { *index = b.stripe().stripe_index };
        Ok(0)
    })
}

/// Sets the pool the current component's targets come from (1 to 15 characters of
/// `[A-Za-z0-9_.-]`), or clears it with NULL. Returns 0, `-ENAMETOOLONG` for a longer name,
/// or `-EINVAL`.
///
/// Thread safety: see `nacre_layout_new`.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_layout_pool_set(layout: *mut nacre_layout, pool: *const c_char) -> c_int {
    with_layout("nacre_layout_pool_set", layout, |b| {
        let pool = if pool.is_null() {
            None
        } else {
            // SAFETY: not NULL; by the header's contract a NUL-terminated string.
            Some(unsafe { str_arg(pool, "pool", NACRE_POOL_NAME_MAX) }?.to_string())
        };
        b.set_stripe(|s| s.pool = pool)
    })
}

/// Copies the current component's pool name, NUL-terminated, into `buf` of `len` bytes
/// and returns its length (0 and "" when there is no pool), or `-ERANGE` when `len` is too
/// small for it.
///
/// Thread safety: see `nacre_layout_new`.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_layout_pool_get(
    layout: *const nacre_layout,
    buf: *mut c_char,
    len: usize,
) -> c_int {
    with_layout("nacre_layout_pool_get", layout, |b| {
        let pool = b.stripe().pool.clone().unwrap_or_default();
        check_out(buf, "buf")?;
        if pool.len() >= len {
            return Err(Failure {
                errno: libc::ERANGE,
                message: format!("a buffer of {len} bytes cannot hold pool name {pool:?}"),
            });
        }
        // SAFETY: `buf` holds `len` > pool.len() bytes by the header's contract.
        unsafe { copy_c_string(&pool, buf) };
        Ok(pool.len() as i64)
    })
}

/// Lets several stripes of the current component land on one target (1) or not (0).
///
/// Thread safety: see `nacre_layout_new`.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_layout_overstriping_set(layout: *mut nacre_layout, on: c_int) -> c_int {
    with_layout("nacre_layout_overstriping_set", layout, |b| {
        b.set_stripe(|s| s.overstriping = on != 0)
    })
}

/// Stores 1 in `*on` when several stripes of the current component may land on one target,
/// else 0.
///
/// Thread safety: see `nacre_layout_new`.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_layout_overstriping_get(
    layout: *const nacre_layout,
    on: *mut c_int,
) -> c_int {
    with_layout("nacre_layout_overstriping_get", layout, |b| {
        check_out(on, "on")?;
        // SAFETY: not NULL; by the header's contract an int the caller owns.
        unsafe { *on = c_int::from(b.stripe().overstriping) };
        Ok(0)
    })
}

/// Sets the current component's extent `[start, end)` in bytes of the file; `end` is
/// `NACRE_EXTENT_EOF` for the last component. Boundaries must be multiples of 64 KiB here;
/// when the layout is used (checked then, `-EINVAL` naming the component), the components
/// must tile the file from 0 to EOF and each boundary must be a multiple of the stripe
/// sizes of both components it separates (as Lustre's `lfs setstripe -E` requires).
///
/// Thread safety: see `nacre_layout_new`.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_layout_comp_extent_set(
    layout: *mut nacre_layout,
    start: u64,
    end: u64,
) -> c_int {
    with_layout("nacre_layout_comp_extent_set", layout, |b| {
        if start >= end {
            return Err(Failure::invalid(
                &format!("extent [{start}, {end})"),
                "start below end",
            ));
        }
        let current = b.current;
        let c = &mut b.spec.components[current];
        c.start_bytes = start;
        c.end_bytes = end;
        b.resolved = None;
        Ok(0)
    })
}

/// Stores the current component's extent in `*start` and `*end`.
///
/// Thread safety: see `nacre_layout_new`.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_layout_comp_extent_get(
    layout: *const nacre_layout,
    start: *mut u64,
    end: *mut u64,
) -> c_int {
    with_layout("nacre_layout_comp_extent_get", layout, |b| {
        check_out(start, "start")?;
        check_out(end, "end")?;
        let c = &b.spec.components[b.current];
        // SAFETY: not NULL; by the header's contract u64s the caller owns.
        unsafe {
            *start = c.start_bytes;
            *end = c.end_bytes;
        }
        Ok(0)
    })
}

/// Appends a component after the last one, from the last one's end to EOF, with Lustre's
/// default striping, and makes it current (set the last component's end first). Returns
/// 0, or `-EINVAL` (the last component reaches EOF, or 64 components already).
///
/// Thread safety: see `nacre_layout_new`.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_layout_comp_add(layout: *mut nacre_layout) -> c_int {
    with_layout("nacre_layout_comp_add", layout, |b| {
        let last_end = b.spec.components.last().map_or(0, |c| c.end_bytes);
        if last_end == EOF_OFFSET_BYTES {
            return Err(Failure::invalid(
                "a component after one that ends at EOF",
                "set the last component's end (nacre_layout_comp_extent_set) first",
            ));
        }
        if b.spec.components.len() >= engine::layout::limits::MAX_COMPONENTS {
            return Err(Failure::invalid(
                "another component",
                &format!("at most {}", engine::layout::limits::MAX_COMPONENTS),
            ));
        }
        b.spec.components.push(ComponentSpec {
            start_bytes: last_end,
            end_bytes: EOF_OFFSET_BYTES,
            stripe: StripeSpec::default(),
        });
        b.current = b.spec.components.len() - 1;
        b.resolved = None;
        Ok(0)
    })
}

/// Returns the number of components.
///
/// Thread safety: see `nacre_layout_new`.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_layout_comp_count(layout: *const nacre_layout) -> c_int {
    with_layout("nacre_layout_comp_count", layout, |b| {
        Ok(b.spec.components.len() as i64)
    })
}

/// Makes component `index` (0 to count - 1) current. Returns 0, or `-EINVAL`.
///
/// Thread safety: see `nacre_layout_new`.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_layout_comp_use(layout: *mut nacre_layout, index: u32) -> c_int {
    with_layout("nacre_layout_comp_use", layout, |b| {
        let count = b.spec.components.len();
        if index as usize >= count {
            return Err(Failure::invalid(
                &format!("component {index}"),
                &format!("0 to {}", count - 1),
            ));
        }
        b.current = index as usize;
        Ok(0)
    })
}

/// Stores in `*target_id` the target of stripe `stripe` of the current component, for a
/// layout from `nacre_getstripe` or `nacre_file_layout` (as `llapi_layout_ost_index_get`).
/// Returns 0, `-EINVAL` for a stripe past the count, or `-ENODATA` for a layout not
/// resolved on targets (one being built, or a directory's default).
///
/// Thread safety: see `nacre_layout_new`.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_layout_target_get(
    layout: *const nacre_layout,
    stripe: u32,
    target_id: *mut u32,
) -> c_int {
    with_layout("nacre_layout_target_get", layout, |b| {
        check_out(target_id, "target_id")?;
        let Some(resolved) = &b.resolved else {
            return Err(Failure {
                errno: libc::ENODATA,
                message: "the layout is not a file's: it has no targets yet".into(),
            });
        };
        let targets = resolved
            .components()
            .get(b.current)
            .map(|c| c.stripe.target_ids())
            .unwrap_or_default();
        let Some(&t) = targets.get(stripe as usize) else {
            return Err(Failure::invalid(
                &format!("stripe {stripe}"),
                &format!("0 to {}", targets.len().saturating_sub(1)),
            ));
        };
        // SAFETY: not NULL; by the header's contract a uint32_t the caller owns.
        unsafe { *target_id = t };
        Ok(0)
    })
}

/// Writes the layout as `nacre getstripe` prints it (Lustre's `lfs getstripe` shape) into
/// `buf` of `len` bytes, NUL-terminated and cut to fit, and returns the text's full length
/// as `snprintf` does (`buf` may be NULL when `len` is 0, to learn the length).
///
/// Thread safety: see `nacre_layout_new`.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_layout_to_string(
    layout: *const nacre_layout,
    buf: *mut c_char,
    len: usize,
) -> c_int {
    with_layout("nacre_layout_to_string", layout, |b| {
        let text = match &b.resolved {
            Some(l) => l.to_string(),
            None => b.spec.to_string(),
        };
        if len > 0 {
            check_out(buf, "buf")?;
            let mut cut = text.len().min(len - 1);
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            // SAFETY: `buf` holds `len` > cut bytes by the header's contract.
            unsafe { copy_c_string(&text[..cut], buf) };
        }
        Ok(text.len() as i64)
    })
}

/// Stores in `*out` the layout of `path`: a file's resolved layout (with its targets), or a
/// directory's default. Returns 0, or `-ENODATA` for a directory without a default, or
/// another negative errno.
///
/// Thread safety: safe from any thread.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_getstripe(
    client: *mut nacre_client,
    path: *const c_char,
    out: *mut *mut nacre_layout,
) -> c_int {
    run_int("nacre_getstripe", || {
        check_out(out, "out")?;
        let c = handle::client(client)?;
        // SAFETY: the header's contract: a NUL-terminated path.
        let path = unsafe { path_arg(path, "path") }?;
        let attr = c.stat(path)?.attr;
        let made = match (attr.layout, attr.default_layout) {
            (Some(l), _) => new_handle(LayoutSpec::from_layout(&l), Some(l)),
            (None, Some(spec)) => new_handle(spec, None),
            (None, None) => {
                return Err(Failure {
                    errno: libc::ENODATA,
                    message: format!("{path}: a directory with no default layout"),
                });
            }
        };
        // SAFETY: not NULL; by the header's contract it points to a handle.
        unsafe { *out = made };
        Ok(0)
    })
}

/// Removes the default layout of directory `path` (as `lfs setstripe -d`): files created in
/// it then take the root directory's default, as in Lustre, or the file system's (1 MiB
/// stripes, 1 stripe). Returns 0, or `-ENOTDIR`, `-ENOENT`, `-EPERM` (not the owner), ...
///
/// Thread safety: safe from any thread.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_setstripe_delete(client: *mut nacre_client, path: *const c_char) -> c_int {
    run_int("nacre_setstripe_delete", || {
        let c = handle::client(client)?;
        // SAFETY: the header's contract: a NUL-terminated path.
        let path = unsafe { path_arg(path, "path") }?;
        c.set_default_layout(path, None)?;
        Ok(0)
    })
}

/// Stores in `*out` the resolved layout of an open file.
///
/// Thread safety: safe from any thread.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_file_layout(file: *mut nacre_file, out: *mut *mut nacre_layout) -> c_int {
    run_int("nacre_file_layout", || {
        check_out(out, "out")?;
        let f = handle::file(file)?;
        let l = f.layout().clone();
        // SAFETY: not NULL; by the header's contract it points to a handle.
        unsafe { *out = new_handle(LayoutSpec::from_layout(&l), Some(l)) };
        Ok(0)
    })
}

/// What `lfs setstripe` does: on a directory, sets the default layout its new files and
/// subdirectories inherit; on a path that does not exist, creates an empty file with the
/// layout and permission bits `mode`. Returns 0, `-EEXIST` for an existing file (a file's
/// layout is set when it is created), `-EINVAL` for an invalid layout, ...
///
/// Thread safety: safe from any thread.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_setstripe(
    client: *mut nacre_client,
    path: *const c_char,
    layout: *const nacre_layout,
    mode: u32,
) -> c_int {
    run_int("nacre_setstripe", || {
        let c = handle::client(client)?;
        let spec = handle::layout(layout)?.spec();
        // SAFETY: the header's contract: a NUL-terminated path.
        let path = unsafe { path_arg(path, "path") }?;
        c.setstripe(path, spec, mode)?;
        Ok(0)
    })
}
