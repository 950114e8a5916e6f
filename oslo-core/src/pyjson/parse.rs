//! JSON text read as Python's `json.loads` reads it, into a `serde_json::Value`.
//!
//! oslo reads every body with `oslo_serialization.jsonutils.loads`, i.e. `json.loads` with
//! default arguments. That is standard JSON plus three bare tokens, `NaN`, `Infinity` and
//! `-Infinity` (Python's `json.scanner.py_make_scanner` / `_json.c::scan_once_unicode`), which
//! `json.dumps` writes for non-finite floats and which oslo therefore sends. serde_json's own
//! parser rejects them, so this is a small parser of its own rather than a rewrite of the text
//! before handing it to serde_json: it knows exactly where strings start and end (a `"NaN"`
//! inside a string is never touched), needs no placeholder that real input could collide with,
//! and takes one pass.
//!
//! Numbers come out canonical, as the Python value they parse to would print
//! (`docs.python.org/3/library/json.html#encoders-and-decoders`: integers are `int`, anything
//! with a fraction or exponent is `float`):
//!
//! * an integer keeps every digit, of any size (serde_json's `arbitrary_precision` stores the
//!   text), `-0` becomes `0`;
//! * a float is parsed to the nearest `f64` (correctly rounded, like Python's `float()`) and
//!   stored as [`serde_json::Number::from_f64`] writes it, so that it compares equal to the same
//!   value built in Rust (`json!(1e16)`); one too large for an `f64` becomes `Infinity`, as in
//!   Python (`json.loads("1e400") == inf`);
//! * `NaN`, `Infinity`, `-Infinity` are held as numbers with exactly that text (see
//!   [`super::float_value`]).
//!
//! Everything else follows the JSON grammar as Python does: only `" \t\n\r"` is whitespace, no
//! raw control characters in strings, no trailing commas, nothing after the document. Two
//! documented differences: a lone UTF-16 surrogate escape (`"\ud800"`, which Python keeps in a
//! `str`) cannot be held in a Rust `String` and is an error, and nesting is limited to
//! [`MAX_DEPTH`] arrays and objects (as serde_json limits it).

use std::fmt;

use serde_json::{Map, Number, Value};

/// How deep arrays and objects may nest (serde_json's own limit).
pub const MAX_DEPTH: usize = 128;

/// A document that Python's `json.loads` would not read either (or, for the two cases in the
/// module documentation, that Rust cannot hold).
///
/// Displays as Python's `json.JSONDecodeError` does: `Expecting value: line 1 column 1 (char 0)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    message: &'static str,
    line: usize,
    column: usize,
    char_index: usize,
}

impl ParseError {
    fn at(message: &'static str, text: &[u8], byte_index: usize) -> Self {
        // Python counts characters, not bytes; the prefix is valid UTF-8 up to any position
        // the parser reports (they are all at ASCII bytes or the end).
        let prefix = String::from_utf8_lossy(&text[..byte_index.min(text.len())]);
        let char_index = prefix.chars().count();
        let line = prefix.matches('\n').count() + 1;
        let column = match prefix.rfind('\n') {
            Some(newline) => prefix[newline + 1..].chars().count() + 1,
            None => char_index + 1,
        };
        ParseError {
            message,
            line,
            column,
            char_index,
        }
    }

    /// What is wrong, in Python's words where Python has them (`Expecting ',' delimiter`).
    pub fn message(&self) -> &'static str {
        self.message
    }

    /// 1-based line of the error.
    pub fn line(&self) -> usize {
        self.line
    }

    /// 1-based column (in characters) of the error.
    pub fn column(&self) -> usize {
        self.column
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: line {} column {} (char {})",
            self.message, self.line, self.column, self.char_index
        )
    }
}

impl std::error::Error for ParseError {}

type Result<T> = std::result::Result<T, ParseError>;

/// Parse `bytes` (UTF-8) as Python's `json.loads` would.
pub fn from_slice(bytes: &[u8]) -> Result<Value> {
    match std::str::from_utf8(bytes) {
        Ok(text) => from_str(text),
        Err(e) => Err(ParseError::at("Invalid UTF-8", bytes, e.valid_up_to())),
    }
}

