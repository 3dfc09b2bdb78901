//! The `nacre` command. Its subcommands (serve, bench, setstripe/getstripe, df, stats)
//! arrive with the engine issue; until then it says so and exits with an error.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "nacre {}: the command's subcommands are not built yet; see README.md",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::from(2)
}
