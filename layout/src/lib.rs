//! nacre-layout: Lustre's file layouts as pure data and arithmetic.
//!
//! Its one job is to say where every byte of a file lives: which object of which
//! target, at which offset in that object, and back again.
//!
//! It owns:
//! - the striping request a user makes ([`StripeSpec`], what `lfs setstripe` takes) and its
//!   resolution against a pool of targets into the striping a file has ([`StripeLayout`]);
//! - composite (progressive) layouts made of components `[start, end)` ([`Layout`]);
//! - the mapping of a file byte range to object extents ([`Layout::extents`]), its inverse
//!   ([`Layout::file_offset`]) and the file size implied by object sizes
//!   ([`Layout::file_size`]);
//! - the plan of a transfer: a range's extents grouped into requests per target within a
//!   request's bounds, and each extent's bytes found in the caller's memory ([`plan`]);
//! - the deterministic derivation of object ids ([`object_id`], [`object_id_parts`]);
//! - a versioned, checksummed binary form ([`Layout::encode`], [`Layout::decode`]) and a text
//!   form that reads like `lfs getstripe` (`Display`, [`Layout::parse_text`]).
//!
//! It never does I/O, never starts threads, never uses `unsafe`, and never panics on input:
//! every invalid layout, range, encoding or text is answered with a [`LayoutError`] naming the
//! field, the value found and what is allowed. Every bound lives in [`limits`].
#![forbid(unsafe_code)]

pub mod binary;
pub mod composite;
pub mod error;
pub mod limits;
pub mod map;
pub mod object;
pub mod plan;
pub mod stripe;
pub mod text;

pub use composite::{Component, Layout};
pub use error::LayoutError;
pub use map::{Extents, LayoutObject, ObjectExtent, ObjectSize};
pub use object::{object_id, object_id_parts};
pub use plan::{MemoryMap, MemoryPiece, PlannedRequest, RequestBounds, plan_requests};
pub use stripe::{PoolName, StripeLayout, StripeSpec};
