//! Python source as the agents read it: one parser for current syntax (3.12 and later:
//! `match`, walrus, PEP 701 f-strings, PEP 695 type parameters), from Ruff's parser, and
//! positions reported the way CPython's `ast` reports them (1-based lines, 0-based
//! columns counted in UTF-8 bytes).

use ruff_python_ast::ModModule;
use ruff_source_file::{LineIndex, OneIndexed};
use ruff_text_size::TextSize;

/// A file that is not valid Python.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("syntax error at line {line}, column {column}: {message}")]
pub struct SyntaxError {
    pub line: u32,
    pub column: u32,
    pub message: String,
}

pub use crate::source_encoding::{DecodeError, decode_source};

/// A parsed module with the line table that turns byte offsets into positions.
#[derive(Debug)]
pub struct ParsedModule<'src> {
    pub text: &'src str,
    pub module: ModModule,
    lines: LineIndex,
}

impl<'src> ParsedModule<'src> {
    /// Parses `text` as a module.
    pub fn parse(text: &'src str) -> Result<Self, SyntaxError> {
        let lines = LineIndex::from_source_text(text);
        match ruff_python_parser::parse_module(text) {
            Ok(parsed) => Ok(Self { text, module: parsed.into_syntax(), lines }),
            Err(err) => {
                let start = err.location.start();
                let line = lines.line_index(start);
                Err(SyntaxError {
                    line: line_number(line),
                    column: column_of(&lines, text, start, line),
                    message: err.error.to_string(),
                })
            }
        }
    }

    /// The 1-based line of a byte offset.
    pub fn line(&self, offset: TextSize) -> u32 {
        line_number(self.lines.line_index(offset))
    }

    /// The 0-based column (UTF-8 bytes, as CPython's `col_offset`) of a byte offset.
    pub fn column(&self, offset: TextSize) -> u32 {
        column_of(&self.lines, self.text, offset, self.lines.line_index(offset))
    }

    /// Where the keyword of a decorated `def`/`class` statement starts: the first token
    /// after `after` (the end of its last decorator), skipping blanks, newlines, line
    /// continuations and comments.
    pub fn next_token_start(&self, after: TextSize) -> TextSize {
        let bytes = self.text.as_bytes();
        let mut i = usize::from(after);
        while i < bytes.len() {
            match bytes[i] {
                b' ' | b'\t' | b'\r' | b'\n' | b'\x0c' | b'\\' => i += 1,
                b'#' => {
                    while i < bytes.len() && bytes[i] != b'\n' {
                        i += 1;
                    }
                }
                _ => break,
            }
        }
        TextSize::try_from(i).unwrap_or(after)
    }
}

/// Stack reserved for analysing one file: parsing, walking and dropping a syntax tree
/// recurse once per nesting level. The memory is reserved, not used, until needed.
const ANALYSIS_STACK: usize = 256 * 1024 * 1024;

/// Runs `f` (the analysis of one file) on a stack deep enough for any file within the
/// size limit, whatever thread calls it.
pub fn with_deep_stack<R>(f: impl FnOnce() -> R) -> R {
    stacker::maybe_grow(ANALYSIS_STACK / 2, ANALYSIS_STACK, f)
}

fn line_number(line: OneIndexed) -> u32 {
    u32::try_from(line.get()).unwrap_or(u32::MAX)
}

fn column_of(lines: &LineIndex, text: &str, offset: TextSize, line: OneIndexed) -> u32 {
    u32::from(offset).saturating_sub(u32::from(lines.line_start(line, text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_current_syntax() {
        let src = "type Pair[T] = tuple[T, T]\n\
                   def first[T](p: Pair[T]) -> T:\n    return p[0]\n\
                   match (n := 3):\n    case 1 | 2: pass\n    case _: pass\n\
                   s = f\"{'nested' + f\"{n}\"}\"\n";
        assert!(ParsedModule::parse(src).is_ok());
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let err = ParsedModule::parse("x = 1\ndef f(:\n    pass\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.to_string().starts_with("syntax error at line 2"), "{err}");
    }

    #[test]
    fn sources_decode_as_declared() {
        assert_eq!(decode_source(b"\xef\xbb\xbfx = 1\n").unwrap(), "x = 1\n");
        let latin = b"# -*- coding: latin-1 -*-\ns = '\xe9'\n";
        assert_eq!(decode_source(latin).unwrap(), "# -*- coding: latin-1 -*-\ns = '\u{e9}'\n");
        assert_eq!(decode_source(b"s = '\xe9'\n"), Err(DecodeError::NotUtf8 { position: 5 }));
        let koi = b"#!/usr/bin/env python\n# vim: set fileencoding=koi8-r :\ns = '\xc1'\n";
        assert_eq!(decode_source(koi), Err(DecodeError::Unsupported("koi8-r".into())));
    }

    #[test]
    fn columns_count_utf8_bytes() {
        let src = "é = 1; x = 2\n";
        let parsed = ParsedModule::parse(src).unwrap();
        let second = parsed.module.body[1].clone();
        let start = ruff_text_size::Ranged::start(&second);
        assert_eq!((parsed.line(start), parsed.column(start)), (1, 8));
    }
}
