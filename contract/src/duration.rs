//! The one duration syntax of sidetrace's configuration: the proxy's flags (`--response-timeout
//! 2s`), the sidecar config file and the TracedService spec (`timeout: 500ms`). One parser, so
//! a value the CRD admits is a value the proxy accepts.
//!
//! Grammar: a decimal number with at most nine fraction digits, then an optional unit: `ms`,
//! `s` (the default), `m` or `h`. Examples: `250ms`, `2`, `1.5s`, `1m`, `1h`, `0s`.

use std::time::Duration;

/// The grammar as a regular expression, for the CRD schema. Must admit exactly what
/// [`parse_duration`] accepts (the tests list both sides' examples).
pub const DURATION_PATTERN: &str = r"^[0-9]+(\.[0-9]{1,9})?(ms|s|m|h)?$";

/// Parses `250ms`, `2s`, `1.5s`, `1m`, `1h` or a bare number of seconds, exactly (no floating
/// point rounding). Leading and trailing whitespace is ignored.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let unit_nanos: u128 = match unit {
        "ms" => 1_000_000,
        "" | "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => {
            return Err(format!(
                "{text:?} has unknown unit {unit:?} (use ms, s, m or h)"
            ));
        }
    };
    let not_a_duration = || format!("{text:?} is not a duration like 500ms, 2s, 1m or 1h");
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty()
        || !digits(whole)
        || !digits(fraction)
        || fraction.len() > 9
        || (number.contains('.') && fraction.is_empty())
    {
        return Err(not_a_duration());
    }
    let whole: u128 = whole.parse().map_err(|_| not_a_duration())?;
    let fraction_nanos = match fraction.len() {
        0 => 0,
        // At most nine digits: the value and the scale fit easily in u128.
        n => {
            fraction.parse::<u128>().map_err(|_| not_a_duration())? * unit_nanos
                / 10u128.pow(u32::try_from(n).unwrap_or(9))
        }
    };
    let nanos = whole
        .checked_mul(unit_nanos)
        .and_then(|n| n.checked_add(fraction_nanos))
        .ok_or_else(|| format!("{text:?} is too long"))?;
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| format!("{text:?} is too long"))?;
    let subsec = u32::try_from(nanos % 1_000_000_000).unwrap_or(0);
    Ok(Duration::new(secs, subsec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_exactly_with_units() {
        for (text, want) in [
            ("250ms", Duration::from_millis(250)),
            ("2", Duration::from_secs(2)),
            ("2s", Duration::from_secs(2)),
            ("1.5s", Duration::from_millis(1500)),
            ("0.1s", Duration::from_millis(100)),
            ("1.5ms", Duration::from_micros(1500)),
            ("1m", Duration::from_secs(60)),
            ("1h", Duration::from_secs(3600)),
            ("0s", Duration::ZERO),
            ("0", Duration::ZERO),
            (" 5s ", Duration::from_secs(5)),
            ("0.000000001s", Duration::from_nanos(1)),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    /// What the pattern rejects, the parser rejects (the CRD and the proxy agree).
    #[test]
    fn malformed_durations_say_why() {
        for (text, why) in [
            ("fast", "unknown unit"),
            ("1d", "unknown unit"),
            ("10 s", "unknown unit"),
            ("-1s", "unknown unit"),
            ("", "not a duration"),
            ("s", "not a duration"),
            (".5s", "not a duration"),
            ("1.s", "not a duration"),
            ("1.2.3s", "not a duration"),
            ("1.0000000001s", "not a duration"),
            ("99999999999999999999h", "too long"),
        ] {
            let e = parse_duration(text).expect_err(text);
            assert!(e.contains(why), "{text}: {e}");
        }
        // The pattern is anchored and lists the same units.
        assert!(DURATION_PATTERN.starts_with('^') && DURATION_PATTERN.ends_with('$'));
        assert!(DURATION_PATTERN.contains("(ms|s|m|h)?"));
    }
}
