//! The boundary between C and Rust: checking arguments, catching panics, turning errors
//! into negative errno values, and each thread's last error message.

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char, c_int};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;

use crate::limits::{LAST_ERROR_BYTES, MAX_ERRNO_TEXT, NACRE_IO_MAX, NACRE_PATH_MAX};

/// Why a call failed: the errno value (positive) and the message.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) errno: i32,
    pub(crate) message: String,
}

impl Failure {
    /// An argument outside what it allows.
    pub(crate) fn invalid(what: &str, allowed: &str) -> Failure {
        Failure {
            errno: libc::EINVAL,
            message: format!("{what}: allowed {allowed}"),
        }
    }

    /// A handle that is NULL, closed, freed or not of the kind the call takes.
    pub(crate) fn bad_handle(kind: &str) -> Failure {
        Failure {
            errno: libc::EBADF,
            message: format!("not an open {kind} handle (NULL, closed, or another kind)"),
        }
    }
}

impl From<engine::Error> for Failure {
    fn from(e: engine::Error) -> Failure {
        Failure {
            errno: e.errno(),
            message: e.to_string(),
        }
    }
}

impl From<engine::layout::LayoutError> for Failure {
    fn from(e: engine::layout::LayoutError) -> Failure {
        Failure::from(engine::Error::from(e))
    }
}

thread_local! {
    /// This thread's last error message, NUL-terminated, in place for the thread's life: the
    /// pointer `nacre_last_error` returns never dangles, whatever the caller does next.
    static LAST_ERROR: RefCell<[u8; LAST_ERROR_BYTES]> = const { RefCell::new([0; LAST_ERROR_BYTES]) };
}

fn set_last_error(message: String) {
    // `try_with`: a call made while the thread's locals are being torn down (from a pthread
    // key destructor, say) keeps no message rather than aborting the process.
    let _ = LAST_ERROR.try_with(|last| {
        let Ok(mut last) = last.try_borrow_mut() else {
            return;
        };
        // Cut at the first NUL, and to fit with its own NUL, at a character boundary.
        let text = message.split('\0').next().unwrap_or_default();
        let mut len = text.len().min(LAST_ERROR_BYTES - 1);
        while !text.is_char_boundary(len) {
            len -= 1;
        }
        last[..len].copy_from_slice(&text.as_bytes()[..len]);
        last[len] = 0;
    });
}

/// Runs the body of `extern "C"` function `name`: its result, or the negative errno of its
/// failure (with this thread's last error set), or `-EIO` if it panicked.
pub(crate) fn run(name: &str, body: impl FnOnce() -> Result<i64, Failure>) -> i64 {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(n)) => n,
        Ok(Err(f)) => {
            set_last_error(format!("{name}: {}", f.message));
            -i64::from(f.errno)
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            set_last_error(format!("{name}: internal error (a panic, caught): {what}"));
            -i64::from(libc::EIO)
        }
    }
}

/// [`run`] for the functions that return an `int`: their success values are small.
pub(crate) fn run_int(name: &str, body: impl FnOnce() -> Result<i64, Failure>) -> c_int {
    let n = run(name, body);
    c_int::try_from(n).unwrap_or(if n < 0 { -libc::EIO } else { c_int::MAX })
}

/// Records failures seen outside a call's own result (failed completions), so that
/// `nacre_last_error` explains each: one after another, separated by "; ", as many whole
/// as fit in the message.
pub(crate) fn note_failures(name: &str, messages: &[String]) {
    let mut text = format!("{name}: ");
    for (i, m) in messages.iter().enumerate() {
        let sep = if i == 0 { "" } else { "; " };
        if i > 0 && text.len() + sep.len() + m.len() >= LAST_ERROR_BYTES {
            let rest = format!("; and {} more", messages.len() - i);
            if text.len() + rest.len() < LAST_ERROR_BYTES {
                text.push_str(&rest);
            }
            break;
        }
        text.push_str(sep);
        text.push_str(m);
    }
    set_last_error(text);
}

