//! Parsing of Cloud Hypervisor-style option strings such as
//! `boot=2,max=4,features=[xsave,popcnt]` and of byte sizes such as `128M`.
//!
//! The grammar: items are separated by commas; an item is `key=value` or a
//! bare `key`. Commas inside `[...]` (lists) or `"..."` (quoted values, quotes
//! removed) do not split items, so lists and paths containing commas survive.

use thiserror::Error;

/// Why an option string, or one item of it, was rejected.
///
/// The `Display` text is one line and names the offending item, so callers
/// only need to prefix the option name (e.g. `--cpus: `).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OptionError {
    /// The whole option value was empty.
    #[error("empty value")]
    Empty,
    /// Two commas in a row, or a leading/trailing comma.
    #[error("empty item in '{0}'")]
    EmptyItem(String),
    /// A `[` without its `]` or the other way round.
    #[error("unbalanced brackets in '{0}'")]
    UnbalancedBrackets(String),
    /// A `"` without its closing quote.
    #[error("unterminated quote in '{0}'")]
    UnterminatedQuote(String),
    /// A key this option does not know.
    #[error("unknown option '{key}' (expected {expected})")]
    UnknownKey {
        /// The key as written.
        key: String,
        /// Human-readable list of accepted keys.
        expected: &'static str,
    },
    /// A bare word (or whole value) that is not one of the accepted ones.
    #[error("invalid value '{value}' (expected {expected})")]
    UnknownValue {
        /// The value as written.
        value: String,
        /// Human-readable list of accepted values.
        expected: &'static str,
    },
    /// A key Cloud Hypervisor knows but chv does not implement.
    #[error("'{0}' is not supported by chv")]
    Unsupported(String),
    /// The same key given twice.
    #[error("'{0}' given more than once")]
    Duplicate(String),
    /// Two items that exclude each other, e.g. `tty` and `file=...`.
    #[error("'{0}' and '{1}' cannot be combined")]
    Conflict(String, String),
    /// Something required is absent.
    #[error("missing {0}")]
    Missing(&'static str),
    /// A key that needs a value was given without `=value`.
    #[error("'{0}' needs a value ({0}=...)")]
    MissingValue(String),
    /// The value of a known key is invalid.
    #[error("{key}={value}: {reason}")]
    Invalid {
        /// The key as written.
        key: String,
        /// The value as written (after quote removal).
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl OptionError {
    /// Shorthand for [`OptionError::Invalid`].
    pub fn invalid(key: &str, value: &str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.to_owned(),
            value: value.to_owned(),
            reason: reason.into(),
        }
    }
}

/// One `key[=value]` item of an option string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionItem {
    /// Text before the first `=` (the whole item when there is no `=`).
    pub key: String,
    /// Text after the first `=`, quotes removed; `None` for a bare key.
    pub value: Option<String>,
}

impl OptionItem {
    /// The value, or [`OptionError::MissingValue`] for a bare key.
    pub fn value(&self) -> Result<&str, OptionError> {
        self.value
            .as_deref()
            .ok_or_else(|| OptionError::MissingValue(self.key.clone()))
    }

    /// The value, additionally rejecting an empty one (`key=`).
    pub fn non_empty_value(&self) -> Result<&str, OptionError> {
        let value = self.value()?;
        if value.is_empty() {
            return Err(OptionError::invalid(&self.key, value, "empty value"));
        }
        Ok(value)
    }
}

/// Splits an option string into items, honouring brackets and quotes.
///
/// Rejects empty strings, empty items and duplicate keys so that callers can
/// simply match on each key once.
pub fn split_options(input: &str) -> Result<Vec<OptionItem>, OptionError> {
    if input.is_empty() {
        return Err(OptionError::Empty);
    }
    let mut items: Vec<OptionItem> = Vec::new();
    for raw in split_top_level(input)? {
        if raw.is_empty() {
            return Err(OptionError::EmptyItem(input.to_owned()));
        }
        let item = match raw.split_once('=') {
            Some((key, value)) => OptionItem {
                key: key.to_owned(),
                value: Some(unquote(value)),
            },
            None => OptionItem {
                key: unquote(&raw),
                value: None,
            },
        };
        if item.key.is_empty() {
            return Err(OptionError::EmptyItem(input.to_owned()));
        }
        if items.iter().any(|seen| seen.key == item.key) {
            return Err(OptionError::Duplicate(item.key));
        }
        items.push(item);
    }
    Ok(items)
}

