//! nacre-layout: stripe layouts with Lustre's semantics and the mapping of file bytes to
//! object bytes. Pure data and arithmetic: no I/O, no threads, no unsafe.
#![forbid(unsafe_code)]
