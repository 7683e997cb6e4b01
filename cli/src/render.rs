//! Printing: the checklist, aligned tables, and colour only where stdout is a terminal (and
//! `NO_COLOR` is unset), so that piped output stays plain and stable. ANSI escapes by hand:
//! four colours do not need a dependency.

use std::fmt::Write as _;

use crate::check::{Check, Verdict};

/// Whether to colour: a terminal, and no `NO_COLOR` (no-color.org).
pub fn colour_wanted(is_terminal: bool, no_color: Option<&str>) -> bool {
    is_terminal && no_color.is_none_or(str::is_empty)
}

fn paint(colour: bool, code: &str, text: &str) -> String {
    if colour {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

/// The checklist: sections in order of first appearance, ✓ / ! / ✗ lines, and under every
/// warning and failure what to do; then a one-line summary.
pub fn checklist(checks: &[Check], colour: bool) -> String {
    let mut out = String::new();
    let mut section: Option<&str> = None;
    for c in checks {
        if section != Some(c.section.as_str()) {
            if section.is_some() {
                out.push('\n');
            }
            let _ = writeln!(out, "{}", paint(colour, "1", &c.section));
            section = Some(&c.section);
        }
        let (mark, code) = match c.verdict {
            Verdict::Pass => ("✓", "32"),
            Verdict::Warn => ("!", "33"),
            Verdict::Fail => ("✗", "31"),
        };
        let mut lines = c.summary.lines();
        let _ = writeln!(
            out,
            "  {} {}",
            paint(colour, code, mark),
            lines.next().unwrap_or("")
        );
        for more in lines {
            let _ = writeln!(out, "      {more}");
        }
        if let Some(fix) = &c.fix {
            let _ = writeln!(out, "    {} {fix}", paint(colour, "36", "fix:"));
        }
    }
    let failed = checks.iter().filter(|c| c.verdict == Verdict::Fail).count();
    let warned = checks.iter().filter(|c| c.verdict == Verdict::Warn).count();
    let _ = writeln!(
        out,
        "\n{} checks: {} passed, {warned} warning(s), {failed} failed",
        checks.len(),
        checks.len() - failed - warned
    );
    out
}

/// Columns padded to their widest cell, separated by three spaces (kubectl's layout); no
/// trailing spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, cell) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for r in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i > 0 {
                line.push_str("   ");
            }
            let _ = write!(line, "{cell:<w$}", w = widths.get(i).copied().unwrap_or(0));
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour_wanted(true, None));
        assert!(colour_wanted(true, Some("")));
        assert!(!colour_wanted(true, Some("1")));
        assert!(!colour_wanted(false, None));
    }

    #[test]
    fn plain_output_has_no_escapes_and_coloured_output_has() {
        let c = [Check {
            section: "s".into(),
            summary: "bad".into(),
            verdict: Verdict::Fail,
            fix: Some("do x".into()),
        }];
        assert!(!checklist(&c, false).contains('\x1b'));
        assert!(checklist(&c, true).contains("\x1b[31m✗\x1b[0m"));
    }

    #[test]
    fn tables_align_on_the_widest_cell() {
        let t = table(&["A", "BB"], &[vec!["long".into(), "x".into()]]);
        assert_eq!(t, "A      BB\nlong   x\n");
    }
}
