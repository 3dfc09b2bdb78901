//! Bytes in, checked messages out: the decoding half of the framer.
//!
//! A [`Decoder`] is a state machine over one byte stream: a header (48 bytes, gathered
//! across as many feeds as it takes), its body (checked against the header's length and
//! checksum before it is believed), then its payload. It allocates only a message's body,
//! which the header bounds by [`crate::limits::MAX_BODY_BYTES`] before anything is
//! reserved; a payload is never held here.

use crate::limits::HEADER_BYTES;
use crate::wire::{Header, WireError};

/// Which messages a stream carries to this side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// A server's stream: requests. A reply on it is an error; a request with an opcode
    /// this build does not know is [`Event::Unknown`] and is skipped.
    Requests,
    /// A client's stream: replies. A request on it, or an unknown opcode, is an error.
    Replies,
}

/// What the bytes fed completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A message's header and body arrived and were checked ([`Decoder::body`]). Its payload,
    /// `payload_len` bytes, comes next.
    Message(Header),
    /// The bytes taken by this feed are the current message's payload (all of them: a feed
    /// that returns this took nothing else).
    Payload,
    /// A request with an opcode this build does not know, otherwise well formed: it should
    /// be answered with an error reply. Its body and payload are skipped by the feeds that
    /// follow.
    Unknown {
        /// The request to answer.
        request_id: u64,
        /// The opcode it carried.
        opcode: u16,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between messages, or `got` bytes into a header.
    Header { got: usize },
    /// `got` bytes into a body.
    Body { header: Header, got: usize },
    /// A message's payload, `left` bytes of it still to come.
    Payload { left: u64 },
    /// Dropping `left` bytes: a payload the caller skipped, or the rest of an unknown request.
    Discard { left: u64 },
    /// An error broke the stream: where the next message starts is not known.
    Failed,
}

/// The decoder of one byte stream (see the module's documentation).
#[derive(Debug, Clone)]
pub struct Decoder {
    expect: Expect,
    state: State,
    head: [u8; HEADER_BYTES],
    body: Vec<u8>,
}

impl Decoder {
    /// A decoder at the start of a stream carrying `expect`.
    pub fn new(expect: Expect) -> Decoder {
        Decoder {
            expect,
            state: State::Header { got: 0 },
            head: [0; HEADER_BYTES],
            body: Vec::new(),
        }
    }

