//! JSON exactly as Python's `json` module reads and writes it with default arguments.
//!
//! oslo.messaging builds every body with `jsonutils.dumps`, i.e. `json.dumps` defaults:
//! `", "` and `": "` separators and `ensure_ascii=True` (every non-ASCII character becomes a
//! lowercase `\uXXXX` escape, astral characters a surrogate pair). Writing the same bytes keeps
//! our messages byte-identical to Python's for the same input (see the wire-capture tests), and
//! keeps bodies pure ASCII. It reads them with `jsonutils.loads` (`json.loads`).
//!
//! Values survive exactly, as they do between two Python processes:
//!
//! * integers of any size: serde_json's `arbitrary_precision` feature (enabled for the whole
//!   workspace) keeps a number's digits, so `2**64 + 1` is not rounded to a float;
//! * `NaN`, `Infinity`, `-Infinity`: Python writes non-finite floats as these bare tokens and
//!   reads them back. [`from_slice`] / [`from_str`] accept them (serde_json does not), and hold
//!   them as a `serde_json::Number` whose text is the token ([`float_value`]; the only way a
//!   `Value` can hold one); [`PythonFormatter`] writes them bare again;
//! * floats are written as Python's `repr(float)` ([`python_float_repr`]).
//!
//! serde_json's own `to_value` turns a non-finite `f64` into `null` and cannot pass such a
//! number through `Value`'s `Serialize`/`Deserialize` at all, so the RPC layer converts with
//! [`to_value`] / [`into_value`] / [`from_value`] here instead. The one case no conversion can
//! cover: serde_json's `Value` *deserializer* cannot produce a non-finite number, so a handler
//! argument type with a `serde_json::Value` nested inside it (a struct field, a `Vec<Value>`)
//! fails with a type error if a non-finite float arrives there, rather than changing it. Take the
//! whole arguments as `JsonMap` / `Value` (handed over as is), or the field as `f64`.

use std::any::Any;
use std::io;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::ser::{CharEscape, Formatter};
use serde_json::{Map, Number, Value};

mod parse;
mod ser;

pub use parse::{from_slice, from_str, ParseError, MAX_DEPTH};

/// A `serde_json` formatter reproducing Python's `json.dumps` output.
#[derive(Debug, Default, Clone, Copy)]
pub struct PythonFormatter;

impl Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + io::Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + io::Write>(&mut self, writer: &mut W, fragment: &str) -> io::Result<()> {
        // Fast path: plain printable ASCII needs no escaping.
        if fragment.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return writer.write_all(fragment.as_bytes());
        }
        let mut start = 0;
        for (index, ch) in fragment.char_indices() {
            if (' '..='~').contains(&ch) {
                continue;
            }
            writer.write_all(&fragment.as_bytes()[start..index])?;
            let mut units = [0u16; 2];
            for unit in ch.encode_utf16(&mut units) {
                write!(writer, "\\u{:04x}", unit)?;
            }
            start = index + ch.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }

    fn write_char_escape<W: ?Sized + io::Write>(&mut self, writer: &mut W, escape: CharEscape) -> io::Result<()> {
        let text: &[u8] = match escape {
            CharEscape::Quote => b"\\\"",
            CharEscape::ReverseSolidus => b"\\\\",
            CharEscape::Solidus => b"/",
            CharEscape::Backspace => b"\\b",
            CharEscape::FormFeed => b"\\f",
            CharEscape::LineFeed => b"\\n",
            CharEscape::CarriageReturn => b"\\r",
            CharEscape::Tab => b"\\t",
            CharEscape::AsciiControl(byte) => return write!(writer, "\\u{:04x}", byte),
        };
        writer.write_all(text)
    }

    fn write_f64<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        writer.write_all(python_float_repr(value).as_bytes())
    }

    fn write_f32<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f32) -> io::Result<()> {
        writer.write_all(python_float_repr(f64::from(value)).as_bytes())
    }

    /// Every `serde_json::Number` arrives here as its text (`arbitrary_precision`). Integers
    /// are written digit for digit; floats as Python's `repr` of the same `f64` (the text may
    /// be serde_json's shortest form, `1e16`, where Python writes `1e+16`); the non-finite
    /// tokens bare, as `json.dumps` writes them (`allow_nan=True`, `json.encoder.floatstr`).
    fn write_number_str<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: &str) -> io::Result<()> {
        match number_kind(value) {
            NumberKind::Integer if value == "-0" => writer.write_all(b"0"),
            NumberKind::Integer | NumberKind::NonFinite => writer.write_all(value.as_bytes()),
            NumberKind::Float => match value.parse::<f64>() {
                Ok(float) => writer.write_all(python_float_repr(float).as_bytes()),
                // Only `Number::from_string_unchecked` with garbage gets here: keep its text.
                Err(_) => writer.write_all(value.as_bytes()),
            },
        }
    }
}

