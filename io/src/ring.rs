//! The thin unsafe layer over io_uring: one ring, its registered file table and fixed-buffer
//! table, typed builders for the opcodes the store uses, submission and a bounded wait.
//! Everything that touches the kernel's view of memory is here, behind `unsafe fn`s whose
//! contract is written on them.

use std::os::fd::RawFd;
use std::time::Instant;

use io_uring::{IoUring, opcode, squeue, types};

use crate::error::{IoError, Operation};

/// One io_uring instance with a sparse registered file table and a sparse fixed-buffer table.
pub(crate) struct Ring {
    ring: IoUring,
    /// Entries queued for the kernel since the ring was made.
    pushed: u64,
    /// Completions handed out by [`Ring::take_completions`] since the ring was made: the
    /// kernel holds `pushed - taken` entries (a completion queue twice the submission
    /// queue's size cannot overflow, so none is lost on its side).
    taken: u64,
    /// The kernel has IORING_OP_FTRUNCATE (Linux 6.9 and later; Debian 12's 6.1 has not):
    /// truncates go through the ring ([`truncate`]); without, the store truncates with
    /// ftruncate(2) in place.
    pub(crate) ftruncate: bool,
}

fn ring_err(op: Operation) -> impl FnOnce(std::io::Error) -> IoError {
    move |source| IoError::Ring { op, source }
}

impl Ring {
    /// A ring of `depth` submission entries (and twice as many completion entries), with
    /// `files` registered file slots and `buffers` fixed-buffer slots, all empty.
    pub(crate) fn new(depth: u32, files: u32, buffers: u32) -> Result<Ring, IoError> {
        // No COOP_TASKRUN: with it, a completion waits for the thread's next system call
        // to be posted, so a thread asleep in epoll_wait on the ring's eventfd would not
        // be woken (see `register_eventfd`).
        let ring = IoUring::builder()
            .setup_cqsize(depth * 2)
            .setup_single_issuer()
            .build(depth)
            .map_err(ring_err(Operation::Ring))?;
        ring.submitter()
            .register_files_sparse(files)
            .map_err(ring_err(Operation::Ring))?;
        ring.submitter()
            .register_buffers_sparse(buffers)
            .map_err(ring_err(Operation::Register))?;
        // A kernel (or sandbox) that refuses the probe gets the ftruncate(2) path, which
        // works everywhere.
        let mut probe = io_uring::Probe::new();
        let ftruncate = ring.submitter().register_probe(&mut probe).is_ok()
            && probe.is_supported(opcode::Ftruncate::CODE);
        Ok(Ring {
            ring,
            pushed: 0,
            taken: 0,
            ftruncate,
        })
    }

    /// Has the kernel signal eventfd `fd` whenever it posts a completion.
    pub(crate) fn register_eventfd(&self, fd: RawFd) -> Result<(), IoError> {
        self.ring
            .submitter()
            .register_eventfd(fd)
            .map_err(ring_err(Operation::Ring))
    }

    /// Puts `fd` (or -1 to empty it) into registered file slot `slot`.
    pub(crate) fn set_file(&self, slot: u32, fd: RawFd) -> Result<(), IoError> {
        self.ring
            .submitter()
            .register_files_update(slot, &[fd])
            .map(drop)
            .map_err(ring_err(Operation::Ring))
    }

    /// Registers `[ptr, ptr + len)` as fixed buffer `slot`.
    ///
    /// # Safety
    /// The memory must stay valid (allocated, not unmapped) until the slot is replaced or the
    /// ring is dropped.
    pub(crate) unsafe fn set_buffer(
        &self,
        slot: u32,
        ptr: *mut u8,
        len: usize,
    ) -> Result<(), IoError> {
        let iov = libc::iovec {
            iov_base: ptr.cast(),
            iov_len: len,
        };
        // SAFETY: the caller keeps the memory valid for as long as the slot holds it.
        unsafe {
            self.ring
                .submitter()
                .register_buffers_update(slot, &[iov], None)
        }
        .map(drop)
        .map_err(ring_err(Operation::Register))
    }