/// Parse `text` as Python's `json.loads` would.
pub fn from_str(text: &str) -> Result<Value> {
    let mut parser = Parser {
        text,
        bytes: text.as_bytes(),
        pos: 0,
        depth: 0,
    };
    parser.skip_whitespace();
    let value = parser.value()?;
    parser.skip_whitespace();
    if parser.pos != parser.bytes.len() {
        return Err(parser.error("Extra data"));
    }
    Ok(value)
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn error(&self, message: &'static str) -> ParseError {
        ParseError::at(message, self.bytes, self.pos)
    }

    fn error_at(&self, message: &'static str, pos: usize) -> ParseError {
        ParseError::at(message, self.bytes, pos)
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn literal(&mut self, word: &str, value: Value) -> Result<Value> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(self.error("Expecting value"))
        }
    }

    fn value(&mut self) -> Result<Value> {
        match self.peek() {
            Some(b'"') => self.string().map(Value::String),
            Some(b'{') => self.object(),
            Some(b'[') => self.array(),
            Some(b'n') => self.literal("null", Value::Null),
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'N') => self.literal("NaN", super::float_value(f64::NAN)),
            Some(b'I') => self.literal("Infinity", super::float_value(f64::INFINITY)),
            Some(b'-') if self.bytes[self.pos..].starts_with(b"-Infinity") => {
                self.pos += "-Infinity".len();
                Ok(super::float_value(f64::NEG_INFINITY))
            }
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(self.error("Expecting value")),
        }
    }

    fn enter(&mut self) -> Result<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error("Nesting too deep"));
        }
        Ok(())
    }

    fn object(&mut self) -> Result<Value> {
        self.enter()?;
        self.pos += 1; // '{'
        let mut map = Map::new();
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            self.depth -= 1;
            return Ok(Value::Object(map));
        }
        loop {
            if self.peek() != Some(b'"') {
                return Err(self.error("Expecting property name enclosed in double quotes"));
            }
            let key = self.string()?;
            self.skip_whitespace();
            if self.peek() != Some(b':') {
                return Err(self.error("Expecting ':' delimiter"));
            }
            self.pos += 1;
            self.skip_whitespace();
            let value = self.value()?;
            // A repeated key keeps its first position and takes the last value, as a Python
            // dict does (`d[k] = v`).
            map.insert(key, value);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_whitespace();
                }
                Some(b'}') => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(Value::Object(map));
                }
                _ => return Err(self.error("Expecting ',' delimiter")),
            }
        }
    }

    fn array(&mut self) -> Result<Value> {
        self.enter()?;
        self.pos += 1; // '['
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.pos += 1;
            self.depth -= 1;
            return Ok(Value::Array(items));
        }
        loop {
            items.push(self.value()?);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_whitespace();
                }
                Some(b']') => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(self.error("Expecting ',' delimiter")),
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    /// Python's `NUMBER_RE`: `(-?(?:0|[1-9]\d*))(\.\d+)?([eE][-+]?\d+)?`; whatever follows is
    /// left to the enclosing grammar (so `1.` or `01` fail there, as in Python).
    fn number(&mut self) -> Result<Value> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.error_at("Expecting value", start)),
        }
        let mut is_float = false;
        if self.peek() == Some(b'.') && matches!(self.bytes.get(self.pos + 1), Some(b'0'..=b'9')) {
            self.pos += 1;
            self.digits();
            is_float = true;
        }
        if let Some(b'e' | b'E') = self.peek() {
            let mut end = self.pos + 1;
            if let Some(b'+' | b'-') = self.bytes.get(end) {
                end += 1;
            }
            if matches!(self.bytes.get(end), Some(b'0'..=b'9')) {
                self.pos = end;
                self.digits();
                is_float = true;
            }
        }
        let text = &self.text[start..self.pos];
        if !is_float {
            // Python's int: every digit kept; `-0` is plain 0.
            let text = if text == "-0" { "0" } else { text };
            return Ok(Value::Number(Number::from_string_unchecked(text.to_owned())));
        }
        // Python's float(): the correctly rounded f64 (Rust's parser rounds the same way);
        // overflow gives an infinity, underflow a zero.
        let float: f64 = text.parse().map_err(|_| self.error_at("Expecting value", start))?;
        Ok(super::float_value(float))
    }

    /// A string starting at the current `"`; the position ends after the closing quote.
    fn string(&mut self) -> Result<String> {
        let open = self.pos;
        let start = open + 1;
        let mut pos = skip_plain(self.bytes, start);
        match self.bytes.get(pos) {
            Some(b'"') => {
                self.pos = pos + 1;
                return Ok(self.text[start..pos].to_owned());
            }
            Some(b'\\') => {}
            Some(_) => return Err(self.error_at("Invalid control character at", pos)),
            None => return Err(self.error_at("Unterminated string starting at", open)),
        }
        let mut out = String::with_capacity(pos - start + 16);
        out.push_str(&self.text[start..pos]);
        loop {
            // At a backslash.
            let escape = match self.bytes.get(pos + 1) {
                Some(b) => *b,
                None => return Err(self.error_at("Unterminated string starting at", open)),
            };
            pos += 2;
            match escape {
                b'"' => out.push('"'),
                b'\\' => out.push('\\'),
                b'/' => out.push('/'),
                b'b' => out.push('\u{8}'),
                b'f' => out.push('\u{c}'),
                b'n' => out.push('\n'),
                b'r' => out.push('\r'),
                b't' => out.push('\t'),
                b'u' => {
                    let unit = self.hex4(pos)?;
                    pos += 4;
                    let code = match unit {
                        0xD800..=0xDBFF => {
                            let low = if self.bytes[pos..].starts_with(b"\\u") {
                                Some(self.hex4(pos + 2)?)
                            } else {
                                None
                            };
                            match low {
                                Some(low @ 0xDC00..=0xDFFF) => {
                                    pos += 6;
                                    0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                                }
                                _ => return Err(self.error_at("Unpaired UTF-16 surrogate in \\u escape", pos - 6)),
                            }
                        }
                        0xDC00..=0xDFFF => return Err(self.error_at("Unpaired UTF-16 surrogate in \\u escape", pos - 6)),
                        other => other,
                    };
                    out.push(char::from_u32(code).expect("not a surrogate"));
                }
                _ => return Err(self.error_at("Invalid \\escape", pos - 2)),
            }
            let run = skip_plain(self.bytes, pos);
            out.push_str(&self.text[pos..run]);
            pos = run;
            match self.bytes.get(pos) {
                Some(b'"') => {
                    self.pos = pos + 1;
                    return Ok(out);
                }
                Some(b'\\') => {}
                Some(_) => return Err(self.error_at("Invalid control character at", pos)),
                None => return Err(self.error_at("Unterminated string starting at", open)),
            }
        }
    }

    /// The four hex digits of a `\u` escape starting at `pos`.
    fn hex4(&self, pos: usize) -> Result<u32> {
        let digits = self
            .bytes
            .get(pos..pos + 4)
            .ok_or_else(|| self.error_at("Invalid \\uXXXX escape", pos - 1))?;
        let mut unit = 0;
        for digit in digits {
            let value = match digit {
                b'0'..=b'9' => digit - b'0',
                b'a'..=b'f' => digit - b'a' + 10,
                b'A'..=b'F' => digit - b'A' + 10,
                _ => return Err(self.error_at("Invalid \\uXXXX escape", pos - 1)),
            };
            unit = unit * 16 + u32::from(value);
        }
        Ok(unit)
    }
}

