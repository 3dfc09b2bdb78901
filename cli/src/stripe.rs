//! `nacre setstripe` and `nacre getstripe`, with Lustre's flags and output.

use nacre::Client;
use nacre::layout::StripeSpec;
use nacre::layout::limits::EOF_OFFSET_BYTES;
use nacre::meta::types::{ComponentSpec, LayoutSpec};
use nacre::units::parse_size;

use crate::{Failure, MetaArg, out, outln};

/// `nacre setstripe`.
#[derive(clap::Args, Debug)]
#[command(
    about = "Set the layout of a new file or a directory's default, as `lfs setstripe`",
    long_about = "Set the layout of a new file (created empty) or a directory's default, as \
`lfs setstripe`.\n\nOptions, per component:\n  -c, --stripe-count N    stripes (-1: every \
target of the pool)\n  -C, --overstripe-count N  stripes, several allowed per target\n  -S, \
--stripe-size SIZE   bytes per stripe (a multiple of 64K, e.g. 1M)\n  -i, --stripe-index N   \
first target (-1: the metadata service picks)\n  -p, --pool NAME         take targets from \
this pool\n  -E, --component-end END starts a component ending at END (a size, or -1 for \
EOF)\n  -d, --delete            remove a directory's default layout"
)]
pub(crate) struct SetstripeArgs {
    #[command(flatten)]
    meta: MetaArg,
    /// Layout options (see above), then the path.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    args: Vec<String>,
}

/// Parses Lustre's setstripe options into a layout request and the path; `None` for the
/// request with -d.
fn parse(args: &[String]) -> Result<(Option<LayoutSpec>, String), String> {
    // Options before any -E shape a plain layout; after one, the last component. The one
    // argument that is neither an option nor an option's value is the path.
    let mut plain = StripeSpec::default();
    let mut components: Vec<(u64, StripeSpec)> = Vec::new();
    let mut delete = false;
    let mut path: Option<String> = None;
    let mut it = args.iter();
    let mut value = |flag: &str| -> Result<String, String> {
        it.next()
            .cloned()
            .ok_or_else(|| format!("{flag} needs a value"))
    };
    let number = |flag: &str, v: &str| -> Result<i64, String> {
        v.parse::<i64>()
            .map_err(|_| format!("{flag} {v}: not a number"))
    };
    while let Ok(flag) = value("") {
        if !flag.starts_with('-') {
            if let Some(first) = &path {
                return Err(format!(
                    "setstripe takes one path; '{flag}' is a second (after '{first}')"
                ));
            }
            path = Some(flag);
            continue;
        }
        if flag == "-E" || flag == "--component-end" {
            let v = value(&flag)?;
            let end = if v == "-1" || v.eq_ignore_ascii_case("eof") {
                EOF_OFFSET_BYTES
            } else {
                parse_size(&v)?
            };
            components.push((end, StripeSpec::default()));
            continue;
        }
        let spec = match components.last_mut() {
            Some((_, spec)) => spec,
            None => &mut plain,
        };
        match flag.as_str() {
            "-c" | "--stripe-count" | "-C" | "--overstripe-count" => {
                let n = number(&flag, &value(&flag)?)?;
                spec.stripe_count =
                    i32::try_from(n).map_err(|_| format!("{flag} {n}: out of range"))?;
                spec.overstriping = flag == "-C" || flag == "--overstripe-count";
            }
            "-S" | "--stripe-size" => spec.stripe_size_bytes = parse_size(&value(&flag)?)?,
            "-i" | "--stripe-index" => spec.stripe_index = number(&flag, &value(&flag)?)?,
            "-p" | "--pool" => spec.pool = Some(value(&flag)?),
            "-d" | "--delete" => delete = true,
            other => return Err(format!("unknown setstripe option '{other}'")),
        }
    }
    let Some(path) = path else {
        return Err(format!(
            "setstripe needs a PATH (the new file or the directory) after its options{}",
            if args.is_empty() {
                String::new()
            } else {
                format!(": none in '{}'", args.join(" "))
            }
        ));
    };
    let composite = !components.is_empty();
    let current = plain;
    if delete {
        return Ok((None, path));
    }
    let spec = if composite {
        let mut start = 0;
        let mut out = Vec::with_capacity(components.len());
        for (end, stripe) in components {
            out.push(ComponentSpec {
                start_bytes: start,
                end_bytes: end,
                stripe,
            });
            start = end;
        }
        LayoutSpec { components: out }
    } else {
        LayoutSpec::plain(current)
    };
    spec.check().map_err(|e| format!("invalid layout: {e}"))?;
    Ok((Some(spec), path))
}

pub(crate) fn setstripe(args: SetstripeArgs) -> Result<(), Failure> {
    let (spec, path) = parse(&args.args)?;
    let client = args.meta.connect()?;
    match spec {
        None => client.set_default_layout(&path, None)?,
        Some(spec) => {
            client.setstripe(&path, spec, nacre::client::DEFAULT_FILE_MODE)?;
        }
    }
    Ok(())
}

pub(crate) fn getstripe(client: &Client, path: &str) -> Result<(), Failure> {
    let st = client.stat(path)?;
    outln!("{path}");
    match (&st.attr.layout, &st.attr.default_layout) {
        (Some(layout), _) => out!("{layout}"),
        (None, Some(spec)) => out!("{spec}"),
        (None, None) => {
            outln!("stripe_count:  1 stripe_size:   1048576 stripe_index:  -1 (filesystem default)")
        }
    }
    Ok(())
}

/// A directory default, in `lfs getstripe -d`'s words.
#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn plain_and_composite_options_parse() {
        let (spec, path) = parse(&args("-c 4 -S 2M -i 1 /f")).expect("parses");
        assert_eq!(path, "/f");
        let spec = spec.expect("a spec");
        assert_eq!(spec.components.len(), 1);
        assert_eq!(spec.components[0].stripe.stripe_count, 4);
        assert_eq!(spec.components[0].stripe.stripe_size_bytes, 2 << 20);
        assert_eq!(spec.components[0].stripe.stripe_index, 1);

        let (spec, _) = parse(&args("-E 4M -c 1 -E -1 -c -1 -S 4M /f")).expect("parses");
        let spec = spec.expect("a spec");
        assert_eq!(spec.components.len(), 2);
        assert_eq!(spec.components[0].end_bytes, 4 << 20);
        assert_eq!(spec.components[0].stripe.stripe_count, 1);
        assert_eq!(spec.components[1].start_bytes, 4 << 20);
        assert_eq!(spec.components[1].end_bytes, EOF_OFFSET_BYTES);
        assert_eq!(spec.components[1].stripe.stripe_count, -1);
        assert_eq!(spec.components[1].stripe.stripe_size_bytes, 4 << 20);

        assert!(parse(&args("-c x /f")).is_err());
        assert!(parse(&args("-S 1000 /f")).is_err());
        assert!(parse(&args("--bogus /f")).is_err());
        assert!(parse(&args("-d /d")).expect("parses").0.is_none());
        // A missing path is named as such, not as a flag without its value.
        let e = parse(&args("-c 1")).expect_err("no path");
        assert!(e.contains("needs a PATH") && e.contains("'-c 1'"), "{e}");
        let e = parse(&args("-c")).expect_err("no value");
        assert_eq!(e, "-c needs a value");
        let e = parse(&args("/a -c 2 /b")).expect_err("two paths");
        assert!(e.contains("one path") && e.contains("'/b'"), "{e}");
        assert_eq!(parse(&args("/f -c 2")).expect("path first").1, "/f");
    }
}
