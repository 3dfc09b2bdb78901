//! The binary form of a layout: versioned, checksummed, little-endian.
//!
//! ```text
//! header (24 bytes, EncodedHeader)
//! per component, in file order:
//!     record (32 bytes, EncodedComponent)
//!     pool name (pool_name_len bytes, ASCII)
//!     target ids (stripe_count × u32 LE)
//! ```
//!
//! The checksum is the CRC32C of the whole encoding (`total_len_bytes` bytes) with the
//! checksum field read as zero. Decoding treats every byte as hostile: it checks the
//! header (magic, version, length, checksum) before reading any component, checks each
//! count against its limit and against the bytes left before allocating, refuses unknown
//! flag bits, non-zero reserved fields and trailing bytes, and validates the result like a
//! constructed layout.

use bytemuck::{Pod, Zeroable};

use crate::composite::{Component, Layout};
use crate::error::LayoutError;
use crate::limits::{
    ENCODED_COMPONENT_BYTES, ENCODED_HEADER_BYTES, ENCODED_TARGET_ID_BYTES, MAX_COMPONENTS,
    MAX_ENCODED_LAYOUT_BYTES, MAX_POOL_NAME_BYTES, MAX_STRIPE_COUNT,
};
use crate::stripe::{PoolName, StripeLayout};

/// Magic number opening every binary layout: the bytes `"NCLY"`.
pub const LAYOUT_MAGIC: u32 = u32::from_le_bytes(*b"NCLY");

/// The format version this build writes, and the newest it reads.
pub const FORMAT_VERSION: u16 = 1;

/// Header flag: the layout was built as composite.
pub const HEADER_FLAG_COMPOSITE: u16 = 1 << 0;

/// Component flag: the striping allows overstriping.
pub const COMPONENT_FLAG_OVERSTRIPING: u16 = 1 << 0;

/// Offset of the checksum field within the header.
const CHECKSUM_OFFSET_BYTES: usize = 20;

/// The fixed header. Every multi-byte field holds its value little-endian (converted with
/// `to_le`/`from_le`), so the bytes are the same on every host.
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
#[repr(C)]
pub struct EncodedHeader {
    /// [`LAYOUT_MAGIC`].
    pub magic: u32,
    /// [`FORMAT_VERSION`].
    pub version: u16,
    /// [`HEADER_FLAG_COMPOSITE`] or 0.
    pub flags: u16,
    /// Number of components that follow.
    pub component_count: u16,
    /// Zero.
    pub reserved: u16,
    /// Layout generation.
    pub generation: u32,
    /// Length of the whole encoding, header included.
    pub total_len_bytes: u32,
    /// CRC32C of the whole encoding with this field read as zero.
    pub checksum: u32,
}

/// The fixed record of one component, followed by its pool name and target ids.
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
#[repr(C)]
pub struct EncodedComponent {
    /// First file offset of the component.
    pub start_bytes: u64,
    /// One past its last file offset (`u64::MAX` for EOF).
    pub end_bytes: u64,
    /// Bytes per stripe unit.
    pub stripe_size_bytes: u64,
    /// Number of target ids that follow the pool name.
    pub stripe_count: u32,
    /// [`COMPONENT_FLAG_OVERSTRIPING`] or 0.
    pub flags: u16,
    /// Length of the pool name that follows (0: no pool).
    pub pool_name_len: u16,
}

const _: () = assert!(size_of::<EncodedHeader>() == ENCODED_HEADER_BYTES);
const _: () = assert!(size_of::<EncodedComponent>() == ENCODED_COMPONENT_BYTES);
const _: () = assert!(CHECKSUM_OFFSET_BYTES + 4 == ENCODED_HEADER_BYTES);

fn checksum(encoding: &[u8]) -> u32 {
    assert!(encoding.len() >= ENCODED_HEADER_BYTES);
    let before = crc32c::crc32c(&encoding[..CHECKSUM_OFFSET_BYTES]);
    let with_zero_field = crc32c::crc32c_append(before, &[0; 4]);
    crc32c::crc32c_append(with_zero_field, &encoding[ENCODED_HEADER_BYTES..])
}

