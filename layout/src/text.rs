//! The text form of a layout, read like `lfs getstripe` output: `Display` prints it and
//! [`Layout::parse_text`] reads back everything `Display` prints.
//!
//! A plain layout prints the `lmm_` block alone; a composite one prints the `lcm_` header
//! and, per component, its `lcme_` lines and an indented `lmm_` block. `lcme_id` counts
//! components from 1, as Lustre's ids do. The layout generation is `lmm_layout_gen` of a
//! plain layout and `lcm_layout_gen` of a composite one; the `lmm_layout_gen` of a
//! component prints 0 and is read but not kept. The parser ignores indentation and blank
//! lines, allows any spacing around `:`, and takes the first number of each line under
//! `obdidx` as a target id (so extra columns, as in real `lfs` output, are tolerated).

use std::fmt;
use std::iter::Peekable;
use std::str::FromStr;

use crate::composite::{Component, Layout};
use crate::error::LayoutError;
use crate::limits::{EOF_OFFSET_BYTES, MAX_COMPONENTS, MAX_STRIPE_COUNT, MAX_TEXT_EXCERPT_BYTES};
use crate::stripe::{PoolName, StripeLayout};

const PATTERN_RAID0: &str = "raid0";
const PATTERN_RAID0_OVERSTRIPED: &str = "raid0,overstriped";
const EOF_WORD: &str = "EOF";

fn write_stripe(
    f: &mut fmt::Formatter<'_>,
    indent: &str,
    stripe: &StripeLayout,
    generation: u32,
) -> fmt::Result {
    let pattern = if stripe.overstriping() {
        PATTERN_RAID0_OVERSTRIPED
    } else {
        PATTERN_RAID0
    };
    writeln!(
        f,
        "{indent}{:<19}{}",
        "lmm_stripe_count:",
        stripe.stripe_count()
    )?;
    writeln!(
        f,
        "{indent}{:<19}{}",
        "lmm_stripe_size:",
        stripe.stripe_size_bytes()
    )?;
    writeln!(f, "{indent}{:<19}{pattern}", "lmm_pattern:")?;
    writeln!(f, "{indent}{:<19}{generation}", "lmm_layout_gen:")?;
    writeln!(
        f,
        "{indent}{:<19}{}",
        "lmm_stripe_offset:",
        stripe.first_target_id()
    )?;
    if let Some(pool) = stripe.pool() {
        writeln!(f, "{indent}{:<19}{pool}", "lmm_pool:")?;
    }
    writeln!(f, "{indent}\tobdidx")?;
    for target_id in stripe.target_ids() {
        writeln!(f, "{indent}\t{target_id:>6}")?;
    }
    Ok(())
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.is_composite() {
            return write_stripe(f, "", &self.components()[0].stripe, self.generation());
        }
        writeln!(f, "{:<19}{}", "lcm_layout_gen:", self.generation())?;
        writeln!(f, "{:<19}1", "lcm_mirror_count:")?;
        writeln!(f, "{:<19}{}", "lcm_entry_count:", self.component_count())?;
        for (index, component) in self.components().iter().enumerate() {
            writeln!(f, "    {:<21}{}", "lcme_id:", index + 1)?;
            writeln!(f, "    {:<21}init", "lcme_flags:")?;
            writeln!(
                f,
                "    {:<21}{}",
                "lcme_extent.e_start:", component.start_bytes
            )?;
            if component.end_bytes == EOF_OFFSET_BYTES {
                writeln!(f, "    {:<21}{EOF_WORD}", "lcme_extent.e_end:")?;
            } else {
                writeln!(f, "    {:<21}{}", "lcme_extent.e_end:", component.end_bytes)?;
            }
            write_stripe(f, "      ", &component.stripe, 0)?;
        }
        Ok(())
    }
}

impl Layout {
    /// Reads the text form `Display` prints. Errors carry the 1-based line number and what
    /// was expected there.
    pub fn parse_text(text: &str) -> Result<Layout, LayoutError> {
        let mut lines = Lines::new(text);
        let first_key = lines.peek_key();
        let layout = if first_key == Some("lcm_layout_gen") {
            parse_composite(&mut lines)?
        } else {
            let (line_number, stripe, generation) = parse_stripe(&mut lines)?;
            Layout::from_components(
                vec![Component::new(0, EOF_OFFSET_BYTES, stripe)],
                false,
                generation,
            )
            .map_err(|error| invalid(line_number, error))?
        };
        lines.expect_end()?;
        Ok(layout)
    }
}

fn invalid(line_number: usize, error: LayoutError) -> LayoutError {
    LayoutError::TextInvalid {
        line_number,
        source: Box::new(error),
    }
}

fn excerpt(line: &str) -> String {
    let mut end = line.len().min(MAX_TEXT_EXCERPT_BYTES);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line[..end].to_owned()
}

