//! Capture choices that the webhook passes and the init container applies.

use std::fmt;
use std::str::FromStr;

/// Whether sidetrace-init programs ip6tables as well as iptables.
///
/// `auto` (the default everywhere) captures IPv6 exactly when the pod has a global IPv6
/// address, so a dual-stack pod cannot send IPv6 traffic around the proxy; `on` requires it
/// (a failure to program ip6tables fails the init container); `off` never touches ip6tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ipv6Capture {
    /// IPv6 when the pod has a global IPv6 address.
    #[default]
    Auto,
    /// Always, and fail when ip6tables cannot be programmed.
    On,
    /// Never.
    Off,
}

impl Ipv6Capture {
    /// The spelling written on command lines and in chart values.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::On => "on",
            Self::Off => "off",
        }
    }
}

impl fmt::Display for Ipv6Capture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Ipv6Capture {
    type Err = String;

    /// `auto`, `on`, `off`, and the usual boolean spellings (`true`/`1`/`yes`,
    /// `false`/`0`/`no`), which keep older `--ipv6=true` command lines working.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "on" | "true" | "1" | "yes" => Ok(Self::On),
            "off" | "false" | "0" | "no" => Ok(Self::Off),
            other => Err(format!(
                "{other:?} is not an IPv6 capture mode (auto, on or off)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_with_boolean_spellings_and_print_back() {
        for (text, mode) in [
            ("auto", Ipv6Capture::Auto),
            ("on", Ipv6Capture::On),
            ("true", Ipv6Capture::On),
            ("OFF", Ipv6Capture::Off),
            ("false", Ipv6Capture::Off),
        ] {
            assert_eq!(text.parse::<Ipv6Capture>(), Ok(mode), "{text}");
        }
        assert_eq!(Ipv6Capture::On.to_string(), "on");
        let e = "maybe".parse::<Ipv6Capture>().unwrap_err();
        assert!(
            e.contains("\"maybe\"") && e.contains("auto, on or off"),
            "{e}"
        );
        assert_eq!(Ipv6Capture::default(), Ipv6Capture::Auto);
    }
}