    /// Queues an entry for the kernel; false when the submission queue is full.
    ///
    /// # Safety
    /// Every buffer the entry names must stay valid, and not be read or written by anyone
    /// else in a way the operation forbids, until its completion has been reaped.
    pub(crate) unsafe fn push(&mut self, entry: &squeue::Entry) -> bool {
        let mut sq = self.ring.submission();
        // SAFETY: the caller upholds the buffer contract above.
        let pushed = unsafe { sq.push(entry) }.is_ok();
        self.pushed += u64::from(pushed);
        pushed
    }

    /// Entries queued and not yet handed back as completions: what the kernel holds.
    pub(crate) fn in_kernel(&self) -> u64 {
        self.pushed - self.taken
    }

    /// Hands queued entries to the kernel without waiting.
    pub(crate) fn submit(&mut self) -> Result<(), IoError> {
        if self.ring.submission().is_empty() {
            return Ok(());
        }
        loop {
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
                Err(e) => return Err(ring_err(Operation::Ring)(e)),
            }
        }
    }

    /// Submits and waits until at least one completion is ready or `deadline` passes.
    pub(crate) fn wait_one(&self, deadline: Instant) -> Result<(), IoError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let ts = types::Timespec::new()
            .sec(remaining.as_secs())
            .nsec(remaining.subsec_nanos());
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(ring_err(Operation::Ring)(e)),
        }
    }

    /// Submits and waits until the kernel has posted `n` completions (tests use it to
    /// make a reap meet many at once).
    #[cfg(test)]
    pub(crate) fn wait_for_completions(&self, n: usize) -> std::io::Result<usize> {
        self.ring.submit_and_wait(n)
    }

    /// Moves up to `out.len()` of the completions ready now into `out`, oldest first, as
    /// (user data, result), and returns how many. The rest stay in the completion queue
    /// for the next call: each completion is handed out exactly once, whatever the size of
    /// `out` (the queue's head advances past the ones taken only).
    pub(crate) fn take_completions(&mut self, out: &mut [(u64, i32)]) -> usize {
        let mut cq = self.ring.completion();
        let mut n = 0;
        for slot in out.iter_mut() {
            let Some(cqe) = cq.next() else { break };
            *slot = (cqe.user_data(), cqe.result());
            n += 1;
        }
        // Dropping `cq` publishes the new head: the entries taken, and only those.
        drop(cq);
        self.taken += n as u64;
        n
    }
}

/// Read into `buf` from registered file `slot`, through fixed buffer `buf_index` if given.
pub(crate) fn read(
    slot: u32,
    buf: *mut u8,
    len: u32,
    offset: u64,
    buf_index: Option<u16>,
) -> squeue::Entry {
    let fd = types::Fixed(slot);
    match buf_index {
        Some(index) => opcode::ReadFixed::new(fd, buf, len, index)
            .offset(offset)
            .build(),
        None => opcode::Read::new(fd, buf, len).offset(offset).build(),
    }
}

/// Write from `buf` to registered file `slot`, through fixed buffer `buf_index` if given.
pub(crate) fn write(
    slot: u32,
    buf: *const u8,
    len: u32,
    offset: u64,
    buf_index: Option<u16>,
) -> squeue::Entry {
    let fd = types::Fixed(slot);
    match buf_index {
        Some(index) => opcode::WriteFixed::new(fd, buf, len, index)
            .offset(offset)
            .build(),
        None => opcode::Write::new(fd, buf, len).offset(offset).build(),
    }
}

/// Write from `buf` to the plain (unregistered) descriptor `fd`.
pub(crate) fn write_plain(fd: RawFd, buf: *const u8, len: u32, offset: u64) -> squeue::Entry {
    opcode::Write::new(types::Fd(fd), buf, len)
        .offset(offset)
        .build()
}

/// fdatasync of registered file `slot`.
pub(crate) fn datasync(slot: u32) -> squeue::Entry {
    opcode::Fsync::new(types::Fixed(slot))
        .flags(types::FsyncFlags::DATASYNC)
        .build()
}

/// ftruncate of registered file `slot`.
pub(crate) fn truncate(slot: u32, size_bytes: u64) -> squeue::Entry {
    opcode::Ftruncate::new(types::Fixed(slot), size_bytes).build()
}

/// Deallocates `[offset, offset + len)` of registered file `slot`, keeping its size.
pub(crate) fn punch(slot: u32, offset: u64, len: u64) -> squeue::Entry {
    opcode::Fallocate::new(types::Fixed(slot), len)
        .offset(offset)
        .mode(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
        .build()
}
