//! A one-line progress bar on standard error, redrawn while a phase runs, only when standard
//! error is a terminal (never in a pipe, a log or a test).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How often the bar is redrawn.
const REDRAW_INTERVAL: Duration = Duration::from_millis(200);
/// Width of the bar, in characters.
const BAR_WIDTH: u64 = 30;
/// Bytes per MiB.
const MIB: f64 = (1u64 << 20) as f64;

/// Whether a bar should be drawn at all.
pub(super) fn wanted() -> bool {
    std::io::stderr().is_terminal()
}

/// Draws `label`'s bar from `done` (of `total`) units until `stop` says so (a message or
/// its sender dropped), then clears the line. `bytes_per_unit` turns units into a rate.
pub(super) fn run(
    label: &str,
    done: &AtomicU64,
    total: u64,
    bytes_per_unit: u64,
    stop: &Receiver<()>,
) {
    let start = Instant::now();
    let mut err = std::io::stderr();
    // A message or the sender's drop ends the phase's bar.
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(REDRAW_INTERVAL) {
        let now = done.load(Ordering::Relaxed).min(total);
        let filled = now
            .saturating_mul(BAR_WIDTH)
            .checked_div(total)
            .unwrap_or(BAR_WIDTH);
        let percent = now.saturating_mul(100).checked_div(total).unwrap_or(100);
        let rate =
            now as f64 * bytes_per_unit as f64 / MIB / start.elapsed().as_secs_f64().max(1e-9);
        let bar: String = (0..BAR_WIDTH)
            .map(|i| if i < filled { '#' } else { '.' })
            .collect();
        let _ = write!(err, "\r{label:<7}[{bar}] {percent:>3}% {rate:>10.1} MiB/s");
        let _ = err.flush();
    }
    // Erase the bar so the report's lines start clean.
    let _ = write!(err, "\r\x1b[2K");
    let _ = err.flush();
}
