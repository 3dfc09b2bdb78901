//! The little-endian binary form of the engine's messages and stored records.
//!
//! A [`Writer`] appends fields to a vector; a [`Reader`] takes them back and treats every byte
//! as hostile: a short input, an over-long string, bad UTF-8 or trailing bytes is a
//! [`CodecError`] naming the record and the field, never a panic or an unbounded allocation.

use thiserror::Error;

/// Why a record could not be decoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// The input ended inside a field.
    #[error("{record}: truncated at field {field} (needed {needed} bytes at offset {at})")]
    Truncated {
        /// The record being decoded.
        record: &'static str,
        /// The field being read.
        field: &'static str,
        /// Bytes the field needed.
        needed: usize,
        /// Where in the input.
        at: usize,
    },
    /// A length prefix is larger than the field allows.
    #[error("{record}: field {field} is {len} bytes long; at most {max} allowed")]
    TooLong {
        /// The record being decoded.
        record: &'static str,
        /// The field.
        field: &'static str,
        /// The length found.
        len: u64,
        /// The bound.
        max: usize,
    },
    /// A string field is not UTF-8.
    #[error("{record}: field {field} is not UTF-8")]
    BadUtf8 {
        /// The record being decoded.
        record: &'static str,
        /// The field.
        field: &'static str,
    },
    /// A field holds a value outside what it allows.
    #[error("{record}: field {field} is {value}; allowed: {allowed}")]
    BadValue {
        /// The record being decoded.
        record: &'static str,
        /// The field.
        field: &'static str,
        /// The value found.
        value: u64,
        /// What the field allows.
        allowed: &'static str,
    },
    /// Bytes were left after the last field.
    #[error("{record}: {bytes} bytes left after the last field")]
    Trailing {
        /// The record being decoded.
        record: &'static str,
        /// How many bytes were left.
        bytes: usize,
    },
}