/// Splits on commas that are neither inside brackets nor inside quotes.
fn split_top_level(input: &str) -> Result<Vec<String>, OptionError> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut depth = 0usize;
    let mut quoted = false;
    for c in input.chars() {
        match c {
            '"' => quoted = !quoted,
            '[' if !quoted => depth += 1,
            ']' if !quoted => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| OptionError::UnbalancedBrackets(input.to_owned()))?;
            }
            ',' if !quoted && depth == 0 => {
                parts.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    if quoted {
        return Err(OptionError::UnterminatedQuote(input.to_owned()));
    }
    if depth != 0 {
        return Err(OptionError::UnbalancedBrackets(input.to_owned()));
    }
    parts.push(current);
    Ok(parts)
}

/// Removes the double quotes that protected commas; quotes are never part
/// of a value.
fn unquote(value: &str) -> String {
    value.chars().filter(|&c| c != '"').collect()
}

/// Parses a list value: `[a,b,c]`, `[]` or a single bare `a`.
///
/// Elements are trimmed of surrounding whitespace; empty elements are
/// rejected.
pub fn parse_list(key: &str, value: &str) -> Result<Vec<String>, OptionError> {
    let inner = match value.strip_prefix('[') {
        Some(rest) => rest
            .strip_suffix(']')
            .ok_or_else(|| OptionError::invalid(key, value, "list must end with ']'"))?,
        None => value,
    };
    if inner.contains(['[', ']']) {
        return Err(OptionError::invalid(
            key,
            value,
            "nested lists are not allowed",
        ));
    }
    if inner.trim().is_empty() {
        return Ok(Vec::new());
    }
    inner
        .split(',')
        .map(|element| {
            let element = element.trim();
            if element.is_empty() {
                Err(OptionError::invalid(key, value, "empty list element"))
            } else {
                Ok(element.to_owned())
            }
        })
        .collect()
}

/// Parses an `on|off` switch (also `true|false`, as Cloud Hypervisor does).
pub fn parse_toggle(key: &str, value: &str) -> Result<bool, OptionError> {
    match value {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => Err(OptionError::invalid(key, value, "expected on or off")),
    }
}

/// Parses a decimal unsigned integer.
pub fn parse_u64(key: &str, value: &str) -> Result<u64, OptionError> {
    if value.is_empty() {
        return Err(OptionError::invalid(key, value, "empty value"));
    }
    value
        .parse::<u64>()
        .map_err(|_| OptionError::invalid(key, value, "not a non-negative decimal number"))
}

/// Why a byte size such as `128M` could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SizeError {
    /// Nothing was given.
    #[error("empty size")]
    Empty,
    /// No leading digits.
    #[error("size must start with a number")]
    NoNumber,
    /// Anything after the digits other than one K/M/G/T letter.
    #[error("invalid size suffix '{0}' (expected K, M, G or T)")]
    InvalidSuffix(String),
    /// The number times its unit does not fit in 64 bits.
    #[error("size does not fit in 64 bits")]
    Overflow,
}

