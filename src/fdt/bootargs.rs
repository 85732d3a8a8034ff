//! The kernel command line (`/chosen/bootargs`): reading the hypervisor's `verso.*` options and
//! removing them before the host sees the line.
//!
//! Words are split the way Linux's `next_arg` does: runs of ASCII whitespace separate words,
//! except inside double quotes (`opt="a b"` is one word).

use super::FdtError;

fn is_space(c: char) -> bool {
    c.is_ascii_whitespace()
}

/// The words of a command line, quotes kept.
fn words(line: &str) -> impl Iterator<Item = &str> {
    let mut rest = line;
    core::iter::from_fn(move || {
        rest = rest.trim_start_matches(is_space);
        if rest.is_empty() {
            return None;
        }
        let mut in_quote = false;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                if c == '"' {
                    in_quote = !in_quote;
                }
                !in_quote && is_space(c)
            })
            .map_or(rest.len(), |(i, _)| i);
        let (word, tail) = rest.split_at(end);
        rest = tail;
        Some(word)
    })
}

/// Copies `bootargs` into `out` without the words that start with `prefix`, and returns the copy.
/// Kept words are copied verbatim, joined by single spaces, with no leading or trailing space.
///
/// # Errors
/// [`FdtError::NoSpace`] if `out` is too small.
pub fn strip_words<'o>(
    bootargs: &str,
    prefix: &str,
    out: &'o mut [u8],
) -> Result<&'o str, FdtError> {
    let mut len = 0usize;
    for word in words(bootargs).filter(|w| !w.starts_with(prefix)) {
        let sep: &[u8] = if len == 0 { b"" } else { b" " };
        for part in [sep, word.as_bytes()] {
            let end = len.checked_add(part.len()).ok_or(FdtError::NoSpace)?;
            out.get_mut(len..end)
                .ok_or(FdtError::NoSpace)?
                .copy_from_slice(part);
            len = end;
        }
    }
    // Whole words of a str joined by ASCII spaces are UTF-8; the check cannot fail.
    core::str::from_utf8(&out[..len]).map_err(|_| FdtError::BadString)
}

/// The value of option `key` in `bootargs`: `Some("v")` for `key=v` (surrounding double quotes
/// removed), `Some("")` for a bare `key`, `None` if absent. When the option appears more than once
/// the last one wins, as for Linux's own parameters.
pub fn bootarg_value<'b>(bootargs: &'b str, key: &str) -> Option<&'b str> {
    words(bootargs)
        .filter_map(|word| {
            let rest = word.strip_prefix(key)?;
            if rest.is_empty() {
                return Some("");
            }
            let value = rest.strip_prefix('=')?;
            Some(
                value
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(value),
            )
        })
        .last()
}

/// Parses a hexadecimal `u64` written with or without `0x` (`44000000`, `0x44000000`). `None` if
/// empty, not hex, or wider than 64 bits.
pub fn parse_hex(text: &str) -> Option<u64> {
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_words_removes_every_prefixed_word_and_keeps_the_rest_verbatim() {
        let mut buf = [0u8; 128];
        let line = "  verso.log=info console=ttyAMA0\tverso.payload=44000000 quiet  x=\"a verso.b\" verso.";
        let out = strip_words(line, "verso.", &mut buf).unwrap();
        assert_eq!(out, "console=ttyAMA0 quiet x=\"a verso.b\"");
    }

    #[test]
    fn strip_words_of_only_prefixed_words_is_empty() {
        let mut buf = [0u8; 4];
        assert_eq!(
            strip_words("verso.a verso.b", "verso.", &mut buf).unwrap(),
            ""
        );
    }

    #[test]
    fn strip_words_into_too_small_buffer_is_no_space() {
        let mut buf = [0u8; 10];
        assert_eq!(
            strip_words("console=ttyAMA0", "verso.", &mut buf),
            Err(FdtError::NoSpace)
        );
        let mut exact = [0u8; 15];
        assert_eq!(
            strip_words("console=ttyAMA0", "verso.", &mut exact),
            Ok("console=ttyAMA0")
        );
    }

    #[test]
    fn bootarg_value_finds_the_last_occurrence_and_strips_quotes() {
        let line = "verso.log=info verso.payload=0x44000000 verso.log=debug verso.flag x=\"a b\"";
        assert_eq!(bootarg_value(line, "verso.log"), Some("debug"));
        assert_eq!(bootarg_value(line, "verso.payload"), Some("0x44000000"));
        assert_eq!(bootarg_value(line, "verso.flag"), Some(""));
        assert_eq!(bootarg_value(line, "x"), Some("a b"));
        assert_eq!(bootarg_value(line, "verso.lo"), None);
        assert_eq!(bootarg_value(line, "verso.missing"), None);
        assert_eq!(bootarg_value("", "verso.log"), None);
    }

    #[test]
    fn parse_hex_accepts_bare_and_prefixed_digits_and_rejects_the_rest() {
        assert_eq!(parse_hex("44000000"), Some(0x4400_0000));
        assert_eq!(parse_hex("0x44000000"), Some(0x4400_0000));
        assert_eq!(parse_hex("0XfFfFfFfFfFfFfFfF"), Some(u64::MAX));
        for bad in [
            "",
            "0x",
            "+1",
            "-1",
            "0x1g",
            "1_000",
            "10000000000000000",
            " 1",
        ] {
            assert_eq!(parse_hex(bad), None, "{bad:?}");
        }
    }
}