impl Layout {
    /// The number of bytes [`Layout::encode`] produces.
    pub fn encoded_len_bytes(&self) -> usize {
        ENCODED_HEADER_BYTES
            + self
                .components()
                .iter()
                .map(|component| {
                    ENCODED_COMPONENT_BYTES
                        + component
                            .stripe
                            .pool()
                            .map_or(0, |pool| pool.as_str().len())
                        + component.stripe.target_ids().len() * ENCODED_TARGET_ID_BYTES
                })
                .sum::<usize>()
    }

    /// The binary form.
    pub fn encode(&self) -> Vec<u8> {
        let mut encoding = Vec::with_capacity(self.encoded_len_bytes());
        self.encode_into(&mut encoding);
        encoding
    }

    /// Appends the binary form to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        let total_len_bytes = self.encoded_len_bytes();
        assert!(total_len_bytes <= MAX_ENCODED_LAYOUT_BYTES);
        out.reserve(total_len_bytes);
        let header = EncodedHeader {
            magic: LAYOUT_MAGIC.to_le(),
            version: FORMAT_VERSION.to_le(),
            flags: if self.is_composite() {
                HEADER_FLAG_COMPOSITE
            } else {
                0
            }
            .to_le(),
            component_count: self.component_count().to_le(),
            reserved: 0,
            generation: self.generation().to_le(),
            total_len_bytes: (total_len_bytes as u32).to_le(),
            checksum: 0,
        };
        out.extend_from_slice(bytemuck::bytes_of(&header));
        for component in self.components() {
            let stripe = &component.stripe;
            let pool_name = stripe.pool().map_or("", PoolName::as_str).as_bytes();
            let record = EncodedComponent {
                start_bytes: component.start_bytes.to_le(),
                end_bytes: component.end_bytes.to_le(),
                stripe_size_bytes: stripe.stripe_size_bytes().to_le(),
                stripe_count: stripe.stripe_count().to_le(),
                flags: if stripe.overstriping() {
                    COMPONENT_FLAG_OVERSTRIPING
                } else {
                    0
                }
                .to_le(),
                // At most MAX_POOL_NAME_BYTES.
                pool_name_len: (pool_name.len() as u16).to_le(),
            };
            out.extend_from_slice(bytemuck::bytes_of(&record));
            out.extend_from_slice(pool_name);
            for target_id in stripe.target_ids() {
                out.extend_from_slice(&target_id.to_le_bytes());
            }
        }
        let encoding = &mut out[start..];
        assert_eq!(encoding.len(), total_len_bytes);
        let crc = checksum(encoding);
        encoding[CHECKSUM_OFFSET_BYTES..ENCODED_HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
    }

