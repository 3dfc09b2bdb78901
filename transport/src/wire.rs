//! The wire format: a fixed 48-byte little-endian header (a bytemuck `Pod`), an optional
//! body (structured: extent lists) and an optional bulk payload.
//!
//! ```text
//! header  magic u32 | version u16 | opcode u16 | flags u32 | status i32 | request_id u64
//!         body_len u32 | body_crc32c u32 | payload_len u64 | target u32 | header_crc32c u32
//! body    body_len bytes (for read and write requests: an array of 24-byte extents)
//! payload payload_len bytes (the bytes of the extents, in order)
//! ```
//!
//! Decoding treats every byte as hostile: a wrong magic, version, length or checksum is an
//! error naming what was found and what was expected; nothing a peer sends makes it panic or
//! allocate beyond [`crate::limits`]. An unknown opcode decodes to
//! [`WireError::UnknownOpcode`], which still carries the request id so the receiver can
//! answer it with an error reply.
//!
//! `target` names the target a request is for, so one connection to a server carries the
//! requests of every target it serves (decision 0016); [`ANY_TARGET`] is a request not
//! addressed to one (metadata, ping), which a target server takes as meant for the target
//! whose listener accepted the connection. A response carries its request's.

use bytemuck::{Pod, Zeroable};

use crate::limits::{
    HEADER_BYTES, MAX_BODY_BYTES, MAX_EXTENTS_PER_REQUEST, MAX_PAYLOAD_BYTES, WIRE_MAGIC,
    WIRE_VERSION,
};

/// What a message asks for (or answers: a response carries its request's opcode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Opcode {
    /// No-op round trip; the payload, if any, is echoed.
    Ping = 1,
    /// Read extents of objects; the response's payload holds their bytes.
    Read = 2,
    /// Write extents of objects; the request's payload holds their bytes.
    Write = 3,
    /// Make objects durable.
    Sync = 4,
    /// Set an object's size.
    Truncate = 5,
    /// Deallocate a range of an object.
    Punch = 6,
    /// Size and allocation of objects.
    Stat = 7,
    /// Create objects.
    Create = 8,
    /// Remove objects.
    Remove = 9,
    /// Size and free space of a target.
    Statfs = 10,
    /// The targets a server serves: its reply body is the server's instance (a u64 new at
    /// every start), a u32 count, then each target's id (u32) and the endpoint it
    /// registered (u32 length and UTF-8 bytes).
    Targets = 11,
    /// A metadata request; the body names the operation (the transport does not look inside).
    Meta = 16,
    /// A reply to a request the receiver could not take (its status says why).
    Error = 15,
}

impl Opcode {
    /// The opcode of a wire value, if it names one.
    pub fn from_u16(value: u16) -> Option<Opcode> {
        Some(match value {
            1 => Opcode::Ping,
            2 => Opcode::Read,
            3 => Opcode::Write,
            4 => Opcode::Sync,
            5 => Opcode::Truncate,
            6 => Opcode::Punch,
            7 => Opcode::Stat,
            8 => Opcode::Create,
            9 => Opcode::Remove,
            10 => Opcode::Statfs,
            11 => Opcode::Targets,
            16 => Opcode::Meta,
            15 => Opcode::Error,
            _ => return None,
        })
    }
}

/// Header flag: this message is a response.
pub const FLAG_RESPONSE: u32 = 1;
/// Header flag (RDMA): the payload does not follow the message. After the body come a u32
/// count and that many 16-byte descriptors (addr u64, rkey u32, len u32) of the sender's
/// registered memory: where a request's payload is (the server RDMA-READs it) or where a
/// reply's payload must go (the server RDMA-WRITEs it before replying).
pub const FLAG_REMOTE_BULK: u32 = 2;
/// Every flag this version knows; others are refused.
pub const KNOWN_FLAGS: u32 = FLAG_RESPONSE | FLAG_REMOTE_BULK;
/// The `target` of a message not addressed to a target (see the module's documentation).
pub const ANY_TARGET: u32 = u32::MAX;

/// The header as it lies on the wire (every field little-endian).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq, Eq)]
struct RawHeader {
    magic: u32,
    version: u16,
    opcode: u16,
    flags: u32,
    status: i32,
    request_id: u64,
    body_len: u32,
    body_crc32c: u32,
    payload_len: u64,
    target: u32,
    header_crc32c: u32,
}

const _: () = assert!(std::mem::size_of::<RawHeader>() == HEADER_BYTES);