/// Parses a byte size: decimal digits followed by an optional binary unit
/// suffix `K`, `M`, `G` or `T` (powers of 1024, either case). Plain digits
/// are bytes.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    if text.is_empty() {
        return Err(SizeError::Empty);
    }
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(digits_end);
    if digits.is_empty() {
        return Err(SizeError::NoNumber);
    }
    let shift = match suffix {
        "" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        "T" | "t" => 40,
        other => return Err(SizeError::InvalidSuffix(other.to_owned())),
    };
    let number: u64 = digits.parse().map_err(|_| SizeError::Overflow)?;
    number.checked_mul(1u64 << shift).ok_or(SizeError::Overflow)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(key: &str, value: Option<&str>) -> OptionItem {
        OptionItem {
            key: key.to_owned(),
            value: value.map(str::to_owned),
        }
    }

    #[test]
    fn splits_plain_items() {
        assert_eq!(
            split_options("boot=2,max=4,off").unwrap(),
            vec![
                item("boot", Some("2")),
                item("max", Some("4")),
                item("off", None)
            ]
        );
    }

    #[test]
    fn keeps_brackets_and_quotes_together() {
        assert_eq!(
            split_options("features=[a,b],boot=1").unwrap(),
            vec![item("features", Some("[a,b]")), item("boot", Some("1"))]
        );
        assert_eq!(
            split_options("file=\"/tmp/a,b\"").unwrap(),
            vec![item("file", Some("/tmp/a,b"))]
        );
        // Only the first '=' separates key from value.
        assert_eq!(
            split_options("file=/tmp/a=b").unwrap(),
            vec![item("file", Some("/tmp/a=b"))]
        );
    }

    #[test]
    fn rejects_malformed_strings() {
        assert_eq!(split_options(""), Err(OptionError::Empty));
        assert!(matches!(
            split_options("a=1,,b=2"),
            Err(OptionError::EmptyItem(_))
        ));
        assert!(matches!(
            split_options("a=1,"),
            Err(OptionError::EmptyItem(_))
        ));
        assert!(matches!(
            split_options("=1"),
            Err(OptionError::EmptyItem(_))
        ));
        assert!(matches!(
            split_options("f=[a,b"),
            Err(OptionError::UnbalancedBrackets(_))
        ));
        assert!(matches!(
            split_options("f=a]"),
            Err(OptionError::UnbalancedBrackets(_))
        ));
        assert!(matches!(
            split_options("f=\"a"),
            Err(OptionError::UnterminatedQuote(_))
        ));
        assert_eq!(
            split_options("boot=1,boot=2"),
            Err(OptionError::Duplicate("boot".into()))
        );
    }

    #[test]
    fn item_values() {
        assert_eq!(item("a", Some("x")).value(), Ok("x"));
        assert_eq!(
            item("a", None).value(),
            Err(OptionError::MissingValue("a".into()))
        );
        assert!(item("a", Some("")).non_empty_value().is_err());
    }

    #[test]
    fn lists() {
        assert_eq!(parse_list("f", "[a,b]").unwrap(), vec!["a", "b"]);
        assert_eq!(parse_list("f", "[ a , b ]").unwrap(), vec!["a", "b"]);
        assert_eq!(parse_list("f", "a").unwrap(), vec!["a"]);
        assert!(parse_list("f", "[]").unwrap().is_empty());
        assert!(parse_list("f", "[a,,b]").is_err());
        assert!(parse_list("f", "[a").is_err());
        assert!(parse_list("f", "[[a]]").is_err());
    }

    #[test]
    fn toggles_and_numbers() {
        assert_eq!(parse_toggle("x", "on"), Ok(true));
        assert_eq!(parse_toggle("x", "false"), Ok(false));
        assert!(parse_toggle("x", "yes").is_err());
        assert_eq!(parse_u64("n", "42"), Ok(42));
        assert!(parse_u64("n", "-1").is_err());
        assert!(parse_u64("n", "").is_err());
        assert!(parse_u64("n", "99999999999999999999999").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("128M"), Ok(128 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        assert_eq!(parse_size("M"), Err(SizeError::NoNumber));
        assert_eq!(parse_size("-1M"), Err(SizeError::NoNumber));
        assert_eq!(parse_size("12Q"), Err(SizeError::InvalidSuffix("Q".into())));
        assert_eq!(
            parse_size("1MB"),
            Err(SizeError::InvalidSuffix("MB".into()))
        );
        assert_eq!(
            parse_size("1 M"),
            Err(SizeError::InvalidSuffix(" M".into()))
        );
        assert_eq!(parse_size("16777216T"), Err(SizeError::Overflow));
        assert_eq!(parse_size("99999999999999999999"), Err(SizeError::Overflow));
        assert_eq!(
            SizeError::InvalidSuffix("Q".into()).to_string(),
            "invalid size suffix 'Q' (expected K, M, G or T)"
        );
    }
}
