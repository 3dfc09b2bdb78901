//! Files: open and create with flags, mode and layout; pread, pwrite, preadv, pwritev,
//! fsync, ftruncate, fstat, close.

use std::ffi::{c_char, c_int, c_void};
use std::io::{IoSlice, IoSliceMut};

use engine::OpenOptions;

use crate::boundary::{Failure, check_buffer, check_out, path_arg, run, run_int};
use crate::client::{fill_stat, nacre_attr, nacre_client};
use crate::handle::{self, Object};
use crate::layout::nacre_layout;
use crate::limits::{NACRE_IO_MAX, NACRE_IOV_MAX};

/// An open file (opaque).
pub struct nacre_file {
    _opaque: [u8; 0],
}

/// Opens `path` with `open(2)` flags (`O_RDONLY`, `O_WRONLY` or `O_RDWR`, with `O_CREAT`,
/// `O_EXCL`, `O_TRUNC`; `O_CLOEXEC`, `O_DIRECT` and `O_LARGEFILE` are accepted and mean
/// nothing here). A file it creates gets permission bits `mode` less the process's umask,
/// and `layout` (NULL: its directory's default, else the file system's). Stores the file
/// in `*out`. Returns 0, or `-ENOENT`, `-EEXIST`, `-EACCES`, `-EISDIR`, `-EINVAL` (unknown
/// flags, invalid layout), ...
///
/// Thread safety: safe from any thread; the file may then be used by every thread at once.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_open(
    client: *mut nacre_client,
    path: *const c_char,
    flags: c_int,
    mode: u32,
    layout: *const nacre_layout,
    out: *mut *mut nacre_file,
) -> c_int {
    open_as("nacre_open", client, path, flags, mode, layout, out)
}

/// `nacre_open`, its errors named after the C call `name`.
fn open_as(
    name: &str,
    client: *mut nacre_client,
    path: *const c_char,
    flags: c_int,
    mode: u32,
    layout: *const nacre_layout,
    out: *mut *mut nacre_file,
) -> c_int {
    run_int(name, || {
        check_out(out, "out")?;
        let c = handle::client(client)?;
        // SAFETY: the header's contract: a NUL-terminated path.
        let path = unsafe { path_arg(path, "path") }?;
        let mut options = OpenOptions::from_flags(flags, mode)?;
        if !layout.is_null() {
            options = options.layout(handle::layout(layout)?.spec());
        }
        let file = c.open(path, &options)?;
        // SAFETY: not NULL; by the header's contract it points to a handle.
        unsafe { *out = handle::insert(Object::File(file)) };
        Ok(0)
    })
}

/// `nacre_open(client, path, O_RDWR | O_CREAT | O_TRUNC, mode, layout, out)`.
///
/// Thread safety: as `nacre_open`.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_create(
    client: *mut nacre_client,
    path: *const c_char,
    mode: u32,
    layout: *const nacre_layout,
    out: *mut *mut nacre_file,
) -> c_int {
    open_as(
        "nacre_create",
        client,
        path,
        libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC,
        mode,
        layout,
        out,
    )
}

/// Closes a file. Nothing is buffered, so nothing is lost; call `nacre_fsync` first for
/// durability. Returns 0, or `-EBADF`.
///
/// Thread safety: safe from any thread; calls already running on the handle finish
/// normally (an asynchronous operation keeps the file until it completes), later ones get
/// `-EBADF`.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_close(file: *mut nacre_file) -> c_int {
    run_int("nacre_close", || {
        handle::remove(file, "file", |o| matches!(o, Object::File(_))).map(|_| 0)
    })
}

/// Reads up to `len` bytes at `offset` into `buf`; returns the bytes read (fewer only at the
/// end of the file, 0 past it), or a negative errno. Holes read as zeros, and so does the
/// rest of `buf` after a read short at the end of the file: all `len` bytes are written,
/// the count returned says how many are the file's. `len` must be 1 to `NACRE_IO_MAX`,
/// and no one else may touch `buf` during the call.
///
/// Thread safety: safe from any thread, any number at once on one file.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_pread(
    file: *mut nacre_file,
    buf: *mut c_void,
    len: usize,
    offset: u64,
) -> i64 {
    run("nacre_pread", || {
        let f = handle::file(file)?;
        check_buffer(buf.cast(), len, "buf")?;
        // SAFETY: checked not NULL and in range; by the header's contract `len` writable
        // bytes the caller lends for the call.
        let slice = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len) };
        Ok(f.read_at(slice, offset)? as i64)
    })
}

/// Writes `len` bytes from `buf` at `offset`; returns `len`, or a negative errno (a target
/// that cannot be reached names itself in `nacre_last_error`). `len` must be 1 to
/// `NACRE_IO_MAX`.
///
/// Thread safety: safe from any thread, any number at once on one file (writes to
/// overlapping ranges at once leave either's bytes, as with pwrite).
#[unsafe(no_mangle)]
pub extern "C" fn nacre_pwrite(
    file: *mut nacre_file,
    buf: *const c_void,
    len: usize,
    offset: u64,
) -> i64 {
    run("nacre_pwrite", || {
        let f = handle::file(file)?;
        check_buffer(buf.cast(), len, "buf")?;
        // SAFETY: checked not NULL and in range; by the header's contract `len` readable
        // bytes for the call.
        let slice = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) };
        Ok(f.write_at(slice, offset)? as i64)
    })
}