enum NumberKind {
    Integer,
    Float,
    NonFinite,
}

fn number_kind(text: &str) -> NumberKind {
    match text {
        "NaN" | "Infinity" | "-Infinity" => NumberKind::NonFinite,
        _ if text.bytes().any(|b| matches!(b, b'.' | b'e' | b'E')) => NumberKind::Float,
        _ => NumberKind::Integer,
    }
}

/// A Python `float` as a JSON value: a finite one as `serde_json::Number::from_f64` makes it
/// (so it equals `json!(x)`), a non-finite one as the number `NaN`, `Infinity` or `-Infinity`.
///
/// ```
/// use oslo_core::pyjson;
/// let inf = pyjson::float_value(f64::INFINITY);
/// assert_eq!(pyjson::to_string(&inf).unwrap(), "Infinity");
/// assert_eq!(pyjson::as_float(&inf), Some(f64::INFINITY));
/// assert_eq!(pyjson::float_value(1.5), serde_json::json!(1.5));
/// ```
pub fn float_value(float: f64) -> Value {
    match Number::from_f64(float) {
        Some(number) => Value::Number(number),
        None => Value::Number(Number::from_string_unchecked(
            if float.is_nan() {
                "NaN"
            } else if float > 0.0 {
                "Infinity"
            } else {
                "-Infinity"
            }
            .to_owned(),
        )),
    }
}

/// The value of a JSON number as Python's `float()` would give it, non-finite ones included
/// (`serde_json::Value::as_f64` answers `None` for those). `None` for anything but a number.
pub fn as_float(value: &Value) -> Option<f64> {
    match value {
        Value::Number(number) => number.as_str().parse().ok(),
        _ => None,
    }
}

/// Whether `value` is a Python `float` (has a fraction or exponent, or is non-finite) rather
/// than an `int`. `serde_json::Number::is_f64` says `false` for `NaN` and `Infinity`.
pub fn is_float(value: &Value) -> bool {
    match value {
        Value::Number(number) => !matches!(number_kind(number.as_str()), NumberKind::Integer),
        _ => false,
    }
}

/// `serde_json::to_value`, keeping non-finite floats (serde_json makes them `null`) and every
/// number's text (see the module documentation).
pub fn to_value<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Value> {
    value.serialize(ser::ValueSerializer)
}

/// [`to_value`] for an owned value; a `Value` or `JsonMap` is taken as it is, without a copy.
pub fn into_value<T: Serialize + 'static>(value: T) -> serde_json::Result<Value> {
    let value = match downcast::<Value, T>(value) {
        Ok(value) => return Ok(value),
        Err(other) => other,
    };
    match downcast::<Map<String, Value>, T>(value) {
        Ok(map) => Ok(Value::Object(map)),
        Err(other) => to_value(&other),
    }
}

