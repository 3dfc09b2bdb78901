//! `nacre repo`, `nacre task` and `nacre hsm`: data repositories (S3 prefixes linked to the
//! namespace, as FSx for Lustre's data repository associations), imports, restores, and the
//! HSM state of files.

use std::io::IsTerminal;

use nacre::Client;
use nacre::limits::DEFAULT_REPO_CHUNK_BYTES;
use nacre::meta::repo::{
    AssocState, Association, event_names, hsm_flag_names, parse_events, parse_s3_url,
};
use nacre_repo::{ImportFailure, ImportReport, S3Access, export, import};

use crate::{Failure, MetaArg, outln};

/// `nacre repo ...`.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum RepoCommand {
    /// Link a directory to an S3 prefix (it must exist and overlap no other association).
    Link {
        #[command(flatten)]
        meta: MetaArg,
        /// The directory of the namespace.
        path: String,
        /// The repository: s3://BUCKET or s3://BUCKET/PREFIX.
        url: String,
        /// An S3 endpoint other than AWS's (http://127.0.0.1:5000).
        #[arg(long)]
        endpoint: Option<String>,
        /// The bucket's region (default: AWS_REGION, AWS_DEFAULT_REGION, or us-east-1).
        #[arg(long)]
        region: Option<String>,
        /// Objects to reflect as they appear, change or go: new,changed,deleted.
        #[arg(long, default_value = "")]
        auto_import: String,
        /// Files to export as they are closed: new,changed,deleted.
        #[arg(long, default_value = "")]
        auto_export: String,
        /// Bytes a released file is fetched by (K, M, G suffixes; default 8M).
        #[arg(long, value_parser = nacre::units::parse_size)]
        chunk_size: Option<u64>,
        /// Import the prefix's files and directories at once (no bytes are copied).
        #[arg(long)]
        import_now: bool,
    },
    /// List the associations, their state and why.
    List {
        #[command(flatten)]
        meta: MetaArg,
    },
    /// Unlink the association at a directory (its files stay; released ones can no longer
    /// be read).
    Unlink {
        #[command(flatten)]
        meta: MetaArg,
        /// The directory.
        path: String,
    },
}

/// `nacre task ...`.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum TaskCommand {
    /// Import the files and directories of the associations at (or above) each path.
    Import {
        #[command(flatten)]
        meta: MetaArg,
        /// Linked directories.
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Upload new and changed files at or under each path to their repository, with their
    /// POSIX metadata (as FSx's export task); they become archived.
    Export {
        #[command(flatten)]
        meta: MetaArg,
        /// Files or directories under linked directories.
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Fetch released files whole from their repository (as `lfs hsm_restore`).
    Restore {
        #[command(flatten)]
        meta: MetaArg,
        /// Files.
        #[arg(required = true)]
        paths: Vec<String>,
    },
}

/// `nacre hsm ...`.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum HsmCommand {
    /// Print a file's HSM flags as `lfs hsm_state` does.
    State {
        #[command(flatten)]
        meta: MetaArg,
        /// The file.
        path: String,
    },
}

