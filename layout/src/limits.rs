//! Every bound of the crate, in one place, each with its unit in its name.

/// Stripe sizes are whole multiples of this (Lustre's `LOV_MIN_STRIPE_SIZE`, 64 KiB).
pub const STRIPE_SIZE_UNIT_BYTES: u64 = 64 * 1024;

/// The largest stripe size accepted (4 GiB).
pub const MAX_STRIPE_SIZE_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// The stripe size a [`crate::StripeSpec`] asks for by default (Lustre's default, 1 MiB).
pub const DEFAULT_STRIPE_SIZE_BYTES: u64 = 1024 * 1024;

/// The most stripes one component may have (Lustre's `LOV_MAX_STRIPE_COUNT`).
pub const MAX_STRIPE_COUNT: u32 = 2000;

/// `stripe_count` value of a [`crate::StripeSpec`] meaning "every target of the pool".
pub const STRIPE_COUNT_ALL: i32 = -1;

/// `stripe_index` value of a [`crate::StripeSpec`] meaning "the caller picks the first target".
pub const STRIPE_INDEX_ANY: i64 = -1;

/// The longest pool name (Lustre's `LOV_MAXPOOLNAME`), in bytes.
pub const MAX_POOL_NAME_BYTES: usize = 15;

/// The most components one composite layout may have.
pub const MAX_COMPONENTS: usize = 64;

/// The file offset that stands for "end of file" as the end of the last component
/// (Lustre's `LUSTRE_EOF`).
pub const EOF_OFFSET_BYTES: u64 = u64::MAX;

/// Bits of an object id that carry the file id.
pub const OBJECT_ID_FILE_BITS: u32 = 40;

/// Bits of an object id that carry the component index.
pub const OBJECT_ID_COMPONENT_BITS: u32 = 8;

/// Bits of an object id that carry the stripe index.
pub const OBJECT_ID_STRIPE_BITS: u32 = 16;

/// The largest file id that fits an object id (2^40 - 1).
pub const MAX_FILE_ID: u64 = (1 << OBJECT_ID_FILE_BITS) - 1;

/// The largest component index that fits an object id.
pub const MAX_OBJECT_ID_COMPONENT: u16 = (1 << OBJECT_ID_COMPONENT_BITS) - 1;

/// The largest stripe index that fits an object id.
pub const MAX_OBJECT_ID_STRIPE: u32 = (1 << OBJECT_ID_STRIPE_BITS) - 1;

/// Size of the binary form's header, in bytes.
pub const ENCODED_HEADER_BYTES: usize = 24;

/// Size of one fixed component record of the binary form, in bytes.
pub const ENCODED_COMPONENT_BYTES: usize = 32;

/// Size of one target id in the binary form, in bytes.
pub const ENCODED_TARGET_ID_BYTES: usize = 4;

/// The largest binary form a valid layout can have, in bytes: the header and, for each of
/// the most components, a record, the longest pool name and the most target ids.
pub const MAX_ENCODED_LAYOUT_BYTES: usize = ENCODED_HEADER_BYTES
    + MAX_COMPONENTS
        * (ENCODED_COMPONENT_BYTES
            + MAX_POOL_NAME_BYTES
            + MAX_STRIPE_COUNT as usize * ENCODED_TARGET_ID_BYTES);

/// The longest excerpt of offending text an error carries, in bytes.
pub const MAX_TEXT_EXCERPT_BYTES: usize = 80;

// The object id packs exactly into 64 bits, and every valid component and stripe fits.
const _: () = assert!(OBJECT_ID_FILE_BITS + OBJECT_ID_COMPONENT_BITS + OBJECT_ID_STRIPE_BITS == 64);
const _: () = assert!(MAX_COMPONENTS <= MAX_OBJECT_ID_COMPONENT as usize + 1);
const _: () = assert!(MAX_STRIPE_COUNT <= MAX_OBJECT_ID_STRIPE + 1);
// The largest stripe size is itself a whole number of units.
const _: () = assert!(MAX_STRIPE_SIZE_BYTES.is_multiple_of(STRIPE_SIZE_UNIT_BYTES));
const _: () = assert!(DEFAULT_STRIPE_SIZE_BYTES.is_multiple_of(STRIPE_SIZE_UNIT_BYTES));
// Range checks rely on EOF being the largest offset: a range whose end does not overflow
// cannot end past EOF.
const _: () = assert!(EOF_OFFSET_BYTES == u64::MAX);
// Lengths in the binary header are u32.
const _: () = assert!(MAX_ENCODED_LAYOUT_BYTES <= u32::MAX as usize);