/// `serde_json::from_value`, with a `Value` or `JsonMap` target taken as it is: serde_json's
/// `Value` deserializer would fail on a non-finite number (and copy everything). Any other type
/// is deserialized by serde_json: an `f64` field reads `NaN` and `Infinity` as such.
pub fn from_value<T: DeserializeOwned + 'static>(value: Value) -> serde_json::Result<T> {
    let value = match downcast::<T, Value>(value) {
        Ok(value) => return Ok(value),
        Err(other) => other,
    };
    let value = match value {
        Value::Object(map) => match downcast::<T, Map<String, Value>>(map) {
            Ok(map) => return Ok(map),
            Err(map) => Value::Object(map),
        },
        other => other,
    };
    serde_json::from_value(value)
}

/// `value` as a `T` if it is one (no allocation, no copy), else back as it was.
fn downcast<T: 'static, U: 'static>(value: U) -> Result<T, U> {
    let mut slot = Some(value);
    match (&mut slot as &mut dyn Any).downcast_mut::<Option<T>>() {
        Some(target) => Ok(target.take().expect("slot is full")),
        None => Err(slot.expect("slot is full")),
    }
}

/// Python's `repr(float)`: shortest round-trip digits, fixed notation for exponents in
/// `-4..16`, otherwise `1.5e+16` / `1e-05` style.
pub fn python_float_repr(value: f64) -> String {
    if value.is_nan() {
        return "NaN".into();
    }
    if value.is_infinite() {
        return if value > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    if value == 0.0 {
        return if value.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    // `{:e}` gives the shortest round-trip digits, e.g. "1.5e16", "-2.5e-5".
    let sci = format!("{:e}", value);
    let (mantissa, exponent) = sci.split_once('e').expect("LowerExp always has an exponent");
    let exponent: i32 = exponent.parse().expect("LowerExp exponent is an integer");
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exponent) {
        let point = exponent + 1; // position of the decimal point within `digits`
        let body = if point <= 0 {
            format!("0.{}{}", "0".repeat((-point) as usize), digits)
        } else if point as usize >= digits.len() {
            format!("{}{}.0", digits, "0".repeat(point as usize - digits.len()))
        } else {
            format!("{}.{}", &digits[..point as usize], &digits[point as usize..])
        };
        format!("{sign}{body}")
    } else {
        let mantissa = if digits.len() == 1 {
            digits
        } else {
            format!("{}.{}", &digits[..1], &digits[1..])
        };
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        format!("{sign}{mantissa}e{exp_sign}{:02}", exponent.abs())
    }
}

/// Serialize `value` to JSON bytes in Python's `json.dumps` style.
///
/// Numbers inside `serde_json::Value`s come out exactly (see [`PythonFormatter`]); a bare
/// non-finite `f64` field in `value` itself would be written `null` by serde_json before the
/// formatter sees it, so convert such types with [`to_value`] first (the RPC layer does).
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(256);
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    value.serialize(&mut serializer)?;
    Ok(out)
}