/// A decoded, checked message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// What the message asks for or answers.
    pub opcode: Opcode,
    /// [`FLAG_RESPONSE`] and future flags.
    pub flags: u32,
    /// 0, or a positive errno value in a response that failed.
    pub status: i32,
    /// Chosen by the requester, echoed by the response.
    pub request_id: u64,
    /// Length of the body that follows the header.
    pub body_len: u32,
    /// CRC32C of the body.
    pub body_crc32c: u32,
    /// Length of the bulk payload that follows the body.
    pub payload_len: u64,
    /// The target a request is for ([`ANY_TARGET`]: none named); a response carries its
    /// request's.
    pub target: u32,
}

impl Header {
    /// A request header for a body (whose checksum it records) and a payload length.
    pub fn request(opcode: Opcode, request_id: u64, body: &[u8], payload_len: u64) -> Header {
        Header {
            opcode,
            flags: 0,
            status: 0,
            request_id,
            body_len: body.len() as u32,
            body_crc32c: crc32c::crc32c(body),
            payload_len,
            target: ANY_TARGET,
        }
    }

    /// The same header addressed to `target` (a target's id).
    pub fn for_target(self, target: u32) -> Header {
        Header { target, ..self }
    }

    /// The response header answering `request`, with a status, body and payload length.
    pub fn response(request: &Header, status: i32, body: &[u8], payload_len: u64) -> Header {
        Header {
            opcode: request.opcode,
            flags: FLAG_RESPONSE,
            status,
            request_id: request.request_id,
            body_len: body.len() as u32,
            body_crc32c: crc32c::crc32c(body),
            payload_len,
            target: request.target,
        }
    }

    /// An [`Opcode::Error`] reply with `status` to a request the receiver could not take
    /// (one whose opcode it does not know, say), with no body and no payload.
    pub fn error_reply(request_id: u64, status: i32) -> Header {
        Header {
            opcode: Opcode::Error,
            flags: FLAG_RESPONSE,
            status,
            request_id,
            body_len: 0,
            body_crc32c: crc32c::crc32c(&[]),
            payload_len: 0,
            target: ANY_TARGET,
        }
    }

    /// Whether this is a response.
    pub fn is_response(&self) -> bool {
        self.flags & FLAG_RESPONSE != 0
    }

    /// The header's bytes, with its checksum. Panics if a length exceeds the limits, which
    /// is a bug of the sender, not something a peer can cause.
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        assert!(
            self.body_len <= MAX_BODY_BYTES,
            "body of {} bytes",
            self.body_len
        );
        assert!(
            self.payload_len <= MAX_PAYLOAD_BYTES,
            "payload of {} bytes",
            self.payload_len
        );
        let mut raw = RawHeader {
            magic: WIRE_MAGIC.to_le(),
            version: WIRE_VERSION.to_le(),
            opcode: (self.opcode as u16).to_le(),
            flags: self.flags.to_le(),
            status: self.status.to_le(),
            request_id: self.request_id.to_le(),
            body_len: self.body_len.to_le(),
            body_crc32c: self.body_crc32c.to_le(),
            payload_len: self.payload_len.to_le(),
            target: self.target.to_le(),
            header_crc32c: 0,
        };
        raw.header_crc32c = crc32c::crc32c(bytemuck::bytes_of(&raw)).to_le();
        let mut out = [0u8; HEADER_BYTES];
        out.copy_from_slice(bytemuck::bytes_of(&raw));
        out
    }

    /// Decodes and checks a header: magic, version, checksum, flags and lengths, then the
    /// opcode (an unknown one is [`WireError::UnknownOpcode`], with the request id).
    pub fn decode(bytes: &[u8]) -> Result<Header, WireError> {
        if bytes.len() < HEADER_BYTES {
            return Err(WireError::Truncated {
                what: "header",
                needed: HEADER_BYTES,
                got: bytes.len(),
            });
        }
        let mut raw: RawHeader = bytemuck::pod_read_unaligned(&bytes[..HEADER_BYTES]);
        let magic = u32::from_le(raw.magic);
        if magic != WIRE_MAGIC {
            return Err(WireError::BadMagic { found: magic });
        }
        let version = u16::from_le(raw.version);
        if version != WIRE_VERSION {
            return Err(WireError::UnsupportedVersion {
                found: version,
                supported: WIRE_VERSION,
            });
        }
        let sent = u32::from_le(raw.header_crc32c);
        raw.header_crc32c = 0;
        let computed = crc32c::crc32c(bytemuck::bytes_of(&raw));
        if sent != computed {
            return Err(WireError::HeaderChecksum { sent, computed });
        }
        let flags = u32::from_le(raw.flags);
        if flags & !KNOWN_FLAGS != 0 {
            return Err(WireError::UnknownFlags { flags });
        }
        let body_len = u32::from_le(raw.body_len);
        if body_len > MAX_BODY_BYTES {
            return Err(WireError::BodyTooLong {
                len: body_len,
                max: MAX_BODY_BYTES,
            });
        }
        let payload_len = u64::from_le(raw.payload_len);
        if payload_len > MAX_PAYLOAD_BYTES {
            return Err(WireError::PayloadTooLong {
                len: payload_len,
                max: MAX_PAYLOAD_BYTES,
            });
        }
        let request_id = u64::from_le(raw.request_id);
        let opcode_value = u16::from_le(raw.opcode);
        let Some(opcode) = Opcode::from_u16(opcode_value) else {
            return Err(WireError::UnknownOpcode {
                opcode: opcode_value,
                request_id,
                body_len,
                payload_len,
            });
        };
        Ok(Header {
            opcode,
            flags,
            status: i32::from_le(raw.status),
            request_id,
            body_len,
            body_crc32c: u32::from_le(raw.body_crc32c),
            payload_len,
            target: u32::from_le(raw.target),
        })
    }

    /// Checks a received body against the header's length and checksum.
    pub fn check_body(&self, body: &[u8]) -> Result<(), WireError> {
        if body.len() != self.body_len as usize {
            return Err(WireError::Truncated {
                what: "body",
                needed: self.body_len as usize,
                got: body.len(),
            });
        }
        let computed = crc32c::crc32c(body);
        if computed != self.body_crc32c {
            return Err(WireError::BodyChecksum {
                sent: self.body_crc32c,
                computed,
            });
        }
        Ok(())
    }
}

