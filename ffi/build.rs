//! Gives libnacre.so its soname, so programs linked against it ask for libnacre.so.0 and an
//! ABI-breaking release can sit beside this one.

fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_else(|_| "0".into());
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libnacre.so.{major}");
}