    /// Takes bytes from the front of `input` and says how many it took and what they
    /// completed. It stops at the first event, so a caller feeds the rest again; `None` means
    /// it took all of `input` (or, with nothing fed, that it waits for more). In a payload it
    /// takes only payload bytes ([`Event::Payload`]). A malformed message is an error, and so
    /// is every feed after one: the stream is broken.
    pub fn feed(&mut self, input: &[u8]) -> Result<(usize, Option<Event>), WireError> {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            match self.state {
                State::Failed => return Err(WireError::Desynchronized),
                State::Payload { left } => {
                    debug_assert_eq!(used, 0, "a feed stops at the event that opens a payload");
                    let n = clamp(left, rest.len());
                    if n == 0 {
                        return Ok((used, None));
                    }
                    self.payload_taken(n as u64);
                    return Ok((used + n, Some(Event::Payload)));
                }
                State::Discard { left } => {
                    let n = clamp(left, rest.len());
                    used += n;
                    self.state = if n as u64 == left {
                        State::Header { got: 0 }
                    } else {
                        State::Discard {
                            left: left - n as u64,
                        }
                    };
                    if used == input.len() {
                        return Ok((used, None));
                    }
                }
                State::Header { got } => {
                    let n = (HEADER_BYTES - got).min(rest.len());
                    self.head[got..got + n].copy_from_slice(&rest[..n]);
                    used += n;
                    if got + n < HEADER_BYTES {
                        self.state = State::Header { got: got + n };
                        return Ok((used, None));
                    }
                    if let Some(event) = self.header_arrived()? {
                        return Ok((used, Some(event)));
                    }
                }
                State::Body { header, got } => {
                    let want = header.body_len as usize - got;
                    let n = want.min(rest.len());
                    self.body[got..got + n].copy_from_slice(&rest[..n]);
                    used += n;
                    if n < want {
                        self.state = State::Body {
                            header,
                            got: got + n,
                        };
                        return Ok((used, None));
                    }
                    return Ok((used, Some(self.body_arrived(header)?)));
                }
            }
        }
    }

    /// A whole header is in: checks it and its direction, and moves on to its body.
    fn header_arrived(&mut self) -> Result<Option<Event>, WireError> {
        let header = match Header::decode(&self.head) {
            Ok(header) => header,
            Err(WireError::UnknownOpcode {
                opcode,
                request_id,
                body_len,
                payload_len,
            }) if self.expect == Expect::Requests => {
                let left = u64::from(body_len) + payload_len;
                self.state = if left == 0 {
                    State::Header { got: 0 }
                } else {
                    State::Discard { left }
                };
                return Ok(Some(Event::Unknown { request_id, opcode }));
            }
            Err(e) => return Err(self.fail(e)),
        };
        if header.is_response() != (self.expect == Expect::Replies) {
            return Err(self.fail(WireError::WrongDirection {
                request_id: header.request_id,
                reply: header.is_response(),
            }));
        }
        self.body.clear();
        // Bounded: the header's check refused a body over MAX_BODY_BYTES.
        self.body.resize(header.body_len as usize, 0);
        if header.body_len == 0 {
            return self.body_arrived(header).map(Some);
        }
        self.state = State::Body { header, got: 0 };
        Ok(None)
    }

    fn body_arrived(&mut self, header: Header) -> Result<Event, WireError> {
        if let Err(e) = header.check_body(&self.body) {
            return Err(self.fail(e));
        }
        self.state = if header.payload_len == 0 {
            State::Header { got: 0 }
        } else {
            State::Payload {
                left: header.payload_len,
            }
        };
        Ok(Event::Message(header))
    }

    fn fail(&mut self, e: WireError) -> WireError {
        self.state = State::Failed;
        e
    }

    /// The body of the message last given by [`Event::Message`] (empty before the first, and
    /// once the next header's body begins).
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Takes the body of the message last given, leaving this decoder an empty one.
    pub fn take_body(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.body)
    }

    /// Gives the body of the message last given in `other`, and keeps `other`'s memory for
    /// the next one (a caller's buffer and the decoder's trade places, with no copy).
    pub fn swap_body(&mut self, other: &mut Vec<u8>) {
        std::mem::swap(&mut self.body, other);
    }

    /// Room for the rest of the body being received, for a caller that reads it straight
    /// from its socket (empty when no body is being received); [`Decoder::body_added`] then
    /// says how much came.
    pub fn body_room(&mut self) -> &mut [u8] {
        match self.state {
            State::Body { got, .. } => &mut self.body[got..],
            _ => &mut [],
        }
    }

    /// `n` bytes were written at the front of [`Decoder::body_room`]; the event, once the
    /// body is complete, as [`Decoder::feed`] gives it.
    pub fn body_added(&mut self, n: usize) -> Result<Option<Event>, WireError> {
        let State::Body { header, got } = self.state else {
            assert_eq!(n, 0, "body bytes added with no body being received");
            return Ok(None);
        };
        let got = got + n;
        assert!(got <= header.body_len as usize, "more body bytes than room");
        if got < header.body_len as usize {
            self.state = State::Body { header, got };
            return Ok(None);
        }
        self.body_arrived(header).map(Some)
    }

    /// Bytes of the current message's payload still to come (0 between messages).
    pub fn payload_left(&self) -> u64 {
        match self.state {
            State::Payload { left } => left,
            _ => 0,
        }
    }

    /// `n` payload bytes reached the caller some other way than through [`Decoder::feed`]
    /// (read straight into its memory). `n` may not exceed [`Decoder::payload_left`].
    pub fn payload_taken(&mut self, n: u64) {
        let left = self.payload_left();
        assert!(n <= left, "{n} payload bytes taken with {left} left");
        if n == 0 {
            return;
        }
        self.state = if n == left {
            State::Header { got: 0 }
        } else {
            State::Payload { left: left - n }
        };
    }

    /// Drops the rest of the current message's payload: the feeds that follow skip it.
    pub fn skip_payload(&mut self) {
        if let State::Payload { left } = self.state {
            self.state = State::Discard { left };
        }
    }

    /// Bytes still to be dropped (a skipped payload, the rest of an unknown request).
    pub fn discard_left(&self) -> u64 {
        match self.state {
            State::Discard { left } => left,
            _ => 0,
        }
    }

    /// Whether the stream stands between two messages (where a peer may close it cleanly).
    pub fn at_boundary(&self) -> bool {
        self.state == State::Header { got: 0 }
    }

    /// Whether an error broke the stream.
    pub fn is_failed(&self) -> bool {
        self.state == State::Failed
    }
}