    /// Reads a binary form; every byte is hostile (see the module documentation).
    pub fn decode(encoding: &[u8]) -> Result<Layout, LayoutError> {
        let mut reader = Reader { rest: encoding };
        let header: EncodedHeader =
            bytemuck::pod_read_unaligned(reader.take("header", ENCODED_HEADER_BYTES)?);
        let magic = u32::from_le(header.magic);
        if magic != LAYOUT_MAGIC {
            return Err(LayoutError::BadMagic {
                found: magic,
                expected: LAYOUT_MAGIC,
            });
        }
        let version = u16::from_le(header.version);
        if version == 0 || version > FORMAT_VERSION {
            return Err(LayoutError::UnsupportedVersion {
                found: version,
                max_supported: FORMAT_VERSION,
            });
        }
        let total_len_bytes = u32::from_le(header.total_len_bytes) as usize;
        if total_len_bytes > MAX_ENCODED_LAYOUT_BYTES {
            return Err(LayoutError::LengthTooLarge {
                found_bytes: total_len_bytes,
                max_bytes: MAX_ENCODED_LAYOUT_BYTES,
            });
        }
        if total_len_bytes < ENCODED_HEADER_BYTES {
            return Err(LayoutError::LengthMismatch {
                header_bytes: total_len_bytes,
                content_bytes: ENCODED_HEADER_BYTES,
            });
        }
        if encoding.len() < total_len_bytes {
            return Err(LayoutError::Truncated {
                part: "layout",
                needed_bytes: total_len_bytes,
                available_bytes: encoding.len(),
            });
        }
        if encoding.len() > total_len_bytes {
            return Err(LayoutError::TrailingBytes {
                header_bytes: total_len_bytes,
                trailing_bytes: encoding.len() - total_len_bytes,
            });
        }
        let found_checksum = u32::from_le(header.checksum);
        let computed_checksum = checksum(encoding);
        if found_checksum != computed_checksum {
            return Err(LayoutError::ChecksumMismatch {
                found: found_checksum,
                computed: computed_checksum,
            });
        }
        let flags = u16::from_le(header.flags);
        if flags & !HEADER_FLAG_COMPOSITE != 0 {
            return Err(LayoutError::UnknownBits {
                field: "header flags",
                found: u64::from(flags & !HEADER_FLAG_COMPOSITE),
            });
        }
        if header.reserved != 0 {
            return Err(LayoutError::UnknownBits {
                field: "header reserved",
                found: u64::from(u16::from_le(header.reserved)),
            });
        }
        let component_count = usize::from(u16::from_le(header.component_count));
        if component_count > MAX_COMPONENTS {
            return Err(LayoutError::CountTooLarge {
                field: "component_count",
                found: component_count as u64,
                max: MAX_COMPONENTS as u64,
            });
        }

        let mut components = Vec::with_capacity(component_count);
        for _ in 0..component_count {
            components.push(reader.component()?);
        }
        if !reader.rest.is_empty() {
            return Err(LayoutError::LengthMismatch {
                header_bytes: total_len_bytes,
                content_bytes: total_len_bytes - reader.rest.len(),
            });
        }
        Layout::from_components(
            components,
            flags & HEADER_FLAG_COMPOSITE != 0,
            u32::from_le(header.generation),
        )
    }
}

/// A cursor over the bytes not read yet.
struct Reader<'bytes> {
    rest: &'bytes [u8],
}

