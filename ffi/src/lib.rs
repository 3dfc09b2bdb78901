//! nacre-ffi is libnacre, the C ABI (libnacre.so / .a, include/nacre.h, nacre.pc) that C,
//! C++, Fortran-through-C and MPI programs link. It has no logic of its own: every call goes
//! to the engine crate (`nacre`), and this crate only checks what C hands it, keeps the
//! handles, and turns errors into negative errno values.
//!
//! The rules every function keeps (the header repeats them):
//! - It returns 0 or a non-negative count on success and a negative errno value on failure;
//!   [`nacre_last_error`] then gives this thread's message for it.
//! - Handles are opaque numbers kept in a table, never pointers the library dereferences: a
//!   NULL, closed, freed or foreign handle is answered with `-EBADF`, never a crash.
//! - Pointers, lengths and strings are checked before use (NULL, zero and absurd lengths,
//!   overlong paths); a panic inside is caught at the boundary and answered with `-EIO`.
//! - Every function may be called from several threads at once; what a concurrent call sees
//!   is written on each function.

// The handle and struct names are the C names.
#![allow(non_camel_case_types)]
// The functions are called from C, where `unsafe` means nothing: what a caller must hand
// them (valid pointers of the stated sizes) is their contract in the header, and every
// dereference says why it is sound under it.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

// Handles are numbers above every user-space address (see limits::FIRST_HANDLE), which
// needs 64-bit pointers.
#[cfg(not(target_pointer_width = "64"))]
compile_error!("libnacre's handles need a 64-bit target");

mod boundary;
mod client;
mod file;
mod handle;
mod layout;
mod limits;
mod queue;

pub use boundary::{nacre_last_error, nacre_strerror};
pub use client::*;
pub use file::*;
pub use layout::*;
pub use limits::*;
pub use queue::*;