/// Serialize `value` to a JSON string in Python's `json.dumps` style.
pub fn to_string<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<String> {
    // The formatter only ever writes ASCII, so this cannot fail on UTF-8.
    to_vec(value).map(|bytes| String::from_utf8(bytes).expect("python-style JSON is ASCII"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(entries: Vec<(&str, Value)>) -> Value {
        Value::Object(entries.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }

    #[test]
    fn json_macro_cannot_hold_non_finite_numbers() {
        // Documented trap: build such values with `float_value` and plain constructors.
        assert_eq!(json!({"x": f64::NAN}), json!({"x": null}));
        assert!(std::panic::catch_unwind(|| json!([float_value(f64::NAN)])).is_err());
    }

    #[test]
    fn separators_and_ascii_escapes_match_python() {
        let value = json!({"s": "hi", "zh": "中文", "n": 1, "f": 1.5, "l": [true, null], "e": "😀", "c": "a\u{1}\u{7f}\"\\\n"});
        assert_eq!(
            to_string(&value).unwrap(),
            r#"{"s": "hi", "zh": "\u4e2d\u6587", "n": 1, "f": 1.5, "l": [true, null], "e": "\ud83d\ude00", "c": "a\u0001\u007f\"\\\n"}"#
        );
    }

    #[test]
    fn floats_follow_python_repr() {
        for (value, expected) in [
            (1.5, "1.5"),
            (100.0, "100.0"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e300, "1.5e+300"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-2.5e-7, "-2.5e-07"),
            (0.1, "0.1"),
            (123456.789, "123456.789"),
            (-0.0, "-0.0"),
        ] {
            assert_eq!(python_float_repr(value), expected, "{value}");
        }
    }

    #[test]
    fn numbers_are_written_exactly() {
        // Not `json!`: it converts interpolated values with serde_json::to_value, which
        // rejects a NaN number (and turns an f64 NaN into null).
        let value = object(vec![
            ("big", from_str("18446744073709551617").unwrap()),
            ("neg", from_str("-9223372036854775809").unwrap()),
            ("huge", from_str(&"9".repeat(400)).unwrap()),
            ("f", json!(1e16)),
            ("g", json!(1e-5)),
            ("nan", float_value(f64::NAN)),
            (
                "inf",
                Value::Array(vec![float_value(f64::INFINITY), float_value(f64::NEG_INFINITY)]),
            ),
            ("s", json!("NaN")),
        ]);
        assert_eq!(
            to_string(&value).unwrap(),
            format!(
                r#"{{"big": 18446744073709551617, "neg": -9223372036854775809, "huge": {}, "f": 1e+16, "g": 1e-05, "nan": NaN, "inf": [Infinity, -Infinity], "s": "NaN"}}"#,
                "9".repeat(400)
            )
        );
        // Number texts from elsewhere (serde_json's own parser keeps `1.50`, `-0`) still come
        // out as Python prints the value.
        let odd: Value = serde_json::from_str("[1.50, -0, 1E5, 1e400]").unwrap();
        assert_eq!(to_string(&odd).unwrap(), "[1.5, 0, 100000.0, Infinity]");
    }

    #[test]
    fn to_value_keeps_what_serde_json_loses() {
        #[derive(Serialize)]
        struct Out {
            inf: f64,
            nan: f32,
            big: u128,
            small: i128,
            nested: Value,
        }
        let nested = object(vec![
            ("n", float_value(f64::NAN)),
            ("big", from_str("123456789012345678901234567890").unwrap()),
        ]);
        let out = Out {
            inf: f64::INFINITY,
            nan: f32::NAN,
            big: u128::MAX,
            small: i128::MIN,
            nested: nested.clone(),
        };
        // serde_json itself: the infinity silently becomes null, the nested NaN an error.
        assert!(serde_json::to_value(&out).is_err());
        assert_eq!(serde_json::to_value(f64::INFINITY).unwrap(), Value::Null);
        let value = to_value(&out).unwrap();
        assert_eq!(
            to_string(&value).unwrap(),
            format!(
                r#"{{"inf": Infinity, "nan": NaN, "big": {}, "small": {}, "nested": {{"n": NaN, "big": 123456789012345678901234567890}}}}"#,
                u128::MAX,
                i128::MIN
            )
        );
        assert_eq!(
            value["nested"],
            nested,
            "a Number passes through with its text ({})",
            ser::NUMBER_TOKEN
        );
        assert_eq!(into_value(nested.clone()).unwrap(), nested);
        assert_eq!(into_value(nested.as_object().unwrap().clone()).unwrap(), nested);
        // Keys: as serde_json, with float keys as Python writes them.
        let mut keys = std::collections::BTreeMap::new();
        keys.insert(1, "one");
        assert_eq!(to_value(&keys).unwrap(), json!({"1": "one"}));
        let float_keys: Vec<(f64, i32)> = vec![(1e16, 1), (f64::NAN, 2)];
        let float_keys: std::collections::HashMap<String, i32> = float_keys
            .into_iter()
            .map(|(k, v)| (to_value(&std::collections::BTreeMap::from([(KeyF(k), v)])).unwrap(), v))
            .map(|(map, v)| (map.as_object().unwrap().keys().next().unwrap().clone(), v))
            .collect();
        assert_eq!(float_keys["1e+16"], 1);
        assert_eq!(float_keys["NaN"], 2);
        let mut tuple_keys = std::collections::BTreeMap::new();
        tuple_keys.insert((1, 2), "x");
        assert!(to_value(&tuple_keys).is_err());
        // Everything else as serde_json::to_value.
        #[derive(Serialize)]
        enum E {
            Unit,
            New(u8),
            Tuple(u8, char),
            Struct { a: Option<bool> },
        }
        let all = (
            E::Unit,
            E::New(1),
            E::Tuple(2, 'c'),
            E::Struct { a: None },
            (),
            "s",
            b"ab".as_slice(),
            Some(1.5f32),
        );
        assert_eq!(to_value(&all).unwrap(), serde_json::to_value(&all).unwrap());
    }

    /// An f64 usable as an ordered map key, serializing as the f64.
    struct KeyF(f64);
    impl PartialEq for KeyF {
        fn eq(&self, other: &Self) -> bool {
            self.cmp(other).is_eq()
        }
    }
    impl Eq for KeyF {}
    impl PartialOrd for KeyF {
        fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(other))
        }
    }
    impl Ord for KeyF {
        fn cmp(&self, other: &Self) -> std::cmp::Ordering {
            self.0.total_cmp(&other.0)
        }
    }
    impl Serialize for KeyF {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_f64(self.0)
        }
    }

    #[test]
    fn from_value_reads_non_finite_floats() {
        #[derive(serde::Deserialize, Debug)]
        struct Args {
            x: f64,
            y: Option<f64>,
            v: Vec<f64>,
            big: u128,
        }
        let value =
            from_str(r#"{"x": NaN, "y": -Infinity, "v": [Infinity, 1, 2.5], "big": 340282366920938463463374607431768211455}"#).unwrap();
        let args: Args = from_value(value.clone()).unwrap();
        assert!(args.x.is_nan());
        assert_eq!(args.y, Some(f64::NEG_INFINITY));
        assert_eq!(args.v, [f64::INFINITY, 1.0, 2.5]);
        assert_eq!(args.big, u128::MAX);
        // Value and JsonMap are taken as they are; serde_json's own from_value cannot.
        assert!(serde_json::from_value::<Value>(value.clone()).is_err());
        assert_eq!(from_value::<Value>(value.clone()).unwrap(), value);
        assert_eq!(&from_value::<JsonMapAlias>(value.clone()).unwrap(), value.as_object().unwrap());
        // A Value nested in another type: an error, never a silently changed value.
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Nested {
            x: Value,
        }
        assert!(from_value::<Nested>(value).is_err());
    }

    type JsonMapAlias = Map<String, Value>;

    #[test]
    fn float_helpers() {
        for float in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1.5, -0.0, 1e300] {
            let value = float_value(float);
            assert!(is_float(&value));
            let back = as_float(&value).unwrap();
            assert!(back.to_bits() == float.to_bits() || (back.is_nan() && float.is_nan()), "{float}");
        }
        assert!(!is_float(&json!(1)));
        assert!(!is_float(&json!("1.5")));
        assert_eq!(as_float(&json!(3)), Some(3.0));
        assert_eq!(as_float(&json!("NaN")), None);
    }

    #[test]
    fn empty_containers_and_nesting() {
        assert_eq!(
            to_string(&json!({"a": {}, "b": [], "c": [[1, 2], {"d": 3}]})).unwrap(),
            r#"{"a": {}, "b": [], "c": [[1, 2], {"d": 3}]}"#
        );
    }
}