/// The non-blank lines of a text, trimmed, with their 1-based numbers.
struct Lines<'text> {
    lines: Peekable<Box<dyn Iterator<Item = (usize, &'text str)> + 'text>>,
    end_line_number: usize,
}

impl<'text> Lines<'text> {
    fn new(text: &'text str) -> Self {
        let end_line_number = text.lines().count() + 1;
        let lines: Box<dyn Iterator<Item = (usize, &'text str)> + 'text> = Box::new(
            text.lines()
                .enumerate()
                .map(|(index, line)| (index + 1, line.trim()))
                .filter(|(_, line)| !line.is_empty()),
        );
        Self {
            lines: lines.peekable(),
            end_line_number,
        }
    }

    fn peek_key(&mut self) -> Option<&'text str> {
        let (_, line) = self.lines.peek()?;
        line.split_once(':').map(|(key, _)| key.trim())
    }

    fn next_line(&mut self, expected: &'static str) -> Result<(usize, &'text str), LayoutError> {
        self.lines.next().ok_or(LayoutError::TextSyntax {
            line_number: self.end_line_number,
            expected,
            found: "end of text".to_owned(),
        })
    }

    /// The value of the next line, which must be `key: value`.
    fn value(
        &mut self,
        key: &'static str,
        expected: &'static str,
    ) -> Result<(usize, &'text str), LayoutError> {
        let (line_number, line) = self.next_line(expected)?;
        match line.split_once(':') {
            Some((found_key, value)) if found_key.trim() == key => Ok((line_number, value.trim())),
            _ => Err(LayoutError::TextSyntax {
                line_number,
                expected,
                found: excerpt(line),
            }),
        }
    }

    fn number<T: FromStr>(
        &mut self,
        key: &'static str,
        expected: &'static str,
    ) -> Result<(usize, T), LayoutError> {
        let (line_number, value) = self.value(key, expected)?;
        let number = parse_number(line_number, value, expected)?;
        Ok((line_number, number))
    }

    fn expect_end(&mut self) -> Result<(), LayoutError> {
        match self.lines.next() {
            None => Ok(()),
            Some((line_number, line)) => Err(LayoutError::TextSyntax {
                line_number,
                expected: "end of text",
                found: excerpt(line),
            }),
        }
    }
}

fn parse_number<T: FromStr>(
    line_number: usize,
    value: &str,
    expected: &'static str,
) -> Result<T, LayoutError> {
    value.parse().map_err(|_| LayoutError::TextSyntax {
        line_number,
        expected,
        found: excerpt(value),
    })
}

/// Reads one `lmm_` block; returns the line it starts on, the striping and its generation.
fn parse_stripe(lines: &mut Lines<'_>) -> Result<(usize, StripeLayout, u32), LayoutError> {
    let (count_line, stripe_count) =
        lines.number::<u32>("lmm_stripe_count", "lmm_stripe_count: <1..=2000>")?;
    if stripe_count == 0 || stripe_count > MAX_STRIPE_COUNT {
        return Err(invalid(
            count_line,
            LayoutError::InvalidField {
                field: "lmm_stripe_count",
                value: stripe_count.to_string(),
                allowed: "1..=2000",
            },
        ));
    }
    let (_, stripe_size_bytes) =
        lines.number::<u64>("lmm_stripe_size", "lmm_stripe_size: <bytes>")?;
    let (pattern_line, pattern) =
        lines.value("lmm_pattern", "lmm_pattern: raid0 or raid0,overstriped")?;
    let overstriping = match pattern {
        PATTERN_RAID0 => false,
        PATTERN_RAID0_OVERSTRIPED => true,
        _ => {
            return Err(LayoutError::TextSyntax {
                line_number: pattern_line,
                expected: "lmm_pattern: raid0 or raid0,overstriped",
                found: excerpt(pattern),
            });
        }
    };
    let (_, generation) = lines.number::<u32>("lmm_layout_gen", "lmm_layout_gen: <number>")?;
    let (offset_line, stripe_offset) =
        lines.number::<u32>("lmm_stripe_offset", "lmm_stripe_offset: <target id>")?;
    let pool = if lines.peek_key() == Some("lmm_pool") {
        let (pool_line, name) = lines.value("lmm_pool", "lmm_pool: <pool name>")?;
        Some(PoolName::new(name).map_err(|error| invalid(pool_line, error))?)
    } else {
        None
    };
    let (header_line, header) = lines.next_line("the obdidx header")?;
    if header.split_whitespace().next() != Some("obdidx") {
        return Err(LayoutError::TextSyntax {
            line_number: header_line,
            expected: "the obdidx header",
            found: excerpt(header),
        });
    }
    // Bounded by MAX_STRIPE_COUNT, checked above.
    let mut target_ids = Vec::with_capacity(stripe_count as usize);
    for _ in 0..stripe_count {
        let (line_number, line) = lines.next_line("a target id (obdidx)")?;
        let first_word = line.split_whitespace().next().unwrap_or(line);
        target_ids.push(parse_number::<u32>(
            line_number,
            first_word,
            "a target id (obdidx)",
        )?);
    }
    let stripe = StripeLayout::new(stripe_size_bytes, target_ids, pool, overstriping)
        .map_err(|error| invalid(count_line, error))?;
    if stripe.first_target_id() != stripe_offset {
        return Err(invalid(
            offset_line,
            LayoutError::InvalidField {
                field: "lmm_stripe_offset",
                value: stripe_offset.to_string(),
                allowed: "the first obdidx",
            },
        ));
    }
    Ok((count_line, stripe, generation))
}