/// The index of the first `"`, `\` or control character at or after `pos` (or the end).
fn skip_plain(bytes: &[u8], mut pos: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // Eight bytes at a time: does any byte equal '"' or '\\', or is any below 0x20?
    // (`(x - ONES) & !x & HIGHS` is non-zero exactly when some byte of x is zero.)
    while let Some(chunk) = bytes.get(pos..pos + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let quote = word ^ (ONES * u64::from(b'"'));
        let backslash = word ^ (ONES * u64::from(b'\\'));
        let special =
            (quote.wrapping_sub(ONES) & !quote) | (backslash.wrapping_sub(ONES) & !backslash) | (word.wrapping_sub(ONES * 0x20) & !word);
        if special & HIGHS != 0 {
            break;
        }
        pos += 8;
    }
    while let Some(&byte) = bytes.get(pos) {
        if byte == b'"' || byte == b'\\' || byte < 0x20 {
            break;
        }
        pos += 1;
    }
    pos
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(text: &str) -> String {
        from_str(text).unwrap_err().to_string()
    }

    #[test]
    fn standard_json_reads_like_serde_json() {
        for text in [
            r#"{"a": [1, -2, 3.5, true, false, null, "x\"y\\z\/\b\f\n\r\t\u00e9\ud83d\ude00"], "b": {}, "c": []}"#,
            " \t\n\r[ 1 , { \"k\" : \"v\" } ] \n",
            r#""plain string longer than eight bytes with ünïcödé""#,
            r#"{"dup": 1, "other": 2, "dup": 3}"#,
            "0",
            "-12",
            "[-0.0, 0.1, 0.5, 123456789012345678]",
        ] {
            assert_eq!(from_str(text).unwrap(), serde_json::from_str::<Value>(text).unwrap(), "{text}");
        }
    }

    #[test]
    fn python_tokens_outside_strings_only() {
        let value = from_str(r#"{"n": NaN, "i": [Infinity, -Infinity], "s": "NaN Infinity -Infinity"}"#).unwrap();
        assert_eq!(value["n"], super::super::float_value(f64::NAN));
        assert!(super::super::as_float(&value["n"]).unwrap().is_nan());
        assert_eq!(super::super::as_float(&value["i"][0]), Some(f64::INFINITY));
        assert_eq!(super::super::as_float(&value["i"][1]), Some(f64::NEG_INFINITY));
        assert_eq!(value["s"], json!("NaN Infinity -Infinity"));
        // Python rejects these too (json.loads: "Expecting value").
        for bad in ["nan", "-NaN", "+Infinity", "infinity", "NaNa", "[NaN,]", "Inf", "-Inf"] {
            assert!(from_str(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn numbers_come_out_canonical() {
        assert_eq!(from_str("18446744073709551617").unwrap().to_string(), "18446744073709551617");
        assert_eq!(from_str("-9223372036854775809").unwrap().to_string(), "-9223372036854775809");
        assert_eq!(from_str("-0").unwrap(), json!(0));
        assert_eq!(from_str("1E5").unwrap(), json!(100000.0));
        assert_eq!(from_str("1.50").unwrap(), json!(1.5));
        assert_eq!(from_str("1e+16").unwrap(), json!(1e16));
        assert_eq!(from_str("1e-400").unwrap(), json!(0.0));
        assert_eq!(from_str("1e400").unwrap(), super::super::float_value(f64::INFINITY));
        assert_eq!(from_str("-1e400").unwrap(), super::super::float_value(f64::NEG_INFINITY));
        assert_eq!(from_str("-0.0").unwrap().to_string(), "-0.0");
    }

    #[test]
    fn errors_read_like_python() {
        assert_eq!(err(""), "Expecting value: line 1 column 1 (char 0)");
        assert_eq!(err("[1 2]"), "Expecting ',' delimiter: line 1 column 4 (char 3)");
        assert_eq!(err("{\"a\" 1}"), "Expecting ':' delimiter: line 1 column 6 (char 5)");
        assert_eq!(
            err("{1: 2}"),
            "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"
        );
        assert_eq!(err("{}\n x"), "Extra data: line 2 column 2 (char 4)");
        assert_eq!(err("\"ü\tx\""), "Invalid control character at: line 1 column 3 (char 2)");
        assert_eq!(err("\"abc"), "Unterminated string starting at: line 1 column 1 (char 0)");
        assert_eq!(err(r#""\x""#), "Invalid \\escape: line 1 column 2 (char 1)");
        assert_eq!(err(r#""\u12g4""#), "Invalid \\uXXXX escape: line 1 column 3 (char 2)");
        for bad in [
            "[1,]",
            "{\"a\":1,}",
            "01",
            "1.",
            "1e",
            "-",
            ".5",
            "[",
            "{",
            "\"\\",
            r#""\ud800""#,
            r#""\udc00x""#,
        ] {
            assert!(from_str(bad).is_err(), "{bad}");
        }
        assert!(from_slice(b"\"\xff\"").is_err());
    }

    #[test]
    fn nesting_is_bounded() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(from_str(&ok).is_ok());
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(from_str(&deep).unwrap_err().to_string().starts_with("Nesting too deep"));
        let deep_objects = "{\"a\":".repeat(MAX_DEPTH + 1);
        assert!(from_str(&deep_objects).is_err());
    }

    #[test]
    fn escapes_next_to_chunk_boundaries() {
        // The eight-byte scan must stop at a special byte in any position of a chunk.
        for offset in 0..17 {
            let padding = "x".repeat(offset);
            for (special, expected) in [("\\n", "\n"), ("\\\"", "\""), ("\\u00e9", "é")] {
                let text = format!("\"{padding}{special}{padding}\"");
                assert_eq!(from_str(&text).unwrap(), json!(format!("{padding}{expected}{padding}")), "{text}");
            }
            let raw_control = format!("\"{padding}\u{1f}\"");
            assert!(from_str(&raw_control).is_err(), "{raw_control:?}");
        }
    }
}
