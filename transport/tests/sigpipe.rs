//! Sending to a peer that has gone is an error, never SIGPIPE: a C program linking libnacre
//! keeps the signal's default action, which kills the process. This test runs in a process
//! of its own (its own test binary) with SIGPIPE restored to that default, so a send that
//! raised it would end the run instead of passing.

use std::io::IoSlice;
use std::net::TcpListener;
use std::time::Duration;

use nacre_transport::Endpoint;
use nacre_transport::client::{ConnectOptions, Connection};
use nacre_transport::wire::Opcode;

/// Sends tried before the test gives up waiting for the error (the first ones may be taken
/// by the socket buffers before the peer's reset arrives).
const MAX_SENDS: usize = 1000;
const PAYLOAD_BYTES: usize = 256 * 1024;
const TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn sending_to_a_peer_that_closed_is_an_error_not_sigpipe() {
    // SAFETY: restoring a signal's default disposition; no handler is installed.
    let previous = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    assert_ne!(previous, libc::SIG_ERR, "signal(SIGPIPE, SIG_DFL) failed");

    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local address");
    let endpoint = Endpoint::parse(&format!("tcp://{addr}")).expect("endpoint");
    let options = ConnectOptions {
        connect_timeout: TIMEOUT,
        request_timeout: TIMEOUT,
    };
    let mut conn = Connection::connect(&endpoint, options).expect("connect");
    // The peer takes the connection and closes it without reading: the client's next sends
    // meet a reset.
    let (accepted, _) = listener.accept().expect("accept");
    drop(accepted);

    let payload = vec![7u8; PAYLOAD_BYTES];
    let mut failed = None;
    for _ in 0..MAX_SENDS {
        if let Err(e) = conn.send_request(Opcode::Write, &[], &[IoSlice::new(&payload)]) {
            failed = Some(e);
            break;
        }
    }
    let e = failed.expect("every send to a closed peer succeeded");
    let text = e.to_string();
    assert!(
        text.contains(&addr.to_string()),
        "the error names the peer: {text}"
    );
}
