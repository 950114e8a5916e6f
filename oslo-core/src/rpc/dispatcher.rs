//! The RPC dispatcher: endpoints, namespace/version matching, access policy (oslo `rpc/dispatcher.py`).

use std::any::TypeId;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::codec::JsonMap;
use crate::pyjson;
use crate::remote::{HandlerError, RemoteError};
use crate::serializer::Serializer;
use crate::target::{version_is_compatible, Target};

/// The method the ping endpoint answers (`rpc_ping_enabled`), returning `"pong"`.
pub const PING_METHOD: &str = "oslo_rpc_server_ping";

const DISPATCHER_MODULE: &str = "oslo_messaging.rpc.dispatcher";

type Handler = Arc<dyn Fn(JsonMap, Value) -> BoxFuture<'static, Result<Value, HandlerError>> + Send + Sync>;

#[derive(Clone)]
struct Method {
    handler: Handler,
    exposed: bool,
}

/// Which endpoint methods clients may call (oslo's access policy classes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessPolicy {
    /// Every method except names starting with `_` (oslo `DefaultRPCAccessPolicy`).
    #[default]
    Default,
    /// Every method, private ones included (oslo `LegacyRPCAccessPolicy`).
    Legacy,
    /// Only methods registered with [`Endpoint::exposed_method`] (oslo `ExplicitRPCAccessPolicy`).
    Explicit,
}

impl AccessPolicy {
    fn allows(self, name: &str, method: &Method) -> bool {
        match self {
            AccessPolicy::Default => !name.starts_with('_'),
            AccessPolicy::Legacy => true,
            AccessPolicy::Explicit => method.exposed,
        }
    }
}

/// A set of RPC methods with one namespace and version (an oslo endpoint object).
///
/// Handlers are async, receive the request context and their keyword arguments deserialized
/// into any `DeserializeOwned` type (use `serde_json::Map` for the raw dict), and return any
/// `Serialize` value or a [`HandlerError`], which travels back as a remote exception.
///
/// ```
/// use oslo_core::{Endpoint, HandlerError, Target};
/// use serde::Deserialize;
///
/// #[derive(Deserialize)]
/// struct Add { a: i64, b: i64 }
///
/// let endpoint = Endpoint::new()
///     .with_target(Target::endpoint(Some("math"), Some("1.1")))
///     .method("add", |_ctxt, args: Add| async move { Ok::<_, HandlerError>(args.a + args.b) })
///     .method("fail", |_ctxt, _args: serde_json::Value| async move {
///         Err::<(), _>(HandlerError::new("ValueError", "always fails"))
///     });
/// ```
#[derive(Clone, Default)]
pub struct Endpoint {
    target: Target,
    methods: HashMap<String, Method>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self.methods.keys().collect();
        names.sort();
        f.debug_struct("Endpoint")
            .field("target", &self.target)
            .field("methods", &names)
            .finish()
    }
}

impl Endpoint {
    /// An endpoint in the null namespace at version 1.0 (oslo: an endpoint without `target`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Set the endpoint's namespace and version (its `target`; other fields are ignored).
    pub fn with_target(mut self, target: Target) -> Self {
        self.target = target;
        self
    }