fn parse_composite(lines: &mut Lines<'_>) -> Result<Layout, LayoutError> {
    let (first_line, generation) =
        lines.number::<u32>("lcm_layout_gen", "lcm_layout_gen: <number>")?;
    let (mirror_line, mirror_count) = lines.value("lcm_mirror_count", "lcm_mirror_count: 1")?;
    if mirror_count != "1" {
        return Err(LayoutError::TextSyntax {
            line_number: mirror_line,
            expected: "lcm_mirror_count: 1",
            found: excerpt(mirror_count),
        });
    }
    let (count_line, entry_count) =
        lines.number::<usize>("lcm_entry_count", "lcm_entry_count: <1..=64>")?;
    if entry_count == 0 {
        return Err(invalid(count_line, LayoutError::NoComponents));
    }
    if entry_count > MAX_COMPONENTS {
        return Err(invalid(
            count_line,
            LayoutError::TooManyComponents {
                count: entry_count,
                max: MAX_COMPONENTS,
            },
        ));
    }
    let mut components = Vec::with_capacity(entry_count);
    let mut component_lines = Vec::with_capacity(entry_count);
    for index in 0..entry_count {
        let (id_line, id) = lines.value("lcme_id", "lcme_id: <entry number, counting from 1>")?;
        if id.parse::<usize>().ok() != Some(index + 1) {
            return Err(LayoutError::TextSyntax {
                line_number: id_line,
                expected: "lcme_id: <entry number, counting from 1>",
                found: excerpt(id),
            });
        }
        let (flags_line, flags) = lines.value("lcme_flags", "lcme_flags: init")?;
        if flags != "init" {
            return Err(LayoutError::TextSyntax {
                line_number: flags_line,
                expected: "lcme_flags: init",
                found: excerpt(flags),
            });
        }
        let (_, start_bytes) =
            lines.number::<u64>("lcme_extent.e_start", "lcme_extent.e_start: <bytes>")?;
        let (end_line, end) =
            lines.value("lcme_extent.e_end", "lcme_extent.e_end: <bytes> or EOF")?;
        let end_bytes = if end == EOF_WORD {
            EOF_OFFSET_BYTES
        } else {
            parse_number::<u64>(end_line, end, "lcme_extent.e_end: <bytes> or EOF")?
        };
        let (_, stripe, _) = parse_stripe(lines)?;
        components.push(Component::new(start_bytes, end_bytes, stripe));
        component_lines.push(id_line);
    }
    Layout::from_components(components, true, generation).map_err(|error| {
        let component = match &error {
            LayoutError::ComponentNotContiguous { component, .. }
            | LayoutError::ComponentEmpty { component, .. }
            | LayoutError::UnalignedBoundary { component, .. } => Some(*component),
            LayoutError::LastComponentNotEof { .. } => Some(entry_count - 1),
            _ => None,
        };
        let line_number = component
            .and_then(|component| component_lines.get(component).copied())
            .unwrap_or(first_line);
        invalid(line_number, error)
    })
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on an unexpected result"
)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    const PLAIN: &str = "\
lmm_stripe_count:  4
lmm_stripe_size:   1048576
lmm_pattern:       raid0
lmm_layout_gen:    0
lmm_stripe_offset: 2
lmm_pool:          fast
\tobdidx
\t     2
\t     3
\t     0
\t     1
";

    fn plain() -> Layout {
        Layout::plain(
            StripeLayout::new(MIB, vec![2, 3, 0, 1], PoolName::new("fast").ok(), false)
                .expect("valid"),
        )
    }

    fn composite() -> Layout {
        Layout::composite(vec![
            Component::new(
                0,
                4 * MIB,
                StripeLayout::new(MIB, vec![0], None, false).expect("valid"),
            ),
            Component::new(
                4 * MIB,
                EOF_OFFSET_BYTES,
                StripeLayout::new(4 * MIB, vec![1, 1], None, true).expect("valid"),
            ),
        ])
        .expect("valid")
        .with_generation(3)
    }

    fn syntax_line(error: LayoutError) -> usize {
        match error {
            LayoutError::TextSyntax { line_number, .. }
            | LayoutError::TextInvalid { line_number, .. } => line_number,
            other => panic!("expected a text error, got {other:?}"),
        }
    }

    #[test]
    fn plain_prints_like_lfs() {
        assert_eq!(plain().to_string(), PLAIN);
        assert_eq!(Layout::parse_text(PLAIN), Ok(plain()));
    }

    #[test]
    fn composite_prints_and_parses() {
        let text = composite().to_string();
        assert!(
            text.starts_with("lcm_layout_gen:    3\nlcm_mirror_count:  1\nlcm_entry_count:   2\n")
        );
        assert!(text.contains("    lcme_extent.e_end:   EOF\n"));
        assert!(text.contains("      lmm_pattern:       raid0,overstriped\n"));
        assert_eq!(Layout::parse_text(&text), Ok(composite()));
    }

    #[test]
    fn whitespace_tolerant() {
        let loose: String = PLAIN
            .lines()
            .map(|line| format!("   {}  \n\n", line.replace(": ", " :   ")))
            .collect();
        assert_eq!(Layout::parse_text(&loose), Ok(plain()));
        let with_columns = PLAIN.replace("\t     3", "\t     3\t  0x1234\t 0x0\t 0");
        assert_eq!(Layout::parse_text(&with_columns), Ok(plain()));
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(syntax_line(Layout::parse_text("").unwrap_err()), 1);
        assert_eq!(
            syntax_line(Layout::parse_text(&PLAIN.replace("raid0", "raid5")).unwrap_err()),
            3
        );
        assert_eq!(
            syntax_line(Layout::parse_text(&PLAIN.replace("1048576", "1x")).unwrap_err()),
            2
        );
        assert_eq!(
            syntax_line(Layout::parse_text(&PLAIN.replace("1048576", "1000")).unwrap_err()),
            1
        );
        assert_eq!(
            syntax_line(Layout::parse_text(&PLAIN.replace("fast", "f/st")).unwrap_err()),
            6
        );
        assert_eq!(
            syntax_line(Layout::parse_text(&PLAIN.replace("offset: 2", "offset: 3")).unwrap_err()),
            5
        );
        assert_eq!(
            syntax_line(Layout::parse_text(&PLAIN.replace("count:  4", "count:  5")).unwrap_err()),
            12
        );
        assert_eq!(
            syntax_line(Layout::parse_text(&PLAIN.replace("count:  4", "count:  0")).unwrap_err()),
            1
        );
        assert_eq!(
            syntax_line(Layout::parse_text(&PLAIN.replace("count:  4", "count:  3")).unwrap_err()),
            11
        );
        assert_eq!(
            syntax_line(Layout::parse_text(&PLAIN.replace("\t     0", "\t     3")).unwrap_err()),
            1
        );
        assert_eq!(
            syntax_line(Layout::parse_text(&PLAIN.replace("obdidx", "objid")).unwrap_err()),
            7
        );

        let text = composite().to_string();
        assert_eq!(
            syntax_line(
                Layout::parse_text(&text.replace("mirror_count:  1", "mirror_count:  2"))
                    .unwrap_err()
            ),
            2
        );
        assert_eq!(
            syntax_line(Layout::parse_text(&text.replace("init", "stale")).unwrap_err()),
            5
        );
        assert_eq!(
            syntax_line(
                Layout::parse_text(&text.replace("lcme_id:             2", "lcme_id: 7"))
                    .unwrap_err()
            ),
            15
        );
        let gap = text.replace("e_start: 4194304", "e_start: 8388608");
        assert_eq!(syntax_line(Layout::parse_text(&gap).unwrap_err()), 15);
        let unaligned = text
            .replace("e_end:   4194304", "e_end:   3145728")
            .replace("e_start: 4194304", "e_start: 3145728");
        assert!(matches!(
            Layout::parse_text(&unaligned).unwrap_err(),
            LayoutError::TextInvalid { line_number: 4, source } if matches!(*source, LayoutError::UnalignedBoundary { .. })
        ));
        assert_eq!(
            syntax_line(Layout::parse_text(&text.replace("EOF", "12")).unwrap_err()),
            15
        );
        assert_eq!(
            syntax_line(
                Layout::parse_text(&text.replace("entry_count:   2", "entry_count:   65"))
                    .unwrap_err()
            ),
            3
        );
        assert_eq!(
            syntax_line(
                Layout::parse_text(&text.replace("entry_count:   2", "entry_count:   3"))
                    .unwrap_err()
            ),
            27
        );
    }
}
