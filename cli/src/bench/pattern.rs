//! The bytes `nacre bench` writes, so that every byte read back can be checked against the
//! offset it was read from.
//!
//! A file is a sequence of little-endian 64-bit words; word `i` (file bytes `8i..8i+8`) of
//! the file with seed `s` is
//!
//! ```text
//! word(i, s) = (i * PATTERN_STEP + s) mod 2^64, with bit 63 set
//! s          = splitmix64(PATTERN_SEED xor file_index)
//! ```
//!
//! where `file_index` is 0 for a shared file and the writing task's rank for file per
//! process, and splitmix64 is the usual finaliser (`z += 0x9E3779B97F4A7C15;
//! z = (z ^ z>>30) * 0xBF58476D1CE4E5B9; z = (z ^ z>>27) * 0x94D049BB133111EB;
//! z ^ z>>31`). The byte at file offset `x` is byte `x mod 8` of `word(x / 8, s)`, so any
//! range, of any length and at any offset (47,008-byte transfers, random 4 KiB reads), can
//! be made and checked on its own; an MPI driver in C computes the same bytes.
//!
//! Why it catches what it must: bit 63 is set in every word, so a hole that reads as zeros
//! never passes; words of two offsets less than 2^66 bytes apart differ (the step is odd),
//! so data placed at the wrong offset never passes; and each file of a file-per-process run
//! has its own seed, so one task's file read in place of another's never passes.

/// Mixed into every file's seed.
pub(super) const PATTERN_SEED: u64 = 0x6e61_6372_6562_656e;
/// The difference between consecutive words (odd, so words never repeat within 2^64 words).
pub(super) const PATTERN_STEP: u64 = 0x9E37_79B9_7F4A_7C15;
/// Set in every word, so that no word is zero.
const WORD_MARK: u64 = 1 << 63;
/// Bytes per pattern word.
const WORD_BYTES: usize = 8;
/// Words compared at once before looking for the first wrong byte.
const VERIFY_RUN_WORDS: usize = 64;

/// The splitmix64 finaliser: a bijective mix of 64 bits.
pub(super) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed of the file with index `file_index` (0 for a shared file).
pub(super) fn file_seed(file_index: u32) -> u64 {
    splitmix64(PATTERN_SEED ^ u64::from(file_index))
}

fn word(index: u64, seed: u64) -> u64 {
    index.wrapping_mul(PATTERN_STEP).wrapping_add(seed) | WORD_MARK
}

/// The pattern byte at file offset `at`.
pub(super) fn byte_at(at: u64, seed: u64) -> u8 {
    word(at / WORD_BYTES as u64, seed).to_le_bytes()[(at % WORD_BYTES as u64) as usize]
}

/// How many bytes from `at` until the next word boundary, at most `len`.
fn head_len(at: u64, len: usize) -> usize {
    let misalign = (at % WORD_BYTES as u64) as usize;
    if misalign == 0 {
        0
    } else {
        (WORD_BYTES - misalign).min(len)
    }
}

/// Fills `buf` with the pattern of the file bytes at `offset`.
pub(super) fn fill(buf: &mut [u8], offset: u64, seed: u64) {
    let len = buf.len();
    let head = head_len(offset, len);
    let (head_bytes, rest) = buf.split_at_mut(head);
    for (i, b) in head_bytes.iter_mut().enumerate() {
        *b = byte_at(offset + i as u64, seed);
    }
    let first_word = (offset + head as u64) / WORD_BYTES as u64;
    let mut words = rest.chunks_exact_mut(WORD_BYTES);
    for (k, chunk) in (&mut words).enumerate() {
        chunk.copy_from_slice(&word(first_word + k as u64, seed).to_le_bytes());
    }
    let tail = words.into_remainder();
    let tail_start = offset + (len - tail.len()) as u64;
    for (i, b) in tail.iter_mut().enumerate() {
        *b = byte_at(tail_start + i as u64, seed);
    }
}

/// The first byte that differs from the pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Mismatch {
    /// Its file offset.
    pub offset: u64,
    /// What the pattern says.
    pub expected: u8,
    /// What was read.
    pub found: u8,
}

fn first_mismatch(buf: &[u8], offset: u64, seed: u64) -> Mismatch {
    // Only called on a range known to differ somewhere.
    for (i, &found) in buf.iter().enumerate() {
        let at = offset + i as u64;
        let expected = byte_at(at, seed);
        if found != expected {
            return Mismatch {
                offset: at,
                expected,
                found,
            };
        }
    }
    unreachable!("first_mismatch is called on a range that differs from the pattern")
}