/// A C string argument of at most `max` bytes, as UTF-8. It is read no further than
/// `max + 1` bytes, so a string with no NUL is an error, not an overrun.
///
/// # Safety
/// `text` is NULL or points to at least `max + 1` readable bytes or to a NUL-terminated
/// string.
pub(crate) unsafe fn str_arg<'a>(
    text: *const c_char,
    what: &str,
    max: usize,
) -> Result<&'a str, Failure> {
    if text.is_null() {
        return Err(Failure::invalid(what, "a string, not NULL"));
    }
    // SAFETY: the caller's contract: readable up to the NUL or `max + 1` bytes.
    let len = unsafe { libc::strnlen(text, max + 1) };
    if len > max {
        return Err(Failure {
            errno: libc::ENAMETOOLONG,
            message: format!("{what}: longer than {max} bytes"),
        });
    }
    // SAFETY: `len` bytes then a NUL are readable, as strnlen just found.
    let c = unsafe { CStr::from_ptr(text) };
    c.to_str().map_err(|_| Failure::invalid(what, "UTF-8 text"))
}

/// A path argument (see [`str_arg`]).
///
/// # Safety
/// As [`str_arg`].
pub(crate) unsafe fn path_arg<'a>(path: *const c_char, what: &str) -> Result<&'a str, Failure> {
    // SAFETY: the caller's contract is str_arg's.
    unsafe { str_arg(path, what, NACRE_PATH_MAX) }
}

/// Copies `text` and a NUL to `buf`.
///
/// # Safety
/// `buf` must hold `text.len() + 1` writable bytes.
pub(crate) unsafe fn copy_c_string(text: &str, buf: *mut c_char) {
    // SAFETY: the caller's contract; the regions cannot overlap (`text` is ours).
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), text.len());
        *buf.add(text.len()) = 0;
    }
}

/// Checks a buffer argument: not NULL, 1 to [`NACRE_IO_MAX`] bytes.
pub(crate) fn check_buffer(ptr: *const u8, len: usize, what: &str) -> Result<(), Failure> {
    if ptr.is_null() {
        return Err(Failure::invalid(what, "a buffer, not NULL"));
    }
    if len == 0 || len as u64 > NACRE_IO_MAX {
        return Err(Failure::invalid(
            &format!("{what} length {len}"),
            &format!("1 to {NACRE_IO_MAX} bytes"),
        ));
    }
    if (ptr as usize).checked_add(len).is_none() {
        return Err(Failure::invalid(
            &format!("{what} length {len}"),
            "a range inside the address space",
        ));
    }
    Ok(())
}

/// Checks an out-pointer argument.
pub(crate) fn check_out<T>(out: *mut T, what: &str) -> Result<(), Failure> {
    if out.is_null() {
        return Err(Failure::invalid(what, "a pointer to fill, not NULL"));
    }
    Ok(())
}

fn errno_texts() -> &'static [CString] {
    static TEXTS: OnceLock<Vec<CString>> = OnceLock::new();
    TEXTS.get_or_init(|| {
        (0..=MAX_ERRNO_TEXT)
            .map(|e| {
                let text = if e == 0 {
                    "Success".to_string()
                } else {
                    engine::error::errno_text(e as i32)
                };
                CString::new(text).unwrap_or_default()
            })
            .collect()
    })
}

/// The text of an errno value, negative as the calls return it or positive ("No such file
/// or directory" for `-ENOENT`). The string is static: never free it.
///
/// Thread safety: safe from any thread.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_strerror(err: c_int) -> *const c_char {
    const UNKNOWN: &CStr = c"Unknown error";
    let text = catch_unwind(|| {
        let e = err.unsigned_abs() as usize;
        errno_texts().get(e).map(|t| t.as_ptr())
    });
    match text {
        Ok(Some(ptr)) => ptr,
        _ => UNKNOWN.as_ptr(),
    }
}

/// This thread's message about its last failed call (naming the call and what was wrong),
/// or "" if none failed yet; `nacre_queue_wait` also sets it for a failed completion it
/// returns. The string belongs to the library: the pointer stays valid for the thread's
/// life, and the text changes at the thread's next failure (copy it to keep it). Messages
/// are cut to 1023 bytes.
///
/// Thread safety: each thread has its own message.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_last_error() -> *const c_char {
    const NONE: &CStr = c"";
    let ptr = catch_unwind(|| {
        LAST_ERROR
            .try_with(|last| last.as_ptr().cast::<c_char>())
            .ok()
    });
    match ptr {
        Ok(Some(p)) => p,
        _ => NONE.as_ptr(),
    }
}