/// One extent of an object, as read and write requests carry them.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq, Eq, Default)]
pub struct Extent {
    /// The object.
    pub object_id: u64,
    /// Where in the object.
    pub offset_bytes: u64,
    /// How many bytes.
    pub len: u64,
}

/// Size of one extent on the wire.
pub const EXTENT_BYTES: usize = std::mem::size_of::<Extent>();

/// The status of a reply whose body would not fit [`MAX_BODY_BYTES`].
pub const REPLY_TOO_LONG_STATUS: i32 = libc::EMSGSIZE;

/// What a reply to `peer` of `status` and a body of `body_len` bytes carries instead when
/// the body is over [`MAX_BODY_BYTES`]: [`REPLY_TOO_LONG_STATUS`] and a short message, no
/// payload (the message is logged too). A reply that cannot be encoded is an error for its
/// requester, never a panic of the server (a metadata reply grows with the data it
/// answers). `None` when the reply fits.
pub fn oversized_reply(
    peer: &dyn std::fmt::Display,
    status: i32,
    body_len: usize,
) -> Option<(i32, Vec<u8>)> {
    if body_len <= MAX_BODY_BYTES as usize {
        return None;
    }
    let message = format!(
        "the reply (status {status}) would carry a body of {body_len} bytes, over the \
         {MAX_BODY_BYTES}-byte bound of one message"
    );
    crate::log_line!("nacre-transport: {peer}: {message}");
    Some((REPLY_TOO_LONG_STATUS, message.into_bytes()))
}

/// Appends the wire form of `extents` to `out`.
pub fn encode_extents(extents: &[Extent], out: &mut Vec<u8>) {
    assert!(
        extents.len() <= MAX_EXTENTS_PER_REQUEST,
        "{} extents",
        extents.len()
    );
    out.reserve(extents.len() * EXTENT_BYTES);
    for e in extents {
        out.extend_from_slice(&e.object_id.to_le_bytes());
        out.extend_from_slice(&e.offset_bytes.to_le_bytes());
        out.extend_from_slice(&e.len.to_le_bytes());
    }
}

