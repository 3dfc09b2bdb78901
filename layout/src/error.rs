//! The one error type of the crate: every refusal names the field, the value and what is
//! allowed; decoding and parsing errors say what was found and what was expected.

/// Why a layout, a range, a binary form or a text form was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// A field holds a value outside what is allowed.
    #[error("invalid {field}: {value} (allowed: {allowed})")]
    InvalidField {
        /// The field, named as in the API.
        field: &'static str,
        /// The value found, printed.
        value: String,
        /// What the field allows.
        allowed: &'static str,
    },

    /// The pool has no targets to stripe over.
    #[error("the pool has no targets")]
    EmptyPool,

    /// A target asked for (the stripe index, or the caller's pick) is not in the pool.
    #[error("{field} {target_id} is not a target of the pool")]
    TargetNotInPool {
        /// `stripe_index` or `first_target_pick`.
        field: &'static str,
        /// The target id asked for.
        target_id: u32,
    },

    /// More stripes were asked for than the pool has targets, without overstriping.
    #[error(
        "stripe_count {stripe_count} is more than the {pool_target_count} targets of the pool \
         (allowed only with overstriping)"
    )]
    PoolTooSmall {
        /// The stripe count asked for.
        stripe_count: u32,
        /// The number of targets in the pool.
        pool_target_count: usize,
    },

    /// Two stripes of a layout without overstriping are on the same target.
    #[error(
        "target {target_id} holds stripes {first_stripe} and {second_stripe} \
         (allowed only with overstriping)"
    )]
    DuplicateTarget {
        /// The target that appears twice.
        target_id: u32,
        /// The first stripe on it.
        first_stripe: u32,
        /// Another stripe on it.
        second_stripe: u32,
    },

    /// A layout has no components.
    #[error("a layout needs at least one component")]
    NoComponents,

    /// A layout has more components than allowed.
    #[error("{count} components, more than the {max} allowed")]
    TooManyComponents {
        /// The number of components found.
        count: usize,
        /// [`crate::limits::MAX_COMPONENTS`].
        max: usize,
    },

    /// A component does not start where the previous one ended (0 for the first): a gap or
    /// an overlap.
    #[error("component {component} starts at {start_bytes}, expected {expected_start_bytes}")]
    ComponentNotContiguous {
        /// Index of the component.
        component: usize,
        /// Its start.
        start_bytes: u64,
        /// Where it must start.
        expected_start_bytes: u64,
    },

    /// A component ends at or before its start.
    #[error("component {component} is empty: [{start_bytes}, {end_bytes})")]
    ComponentEmpty {
        /// Index of the component.
        component: usize,
        /// Its start.
        start_bytes: u64,
        /// Its end.
        end_bytes: u64,
    },

    /// A component boundary is not a multiple of the stripe size of a component it touches.
    #[error(
        "component {component} ends at {end_bytes}, not a multiple of the stripe size \
         {stripe_size_bytes} of component {aligned_to_component}"
    )]
    UnalignedBoundary {
        /// Index of the component whose end is unaligned.
        component: usize,
        /// Its end.
        end_bytes: u64,
        /// The stripe size it must be a multiple of.
        stripe_size_bytes: u64,
        /// The component owning that stripe size (this one or the next).
        aligned_to_component: usize,
    },

    /// The last component does not end at EOF.
    #[error("the last component ends at {end_bytes}, expected EOF")]
    LastComponentNotEof {
        /// Its end.
        end_bytes: u64,
    },

    /// A plain layout must be one component covering `[0, EOF)`.
    #[error("a plain layout has {component_count} components, expected one covering [0, EOF)")]
    PlainNotSingleComponent {
        /// The number of components found.
        component_count: usize,
    },

    /// `offset_bytes + len` does not fit a file offset.
    #[error("range at {offset_bytes} of {len} bytes overflows the file offset")]
    RangeOverflow {
        /// Start of the range.
        offset_bytes: u64,
        /// Its length.
        len: u64,
    },

    /// An object named in a size list is not part of the layout.
    #[error("component {component} stripe {stripe} is not an object of the layout")]
    ObjectNotInLayout {
        /// Component index.
        component: u16,
        /// Stripe index.
        stripe: u32,
    },

    /// An object is larger than the part of its component it can hold.
    #[error(
        "object of component {component} stripe {stripe} has {size_bytes} bytes, \
         past the end of its component"
    )]
    ObjectPastComponent {
        /// Component index.
        component: u16,
        /// Stripe index.
        stripe: u32,
        /// Its size.
        size_bytes: u64,
    },

    /// Binary form: the input ends before a part that must be there.
    #[error(
        "binary layout truncated in the {part}: needs {needed_bytes} bytes, has {available_bytes}"
    )]
    Truncated {
        /// The part being read.
        part: &'static str,
        /// Bytes the part needs.
        needed_bytes: usize,
        /// Bytes left.
        available_bytes: usize,
    },

    /// Binary form: the magic number is wrong.
    #[error("binary layout magic {found:#010x}, expected {expected:#010x}")]
    BadMagic {
        /// Magic found.
        found: u32,
        /// [`crate::binary::LAYOUT_MAGIC`].
        expected: u32,
    },

    /// Binary form: a format version this build does not read.
    #[error("binary layout version {found}, this build reads versions 1..={max_supported}")]
    UnsupportedVersion {
        /// Version found.
        found: u16,
        /// [`crate::binary::FORMAT_VERSION`].
        max_supported: u16,
    },

    /// Binary form: the length in the header is larger than any valid layout.
    #[error("binary layout claims {found_bytes} bytes, more than the {max_bytes} any layout needs")]
    LengthTooLarge {
        /// Length in the header.
        found_bytes: usize,
        /// [`crate::limits::MAX_ENCODED_LAYOUT_BYTES`].
        max_bytes: usize,
    },

    /// Binary form: bytes follow the length the header gives.
    #[error("binary layout has {trailing_bytes} bytes past the {header_bytes} its header gives")]
    TrailingBytes {
        /// Length in the header.
        header_bytes: usize,
        /// Bytes after it.
        trailing_bytes: usize,
    },

    /// Binary form: the components end before the length the header gives.
    #[error("binary layout header gives {header_bytes} bytes, its components take {content_bytes}")]
    LengthMismatch {
        /// Length in the header.
        header_bytes: usize,
        /// Bytes the header and components take.
        content_bytes: usize,
    },

    /// Binary form: the checksum does not match the bytes.
    #[error("binary layout checksum {found:#010x}, computed {computed:#010x}")]
    ChecksumMismatch {
        /// Checksum in the header.
        found: u32,
        /// Checksum of the bytes.
        computed: u32,
    },

    /// Binary form: a count above its limit.
    #[error("binary layout {field} is {found}, more than the {max} allowed")]
    CountTooLarge {
        /// The count's field.
        field: &'static str,
        /// The count found.
        found: u64,
        /// Its limit.
        max: u64,
    },

    /// Binary form: flag bits this version does not define, or a reserved field not zero.
    #[error("binary layout {field} has unknown bits {found:#x}")]
    UnknownBits {
        /// The field.
        field: &'static str,
        /// The bits outside the known ones.
        found: u64,
    },

    /// Text form: a line is not what was expected.
    #[error("text line {line_number}: expected {expected}, found {found:?}")]
    TextSyntax {
        /// 1-based line number (one past the last line at end of input).
        line_number: usize,
        /// What was expected.
        expected: &'static str,
        /// What was found (an excerpt).
        found: String,
    },

    /// Text form: the text reads well but describes an invalid layout.
    #[error("text line {line_number}: {source}")]
    TextInvalid {
        /// 1-based line number of the block that is invalid.
        line_number: usize,
        /// Why the layout is invalid.
        source: Box<LayoutError>,
    },
}