/// Runs `nacre repo`.
pub(crate) fn repo(command: RepoCommand) -> Result<(), Failure> {
    match command {
        RepoCommand::Link {
            meta,
            path,
            url,
            endpoint,
            region,
            auto_import,
            auto_export,
            chunk_size,
            import_now,
        } => {
            let client = meta.connect()?;
            let (bucket, prefix) = parse_s3_url(&url).map_err(|e| e.to_string())?;
            let assoc = Association {
                id: 0,
                path,
                bucket,
                prefix,
                endpoint,
                region,
                chunk_bytes: chunk_size.unwrap_or(DEFAULT_REPO_CHUNK_BYTES),
                auto_import: parse_events(&auto_import).map_err(|e| e.to_string())?,
                auto_export: parse_events(&auto_export).map_err(|e| e.to_string())?,
                state: AssocState::Creating,
                reason: String::new(),
            };
            let linked = client.repo_link(&assoc)?;
            let s3 = S3Access::new().map_err(|e| e.to_string())?;
            let checked = check(&client, &s3, &linked)?;
            outln!(
                "linked {} to {} (association {}, {})",
                checked.path,
                checked.url(),
                checked.id,
                checked.state.name()
            );
            if checked.state != AssocState::Available {
                return Err(Failure::Message(format!(
                    "{}: {}",
                    checked.url(),
                    checked.reason
                )));
            }
            if import_now {
                run_import(&client, &s3, &checked)?;
            }
            Ok(())
        }
        RepoCommand::List { meta } => {
            let all = meta.connect()?.repo_list()?;
            outln!(
                "{:<4} {:<24} {:<36} {:<14} {:>8} {:<22} {:<22} REASON",
                "ID",
                "PATH",
                "REPOSITORY",
                "STATE",
                "CHUNK",
                "AUTO-IMPORT",
                "AUTO-EXPORT"
            );
            for a in all {
                outln!(
                    "{:<4} {:<24} {:<36} {:<14} {:>8} {:<22} {:<22} {}",
                    a.id,
                    a.path,
                    a.url(),
                    a.state.name(),
                    crate::human(a.chunk_bytes),
                    event_names(a.auto_import),
                    event_names(a.auto_export),
                    if a.reason.is_empty() { "-" } else { &a.reason }
                );
            }
            Ok(())
        }
        RepoCommand::Unlink { meta, path } => {
            let gone = meta.connect()?.repo_unlink(&path)?;
            outln!("unlinked {} from {}", gone.path, gone.url());
            Ok(())
        }
    }
}

/// Asks the association's bucket for one key: available, or misconfigured with S3's
/// answer as the reason (credentials refused, no such bucket, unreachable).
fn check(client: &Client, s3: &S3Access, assoc: &Association) -> Result<Association, Failure> {
    let reached = s3.check(assoc);
    let (state, reason) = match reached {
        Ok(()) => (AssocState::Available, String::new()),
        Err(reason) => (AssocState::Misconfigured, reason),
    };
    Ok(client.repo_set_state(&assoc.path, state, &reason)?)
}

fn run_import(client: &Client, s3: &S3Access, assoc: &Association) -> Result<(), Failure> {
    let report = import(client, s3, assoc, |_, _| {}).map_err(|e| e.to_string())?;
    print_report(&assoc.path, &report);
    if report.failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::Message(format!(
            "{} paths of {} were not imported",
            report.failed.len(),
            assoc.path
        )))
    }
}

/// The report: counts, then one CSV line per failed path as FSx's completion report
/// (`FilePath,FileStatus,ErrorCode`, quoted per RFC 4180 and against formula injection).
fn print_report(path: &str, report: &ImportReport) {
    outln!(
        "imported {path}: {} files created, {} updated, {} unchanged, {} directories, {} failed",
        report.created,
        report.updated,
        report.unchanged,
        report.dirs,
        report.failed.len()
    );
    print_failures(&report.failed);
}

/// One CSV line per failed path, after FSx's header.
fn print_failures(failed: &[ImportFailure]) {
    if failed.is_empty() {
        return;
    }
    outln!("FilePath,FileStatus,ErrorCode,Message");
    for f in failed {
        outln!("{},failed,{},{}", csv(&f.path), f.code, csv(&f.message));
    }
}

/// The association `path` lies under.
fn association_of<'a>(all: &'a [Association], path: &str) -> Result<&'a Association, Failure> {
    let full = path.trim_end_matches('/');
    let full = if full.is_empty() { "/" } else { full };
    all.iter()
        .find(|a| nacre::meta::repo::under(&a.path, full).is_some())
        .ok_or_else(|| {
            Failure::Message(format!(
                "{path}: no data repository is linked at or above it (see nacre repo list)"
            ))
        })
}

