//! Gives libnacre.so its soname, so programs linked against it ask for libnacre.so.0 and an
//! ABI-breaking release can sit beside this one; and makes the build tree answer to that
//! name: `libnacre.so.0 -> libnacre.so` beside the library cargo builds, so that a program
//! linked with `-L target/release -lnacre` (and an rpath or LD_LIBRARY_PATH there) runs
//! without `scripts/install.sh`, as `cargo build` users expect.

use std::path::{Path, PathBuf};

fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_else(|_| "0".into());
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libnacre.so.{major}");
    println!("cargo:rerun-if-changed=build.rs");
    match profile_dir() {
        Some(dir) => {
            let link = dir.join(format!("libnacre.so.{major}"));
            if let Err(e) = soname_link(&link) {
                println!(
                    "cargo:warning=cannot link {} to libnacre.so: {e}",
                    link.display()
                );
            }
        }
        None => println!(
            "cargo:warning=cannot find the profile directory to link libnacre.so.{major} in"
        ),
    }
}

/// Where cargo puts the library: OUT_DIR is `<profile dir>/build/<package>-<hash>/out`.
fn profile_dir() -> Option<PathBuf> {
    let out = PathBuf::from(std::env::var_os("OUT_DIR")?);
    let dir = out.ancestors().nth(3)?;
    let build = out.ancestors().nth(2)?;
    (build.file_name()? == "build").then(|| dir.to_path_buf())
}

/// Makes `link` a relative symbolic link to `libnacre.so` (the library need not exist yet:
/// rustc writes it after this script), replacing whatever else is there.
fn soname_link(link: &Path) -> std::io::Result<()> {
    let target = Path::new("libnacre.so");
    if std::fs::read_link(link).is_ok_and(|t| t == target) {
        return Ok(());
    }
    match std::fs::remove_file(link) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::os::unix::fs::symlink(target, link)
}
