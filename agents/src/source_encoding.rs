//! Python source bytes to text, by CPython's rules (PEP 263, as `compile()` applies them in
//! CPython's tokenizer):
//!
//! - A UTF-8 byte-order mark means UTF-8; a `coding:` declaration beside it must name
//!   UTF-8 (`encoding problem: ... with BOM` otherwise).
//! - The declaration is looked for on line 1, and on line 2 only when line 1 is blank or a
//!   comment: a line whose first non-blank character is `#` and that contains
//!   `coding[:=]` followed by a name of letters, digits, `-`, `_`, `.`.
//! - The name goes through CPython's normalisation (`utf_8-unix` is UTF-8, `latin-1-x`
//!   is ISO-8859-1) and its codec aliases (`latin`, `l1`, `u8`, `us-ascii`, ...).
//!
//! Decoded exactly: UTF-8, ISO-8859-1 and ASCII (strict, as CPython decodes them). Text
//! that is all ASCII under a declared ASCII-compatible codec (cp1252, iso-8859-15, ...)
//! decodes to itself in CPython too, so it is accepted; anything else is refused with the
//! reason, never guessed (CPython decodes `utf-7` text that looks like ASCII differently).
//! `tests/fixtures/encodings/` in the agents crate are compared with CPython itself.

/// Source bytes that are not text this crate can read as CPython would.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not valid UTF-8 (byte {position}) and no `coding:` declaration of another encoding")]
    NotUtf8 { position: usize },
    #[error("encoding problem: {0} with a UTF-8 byte-order mark (CPython refuses this file too)")]
    BomMismatch(String),
    #[error("not valid {encoding} (byte {position}), the encoding it declares (CPython refuses this file too)")]
    Invalid { encoding: &'static str, position: usize },
    #[error(
        "declared encoding {0:?} is unknown or not supported here (UTF-8, Latin-1 and ASCII are, and ASCII-only text under other ASCII-compatible codecs)"
    )]
    Unsupported(String),
}

/// What a declared encoding name means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    Utf8,
    Latin1,
    Ascii,
    /// A codec CPython knows that decodes ASCII bytes to themselves.
    AsciiCompatible,
    Other,
}

/// Decodes a Python source file as CPython does, or says why not.
pub fn decode_source(bytes: &[u8]) -> Result<String, DecodeError> {
    let (bom, body) = match bytes.strip_prefix(b"\xef\xbb\xbf") {
        Some(rest) => (true, rest),
        None => (false, bytes),
    };
    let offset = if bom { 3 } else { 0 };
    let Some(declared) = declared_encoding(body) else {
        return std::str::from_utf8(body)
            .map(str::to_owned)
            .map_err(|e| DecodeError::NotUtf8 { position: offset + e.valid_up_to() });
    };
    let normal = normal_name(&declared);
    if bom && normal != "utf-8" {
        return Err(DecodeError::BomMismatch(declared));
    }
    let first_non_ascii = body.iter().position(|b| !b.is_ascii());
    match (lookup(&normal), first_non_ascii) {
        (Codec::Utf8, _) => std::str::from_utf8(body)
            .map(str::to_owned)
            .map_err(|e| DecodeError::Invalid { encoding: "UTF-8", position: offset + e.valid_up_to() }),
        (Codec::Latin1, _) | (Codec::Ascii | Codec::AsciiCompatible, None) => Ok(body.iter().map(|&b| char::from(b)).collect()),
        (Codec::Ascii, Some(position)) => Err(DecodeError::Invalid { encoding: "ASCII", position }),
        (Codec::AsciiCompatible | Codec::Other, _) => Err(DecodeError::Unsupported(declared)),
    }
}