/// Decodes a body of extents into `out` (cleared first) and returns their total length.
/// Refuses a body that is not a whole number of extents, more than
/// [`MAX_EXTENTS_PER_REQUEST`], an empty extent, or one whose end overflows.
pub fn decode_extents(body: &[u8], out: &mut Vec<Extent>) -> Result<u64, WireError> {
    out.clear();
    if !body.len().is_multiple_of(EXTENT_BYTES) {
        return Err(WireError::BodyNotExtents { len: body.len() });
    }
    let count = body.len() / EXTENT_BYTES;
    if count > MAX_EXTENTS_PER_REQUEST {
        return Err(WireError::TooManyExtents {
            count,
            max: MAX_EXTENTS_PER_REQUEST,
        });
    }
    let mut total = 0u64;
    for (index, chunk) in body.chunks_exact(EXTENT_BYTES).enumerate() {
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&chunk[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        let e = Extent {
            object_id: word(0),
            offset_bytes: word(1),
            len: word(2),
        };
        if e.len == 0 || e.offset_bytes.checked_add(e.len).is_none() {
            return Err(WireError::BadExtent {
                index,
                offset_bytes: e.offset_bytes,
                len: e.len,
            });
        }
        total = total.saturating_add(e.len);
        out.push(e);
    }
    Ok(total)
}

/// What was wrong with bytes a peer sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Fewer bytes than the part needs.
    #[error("truncated {what}: needed {needed} bytes, got {got}")]
    Truncated {
        /// Which part.
        what: &'static str,
        /// Bytes it needs.
        needed: usize,
        /// Bytes there were.
        got: usize,
    },
    /// The header does not start with the magic number.
    #[error("bad magic {found:#010x}, expected {WIRE_MAGIC:#010x}")]
    BadMagic {
        /// What was there.
        found: u32,
    },
    /// A wire version this build does not speak.
    #[error("wire version {found} is not supported (this build speaks {supported})")]
    UnsupportedVersion {
        /// The peer's version.
        found: u16,
        /// Ours.
        supported: u16,
    },
    /// The header's checksum does not match its bytes.
    #[error("header checksum {sent:#010x} does not match the computed {computed:#010x}")]
    HeaderChecksum {
        /// In the header.
        sent: u32,
        /// Over the bytes received.
        computed: u32,
    },
    /// Flags this version does not know.
    #[error("unknown header flags {flags:#x}")]
    UnknownFlags {
        /// The flags.
        flags: u32,
    },
    /// A body longer than [`MAX_BODY_BYTES`].
    #[error("body of {len} bytes exceeds the limit of {max}")]
    BodyTooLong {
        /// The length announced.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// A payload longer than [`MAX_PAYLOAD_BYTES`].
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    PayloadTooLong {
        /// The length announced.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// An opcode this version does not know. The message is otherwise well formed, so the
    /// receiver can skip its body and payload and answer with an error reply.
    #[error("unknown opcode {opcode} in request {request_id}")]
    UnknownOpcode {
        /// The opcode.
        opcode: u16,
        /// The request it came in.
        request_id: u64,
        /// Body bytes to skip.
        body_len: u32,
        /// Payload bytes to skip.
        payload_len: u64,
    },
    /// A reply where requests are expected, or a request where replies are.
    #[error("{} {request_id} arrived where {} are expected", if *reply { "a reply to request" } else { "request" }, if *reply { "requests" } else { "replies" })]
    WrongDirection {
        /// The request it is or answers.
        request_id: u64,
        /// Whether it is a reply.
        reply: bool,
    },
    /// Bytes fed after an error: where the next message starts is not known.
    #[error("the stream broke at an earlier error; its position is unknown")]
    Desynchronized,
    /// The body's checksum does not match.
    #[error("body checksum {sent:#010x} does not match the computed {computed:#010x}")]
    BodyChecksum {
        /// In the header.
        sent: u32,
        /// Over the bytes received.
        computed: u32,
    },
    /// A body that should hold extents has a length that is not a multiple of 24.
    #[error("body of {len} bytes is not a whole number of 24-byte extents")]
    BodyNotExtents {
        /// Its length.
        len: usize,
    },
    /// More extents than [`MAX_EXTENTS_PER_REQUEST`].
    #[error("{count} extents exceed the limit of {max}")]
    TooManyExtents {
        /// How many.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// An empty extent, or one whose end overflows.
    #[error("extent {index} (offset {offset_bytes}, length {len}) is empty or overflows")]
    BadExtent {
        /// Its index in the body.
        index: usize,
        /// Its offset.
        offset_bytes: u64,
        /// Its length.
        len: u64,
    },
    /// The payload length does not match what the body describes.
    #[error("payload of {payload_len} bytes, but the extents add up to {extents_total}")]
    PayloadMismatch {
        /// Announced.
        payload_len: u64,
        /// Sum of the extents.
        extents_total: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn opcode() -> impl Strategy<Value = Opcode> {
        prop::sample::select(vec![
            Opcode::Ping,
            Opcode::Read,
            Opcode::Write,
            Opcode::Sync,
            Opcode::Truncate,
            Opcode::Punch,
            Opcode::Stat,
            Opcode::Create,
            Opcode::Remove,
            Opcode::Statfs,
            Opcode::Targets,
            Opcode::Meta,
            Opcode::Error,
        ])
    }

    fn header() -> impl Strategy<Value = Header> {
        (
            opcode(),
            any::<bool>(),
            any::<i32>(),
            any::<u64>(),
            0..=MAX_BODY_BYTES,
            any::<u32>(),
            0..=MAX_PAYLOAD_BYTES,
            any::<u32>(),
        )
            .prop_map(
                |(opcode, resp, status, request_id, body_len, body_crc32c, payload_len, target)| {
                    Header {
                        opcode,
                        flags: if resp { FLAG_RESPONSE } else { 0 },
                        status,
                        request_id,
                        body_len,
                        body_crc32c,
                        payload_len,
                        target,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn header_round_trips(h in header()) {
            prop_assert_eq!(Header::decode(&h.encode()), Ok(h));
        }

        #[test]
        fn extents_round_trip(list in prop::collection::vec((any::<u64>(), 0..u64::MAX / 2, 1..u64::MAX / 2), 0..MAX_EXTENTS_PER_REQUEST)) {
            let extents: Vec<Extent> = list.iter().map(|&(object_id, offset_bytes, len)| Extent { object_id, offset_bytes, len }).collect();
            let mut body = Vec::new();
            encode_extents(&extents, &mut body);
            let mut back = Vec::new();
            let total = decode_extents(&body, &mut back).expect("decode");
            prop_assert_eq!(&back, &extents);
            prop_assert_eq!(total, extents.iter().fold(0u64, |a, e| a.saturating_add(e.len)));
        }

        #[test]
        fn any_single_bit_flip_of_a_header_is_refused(h in header(), bit in 0usize..HEADER_BYTES * 8) {
            let mut bytes = h.encode();
            bytes[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(Header::decode(&bytes).is_err());
        }

        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = Header::decode(&bytes);
            let mut out = Vec::new();
            let _ = decode_extents(&bytes, &mut out);
            prop_assert!(out.len() <= MAX_EXTENTS_PER_REQUEST);
        }
    }

    #[test]
    fn many_random_and_truncated_inputs_are_refused_without_panic() {
        // A deterministic stream of hostile inputs: random bytes, valid headers cut short,
        // valid headers with random bytes spliced in.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let good = Header::request(Opcode::Write, 7, b"", 4096).encode();
        let mut accepted = 0;
        for round in 0..200_000 {
            let mut bytes = [0u8; HEADER_BYTES];
            match round % 3 {
                0 => bytes.iter_mut().for_each(|b| *b = next() as u8),
                1 => {
                    let cut = (next() % HEADER_BYTES as u64) as usize;
                    assert!(Header::decode(&good[..cut]).is_err());
                    continue;
                }
                _ => {
                    bytes = good;
                    let at = (next() % HEADER_BYTES as u64) as usize;
                    bytes[at] = next() as u8;
                }
            }
            if Header::decode(&bytes).is_ok() {
                accepted += 1;
            }
        }
        // Only splices that happened to write the byte already there decode.
        assert!(accepted < 2_000, "{accepted} hostile headers accepted");
    }

    #[test]
    fn each_field_error_names_the_field() {
        let good = Header::request(Opcode::Read, 1, b"", 0);
        let mut b = good.encode();
        b[0] = 0;
        assert!(matches!(
            Header::decode(&b),
            Err(WireError::BadMagic { .. })
        ));
        let mut b = good.encode();
        b[4] = 9;
        assert_eq!(
            Header::decode(&b),
            Err(WireError::UnsupportedVersion {
                found: 9,
                supported: WIRE_VERSION
            })
        );
        let unknown = Header {
            opcode: Opcode::Ping,
            ..good
        };
        let mut b = unknown.encode();
        b[6] = 200;
        // Re-seal the checksum so only the opcode is wrong.
        b[44..48].copy_from_slice(&[0; 4]);
        let crc = crc32c::crc32c(&b);
        b[44..48].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            Header::decode(&b),
            Err(WireError::UnknownOpcode {
                opcode: 200,
                request_id: 1,
                ..
            })
        ));
        let mut body = Vec::new();
        encode_extents(
            &[Extent {
                object_id: 1,
                offset_bytes: u64::MAX,
                len: 2,
            }],
            &mut body,
        );
        assert!(matches!(
            decode_extents(&body, &mut Vec::new()),
            Err(WireError::BadExtent { index: 0, .. })
        ));
        assert!(matches!(
            decode_extents(&body[..10], &mut Vec::new()),
            Err(WireError::BodyNotExtents { len: 10 })
        ));
        let h = Header::request(Opcode::Write, 3, b"abc", 0);
        assert!(h.check_body(b"abc").is_ok());
        assert!(matches!(
            h.check_body(b"abd"),
            Err(WireError::BodyChecksum { .. })
        ));
        assert!(matches!(
            h.check_body(b"ab"),
            Err(WireError::Truncated { .. })
        ));
    }
}
