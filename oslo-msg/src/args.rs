//! Parsing of command-line values: `KEY=VALUE` / `KEY:=JSON` arguments, JSON contexts,
//! durations, and telling a transport URL from a method name.

use std::time::Duration;

use oslo_messaging::JsonMap;
use serde_json::Value;

/// Parse RPC arguments or a notification payload: `key=value` gives the string `"value"`,
/// `key:=json` gives the parsed JSON (`n:=3`, `flag:=true`, `ids:='[1,2]'`, `x:=null`,
/// `f:=NaN`).
pub fn parse_kwargs(items: &[String]) -> Result<JsonMap, String> {
    let mut kwargs = JsonMap::new();
    for item in items {
        let Some(eq) = item.find('=') else {
            return Err(format!("argument {item:?} is not KEY=VALUE or KEY:=JSON"));
        };
        let (key, value) = match item[..eq].strip_suffix(':') {
            Some(key) => {
                let text = &item[eq + 1..];
                // As Python's json.loads reads it: `x:=NaN`, `n:=18446744073709551617` work too.
                let value: Value = oslo_messaging::pyjson::from_str(text)
                    .map_err(|e| format!("argument {key:?}: {text:?} is not valid JSON ({e}); use {key}=TEXT for a string"))?;
                (key, value)
            }
            None => (&item[..eq], Value::String(item[eq + 1..].to_string())),
        };
        if key.is_empty() {
            return Err(format!("argument {item:?} has an empty key"));
        }
        if kwargs.insert(key.to_string(), value).is_some() {
            return Err(format!("argument {key:?} is given twice"));
        }
    }
    Ok(kwargs)
}

/// Parse a JSON object (for `--context` and `--payload`); `what` names the option in errors.
pub fn parse_json_object(text: &str, what: &str) -> Result<JsonMap, String> {
    match oslo_messaging::pyjson::from_str(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(format!("{what} must be a JSON object, got {}", kind_of(&other))),
        Err(e) => Err(format!("{what} is not valid JSON: {e}")),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// clap value parser for seconds (`30`, `0.5`).
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text.parse().map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("{text:?} is not a number of seconds"));
    }
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// Whether a positional argument is a transport URL rather than a method or event type:
/// it starts with a URL scheme and a colon (`rabbit://...`, `fake:`). Method names and event
/// types never contain a colon.
pub fn looks_like_url(text: &str) -> bool {
    let Some((scheme, rest)) = text.split_once(':') else {
        return false;
    };
    if rest.starts_with('=') {
        return false;
    }
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic()) && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
}

/// Split `[URL] FIRST [REST...]` positionals as clap filled them (`url`, `first`, `rest`) when
/// the URL may be left out: a first positional that is no URL is really `FIRST`.
pub fn split_url(url: Option<String>, first: Option<String>, mut rest: Vec<String>) -> (Option<String>, Option<String>, Vec<String>) {
    match url {
        Some(url) if looks_like_url(&url) => (Some(url), first, rest),
        Some(not_url) => {
            if let Some(first) = first {
                rest.insert(0, first);
            }
            (None, Some(not_url), rest)
        }
        None => (None, first, rest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn key_value_is_a_string_and_colon_equals_is_json() {
        let kwargs = parse_kwargs(&strings(&[
            "name=vm-1",
            "count:=3",
            "flag:=true",
            "ids:=[1, 2]",
            "spec:={\"a\": null}",
            "n=3",
            "expr=a=b",
            "url=http://x:1/",
        ]))
        .unwrap();
        assert_eq!(
            Value::Object(kwargs),
            json!({"name": "vm-1", "count": 3, "flag": true, "ids": [1, 2], "spec": {"a": null}, "n": "3", "expr": "a=b", "url": "http://x:1/"})
        );
    }

    #[test]
    fn bad_arguments_are_explained() {
        assert!(parse_kwargs(&strings(&["novalue"])).unwrap_err().contains("KEY=VALUE"));
        assert!(parse_kwargs(&strings(&["=x"])).unwrap_err().contains("empty key"));
        assert!(parse_kwargs(&strings(&["n:=three"])).unwrap_err().contains("not valid JSON"));
        assert!(parse_kwargs(&strings(&["a=1", "a:=2"])).unwrap_err().contains("twice"));
    }

    #[test]
    fn contexts_must_be_objects() {
        assert_eq!(parse_json_object(r#"{"user_id": "u1"}"#, "--context").unwrap()["user_id"], "u1");
        assert!(parse_json_object("[1]", "--context").unwrap_err().contains("an array"));
        assert!(parse_json_object("{", "--context").unwrap_err().contains("not valid JSON"));
    }

    #[test]
    fn seconds_accept_fractions_only_when_sane() {
        assert_eq!(parse_seconds("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_seconds("0.25").unwrap(), Duration::from_millis(250));
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("soon").is_err());
        assert!(parse_seconds("inf").is_err());
    }

    #[test]
    fn urls_are_told_from_method_names() {
        for url in [
            "rabbit://guest:guest@127.0.0.1:5672/",
            "fake:",
            "fake://bus",
            "zmq+redis://h:6379",
            "kombu://",
        ] {
            assert!(looks_like_url(url), "{url}");
        }
        for not_url in ["echo", "compute.instance.create.end", "a=b:c", "x:=1", "1abc:"] {
            assert!(!looks_like_url(not_url), "{not_url}");
        }
    }

    #[test]
    fn a_missing_url_shifts_the_positionals() {
        let (url, method, rest) = split_url(Some("echo".into()), Some("a=1".into()), strings(&["b:=2"]));
        assert_eq!((url, method.as_deref(), rest), (None, Some("echo"), strings(&["a=1", "b:=2"])));
        let (url, method, rest) = split_url(Some("fake:".into()), Some("echo".into()), strings(&["a=1"]));
        assert_eq!(
            (url.as_deref(), method.as_deref(), rest),
            (Some("fake:"), Some("echo"), strings(&["a=1"]))
        );
    }
}
