//! The sans-IO framer: the one place where bytes become messages and messages become bytes,
//! with no socket in it (the model is rustls' `read_tls` / `process_new_packets` /
//! `write_tls`, decision 0019).
//!
//! - [`Decoder`]: bytes in, checked messages out. A connection hands it whatever it read;
//!   it answers how many bytes it took and what they completed: a message's header and
//!   body ([`Event::Message`]), bytes of its payload ([`Event::Payload`]), or a request it
//!   cannot take ([`Event::Unknown`], to be answered with an error reply). A connection
//!   that reads a payload or a large body straight into its own memory tells it how much
//!   came ([`Decoder::payload_taken`], [`Decoder::body_added`]): the framer keeps the count
//!   and the checks, the caller keeps zero copy.
//! - The outbox (crate-private): messages in, iovecs out ([`outbox::Outbox::gather`]), and
//!   the count of bytes a write took back in ([`outbox::Outbox::advance`]).
//!
//! Every connection kind that carries a byte stream (the server's and the client's
//! nonblocking TCP, the blocking TCP connection) decodes through it, so what a peer may send
//! is checked in one place. TLS, when it comes, sits between the socket and the framer: the
//! socket's bytes go through the TLS session and its plaintext is what the decoder is fed,
//! and the outbox's iovecs are what the session encrypts.

mod decode;
pub(crate) mod outbox;

pub use decode::{Decoder, Event, Expect};
