//! The two kernel objects an event loop waits on: an epoll set and eventfds. The
//! nonblocking connections ([`crate::StreamConn`], [`crate::PipeConn`]) are driven by such
//! loops: a target worker's waits on its connections, its wake-up and its ring's completions
//! (decision 0008); an asynchronous queue of the engine on its connections to targets and
//! the wake-up of its other waiters (decision 0009); `net-bench`'s loop server and clients
//! on theirs.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// `timeout` as the milliseconds `epoll_wait(2)` and `poll(2)` take, rounded up: a wait of
/// 0.4 ms sleeps up to 1 ms rather than not at all. Truncating instead turned the last
/// fraction of a millisecond before every deadline into a loop of waits that return at once
/// (an idle acceptor spun for about 1 ms in every 100).
pub fn poll_timeout_ms(timeout: Duration) -> i32 {
    let ms = timeout.as_nanos().div_ceil(1_000_000);
    i32::try_from(ms).unwrap_or(i32::MAX)
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
        // SAFETY: eventfd takes no pointers; a negative return is an error, else a new
        // descriptor we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(EventFd {
            // SAFETY: `fd` is a fresh descriptor nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The descriptor.
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Makes the descriptor readable (wakes a thread waiting on it).
    pub fn ring(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a local u64, as eventfd expects. It can only fail when
        // the counter would overflow, which needs 2^64 - 2 unread wake-ups: the reader is
        // awake then anyway.
        let _ = unsafe { libc::write(self.raw(), (&raw const one).cast(), 8) };
    }

    /// Sets the counter back to zero.
    pub fn clear(&self) {
        let mut count: u64 = 0;
        // SAFETY: reads 8 bytes into a local u64; EAGAIN (already zero) is fine.
        let _ = unsafe { libc::read(self.raw(), (&raw mut count).cast(), 8) };
    }
}

/// An epoll set whose entries carry a 64-bit token.
#[derive(Debug)]
pub struct Epoll {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
}

/// Most readiness events one wait returns.
const EVENTS_PER_WAIT: usize = 256;

impl Epoll {
    /// An empty set.
    pub fn new() -> std::io::Result<Epoll> {
        // SAFETY: no pointers; a negative return is an error, else a descriptor we own.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Epoll {
            // SAFETY: `fd` is a fresh descriptor nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            events: vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT],
        })
    }

    /// Watches `fd` for reading and writing, edge-triggered, or for reading only.
    pub fn add(&self, fd: RawFd, token: u64, writes_too: bool) -> std::io::Result<()> {
        let mut flags = libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET;
        if writes_too {
            flags |= libc::EPOLLOUT;
        }
        let mut event = libc::epoll_event {
            events: flags as u32,
            u64: token,
        };
        // SAFETY: `event` is a valid epoll_event for the duration of the call.
        let rc =
            unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Stops watching `fd` (closing it does too, once no other descriptor refers to it).
    pub fn remove(&self, fd: RawFd) {
        let mut event = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: as in `add`; an fd not in the set is an error we ignore.
        let _ =
            unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, &mut event) };
    }

    /// Waits up to `timeout` for readiness and calls `f` with each ready entry's token and
    /// whether it may be read from (readable, hung up or in error).
    pub fn wait(&mut self, timeout: Duration, f: impl FnMut(u64, bool)) -> std::io::Result<()> {
        let mut events = std::mem::take(&mut self.events);
        let result = self.wait_into(&mut events, timeout, f);
        self.events = events;
        result
    }

    /// As [`Epoll::wait`], into the caller's event buffer, so that several threads may
    /// wait on one set at once (each edge goes to one of them).
    pub fn wait_into(
        &self,
        events: &mut [libc::epoll_event],
        timeout: Duration,
        mut f: impl FnMut(u64, bool),
    ) -> std::io::Result<()> {
        let ms = poll_timeout_ms(timeout);
        // SAFETY: the buffer holds `events.len()` events and outlives the call.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                events.as_mut_ptr(),
                events.len().min(i32::MAX as usize) as i32,
                ms,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            // A signal, or io_uring's task work, interrupted the wait: nothing is lost, the
            // caller's loop looks at everything again.
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(e);
        }
        for e in &events[..n as usize] {
            let read_side =
                (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
            f(e.u64, e.events & read_side != 0);
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
