//! Value parsers the sections share, reporting through `ConfigError` with the value's line.
use std::{ops::Range, time::Duration};

use toml::Spanned;

use super::ConfigError;

/// Builds `FILE:LINE: reason` errors from a span.
pub type ErrAt<'a> = &'a dyn Fn(Range<usize>, String) -> ConfigError;

/// The duration `what` (humantime: "2s", "500ms", "1h 30m").
pub fn parse_duration(
    value: &Spanned<String>,
    what: &str,
    err: ErrAt<'_>,
) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value.get_ref())
        .map_err(|e| err(value.span(), format!("{what} {:?}: {e}", value.get_ref())))
}

/// As `parse_duration`, refusing zero (`WHAT must be above 0`).
pub fn parse_positive_duration(
    value: &Spanned<String>,
    what: &str,
    err: ErrAt<'_>,
) -> Result<Duration, ConfigError> {
    match parse_duration(value, what, err)? {
        d if d.is_zero() => Err(err(value.span(), format!("{what} must be above 0"))),
        d => Ok(d),
    }
}

/// The optional duration `what`, or `default` when not given.
pub fn duration(
    value: &Option<Spanned<String>>,
    default: Duration,
    what: &str,
    err: ErrAt<'_>,
) -> Result<Duration, ConfigError> {
    value
        .as_ref()
        .map_or(Ok(default), |v| parse_duration(v, what, err))
}

/// The optional duration `what`, above zero, or `default` when not given.
pub fn positive_duration(
    value: &Option<Spanned<String>>,
    default: Duration,
    what: &str,
    err: ErrAt<'_>,
) -> Result<Duration, ConfigError> {
    value
        .as_ref()
        .map_or(Ok(default), |v| parse_positive_duration(v, what, err))
}

/// The byte size `what`: a number with an optional unit, `B`, `KiB`, `MiB` or `GiB` (powers
/// of 1024; "64KiB", "1MiB", "512"), above 0.
pub fn parse_size(value: &Spanned<String>, what: &str, err: ErrAt<'_>) -> Result<u64, ConfigError> {
    let text = value.get_ref().trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => {
            return Err(err(
                value.span(),
                format!(
                    "{what} {:?}: a size such as \"64KiB\" (units: B, KiB, MiB, GiB)",
                    value.get_ref()
                ),
            ));
        }
    };
    let size = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| {
            err(
                value.span(),
                format!("{what} {:?}: not a size", value.get_ref()),
            )
        })?;
    if size == 0 {
        return Err(err(value.span(), format!("{what} must be above 0")));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn size(text: &str) -> Result<u64, String> {
        let file = format!("s = {text:?}\n");
        let value: Spanned<String> =
            toml::from_str::<std::collections::HashMap<String, Spanned<String>>>(&file)
                .expect("toml")
                .remove("s")
                .expect("key");
        let err =
            |span: Range<usize>, m: String| ConfigError::at(Path::new("f.toml"), &file, span, m);
        parse_size(&value, "size", &err).map_err(|e| e.to_string())
    }

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(size("512"), Ok(512));
        assert_eq!(size("512B"), Ok(512));
        assert_eq!(size("64KiB"), Ok(64 << 10));
        assert_eq!(size("1 MiB"), Ok(1 << 20));
        assert_eq!(size("2GiB"), Ok(2 << 30));
    }

    #[test]
    fn bad_sizes_name_the_line() {
        for bad in ["", "KiB", "64KB", "-1", "1.5MiB", "99999999999999999999GiB"] {
            let e = size(bad).expect_err(bad);
            assert!(e.starts_with("f.toml:1: size "), "{bad}: {e}");
        }
        assert_eq!(
            size("0KiB").expect_err("zero"),
            "f.toml:1: size must be above 0"
        );
    }
}