/// Checks that `buf` holds the pattern of the file bytes at `offset`.
pub(super) fn verify(buf: &[u8], offset: u64, seed: u64) -> Result<(), Mismatch> {
    let len = buf.len();
    let head = head_len(offset, len);
    if (0..head).any(|i| buf[i] != byte_at(offset + i as u64, seed)) {
        return Err(first_mismatch(&buf[..head], offset, seed));
    }
    let body_start = offset + head as u64;
    let first_word = body_start / WORD_BYTES as u64;
    let body_len = (len - head) / WORD_BYTES * WORD_BYTES;
    let body = &buf[head..head + body_len];
    let run_bytes = VERIFY_RUN_WORDS * WORD_BYTES;
    for (r, run) in body.chunks(run_bytes).enumerate() {
        let run_first = first_word + (r * VERIFY_RUN_WORDS) as u64;
        // Or the differences of a run together (this vectorises), then look closer only if
        // something differs.
        let diff = run
            .chunks_exact(WORD_BYTES)
            .enumerate()
            .fold(0u64, |acc, (k, chunk)| {
                let mut bytes = [0u8; WORD_BYTES];
                bytes.copy_from_slice(chunk);
                acc | (u64::from_le_bytes(bytes) ^ word(run_first + k as u64, seed))
            });
        if diff != 0 {
            let run_offset = body_start + (r * run_bytes) as u64;
            return Err(first_mismatch(run, run_offset, seed));
        }
    }
    let tail_start = head + body_len;
    let tail_offset = offset + tail_start as u64;
    let tail = &buf[tail_start..];
    if tail
        .iter()
        .enumerate()
        .any(|(i, &b)| b != byte_at(tail_offset + i as u64, seed))
    {
        return Err(first_mismatch(tail, tail_offset, seed));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn filled(len: usize, offset: u64, seed: u64) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        fill(&mut buf, offset, seed);
        buf
    }

    #[test]
    fn any_range_matches_the_bytes_of_the_whole() {
        let seed = file_seed(3);
        let whole = filled(4096, 0, seed);
        for offset in [0u64, 1, 7, 8, 9, 100, 1001] {
            for len in [0usize, 1, 5, 8, 13, 64, 600, 2000] {
                let part = filled(len, offset, seed);
                let at = offset as usize;
                assert_eq!(part, whole[at..at + len], "offset {offset} len {len}");
                assert_eq!(verify(&part, offset, seed), Ok(()));
            }
        }
    }

    #[test]
    fn zeros_a_wrong_offset_or_another_file_fail() {
        let seed = file_seed(0);
        let len = 47_008;
        let offset = 3 * 47_008;
        let good = filled(len, offset, seed);
        assert_eq!(verify(&good, offset, seed), Ok(()));
        let zeros = vec![0u8; len];
        let bad = verify(&zeros, offset, seed).unwrap_err();
        assert_eq!(bad.offset, offset);
        assert_eq!(bad.found, 0);
        for shift in [1u64, 8, 4096, 47_008] {
            let moved = filled(len, offset + shift, seed);
            assert!(verify(&moved, offset, seed).is_err(), "shift {shift}");
        }
        let other = filled(len, offset, file_seed(1));
        assert!(verify(&other, offset, seed).is_err());
    }

    #[test]
    fn the_first_wrong_byte_is_named() {
        let seed = file_seed(7);
        for (offset, wrong) in [(5u64, 2usize), (5, 600), (16, 1030), (0, 4095)] {
            let mut buf = filled(4096, offset, seed);
            buf[wrong] ^= 0x40;
            let bad = verify(&buf, offset, seed).unwrap_err();
            assert_eq!(bad.offset, offset + wrong as u64);
            assert_eq!(bad.expected ^ 0x40, bad.found);
        }
    }

    #[test]
    fn no_word_is_zero() {
        for i in [0u64, 1, u64::MAX / PATTERN_STEP, u64::MAX] {
            for seed in [
                0u64,
                file_seed(0),
                0u64.wrapping_sub(i.wrapping_mul(PATTERN_STEP)),
            ] {
                assert_ne!(word(i, seed), 0);
            }
        }
    }
}
