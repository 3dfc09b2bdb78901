//! The two kernel objects an event loop waits on: an epoll set and eventfds. The
//! nonblocking connections ([`crate::server::StreamConn`], [`crate::client::PipeConn`]) are driven by such
//! loops: a target worker's waits on its connections, its wake-up and its ring's completions
//! (decision 0008); an asynchronous queue of the engine on its connections to targets and
//! the wake-up of its other waiters (decision 0009); `net-bench`'s loop server and clients
//! on theirs.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use rustix::event::epoll::{self, CreateFlags, EventData, EventFlags};
use rustix::event::{EventfdFlags, Timespec};

/// `timeout` as the milliseconds `poll(2)` takes, rounded up: a wait of 0.4 ms sleeps up
/// to 1 ms rather than not at all. Truncating instead turned the last fraction of a
/// millisecond before every deadline into a loop of waits that return at once (an idle
/// acceptor spun for about 1 ms in every 100).
pub fn poll_timeout_ms(timeout: Duration) -> i32 {
    let ms = timeout.as_nanos().div_ceil(1_000_000);
    i32::try_from(ms).unwrap_or(i32::MAX)
}

/// `timeout` as the time the kernel's waits take (rustix rounds it up to milliseconds where
/// a call takes those, as [`poll_timeout_ms`] does).
pub fn timespec(timeout: Duration) -> Timespec {
    Timespec {
        tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(timeout.subsec_nanos()),
    }
}

/// Waits up to `timeout` until `fd` is readable (or hung up, or in error); false when the
/// time ran out or a signal came first.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> std::io::Result<bool> {
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    match rustix::event::poll(&mut fds, Some(&timespec(timeout))) {
        Ok(n) => Ok(n > 0),
        Err(rustix::io::Errno::INTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// An eventfd: a counter other threads add to, and a descriptor that is readable while the
/// counter is not zero.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// A nonblocking eventfd at zero.
    pub fn new() -> std::io::Result<EventFd> {
        let fd = rustix::event::eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)?;
        Ok(EventFd { fd })
    }

    /// The descriptor.
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Makes the descriptor readable (wakes a thread waiting on it).
    pub fn ring(&self) {
        // It can only fail when the counter would overflow, which needs 2^64 - 2 unread
        // wake-ups: the reader is awake then anyway.
        let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
    }

    /// Sets the counter back to zero.
    pub fn clear(&self) {
        let mut count = [0u8; 8];
        // EAGAIN (already zero) is fine.
        let _ = rustix::io::read(&self.fd, &mut count);
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Room for the readiness events of one wait: `N` at most. Each thread waiting on an
/// [`Epoll`] at once has its own.
#[derive(Clone, Copy)]
pub struct Events<const N: usize> {
    events: [epoll::Event; N],
}

// SAFETY: an event's data is a union of a u64 and a pointer, hence not Send. This module
// only ever stores u64 tokens in it (`EventData::new_u64`, and the kernel gives back what
// was registered), never a pointer, so nothing in it is tied to a thread.
unsafe impl<const N: usize> Send for Events<N> {}
// SAFETY: as for Send: plain integers.
unsafe impl<const N: usize> Sync for Events<N> {}

impl<const N: usize> std::fmt::Debug for Events<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Events<{N}>")
    }
}

impl<const N: usize> Events<N> {
    /// Empty room.
    pub const fn new() -> Events<N> {
        Events {
            events: [epoll::Event {
                flags: EventFlags::empty(),
                data: EventData::new_u64(0),
            }; N],
        }
    }
}

impl<const N: usize> Default for Events<N> {
    fn default() -> Self {
        Events::new()
    }
}

/// An epoll set whose entries carry a 64-bit token.
#[derive(Debug)]
pub struct Epoll {
    fd: OwnedFd,
    events: Box<Events<EVENTS_PER_WAIT>>,
}

/// Most readiness events one wait returns.
const EVENTS_PER_WAIT: usize = 256;

impl Epoll {
    /// An empty set.
    pub fn new() -> std::io::Result<Epoll> {
        Ok(Epoll {
            fd: epoll::create(CreateFlags::CLOEXEC)?,
            events: Box::new(Events::new()),
        })
    }

    /// Watches `fd` for reading and writing, edge-triggered, or for reading only.
    pub fn add(&self, fd: BorrowedFd<'_>, token: u64, writes_too: bool) -> std::io::Result<()> {
        let mut flags = EventFlags::IN | EventFlags::RDHUP | EventFlags::ET;
        if writes_too {
            flags |= EventFlags::OUT;
        }
        epoll::add(&self.fd, fd, EventData::new_u64(token), flags)?;
        Ok(())
    }

    /// Stops watching `fd` (closing it does too, once no other descriptor refers to it).
    pub fn remove(&self, fd: BorrowedFd<'_>) {
        // An fd not in the set is an error to ignore.
        let _ = epoll::delete(&self.fd, fd);
    }

    /// Waits up to `timeout` for readiness and calls `f` with each ready entry's token and
    /// whether it may be read from (readable, hung up or in error).
    pub fn wait(&mut self, timeout: Duration, f: impl FnMut(u64, bool)) -> std::io::Result<()> {
        let mut events = std::mem::take(&mut self.events);
        let result = self.wait_into(&mut events, timeout, f);
        self.events = events;
        result
    }

    /// As [`Epoll::wait`], into the caller's room for events, so that several threads may
    /// wait on one set at once (each edge goes to one of them).
    pub fn wait_into<const N: usize>(
        &self,
        events: &mut Events<N>,
        timeout: Duration,
        mut f: impl FnMut(u64, bool),
    ) -> std::io::Result<()> {
        let n = match epoll::wait(&self.fd, &mut events.events[..], Some(&timespec(timeout))) {
            Ok(n) => n,
            // A signal, or io_uring's task work, interrupted the wait: nothing is lost, the
            // caller's loop looks at everything again.
            Err(rustix::io::Errno::INTR) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let read_side = EventFlags::IN | EventFlags::RDHUP | EventFlags::HUP | EventFlags::ERR;
        for e in &events.events[..n] {
            // Copies: the kernel's event layout is packed.
            let (flags, data) = (e.flags, e.data);
            f(data.u64(), flags.intersects(read_side));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_never_rounds_down_to_no_wait() {
        assert_eq!(poll_timeout_ms(Duration::ZERO), 0);
        assert_eq!(poll_timeout_ms(Duration::from_nanos(1)), 1);
        assert_eq!(poll_timeout_ms(Duration::from_micros(400)), 1);
        assert_eq!(poll_timeout_ms(Duration::from_millis(1)), 1);
        assert_eq!(poll_timeout_ms(Duration::from_micros(1_001)), 2);
        assert_eq!(poll_timeout_ms(Duration::from_secs(u64::MAX)), i32::MAX);
    }
}