/// Checks an iovec array and returns its entries with bytes in them.
///
/// # Safety
/// `iov` is NULL or points to `count` iovecs, each naming memory the caller lends.
unsafe fn iovecs<'a>(iov: *const libc::iovec, count: c_int) -> Result<&'a [libc::iovec], Failure> {
    if iov.is_null() {
        return Err(Failure::invalid("iov", "an array of iovecs, not NULL"));
    }
    if count <= 0 || count > NACRE_IOV_MAX {
        return Err(Failure::invalid(
            &format!("iovcnt {count}"),
            &format!("1 to {NACRE_IOV_MAX}"),
        ));
    }
    // SAFETY: not NULL; by the caller's contract `count` iovecs.
    let all = unsafe { std::slice::from_raw_parts(iov, count as usize) };
    let mut total: u64 = 0;
    for (i, v) in all.iter().enumerate() {
        if v.iov_len > 0 {
            check_buffer(v.iov_base.cast(), v.iov_len, &format!("iov[{i}]"))?;
        }
        total = total.saturating_add(v.iov_len as u64);
    }
    if total == 0 || total > NACRE_IO_MAX {
        return Err(Failure::invalid(
            &format!("iovecs of {total} bytes in all"),
            &format!("1 to {NACRE_IO_MAX} bytes"),
        ));
    }
    Ok(all)
}

/// `nacre_pread` into `iovcnt` buffers in order, as `preadv(2)`; returns the bytes read
/// (the buffers' bytes past them zeroed, as `nacre_pread`'s). `iovcnt` must be 1 to
/// `NACRE_IOV_MAX`, the total 1 to `NACRE_IO_MAX` bytes, and the buffers must not overlap.
///
/// Thread safety: as `nacre_pread`.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_preadv(
    file: *mut nacre_file,
    iov: *const libc::iovec,
    iovcnt: c_int,
    offset: u64,
) -> i64 {
    run("nacre_preadv", || {
        let f = handle::file(file)?;
        // SAFETY: the header's contract: `iovcnt` iovecs.
        let all = unsafe { iovecs(iov, iovcnt) }?;
        let mut bufs: Vec<IoSliceMut<'_>> = all
            .iter()
            .filter(|v| v.iov_len > 0)
            .map(|v| {
                // SAFETY: checked not NULL and in range; by the header's contract writable
                // memory the caller lends for the call.
                IoSliceMut::new(unsafe {
                    std::slice::from_raw_parts_mut(v.iov_base.cast(), v.iov_len)
                })
            })
            .collect();
        Ok(f.readv_at(&mut bufs, offset)? as i64)
    })
}

/// `nacre_pwrite` from `iovcnt` buffers in order, as `pwritev(2)`; returns the bytes
/// written.
///
/// Thread safety: as `nacre_pwrite`.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_pwritev(
    file: *mut nacre_file,
    iov: *const libc::iovec,
    iovcnt: c_int,
    offset: u64,
) -> i64 {
    run("nacre_pwritev", || {
        let f = handle::file(file)?;
        // SAFETY: the header's contract: `iovcnt` iovecs.
        let all = unsafe { iovecs(iov, iovcnt) }?;
        let bufs: Vec<IoSlice<'_>> = all
            .iter()
            .filter(|v| v.iov_len > 0)
            .map(|v| {
                // SAFETY: checked not NULL and in range; by the header's contract readable
                // memory for the call.
                IoSlice::new(unsafe { std::slice::from_raw_parts(v.iov_base.cast(), v.iov_len) })
            })
            .collect();
        Ok(f.writev_at(&bufs, offset)? as i64)
    })
}

/// Makes every byte written to the file (by anyone) durable on its targets. Returns 0 or a
/// negative errno.
///
/// Thread safety: safe from any thread.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_fsync(file: *mut nacre_file) -> c_int {
    run_int("nacre_fsync", || {
        handle::file(file)?.sync()?;
        Ok(0)
    })
}

/// Sets the file's size: cuts it, or extends it with a hole (needs write access). Returns
/// 0 or a negative errno.
///
/// Thread safety: safe from any thread.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_ftruncate(file: *mut nacre_file, size: u64) -> c_int {
    run_int("nacre_ftruncate", || {
        handle::file(file)?.truncate(size)?;
        Ok(0)
    })
}

/// Fills `*out` with the open file's attributes and its current size.
///
/// Thread safety: safe from any thread.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_fstat(file: *mut nacre_file, out: *mut nacre_attr) -> c_int {
    run_int("nacre_fstat", || {
        check_out(out, "out")?;
        fill_stat(&handle::file(file)?.stat()?, out);
        Ok(0)
    })
}
