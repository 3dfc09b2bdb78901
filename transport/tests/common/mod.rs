//! What the nonblocking connection tests share: the bound of every wait, a bounded wait
//! for readiness, and a comparison of bytes that names where they differ.

use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use nacre_transport::event::timespec;
use rustix::event::{PollFd, PollFlags};

/// The bound of every wait: readiness, a peer's step, a blocking read or write.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// Waits until `fd` has one of `events` (or an error or hang-up) and returns what it has;
/// panics after [`WAIT`].
pub(crate) fn poll_fd(fd: BorrowedFd<'_>, events: PollFlags) -> PollFlags {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut fds = [PollFd::new(&fd, events)];
        match rustix::event::poll(&mut fds, Some(&timespec(left))) {
            Ok(0) => panic!("the connection was not ready ({events:?}) within {WAIT:?}"),
            Ok(_) => return fds[0].revents(),
            Err(e) => assert_eq!(e, rustix::io::Errno::INTR, "poll: {e}"),
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
