//! Remote exceptions in oslo's JSON form (`serialize_remote_exception` /
//! `deserialize_remote_exception`), and the error type endpoint handlers return.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::pyjson;

/// An exception raised by a remote endpoint, as it travels on the wire.
///
/// On the wire this is the JSON string `{"class", "module", "message", "tb", "args", "kwargs"}`
/// that oslo's `serialize_remote_exception` writes. A Python `ValueError` arrives as
/// `exc_type == "ValueError"`, `module == "builtins"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteError {
    /// The exception class name (oslo `exc_type`), e.g. `ValueError`.
    #[serde(rename = "class")]
    pub exc_type: String,
    /// The module the class lives in, e.g. `builtins` or `nova.exception`.
    pub module: String,
    /// `str(exception)` on the remote side (oslo `value`).
    pub message: String,
    /// The remote traceback, one string per line group, as Python's `traceback.format_exception`.
    #[serde(default)]
    pub tb: Vec<String>,
    /// The exception's positional arguments.
    #[serde(default)]
    pub args: Vec<Value>,
    /// The exception's keyword arguments (`exc.kwargs` for nova-style exceptions).
    #[serde(default)]
    pub kwargs: Map<String, Value>,
}

impl RemoteError {
    /// A remote error of class `exc_type` in `module` with `message`; `args` defaults to `[message]`.
    pub fn new(exc_type: impl Into<String>, module: impl Into<String>, message: impl Into<String>) -> Self {
        let message = message.into();
        RemoteError {
            exc_type: exc_type.into(),
            module: module.into(),
            args: vec![Value::String(message.clone())],
            message,
            tb: Vec::new(),
            kwargs: Map::new(),
        }
    }

    /// Encode as oslo's failure JSON string (the `failure` field of a reply), Python-style.
    pub fn to_failure_json(&self) -> String {
        // Strip the `_Remote` suffix oslo adds to re-raised remote exceptions.
        let mut copy;
        let this = if self.exc_type.ends_with("_Remote") && self.module.ends_with("_Remote") {
            copy = self.clone();
            copy.exc_type.truncate(copy.exc_type.len() - "_Remote".len());
            copy.module.truncate(copy.module.len() - "_Remote".len());
            &copy
        } else {
            self
        };
        pyjson::to_string(this).expect("a RemoteError always serializes")
    }

    /// Decode oslo's failure JSON string (read as `json.loads` reads it: a Python exception's
    /// `args` may hold `NaN` or a big integer).
    pub fn from_failure_json(text: &str) -> Result<Self> {
        let value = pyjson::from_str(text).map_err(|e| Error::invalid_message(format!("bad remote failure JSON: {e}")))?;
        Self::from_value(value).map_err(|e| Error::invalid_message(format!("bad remote failure JSON: {e}")))
    }

    /// Read a decoded failure dict: `class`, `module` and `message` are required strings, `tb`
    /// a list of strings, `args` a list and `kwargs` a dict (each may be absent); other keys
    /// are ignored. Read by hand rather than through `Deserialize` so that `args` and `kwargs`
    /// keep their values exactly (serde_json's `Value` deserializer rejects `NaN`).
    pub fn from_value(value: Value) -> std::result::Result<Self, String> {
        let Value::Object(mut map) = value else {
            return Err(format!("expected a failure dict, got {value}"));
        };
        let mut string = |key: &str| match map.remove(key) {
            Some(Value::String(text)) => Ok(text),
            Some(other) => Err(format!("`{key}` is not a string: {other}")),
            None => Err(format!("missing field `{key}`")),
        };
        let (exc_type, module, message) = (string("class")?, string("module")?, string("message")?);
        let tb = match map.remove("tb") {
            None => Vec::new(),
            Some(Value::Array(lines)) => lines
                .into_iter()
                .map(|line| match line {
                    Value::String(line) => Ok(line),
                    other => Err(format!("`tb` holds a non-string: {other}")),
                })
                .collect::<std::result::Result<_, _>>()?,
            Some(other) => return Err(format!("`tb` is not a list: {other}")),
        };
        let args = match map.remove("args") {
            None => Vec::new(),
            Some(Value::Array(args)) => args,
            Some(other) => return Err(format!("`args` is not a list: {other}")),
        };
        let kwargs = match map.remove("kwargs") {
            None => Map::new(),
            Some(Value::Object(kwargs)) => kwargs,
            Some(other) => return Err(format!("`kwargs` is not a dict: {other}")),
        };
        Ok(RemoteError {
            exc_type,
            module,
            message,
            tb,
            args,
            kwargs,
        })
    }

    /// The traceback joined into one string, as Python prints it.
    pub fn traceback(&self) -> String {
        self.tb.concat()
    }