/// `left` bounded by `len`, as a length.
fn clamp(left: u64, len: usize) -> usize {
    left.min(len as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{MAX_BODY_BYTES, MAX_PAYLOAD_BYTES};
    use crate::wire::{FLAG_RESPONSE, Opcode};
    use proptest::prelude::*;

    /// A message as a test builds it: header, body and payload.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Message {
        header: Header,
        body: Vec<u8>,
        payload: Vec<u8>,
    }

    fn message(reply: bool, id: u64, body: Vec<u8>, payload: Vec<u8>) -> Message {
        let mut header = Header::request(Opcode::Write, id, &body, payload.len() as u64);
        if reply {
            header.flags = FLAG_RESPONSE;
        }
        Message {
            header,
            body,
            payload,
        }
    }

    fn encode(messages: &[Message]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in messages {
            out.extend_from_slice(&m.header.encode());
            out.extend_from_slice(&m.body);
            out.extend_from_slice(&m.payload);
        }
        out
    }

    /// What a decoder made of `stream` fed in pieces of the sizes `cuts` gives (cycled), with
    /// every payload taken through `feed`; and the error, if one stopped it.
    fn decode_in_pieces(
        expect: Expect,
        stream: &[u8],
        cuts: &[usize],
    ) -> (Vec<Message>, Vec<Event>, Option<WireError>) {
        let mut d = Decoder::new(expect);
        let mut out: Vec<Message> = Vec::new();
        let mut events = Vec::new();
        let mut at = 0;
        let mut cut = 0;
        while at < stream.len() {
            let size = cuts
                .get(cut % cuts.len().max(1))
                .copied()
                .unwrap_or(1)
                .max(1);
            cut += 1;
            let piece = &stream[at..(at + size).min(stream.len())];
            let mut used = 0;
            while used < piece.len() {
                let fed = d.feed(&piece[used..]);
                // Nothing is ever reserved beyond one body of the largest size.
                assert!(d.body.capacity() <= MAX_BODY_BYTES as usize);
                match fed {
                    Err(e) => return (out, events, Some(e)),
                    Ok((n, event)) => {
                        match event {
                            Some(Event::Message(header)) => out.push(Message {
                                header,
                                body: d.body().to_vec(),
                                payload: Vec::new(),
                            }),
                            Some(Event::Payload) => out
                                .last_mut()
                                .expect("a payload follows a message")
                                .payload
                                .extend_from_slice(&piece[used..used + n]),
                            Some(e @ Event::Unknown { .. }) => events.push(e),
                            None => assert_eq!(used + n, piece.len(), "None takes it all"),
                        }
                        used += n;
                    }
                }
            }
            at += piece.len();
        }
        (out, events, None)
    }

    #[test]
    fn a_request_with_body_and_payload_decodes_whole() {
        let m = message(false, 7, vec![1, 2, 3], vec![9; 100]);
        let (got, _, err) =
            decode_in_pieces(Expect::Requests, &encode(std::slice::from_ref(&m)), &[4096]);
        assert_eq!(err, None);
        assert_eq!(got, vec![m]);
    }

    #[test]
    fn a_reply_where_requests_are_expected_is_an_error_and_breaks_the_stream() {
        let stream = encode(&[message(true, 3, vec![], vec![])]);
        let mut d = Decoder::new(Expect::Requests);
        assert_eq!(
            d.feed(&stream),
            Err(WireError::WrongDirection {
                request_id: 3,
                reply: true
            })
        );
        assert!(d.is_failed());
        assert_eq!(d.feed(&stream), Err(WireError::Desynchronized));
        let mut d = Decoder::new(Expect::Replies);
        let stream = encode(&[message(false, 4, vec![], vec![])]);
        assert!(matches!(
            d.feed(&stream),
            Err(WireError::WrongDirection { reply: false, .. })
        ));
    }

    #[test]
    fn an_unknown_opcode_is_an_event_for_a_server_and_its_rest_is_skipped() {
        let body = vec![5u8; 10];
        let mut head = Header::request(Opcode::Ping, 11, &body, 20).encode();
        head[6..8].copy_from_slice(&999u16.to_le_bytes());
        // Recompute the header's checksum over the changed opcode.
        head[44..48].fill(0);
        let crc = crc32c::crc32c(&head);
        head[44..48].copy_from_slice(&crc.to_le_bytes());
        let mut stream = head.to_vec();
        stream.extend_from_slice(&body);
        stream.extend_from_slice(&[6u8; 20]);
        let next = message(false, 12, vec![1], vec![2, 3]);
        stream.extend_from_slice(&encode(std::slice::from_ref(&next)));
        for cut in [1, 7, 48, 58, 4096] {
            let (got, events, err) = decode_in_pieces(Expect::Requests, &stream, &[cut]);
            assert_eq!(err, None, "cut {cut}");
            assert_eq!(
                events,
                vec![Event::Unknown {
                    request_id: 11,
                    opcode: 999
                }]
            );
            assert_eq!(got, vec![next.clone()], "cut {cut}");
        }
        let (_, _, err) = decode_in_pieces(Expect::Replies, &stream, &[4096]);
        assert!(matches!(err, Some(WireError::UnknownOpcode { .. })));
    }

    #[test]
    fn a_body_read_straight_into_its_room_and_a_payload_taken_directly_decode_the_same() {
        let m = message(true, 1, vec![4; 300], vec![8; 5000]);
        let stream = encode(std::slice::from_ref(&m));
        let mut d = Decoder::new(Expect::Replies);
        assert_eq!(d.feed(&stream[..HEADER_BYTES]), Ok((HEADER_BYTES, None)));
        assert_eq!(d.body_room().len(), 300);
        d.body_room()[..100].copy_from_slice(&stream[HEADER_BYTES..HEADER_BYTES + 100]);
        assert_eq!(d.body_added(100), Ok(None));
        let room = d.body_room();
        room.copy_from_slice(&stream[HEADER_BYTES + 100..HEADER_BYTES + 300]);
        assert_eq!(d.body_added(200), Ok(Some(Event::Message(m.header))));
        assert_eq!(d.body(), &m.body[..]);
        assert_eq!(d.payload_left(), 5000);
        d.payload_taken(4000);
        assert!(!d.at_boundary());
        d.skip_payload();
        assert_eq!(d.discard_left(), 1000);
        assert_eq!(d.feed(&stream[stream.len() - 1000..]), Ok((1000, None)));
        assert!(d.at_boundary());
    }

    #[test]
    fn a_flipped_body_byte_is_a_checksum_error() {
        let mut stream = encode(&[message(false, 1, vec![1, 2, 3, 4], vec![])]);
        stream[HEADER_BYTES + 2] ^= 1;
        let (_, _, err) = decode_in_pieces(Expect::Requests, &stream, &[5]);
        assert!(matches!(err, Some(WireError::BodyChecksum { .. })));
    }

    fn messages() -> impl Strategy<Value = Vec<Message>> {
        let one = (
            any::<u64>(),
            prop::collection::vec(any::<u8>(), 0..200),
            prop::collection::vec(any::<u8>(), 0..3000),
        )
            .prop_map(|(id, body, payload)| message(false, id, body, payload));
        prop::collection::vec(one, 0..8)
    }

    proptest! {
        /// Every split of a stream of valid messages decodes to the same messages.
        #[test]
        fn every_split_of_valid_messages_decodes_the_same(
            ms in messages(),
            cuts in prop::collection::vec(1usize..5000, 1..6),
        ) {
            let stream = encode(&ms);
            let (got, events, err) = decode_in_pieces(Expect::Requests, &stream, &cuts);
            prop_assert_eq!(err, None);
            prop_assert!(events.is_empty());
            prop_assert_eq!(got, ms);
        }

        /// Any byte string is messages or an error, never a panic; and nothing is reserved
        /// beyond one body of at most MAX_BODY_BYTES.
        #[test]
        fn any_bytes_are_messages_or_an_error(
            bytes in prop::collection::vec(any::<u8>(), 0..4096),
            cut in 1usize..600,
            expect in prop::sample::select(vec![Expect::Requests, Expect::Replies]),
        ) {
            let (got, _, _) = decode_in_pieces(expect, &bytes, &[cut]);
            for m in &got {
                prop_assert!(m.body.len() <= MAX_BODY_BYTES as usize);
                prop_assert!(m.payload.len() as u64 <= MAX_PAYLOAD_BYTES);
            }
        }

        /// Valid messages with bytes changed at random: a decoder never panics and never
        /// gives a body whose checksum does not match its header.
        #[test]
        fn corrupted_messages_never_give_a_wrong_body(
            ms in messages(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
            cut in 1usize..700,
        ) {
            let mut stream = encode(&ms);
            if stream.is_empty() {
                return Ok(());
            }
            for (at, mask) in flips {
                let i = at.index(stream.len());
                stream[i] ^= mask;
            }
            let (got, _, _) = decode_in_pieces(Expect::Requests, &stream, &[cut]);
            for m in &got {
                prop_assert_eq!(crc32c::crc32c(&m.body), m.header.body_crc32c);
            }
        }
    }
}