/// The encoding a line declares, as CPython's `get_coding_spec` reads it.
fn coding_spec(line: &[u8]) -> Option<String> {
    let start = line.iter().position(|&b| !matches!(b, b' ' | b'\t' | b'\x0c'))?;
    if line[start] != b'#' {
        return None;
    }
    let mut i = start;
    while i + 6 < line.len() {
        if &line[i..i + 6] == b"coding" && matches!(line[i + 6], b':' | b'=') {
            let mut begin = i + 7;
            while begin < line.len() && matches!(line[begin], b' ' | b'\t') {
                begin += 1;
            }
            let len = line[begin..].iter().take_while(|&&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')).count();
            if len > 0 {
                return Some(String::from_utf8_lossy(&line[begin..begin + len]).into_owned());
            }
        }
        i += 1;
    }
    None
}

/// Whether a line without a declaration lets CPython look at the next one: it is blank
/// or a comment.
fn blank_or_comment(line: &[u8]) -> bool {
    for &b in line {
        match b {
            b'#' | b'\n' | b'\r' => return true,
            b' ' | b'\t' | b'\x0c' => {}
            _ => return false,
        }
    }
    true
}

/// The `coding` declaration of the first two lines, as written.
fn declared_encoding(bytes: &[u8]) -> Option<String> {
    let mut lines = bytes.split_inclusive(|&b| b == b'\n');
    let first = lines.next()?;
    if let Some(name) = coding_spec(first) {
        return Some(name);
    }
    if !blank_or_comment(first) {
        return None;
    }
    lines.next().and_then(coding_spec)
}

/// CPython's `get_normal_name`: the first 12 characters, lower-cased, `_` as `-`.
fn normal_name(name: &str) -> String {
    let head: String = name.chars().take(12).map(|c| if c == '_' { '-' } else { c.to_ascii_lowercase() }).collect();
    if head == "utf-8" || head.starts_with("utf-8-") {
        return "utf-8".into();
    }
    for latin in ["latin-1", "iso-8859-1", "iso-latin-1"] {
        if head == latin || head.starts_with(&format!("{latin}-")) {
            return "iso-8859-1".into();
        }
    }
    name.to_owned()
}

/// CPython's codec lookup for the codecs decoded here: `encodings.normalize_encoding`
/// (lower case, runs of other characters than letters, digits and `.` as one `_`), then
/// the alias table (`encodings.aliases`), also with `.` as `_`.
fn lookup(name: &str) -> Codec {
    let mut normalized = String::new();
    let mut pending_underscore = false;
    for c in name.chars().map(|c| c.to_ascii_lowercase()) {
        if c.is_ascii_alphanumeric() || c == '.' {
            if pending_underscore && !normalized.is_empty() {
                normalized.push('_');
            }
            pending_underscore = false;
            normalized.push(c);
        } else {
            pending_underscore = true;
        }
    }
    let dotless = normalized.replace('.', "_");
    let known = |n: &str| -> Option<Codec> {
        Some(match n {
            "utf_8" | "u8" | "utf" | "utf8" | "utf8_ucs2" | "utf8_ucs4" | "cp65001" => Codec::Utf8,
            "latin_1" | "8859" | "cp819" | "csisolatin1" | "ibm819" | "iso8859" | "iso8859_1" | "iso_8859_1" | "iso_8859_1_1987"
            | "iso_ir_100" | "l1" | "latin" | "latin1" => Codec::Latin1,
            "ascii" | "646" | "ansi_x3_4_1968" | "ansi_x3_4_1986" | "cp367" | "csascii" | "ibm367" | "iso646_us" | "iso_646_irv_1991"
            | "iso_ir_6" | "us" | "us_ascii" => Codec::Ascii,
            "cp1250" | "cp1251" | "cp1252" | "cp1253" | "cp1254" | "cp1255" | "cp1256" | "cp1257" | "cp1258" | "windows_1250"
            | "windows_1251" | "windows_1252" | "windows_1253" | "windows_1254" | "windows_1255" | "windows_1256" | "windows_1257"
            | "windows_1258" | "koi8_r" | "koi8_u" | "euc_jp" | "euc_kr" | "gbk" | "gb2312" | "gb18030" | "big5" | "mac_roman"
            | "cp437" | "cp850" => Codec::AsciiCompatible,
            n if iso8859_part(n).is_some_and(|part| (2..=16).contains(&part) && part != 12) => Codec::AsciiCompatible,
            _ => return None,
        })
    };
    known(&normalized).or_else(|| known(&dotless)).unwrap_or(Codec::Other)
}

/// `N` of `iso8859_N` / `iso_8859_N`.
fn iso8859_part(name: &str) -> Option<u32> {
    name.strip_prefix("iso8859_").or_else(|| name.strip_prefix("iso_8859_"))?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declarations_are_read_as_cpython_reads_them() {
        assert_eq!(declared_encoding(b"# -*- coding: latin-1 -*-\n"), Some("latin-1".into()));
        assert_eq!(declared_encoding(b"#!/usr/bin/python\n# vim: set fileencoding=cp1252 :\n"), Some("cp1252".into()));
        assert_eq!(declared_encoding(b"x = 1\n# coding: latin-1\n"), None, "line 2 counts only after a comment");
        assert_eq!(declared_encoding(b"#\n#\n# coding: latin-1\n"), None, "line 3 never counts");
        assert_eq!(declared_encoding(b"\t\x0c#coding=u8\n"), Some("u8".into()));
        assert_eq!(declared_encoding(b"x = 1 # coding: latin-1\n"), None);
        assert_eq!(declared_encoding(b"# coding latin-1\n"), None);
    }

    #[test]
    fn names_and_aliases() {
        assert_eq!(normal_name("UTF_8-unix"), "utf-8");
        assert_eq!(normal_name("Latin-1-x"), "iso-8859-1");
        assert_eq!(lookup(&normal_name("latin")), Codec::Latin1);
        assert_eq!(lookup("US-ASCII"), Codec::Ascii);
        assert_eq!(lookup("ANSI_X3.4-1968"), Codec::Ascii);
        assert_eq!(lookup("iso-8859-15"), Codec::AsciiCompatible);
        assert_eq!(lookup("utf-7"), Codec::Other);
        assert_eq!(lookup("no-such-codec"), Codec::Other);
    }

    #[test]
    fn refusals_carry_their_reason() {
        assert!(matches!(decode_source(b"\xef\xbb\xbf# coding: latin-1\nx = 1\n"), Err(DecodeError::BomMismatch(_))));
        assert!(matches!(decode_source(b"# coding: utf-7\nx = '+AOk-'\n"), Err(DecodeError::Unsupported(_))));
        assert!(matches!(decode_source(b"# coding: ascii\nx = '\xe9'\n"), Err(DecodeError::Invalid { encoding: "ASCII", position: 21 })));
        assert!(matches!(decode_source(b"s = '\xe9'\n"), Err(DecodeError::NotUtf8 { position: 5 })));
        assert_eq!(decode_source(b"\xef\xbb\xbf# coding: UTF_8\nx = 1\n").unwrap(), "# coding: UTF_8\nx = 1\n");
        assert_eq!(decode_source(b"# coding: latin\ns = '\xe9'\n").unwrap(), "# coding: latin\ns = '\u{e9}'\n");
    }
}