impl<'bytes> Reader<'bytes> {
    fn take(&mut self, part: &'static str, len_bytes: usize) -> Result<&'bytes [u8], LayoutError> {
        if self.rest.len() < len_bytes {
            return Err(LayoutError::Truncated {
                part,
                needed_bytes: len_bytes,
                available_bytes: self.rest.len(),
            });
        }
        let (taken, rest) = self.rest.split_at(len_bytes);
        self.rest = rest;
        Ok(taken)
    }

    fn component(&mut self) -> Result<Component, LayoutError> {
        let record: EncodedComponent =
            bytemuck::pod_read_unaligned(self.take("component record", ENCODED_COMPONENT_BYTES)?);
        let flags = u16::from_le(record.flags);
        if flags & !COMPONENT_FLAG_OVERSTRIPING != 0 {
            return Err(LayoutError::UnknownBits {
                field: "component flags",
                found: u64::from(flags & !COMPONENT_FLAG_OVERSTRIPING),
            });
        }
        let pool_name_len = usize::from(u16::from_le(record.pool_name_len));
        if pool_name_len > MAX_POOL_NAME_BYTES {
            return Err(LayoutError::CountTooLarge {
                field: "pool_name_len",
                found: pool_name_len as u64,
                max: MAX_POOL_NAME_BYTES as u64,
            });
        }
        let stripe_count = u32::from_le(record.stripe_count);
        if stripe_count > MAX_STRIPE_COUNT {
            return Err(LayoutError::CountTooLarge {
                field: "stripe_count",
                found: u64::from(stripe_count),
                max: u64::from(MAX_STRIPE_COUNT),
            });
        }
        let pool = if pool_name_len == 0 {
            None
        } else {
            let name_bytes = self.take("pool name", pool_name_len)?;
            let name = std::str::from_utf8(name_bytes).map_err(|_| LayoutError::InvalidField {
                field: "pool",
                value: format!("{name_bytes:?}"),
                allowed: "1 to 15 characters of [A-Za-z0-9_.-]",
            })?;
            Some(PoolName::new(name)?)
        };
        // Bounded by MAX_STRIPE_COUNT and by the bytes present before allocating.
        let target_bytes = self.take(
            "target ids",
            stripe_count as usize * ENCODED_TARGET_ID_BYTES,
        )?;
        let target_ids: Vec<u32> = target_bytes
            .chunks_exact(ENCODED_TARGET_ID_BYTES)
            .map(|chunk| u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
            .collect();
        let stripe = StripeLayout::new(
            u64::from_le(record.stripe_size_bytes),
            target_ids,
            pool,
            flags & COMPONENT_FLAG_OVERSTRIPING != 0,
        )?;
        Ok(Component::new(
            u64::from_le(record.start_bytes),
            u64::from_le(record.end_bytes),
            stripe,
        ))
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on an unexpected result"
)]
mod tests {
    use super::*;
    use crate::limits::EOF_OFFSET_BYTES;

    const MIB: u64 = 1024 * 1024;

    fn sample() -> Layout {
        let first =
            StripeLayout::new(MIB, vec![4], PoolName::new("fast").ok(), false).expect("valid");
        let rest = StripeLayout::new(4 * MIB, vec![1, 2, 1], None, true).expect("valid");
        Layout::composite(vec![
            Component::new(0, 4 * MIB, first),
            Component::new(4 * MIB, EOF_OFFSET_BYTES, rest),
        ])
        .expect("valid")
        .with_generation(9)
    }

    /// Rewrites the checksum after a deliberate edit, so the check under test is reached.
    fn reseal(encoding: &mut [u8]) {
        let crc = checksum(encoding);
        encoding[CHECKSUM_OFFSET_BYTES..ENCODED_HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn round_trip() {
        let layout = sample();
        let encoding = layout.encode();
        assert_eq!(encoding.len(), layout.encoded_len_bytes());
        assert_eq!(&encoding[..4], b"NCLY");
        assert_eq!(Layout::decode(&encoding), Ok(layout.clone()));
        let mut appended = vec![7, 7];
        layout.encode_into(&mut appended);
        assert_eq!(Layout::decode(&appended[2..]), Ok(layout));
    }

    #[test]
    fn header_errors() {
        let good = sample().encode();
        let mut bad = good.clone();
        bad[0] ^= 0xff;
        assert!(matches!(
            Layout::decode(&bad),
            Err(LayoutError::BadMagic { .. })
        ));

        let mut newer = good.clone();
        newer[4] = 2;
        assert_eq!(
            Layout::decode(&newer),
            Err(LayoutError::UnsupportedVersion {
                found: 2,
                max_supported: 1
            })
        );

        assert!(matches!(
            Layout::decode(&good[..10]),
            Err(LayoutError::Truncated {
                part: "header",
                needed_bytes: 24,
                available_bytes: 10
            })
        ));
        assert!(matches!(
            Layout::decode(&good[..good.len() - 1]),
            Err(LayoutError::Truncated { part: "layout", .. })
        ));
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(
            Layout::decode(&trailing),
            Err(LayoutError::TrailingBytes {
                header_bytes: good.len(),
                trailing_bytes: 1
            })
        );

        let mut tiny = good.clone();
        tiny[16..20].copy_from_slice(&8u32.to_le_bytes());
        assert_eq!(
            Layout::decode(&tiny),
            Err(LayoutError::LengthMismatch {
                header_bytes: 8,
                content_bytes: 24
            })
        );

        let mut huge = good.clone();
        huge[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Layout::decode(&huge),
            Err(LayoutError::LengthTooLarge { .. })
        ));

        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(matches!(
            Layout::decode(&flipped),
            Err(LayoutError::ChecksumMismatch { .. })
        ));
    }

    #[test]
    fn content_errors() {
        let good = sample().encode();

        let mut flags = good.clone();
        flags[6] |= 0x80;
        reseal(&mut flags);
        assert!(matches!(
            Layout::decode(&flags),
            Err(LayoutError::UnknownBits {
                field: "header flags",
                ..
            })
        ));

        let mut reserved = good.clone();
        reserved[10] = 1;
        reseal(&mut reserved);
        assert!(matches!(
            Layout::decode(&reserved),
            Err(LayoutError::UnknownBits {
                field: "header reserved",
                ..
            })
        ));

        let mut many = good.clone();
        many[8..10].copy_from_slice(&65u16.to_le_bytes());
        reseal(&mut many);
        assert_eq!(
            Layout::decode(&many),
            Err(LayoutError::CountTooLarge {
                field: "component_count",
                found: 65,
                max: 64
            })
        );

        let mut fewer = good.clone();
        fewer[8..10].copy_from_slice(&1u16.to_le_bytes());
        reseal(&mut fewer);
        assert!(matches!(
            Layout::decode(&fewer),
            Err(LayoutError::LengthMismatch { .. })
        ));

        let mut more = good.clone();
        more[8..10].copy_from_slice(&3u16.to_le_bytes());
        reseal(&mut more);
        assert!(matches!(
            Layout::decode(&more),
            Err(LayoutError::Truncated {
                part: "component record",
                ..
            })
        ));

        let record = ENCODED_HEADER_BYTES;
        let mut stripes = good.clone();
        stripes[record + 24..record + 28].copy_from_slice(&2001u32.to_le_bytes());
        reseal(&mut stripes);
        assert!(matches!(
            Layout::decode(&stripes),
            Err(LayoutError::CountTooLarge {
                field: "stripe_count",
                ..
            })
        ));

        let mut pool_len = good.clone();
        pool_len[record + 30..record + 32].copy_from_slice(&16u16.to_le_bytes());
        reseal(&mut pool_len);
        assert!(matches!(
            Layout::decode(&pool_len),
            Err(LayoutError::CountTooLarge {
                field: "pool_name_len",
                ..
            })
        ));

        let mut pool_name = good.clone();
        pool_name[record + 32] = b'/';
        reseal(&mut pool_name);
        assert!(matches!(
            Layout::decode(&pool_name),
            Err(LayoutError::InvalidField { field: "pool", .. })
        ));

        let mut component_flags = good.clone();
        component_flags[record + 28] = 0x02;
        reseal(&mut component_flags);
        assert!(matches!(
            Layout::decode(&component_flags),
            Err(LayoutError::UnknownBits {
                field: "component flags",
                ..
            })
        ));

        let mut stripe_size = good.clone();
        stripe_size[record + 16] = 1;
        reseal(&mut stripe_size);
        assert!(matches!(
            Layout::decode(&stripe_size),
            Err(LayoutError::InvalidField {
                field: "stripe_size_bytes",
                ..
            })
        ));

        // Clearing the overstriping flag of the second component exposes its duplicate.
        let second = record + ENCODED_COMPONENT_BYTES + 4 + 4;
        let mut duplicate = good.clone();
        duplicate[second + 28] = 0;
        reseal(&mut duplicate);
        assert!(matches!(
            Layout::decode(&duplicate),
            Err(LayoutError::DuplicateTarget { target_id: 1, .. })
        ));

        let mut gap = good.clone();
        gap[second..second + 8].copy_from_slice(&(5 * MIB).to_le_bytes());
        reseal(&mut gap);
        assert!(matches!(
            Layout::decode(&gap),
            Err(LayoutError::ComponentNotContiguous { component: 1, .. })
        ));

        let mut plain = good;
        plain[6] = 0;
        reseal(&mut plain);
        assert_eq!(
            Layout::decode(&plain),
            Err(LayoutError::PlainNotSingleComponent { component_count: 2 })
        );
    }
}