fn csv(field: &str) -> String {
    let risky = field.starts_with(['@', '+', '-', '=']);
    if risky || field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

/// Runs `nacre task`.
pub(crate) fn task(command: TaskCommand) -> Result<(), Failure> {
    match command {
        TaskCommand::Import { meta, paths } => {
            let client = meta.connect()?;
            let all = client.repo_list()?;
            let s3 = S3Access::new().map_err(|e| e.to_string())?;
            let mut failed = 0;
            for path in &paths {
                let assoc = association_of(&all, path)?;
                if let Err(e) = run_import(&client, &s3, assoc) {
                    eprintln!("nacre: {e}");
                    failed += 1;
                }
            }
            if failed > 0 {
                return Err(Failure::Message(format!("{failed} imports had failures")));
            }
            Ok(())
        }
        TaskCommand::Export { meta, paths } => {
            let client = meta.connect()?;
            let all = client.repo_list()?;
            let s3 = S3Access::new().map_err(|e| e.to_string())?;
            let mut failures = 0;
            for path in &paths {
                let assoc = association_of(&all, path)?;
                let full = path.trim_end_matches('/').to_owned();
                let report = export(&client, &s3, assoc, &[full]).map_err(|e| e.to_string())?;
                outln!(
                    "exported {path}: {} files ({} bytes), {} unchanged, {} failed",
                    report.exported,
                    report.bytes,
                    report.unchanged,
                    report.failed.len()
                );
                print_failures(&report.failed);
                failures += report.failed.len();
            }
            if failures > 0 {
                return Err(Failure::Message(format!(
                    "{failures} paths were not exported"
                )));
            }
            Ok(())
        }
        TaskCommand::Restore { meta, paths } => {
            let client = meta.connect()?;
            restore_all(&client, &paths)
        }
    }
}

/// Files restored at once by `nacre task restore` (each one's chunks are fetched in
/// parallel too): many small files would otherwise wait for one GET after another.
const RESTORE_PARALLEL: usize = 8;

/// Restores `paths`, [`RESTORE_PARALLEL`] at a time; a line per file as it is done (with a
/// progress line for each on a terminal). Every file is tried; the failures are counted.
fn restore_all(client: &Client, paths: &[String]) -> Result<(), Failure> {
    let bar = std::io::stderr().is_terminal() && paths.len() == 1;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..RESTORE_PARALLEL.min(paths.len()) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(path) = paths.get(i) else { return };
                    match restore_one(client, path, bar) {
                        Ok(flags) => {
                            outln!("{path}: restored ({})", hsm_flag_names(flags).join(" "))
                        }
                        Err(e) => {
                            eprintln!("nacre: {path}: {e}");
                            failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    match failed.into_inner() {
        0 => Ok(()),
        n => Err(Failure::Message(format!(
            "{n} of {} files were not restored",
            paths.len()
        ))),
    }
}

fn restore_one(client: &Client, path: &str, bar: bool) -> Result<u32, nacre::Error> {
    let file = client.open(path, &nacre::OpenOptions::new().read(true))?;
    file.restore(|done, total| {
        if bar {
            let pct = done.checked_mul(100).and_then(|d| d.checked_div(total));
            eprint!("\r{path}: {}% of {total} bytes", pct.unwrap_or(100));
        }
    })?;
    if bar {
        eprintln!();
    }
    Ok(file.hsm_flags())
}

/// Runs `nacre hsm`.
pub(crate) fn hsm(command: HsmCommand) -> Result<(), Failure> {
    match command {
        HsmCommand::State { meta, path } => {
            let (flags, object) = meta.connect()?.hsm_state(&path)?;
            let names = hsm_flag_names(flags).join(" ");
            let archive = if flags == 0 { "" } else { ", archive_id:1" };
            outln!("{path}: ({flags:#010x}) {names}{archive}");
            if let Some(url) = object {
                outln!("{path}: object {url}");
            }
            Ok(())
        }
    }
}
