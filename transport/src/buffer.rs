//! The input buffer both TCP connection kinds read a header into, with whatever follows it,
//! so that a small message (header, body and payload) arrives in one system call. Bytes
//! past the header are taken from here first; everything else a message carries is read
//! straight into its destination.

use crate::limits::INPUT_BUFFER_BYTES;

/// Bytes read and not yet taken: `bytes[at..end]`.
#[derive(Debug)]
pub(crate) struct InputBuffer {
    bytes: Box<[u8]>,
    at: usize,
    end: usize,
}

impl InputBuffer {
    pub(crate) fn new() -> InputBuffer {
        InputBuffer {
            bytes: vec![0; INPUT_BUFFER_BYTES].into_boxed_slice(),
            at: 0,
            end: 0,
        }
    }

    /// Bytes read and not yet taken.
    pub(crate) fn len(&self) -> usize {
        self.end - self.at
    }

    /// The bytes read and not yet taken.
    pub(crate) fn data(&self) -> &[u8] {
        &self.bytes[self.at..self.end]
    }

    /// Takes the first `n` of [`InputBuffer::data`].
    pub(crate) fn consume(&mut self, n: usize) {
        assert!(n <= self.len(), "{n} bytes consumed of {}", self.len());
        self.at += n;
    }

    /// Moves up to `out.len()` bytes into `out`; how many.
    pub(crate) fn take(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.len());
        out[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
        self.at += n;
        n
    }

    /// The whole buffer as room for a read, when it holds nothing (`None` otherwise): a
    /// read of the rest of a payload can bring what follows it (the next message) here in
    /// the same call. [`InputBuffer::added`] then keeps what landed.
    pub(crate) fn spare(&mut self) -> Option<&mut [u8]> {
        if self.len() > 0 {
            return None;
        }
        self.at = 0;
        self.end = 0;
        Some(&mut self.bytes[..])
    }

    /// Keeps `n` bytes a read put in the room [`InputBuffer::spare`] gave.
    pub(crate) fn added(&mut self, n: usize) {
        self.end = (self.end + n).min(self.bytes.len());
    }

    /// Reads once with `read` into the room after the bytes held (moved to the front
    /// first), and keeps what it got. `read`'s answer is returned as it is.
    pub(crate) fn fill<E>(
        &mut self,
        read: impl FnOnce(&mut [u8]) -> Result<Option<usize>, E>,
    ) -> Result<Option<usize>, E> {
        if self.at > 0 {
            self.bytes.copy_within(self.at..self.end, 0);
            self.end -= self.at;
            self.at = 0;
        }
        let got = read(&mut self.bytes[self.end..])?;
        if let Some(n) = got {
            self.end += n;
        }
        Ok(got)
    }
}