    /// The endpoint's target.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Register an async method.
    pub fn method<A, R, F, Fut>(self, name: impl Into<String>, handler: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(JsonMap, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
    {
        self.add(name.into(), handler, false)
    }

    /// Register a method marked as exposed (needed under [`AccessPolicy::Explicit`]).
    pub fn exposed_method<A, R, F, Fut>(self, name: impl Into<String>, handler: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(JsonMap, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
    {
        self.add(name.into(), handler, true)
    }

    fn add<A, R, F, Fut>(mut self, name: String, handler: F, exposed: bool) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(JsonMap, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
    {
        let method_name = name.clone();
        let handler: Handler = Arc::new(move |context, args| {
            let args: A = match handler_args(&method_name, args) {
                Ok(args) => args,
                Err(error) => return async move { Err(error) }.boxed(),
            };
            let future = handler(context, args);
            async move {
                let value = future.await?;
                // Exactly, non-finite floats included (serde_json's to_value makes them null).
                pyjson::into_value(value).map_err(|e| HandlerError::new("TypeError", format!("result is not JSON serializable: {e}")))
            }
            .boxed()
        });
        self.methods.insert(name, Method { handler, exposed });
        self
    }

    /// The names of the registered methods.
    pub fn method_names(&self) -> impl Iterator<Item = &str> {
        self.methods.keys().map(String::as_str)
    }
}

/// The keyword arguments as the handler's argument type.
///
/// * `()`: a method without parameters (Python `def method(self, ctxt)`), which takes no keyword
///   arguments: any given is the `TypeError` Python raises calling it (`method() got an
///   unexpected keyword argument 'x'`, naming the first, as `func(ctxt, **new_args)` in
///   `rpc/dispatcher.py::_do_dispatch` does).
/// * `JsonMap` / `Value`: handed over as they are (every value exact, see [`pyjson::from_value`]).
/// * anything else: deserialized; a mismatch is Python's `TypeError` for wrong arguments.
#[allow(clippy::result_large_err)] // HandlerError is what handlers return; it is not boxed anywhere.
fn handler_args<A: DeserializeOwned + 'static>(method: &str, args: Value) -> Result<A, HandlerError> {
    if TypeId::of::<A>() == TypeId::of::<()>() {
        if let Some(key) = args.as_object().and_then(|args| args.keys().next()) {
            return Err(HandlerError::new(
                "TypeError",
                format!("{method}() got an unexpected keyword argument '{key}'"),
            ));
        }
        // An empty dict is no arguments at all; serde reads `()` only from null.
        return pyjson::from_value(Value::Null)
            .map_err(|e| HandlerError::new("TypeError", format!("{method}() got invalid arguments: {e}")));
    }
    pyjson::from_value(args).map_err(|e| HandlerError::new("TypeError", format!("{method}() got invalid arguments: {e}")))
}

/// Routes incoming requests to endpoint methods, exactly as oslo's `RPCDispatcher`.
#[derive(Debug, Clone)]
pub struct RpcDispatcher {
    endpoints: Vec<Endpoint>,
    access_policy: AccessPolicy,
    serializer: Arc<dyn Serializer>,
}

impl RpcDispatcher {
    /// A dispatcher over `endpoints` (tried in order; the first match wins).
    pub fn new(endpoints: Vec<Endpoint>, access_policy: AccessPolicy, serializer: Arc<dyn Serializer>) -> Self {
        RpcDispatcher {
            endpoints,
            access_policy,
            serializer,
        }
    }

    /// Dispatch one request: `method`, `args`, `namespace` (default null), `version`
    /// (default `1.0`). Endpoints whose namespace and version do not match are skipped; a
    /// matching endpoint without the method gives `NoSuchMethod`, no match at all
    /// `UnsupportedVersion`.
    pub async fn dispatch(&self, context: JsonMap, message: &JsonMap) -> Result<Value, RemoteError> {
        let method = match message.get("method") {
            Some(Value::String(method)) => method.as_str(),
            _ => "None",
        };
        let namespace = message.get("namespace").and_then(Value::as_str);
        let version = message.get("version").and_then(Value::as_str).unwrap_or("1.0");
        let args = match message.get("args") {
            None | Some(Value::Null) => Value::Object(JsonMap::new()),
            Some(Value::Object(args)) => Value::Object(args.clone()),
            Some(other) => {
                return Err(RemoteError::new(
                    "TypeError",
                    "builtins",
                    format!("args must be a dict, got {other}"),
                ))
            }
        };

        let mut namespace_and_version_matched = false;
        for endpoint in &self.endpoints {
            let target = &endpoint.target;
            if !target.accepted_namespaces().any(|ns| ns == namespace) {
                continue;
            }
            if !version_is_compatible(target.version.as_deref().unwrap_or("1.0"), version) {
                continue;
            }
            namespace_and_version_matched = true;
            let Some(entry) = endpoint.methods.get(method) else { continue };
            if !self.access_policy.allows(method, entry) {
                continue;
            }
            return self.invoke(entry, method, context, args).await;
        }
        let (class, text) = if namespace_and_version_matched {
            ("NoSuchMethod", format!("Endpoint does not support RPC method {method}"))
        } else {
            (
                "UnsupportedVersion",
                format!("Endpoint does not support RPC version {version}. Attempted method: {method}"),
            )
        };
        let mut error = RemoteError::new(class, DISPATCHER_MODULE, text);
        error.tb = synthetic_traceback(method, &error);
        Err(error)
    }

    async fn invoke(&self, entry: &Method, method: &str, context: JsonMap, args: Value) -> Result<Value, RemoteError> {
        let fail = |mut error: RemoteError| {
            if error.tb.is_empty() {
                error.tb = synthetic_traceback(method, &error);
            }
            error
        };
        let context = self
            .serializer
            .deserialize_context(context)
            .map_err(|e| fail(RemoteError::new("TypeError", "builtins", e.to_string())))?;
        let args = match args {
            Value::Object(map) => {
                let mut out = JsonMap::new();
                for (key, value) in map {
                    let value = self
                        .serializer
                        .deserialize_entity(&context, value)
                        .map_err(|e| fail(RemoteError::new("TypeError", "builtins", e.to_string())))?;
                    out.insert(key, value);
                }
                Value::Object(out)
            }
            other => other,
        };
        // A panicking handler must not take the server down or leave the caller hanging.
        let outcome = std::panic::AssertUnwindSafe((entry.handler)(context.clone(), args))
            .catch_unwind()
            .await;
        let result = match outcome {
            Ok(Ok(value)) => value,
            Ok(Err(error)) => return Err(fail(error.into_remote())),
            Err(panic) => {
                let text = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "handler panicked".into());
                tracing::error!(method = %crate::clip::clip(method), panic = %crate::clip::clip(&text), "RPC handler panicked");
                return Err(fail(RemoteError::new(
                    "RuntimeError",
                    "builtins",
                    format!("handler panicked: {text}"),
                )));
            }
        };
        self.serializer
            .serialize_entity(&context, result)
            .map_err(|e| fail(RemoteError::new("TypeError", "builtins", e.to_string())))
    }
}

/// A Python-looking traceback so that Python clients print something useful.
fn synthetic_traceback(method: &str, error: &RemoteError) -> Vec<String> {
    let qualified = if error.module == "builtins" {
        error.exc_type.clone()
    } else {
        format!("{}.{}", error.module, error.exc_type)
    };
    vec![
        "Traceback (most recent call last):\n".to_string(),
        format!("  File \"<rust oslo-messaging server>\", in {method}\n"),
        format!("{qualified}: {}\n", error.message),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serializer::NoOpSerializer;
    use serde_json::json;

    fn dispatcher(endpoints: Vec<Endpoint>, policy: AccessPolicy) -> RpcDispatcher {
        RpcDispatcher::new(endpoints, policy, Arc::new(NoOpSerializer))
    }

    fn msg(value: Value) -> JsonMap {
        value.as_object().unwrap().clone()
    }

    fn echo_endpoint(target: Target) -> Endpoint {
        Endpoint::new()
            .with_target(target)
            .method(
                "echo",
                |_c, args: JsonMap| async move { Ok::<_, HandlerError>(Value::Object(args)) },
            )
            .method("_private", |_c, _a: Value| async move { Ok::<_, HandlerError>("secret") })
    }

    #[tokio::test]
    async fn version_and_namespace_rules() {
        let d = dispatcher(
            vec![echo_endpoint(Target::endpoint(Some("ns"), Some("1.3")))],
            AccessPolicy::Default,
        );
        let ok = d
            .dispatch(
                JsonMap::new(),
                &msg(json!({"method": "echo", "args": {"x": 1}, "namespace": "ns", "version": "1.2"})),
            )
            .await;
        assert_eq!(ok.unwrap(), json!({"x": 1}));
        let too_new = d
            .dispatch(JsonMap::new(), &msg(json!({"method": "echo", "namespace": "ns", "version": "1.4"})))
            .await
            .unwrap_err();
        assert_eq!(too_new.exc_type, "UnsupportedVersion");
        assert_eq!(too_new.message, "Endpoint does not support RPC version 1.4. Attempted method: echo");
        let wrong_ns = d
            .dispatch(JsonMap::new(), &msg(json!({"method": "echo", "version": "1.0"})))
            .await
            .unwrap_err();
        assert_eq!(wrong_ns.exc_type, "UnsupportedVersion");
        let missing = d
            .dispatch(JsonMap::new(), &msg(json!({"method": "nope", "namespace": "ns"})))
            .await
            .unwrap_err();
        assert_eq!(missing.exc_type, "NoSuchMethod");
        assert_eq!(missing.module, "oslo_messaging.rpc.dispatcher");
        assert_eq!(missing.message, "Endpoint does not support RPC method nope");
    }

    #[tokio::test]
    async fn endpoint_without_target_accepts_only_1_0() {
        let d = dispatcher(vec![echo_endpoint(Target::default())], AccessPolicy::Default);
        assert!(d.dispatch(JsonMap::new(), &msg(json!({"method": "echo"}))).await.is_ok());
        let err = d
            .dispatch(JsonMap::new(), &msg(json!({"method": "echo", "version": "1.1"})))
            .await
            .unwrap_err();
        assert_eq!(err.exc_type, "UnsupportedVersion");
    }

    #[tokio::test]
    async fn access_policies() {
        let private = msg(json!({"method": "_private"}));
        let default = dispatcher(vec![echo_endpoint(Target::default())], AccessPolicy::Default);
        assert_eq!(
            default.dispatch(JsonMap::new(), &private).await.unwrap_err().exc_type,
            "NoSuchMethod"
        );
        let legacy = dispatcher(vec![echo_endpoint(Target::default())], AccessPolicy::Legacy);
        assert_eq!(legacy.dispatch(JsonMap::new(), &private).await.unwrap(), json!("secret"));
        let explicit_ep = Endpoint::new()
            .method("hidden", |_c, _a: Value| async move { Ok::<_, HandlerError>(1) })
            .exposed_method("shown", |_c, _a: Value| async move { Ok::<_, HandlerError>(2) });
        let explicit = dispatcher(vec![explicit_ep], AccessPolicy::Explicit);
        assert_eq!(
            explicit.dispatch(JsonMap::new(), &msg(json!({"method": "shown"}))).await.unwrap(),
            json!(2)
        );
        assert_eq!(
            explicit
                .dispatch(JsonMap::new(), &msg(json!({"method": "hidden"})))
                .await
                .unwrap_err()
                .exc_type,
            "NoSuchMethod"
        );
    }

    #[tokio::test]
    async fn first_matching_endpoint_wins_and_legacy_namespaces_work() {
        let first = Endpoint::new()
            .with_target(Target::endpoint(Some("new"), None).with_legacy_namespaces(["old"]))
            .method("who", |_c, _a: Value| async move { Ok::<_, HandlerError>("first") });
        let second = Endpoint::new()
            .with_target(Target::endpoint(Some("new"), None))
            .method("who", |_c, _a: Value| async move { Ok::<_, HandlerError>("second") });
        let d = dispatcher(vec![first, second], AccessPolicy::Default);
        assert_eq!(
            d.dispatch(JsonMap::new(), &msg(json!({"method": "who", "namespace": "old"})))
                .await
                .unwrap(),
            json!("first")
        );
        assert_eq!(
            d.dispatch(JsonMap::new(), &msg(json!({"method": "who", "namespace": "new"})))
                .await
                .unwrap(),
            json!("first")
        );
    }

    /// A request dict as read off the wire (json! cannot hold NaN).
    fn wire(text: &str) -> JsonMap {
        match pyjson::from_str(text).unwrap() {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    #[tokio::test]
    async fn values_reach_handlers_and_come_back_exactly() {
        #[derive(serde::Deserialize)]
        struct Floats {
            x: f64,
            y: f64,
            z: Option<f64>,
        }
        #[derive(serde::Deserialize)]
        struct Big {
            n: i128,
        }
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct Nested {
            v: Value,
        }
        let ep = echo_endpoint(Target::default())
            .method("floats", |_c, a: Floats| async move {
                Ok::<_, HandlerError>((a.x.is_nan(), a.y, a.z.map(|z| z.to_string())))
            })
            .method("inf", |_c, _a: ()| async move {
                Ok::<_, HandlerError>(vec![f64::INFINITY, f64::NEG_INFINITY, f64::NAN])
            })
            .method("big", |_c, a: Big| async move { Ok::<_, HandlerError>(a.n - 1) })
            .method("nested", |_c, _a: Nested| async move { Ok::<_, HandlerError>(()) });
        let d = dispatcher(vec![ep], AccessPolicy::Default);
        let result = |value: Value| pyjson::to_string(&value).unwrap();

        let echoed = d
            .dispatch(
                JsonMap::new(),
                &wire(r#"{"method": "echo", "args": {"a": 18446744073709551617, "b": -9223372036854775809, "c": [NaN, Infinity, -Infinity, 1e400], "d": "NaN"}}"#),
            )
            .await
            .unwrap();
        assert_eq!(
            result(echoed),
            r#"{"a": 18446744073709551617, "b": -9223372036854775809, "c": [NaN, Infinity, -Infinity, Infinity], "d": "NaN"}"#
        );
        let floats = d
            .dispatch(
                JsonMap::new(),
                &wire(r#"{"method": "floats", "args": {"x": NaN, "y": -Infinity, "z": Infinity}}"#),
            )
            .await
            .unwrap();
        assert_eq!(
            result(floats),
            r#"[true, -Infinity, "inf"]"#,
            "an f64 argument gets the non-finite float"
        );
        let inf = d.dispatch(JsonMap::new(), &wire(r#"{"method": "inf", "args": {}}"#)).await.unwrap();
        assert_eq!(
            result(inf),
            "[Infinity, -Infinity, NaN]",
            "an f64 result is sent as Python writes it"
        );
        let big = d
            .dispatch(JsonMap::new(), &wire(r#"{"method": "big", "args": {"n": 18446744073709551617}}"#))
            .await
            .unwrap();
        assert_eq!(result(big), "18446744073709551616");
        // serde_json's Value deserializer cannot hold NaN: a loud TypeError, not a changed value.
        let nested = d
            .dispatch(JsonMap::new(), &wire(r#"{"method": "nested", "args": {"v": NaN}}"#))
            .await
            .unwrap_err();
        assert_eq!(nested.exc_type, "TypeError");
    }

    #[tokio::test]
    async fn unit_arguments_take_no_keyword_arguments() {
        let ep = Endpoint::new().method("echo", |_c, _a: ()| async move { Ok::<_, HandlerError>("no args") });
        let d = dispatcher(vec![ep], AccessPolicy::Default);
        for request in [
            json!({"method": "echo", "args": {}}),
            json!({"method": "echo"}),
            json!({"method": "echo", "args": null}),
        ] {
            assert_eq!(d.dispatch(JsonMap::new(), &msg(request)).await.unwrap(), json!("no args"));
        }
        // Python: `TypeError: echo() got an unexpected keyword argument 'x'` (the first one).
        let err = d
            .dispatch(JsonMap::new(), &msg(json!({"method": "echo", "args": {"x": 1, "y": 2}})))
            .await
            .unwrap_err();
        assert_eq!(
            (err.exc_type.as_str(), err.module.as_str(), err.message.as_str()),
            ("TypeError", "builtins", "echo() got an unexpected keyword argument 'x'")
        );
        assert_eq!(err.args, vec![json!("echo() got an unexpected keyword argument 'x'")]);
    }

    #[tokio::test]
    async fn handler_errors_bad_args_and_panics_become_remote_errors() {
        #[derive(serde::Deserialize)]
        struct Add {
            a: i64,
            b: i64,
        }
        let ep = Endpoint::new()
            .method("add", |_c, args: Add| async move { Ok::<_, HandlerError>(args.a + args.b) })
            .method("boom", |_c, _a: Value| async move {
                Err::<(), _>(HandlerError::new("ValueError", "boom"))
            })
            .method("panic", |_c, _a: Value| async move {
                if true {
                    panic!("kaboom");
                }
                Ok::<_, HandlerError>(())
            })
            .method("ctx", |ctxt: JsonMap, _a: Value| async move {
                Ok::<_, HandlerError>(Value::Object(ctxt))
            });
        let d = dispatcher(vec![ep], AccessPolicy::Default);
        assert_eq!(
            d.dispatch(JsonMap::new(), &msg(json!({"method": "add", "args": {"a": 2, "b": 3}})))
                .await
                .unwrap(),
            json!(5)
        );
        let bad = d
            .dispatch(JsonMap::new(), &msg(json!({"method": "add", "args": {"a": "x"}})))
            .await
            .unwrap_err();
        assert_eq!(bad.exc_type, "TypeError");
        let boom = d.dispatch(JsonMap::new(), &msg(json!({"method": "boom"}))).await.unwrap_err();
        assert_eq!(
            (boom.exc_type.as_str(), boom.module.as_str(), boom.message.as_str()),
            ("ValueError", "builtins", "boom")
        );
        assert!(boom.tb.last().unwrap().contains("ValueError: boom"));
        let panic = d.dispatch(JsonMap::new(), &msg(json!({"method": "panic"}))).await.unwrap_err();
        assert!(panic.message.contains("kaboom"));
        let ctx = msg(json!({"user": "u"}));
        assert_eq!(
            d.dispatch(ctx.clone(), &msg(json!({"method": "ctx"}))).await.unwrap(),
            Value::Object(ctx)
        );
    }
}
