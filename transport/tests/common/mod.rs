//! What the nonblocking connection tests share: the bound of every wait, a bounded wait
//! for readiness, and a comparison of bytes that names where they differ.

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// The bound of every wait: readiness, a peer's step, a blocking read or write.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// Waits until `fd` has one of `events` (or an error or hang-up) and returns what it has;
/// panics after [`WAIT`].
pub(crate) fn poll_fd(fd: RawFd, events: libc::c_short) -> libc::c_short {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `pfd` is one valid pollfd for a descriptor the caller keeps open.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        match rc {
            0 => panic!("the connection was not ready ({events:#x}) within {WAIT:?}"),
            1.. => return pfd.revents,
            _ => {
                let e = std::io::Error::last_os_error();
                assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "poll: {e}");
            }
        }
    }
}

/// Panics unless `got == want`, naming the first differing offset (without printing
/// megabytes).
pub(crate) fn assert_bytes(got: &[u8], want: &[u8], what: &str) {
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: byte {i} is {:#04x}, expected {:#04x}",
            got[i], want[i]
        );
    }
    assert_eq!(got.len(), want.len(), "{what}: length");
}