/// Appends fields to a vector.
#[derive(Debug)]
pub struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    /// A writer appending to `out`.
    pub fn new(out: &'a mut Vec<u8>) -> Writer<'a> {
        Writer { out }
    }

    /// Appends a byte.
    pub fn u8(&mut self, value: u8) -> &mut Self {
        self.out.push(value);
        self
    }

    /// Appends a `u16`.
    pub fn u16(&mut self, value: u16) -> &mut Self {
        self.out.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// Appends a `u32`.
    pub fn u32(&mut self, value: u32) -> &mut Self {
        self.out.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// Appends a `u64`.
    pub fn u64(&mut self, value: u64) -> &mut Self {
        self.out.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// Appends an `i64`.
    pub fn i64(&mut self, value: i64) -> &mut Self {
        self.out.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// Appends a `u32` length, then the bytes.
    pub fn bytes(&mut self, value: &[u8]) -> &mut Self {
        // Every caller's record is bounded far below 4 GiB by the message size limits.
        self.u32(value.len() as u32);
        self.out.extend_from_slice(value);
        self
    }

    /// Appends a string as [`Writer::bytes`].
    pub fn str(&mut self, value: &str) -> &mut Self {
        self.bytes(value.as_bytes())
    }
}

/// A record with one binary form: what the metadata store keeps and its messages carry.
/// Every such type has the same promises, which one generic property test checks for all
/// of them (core/tests/decoders.rs): a value round-trips, and any bytes are a value or an
/// error naming the record, never a panic.
pub trait Record: Sized {
    /// The record's name in errors.
    const NAME: &'static str;

    /// Appends the binary form.
    fn encode(&self, out: &mut Vec<u8>);

    /// Reads the binary form from `reader` (more may follow).
    fn decode(reader: &mut Reader<'_>) -> Result<Self, CodecError>;

    /// The record's binary form alone.
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Reads a record that is the whole of `bytes`: trailing bytes are an error.
    fn from_bytes(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut reader = Reader::new(bytes, Self::NAME);
        let value = Self::decode(&mut reader)?;
        reader.finish()?;
        Ok(value)
    }
}

/// Takes fields back out of a record's bytes.
#[derive(Debug)]
pub struct Reader<'a> {
    input: &'a [u8],
    at: usize,
    record: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader of `input`, which holds a `record` (the name errors use).
    pub fn new(input: &'a [u8], record: &'static str) -> Reader<'a> {
        Reader {
            input,
            at: 0,
            record,
        }
    }

    fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], CodecError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.input.len())
            .ok_or(CodecError::Truncated {
                record: self.record,
                field,
                needed: n,
                at: self.at,
            })?;
        let bytes = &self.input[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], CodecError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(field, N)?);
        Ok(out)
    }

    /// Reads a byte.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, CodecError> {
        Ok(self.array::<1>(field)?[0])
    }

    /// Reads a `u16`.
    pub fn u16(&mut self, field: &'static str) -> Result<u16, CodecError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    /// Reads a `u32`.
    pub fn u32(&mut self, field: &'static str) -> Result<u32, CodecError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    /// Reads a `u64`.
    pub fn u64(&mut self, field: &'static str) -> Result<u64, CodecError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// Reads an `i64`.
    pub fn i64(&mut self, field: &'static str) -> Result<i64, CodecError> {
        Ok(i64::from_le_bytes(self.array(field)?))
    }

    /// Reads a length-prefixed byte string of at most `max` bytes.
    pub fn bytes(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], CodecError> {
        let len = self.u32(field)?;
        if len as usize > max {
            return Err(CodecError::TooLong {
                record: self.record,
                field,
                len: u64::from(len),
                max,
            });
        }
        self.take(field, len as usize)
    }

    /// Reads a length-prefixed UTF-8 string of at most `max` bytes.
    pub fn str(&mut self, field: &'static str, max: usize) -> Result<&'a str, CodecError> {
        let bytes = self.bytes(field, max)?;
        std::str::from_utf8(bytes).map_err(|_| CodecError::BadUtf8 {
            record: self.record,
            field,
        })
    }

    /// Reads a count that bounds a following list: at most `max`, and (since each element
    /// takes at least `min_element_bytes`) no more than the remaining input could hold.
    pub fn count(
        &mut self,
        field: &'static str,
        max: usize,
        min_element_bytes: usize,
    ) -> Result<usize, CodecError> {
        let n = self.u32(field)? as usize;
        let fits = self.remaining() / min_element_bytes.max(1);
        if n > max || n > fits {
            return Err(CodecError::TooLong {
                record: self.record,
                field,
                len: n as u64,
                max: max.min(fits),
            });
        }
        Ok(n)
    }

    /// A value error for `field`, for checks the caller makes on what it read.
    pub fn bad_value(&self, field: &'static str, value: u64, allowed: &'static str) -> CodecError {
        CodecError::BadValue {
            record: self.record,
            field,
            value,
            allowed,
        }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.input.len() - self.at
    }

    /// Ends the record: an error if bytes are left.
    pub fn finish(self) -> Result<(), CodecError> {
        if self.remaining() != 0 {
            return Err(CodecError::Trailing {
                record: self.record,
                bytes: self.remaining(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_hostile_input() {
        let mut out = Vec::new();
        Writer::new(&mut out)
            .u8(7)
            .u16(300)
            .u32(70_000)
            .u64(u64::MAX)
            .i64(-5)
            .str("héllo")
            .bytes(&[1, 2, 3]);
        let mut r = Reader::new(&out, "test");
        assert_eq!(r.u8("a").ok(), Some(7));
        assert_eq!(r.u16("b").ok(), Some(300));
        assert_eq!(r.u32("c").ok(), Some(70_000));
        assert_eq!(r.u64("d").ok(), Some(u64::MAX));
        assert_eq!(r.i64("e").ok(), Some(-5));
        assert_eq!(r.str("f", 16).ok(), Some("héllo"));
        assert_eq!(r.bytes("g", 3).ok(), Some(&[1u8, 2, 3][..]));
        assert!(r.finish().is_ok());

        // Every truncation is an error naming a field, never a panic.
        for cut in 0..out.len() {
            let mut r = Reader::new(&out[..cut], "test");
            let all = (|| {
                r.u8("a")?;
                r.u16("b")?;
                r.u32("c")?;
                r.u64("d")?;
                r.i64("e")?;
                r.str("f", 16)?;
                r.bytes("g", 3)?;
                Ok::<_, CodecError>(())
            })();
            assert!(
                matches!(all, Err(CodecError::Truncated { .. })),
                "cut {cut}"
            );
        }
        let mut r = Reader::new(&out[15..], "test");
        assert!(matches!(
            r.str("f", 3),
            Err(CodecError::TooLong { field: "f", .. })
        ));
        let huge = [0xff, 0xff, 0xff, 0xff];
        assert!(Reader::new(&huge, "t").count("n", 1 << 30, 8).is_err());
        assert!(matches!(
            Reader::new(&[1], "t").finish(),
            Err(CodecError::Trailing { bytes: 1, .. })
        ));
    }
}