    /// Turn a decoded remote failure into the error a client sees.
    ///
    /// oslo.messaging's own dispatcher errors (`NoSuchMethod`, `UnsupportedVersion` from
    /// `oslo_messaging.rpc.dispatcher`) become their typed variants, as if that module were in
    /// `allowed_remote_exmods`; everything else is an [`Error::Remote`].
    pub fn into_error(self) -> Error {
        if self.module == "oslo_messaging.rpc.dispatcher" {
            match self.exc_type.as_str() {
                "NoSuchMethod" => {
                    if let Some(method) = self.message.strip_prefix("Endpoint does not support RPC method ") {
                        return Error::NoSuchMethod {
                            method: method.to_string(),
                        };
                    }
                }
                "UnsupportedVersion" => {
                    if let Some(rest) = self.message.strip_prefix("Endpoint does not support RPC version ") {
                        if let Some((version, method)) = rest.split_once(". Attempted method: ") {
                            return Error::UnsupportedVersion {
                                version: version.to_string(),
                                method: method.to_string(),
                            };
                        }
                    }
                }
                _ => {}
            }
        }
        Error::Remote(Box::new(self))
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // oslo: "Remote error: %(exc_type)s %(value)s\n%(traceback)s."
        write!(f, "{} {}", self.exc_type, self.message)?;
        if !self.tb.is_empty() {
            write!(f, "\n{}", self.traceback())?;
        }
        Ok(())
    }
}

/// The error an endpoint handler returns; it travels back to the caller as a remote failure.
///
/// Any `std::error::Error` converts into it with `?` (class = the Rust type name, module =
/// its Rust module path), or build one with an explicit Python-style class and module so that
/// Python clients can rebuild it:
///
/// ```
/// use oslo_core::HandlerError;
/// let err = HandlerError::new("ValueError", "bad value").module("builtins");
/// assert_eq!(err.remote().exc_type, "ValueError");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct HandlerError(RemoteError);

impl HandlerError {
    /// A failure of class `class` (module `builtins` unless changed with [`HandlerError::module`]).
    pub fn new(class: impl Into<String>, message: impl Into<String>) -> Self {
        HandlerError(RemoteError::new(class, "builtins", message))
    }

    /// Set the module the class is reported in.
    pub fn module(mut self, module: impl Into<String>) -> Self {
        self.0.module = module.into();
        self
    }

    /// Set the positional args reported (default: `[message]`).
    pub fn args(mut self, args: Vec<Value>) -> Self {
        self.0.args = args;
        self
    }

    /// Set the keyword args reported (nova-style `exc.kwargs`).
    pub fn kwargs(mut self, kwargs: Map<String, Value>) -> Self {
        self.0.kwargs = kwargs;
        self
    }

    /// The remote error that will be sent.
    pub fn remote(&self) -> &RemoteError {
        &self.0
    }

    /// Consume into the remote error that will be sent.
    pub fn into_remote(self) -> RemoteError {
        self.0
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(err: E) -> Self {
        let full = std::any::type_name::<E>();
        let (module, class) = full.rsplit_once("::").unwrap_or(("rust", full));
        // Generic parameters make the split land inside `<...>`; fall back to the whole name.
        let (module, class) = if class.contains('>') || module.contains('<') {
            ("rust", full)
        } else {
            (module, class)
        };
        HandlerError(RemoteError::new(class, module, err.to_string()))
    }
}

impl From<RemoteError> for HandlerError {
    fn from(remote: RemoteError) -> Self {
        HandlerError(remote)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_json_is_python_shaped() {
        let err = RemoteError::new("ValueError", "builtins", "boom");
        assert_eq!(
            err.to_failure_json(),
            r#"{"class": "ValueError", "module": "builtins", "message": "boom", "tb": [], "args": ["boom"], "kwargs": {}}"#
        );
        assert_eq!(RemoteError::from_failure_json(&err.to_failure_json()).unwrap(), err);
    }

    #[test]
    fn remote_suffix_is_stripped() {
        let err = RemoteError::new("Boom_Remote", "app.errors_Remote", "x");
        assert!(err.to_failure_json().starts_with(r#"{"class": "Boom", "module": "app.errors""#));
    }

    #[test]
    fn dispatcher_errors_become_typed() {
        let nsm = RemoteError::new(
            "NoSuchMethod",
            "oslo_messaging.rpc.dispatcher",
            "Endpoint does not support RPC method nope",
        );
        assert!(matches!(nsm.into_error(), Error::NoSuchMethod { method } if method == "nope"));
        let uv = RemoteError::new(
            "UnsupportedVersion",
            "oslo_messaging.rpc.dispatcher",
            "Endpoint does not support RPC version 2.0. Attempted method: ping",
        );
        assert!(matches!(uv.into_error(), Error::UnsupportedVersion { version, method } if version == "2.0" && method == "ping"));
        let other = RemoteError::new("ValueError", "builtins", "x");
        assert!(matches!(other.into_error(), Error::Remote(_)));
    }

    #[test]
    fn std_errors_convert_with_type_name() {
        let parse: std::result::Result<i32, _> = "x".parse::<i32>();
        let err: HandlerError = parse.unwrap_err().into();
        assert_eq!(err.remote().exc_type, "ParseIntError");
        assert_eq!(err.remote().module, "core::num::error");
    }
}
