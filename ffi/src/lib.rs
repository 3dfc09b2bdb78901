//! nacre-ffi is libnacre, the C ABI (libnacre.so / .a, include/nacre.h, nacre.pc) that C,
//! C++ and MPI programs link. It has no logic of its own: every call goes to `nacre`.
//!
//! This crate is filled by the C ABI issue; for now it only states its job.
