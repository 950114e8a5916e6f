//! `serve`: a demo RPC server with `echo`, `add`, `fail`, `sleep` and `whoami` endpoints, for
//! trying a deployment (and the server half of `demo`).

use std::sync::Arc;
use std::time::Duration;

use oslo_messaging::{pyjson, Endpoint, HandlerError, JsonMap, RpcServer, Target, Transport};
use serde_json::{json, Number, Value};

use crate::failure::Failure;

/// Called for every request a demo endpoint handles: (server, method, arguments).
pub type RequestHook = Arc<dyn Fn(&str, &str, &Value) + Send + Sync>;

/// The longest `sleep` the demo endpoint accepts, so a stray call cannot pin a server.
const MAX_SLEEP: Duration = Duration::from_secs(600);

/// The demo endpoint in `namespace` at `version`, answering as `server`.
pub fn demo_endpoint(server: &str, namespace: Option<&str>, version: &str, hook: RequestHook) -> Endpoint {
    let server: Arc<str> = Arc::from(server);
    let seen = |method: &'static str| {
        let hook = hook.clone();
        let server = server.clone();
        move |args: &Value| hook(&server, method, args)
    };
    let on_echo = seen("echo");
    let on_add = seen("add");
    let on_fail = seen("fail");
    let on_sleep = seen("sleep");
    let on_whoami = seen("whoami");
    Endpoint::new()
        .with_target(Target::endpoint(namespace, Some(version)))
        .method("echo", move |_ctxt: JsonMap, args: Value| {
            on_echo(&args);
            async move { Ok::<_, HandlerError>(args) }
        })
        .method("add", move |_ctxt: JsonMap, args: Value| {
            on_add(&args);
            async move { add(&args).map_err(|e| *e) }
        })
        .method("fail", move |_ctxt: JsonMap, args: Value| {
            on_fail(&args);
            async move {
                let text = |key: &str, default: &str| args.get(key).and_then(Value::as_str).unwrap_or(default).to_string();
                Err::<Value, _>(
                    HandlerError::new(text("class", "ValueError"), text("message", "failed on purpose")).module(text("module", "builtins")),
                )
            }
        })
        .method("sleep", move |_ctxt: JsonMap, args: Value| {
            on_sleep(&args);
            async move {
                let seconds = args.get("seconds").and_then(Value::as_f64).unwrap_or(1.0);
                let duration = Duration::try_from_secs_f64(seconds)
                    .ok()
                    .filter(|d| *d <= MAX_SLEEP)
                    .ok_or_else(|| HandlerError::new("ValueError", format!("seconds must be between 0 and {}", MAX_SLEEP.as_secs())))?;
                tokio::time::sleep(duration).await;
                Ok(json!({"slept": seconds}))
            }
        })
        .method("whoami", move |ctxt: JsonMap, args: Value| {
            on_whoami(&args);
            let server = server.clone();
            async move { Ok::<_, HandlerError>(json!({"server": &*server, "request_id": ctxt.get("request_id")})) }
        })
}

/// `add(a, b)`: integers stay integers (exactly, up to i128), anything numeric else is a float
/// (`NaN` and the infinities included, as in Python).
fn add(args: &Value) -> Result<Value, Box<HandlerError>> {
    let operand = |key: &str| {
        args.get(key).and_then(Value::as_number).cloned().ok_or_else(|| {
            Box::new(HandlerError::new(
                "TypeError",
                format!("add() needs a number {key:?} (use {key}:=1)"),
            ))
        })
    };
    let (a, b) = (operand("a")?, operand("b")?);
    // Python ints do not overflow; i128 covers any sum of two 64-bit ones.
    if let (Some(x), Some(y)) = (a.as_i128(), b.as_i128()) {
        if let Some(sum) = x.checked_add(y) {
            return Ok(Value::Number(Number::from_i128(sum).expect("arbitrary_precision holds any i128")));
        }
    }
    // Python floats: NaN and the infinities are values like any other (`inf + 1 == inf`).
    let float = |n: &Number| pyjson::as_float(&Value::Number(n.clone())).unwrap_or(f64::NAN);
    Ok(pyjson::float_value(float(&a) + float(&b)))
}

/// Start a demo server on `target` (topic and server set).
pub async fn start(
    transport: &Transport,
    target: Target,
    namespace: Option<&str>,
    version: &str,
    hook: RequestHook,
) -> Result<RpcServer, Failure> {
    let server_name = target.server.clone().unwrap_or_default();
    let starting = RpcServer::builder(transport.clone(), target)
        .endpoint(demo_endpoint(&server_name, namespace, version, hook))
        .ping_enabled(true)
        .start();
    // The transport's start_timeout (START_LIMIT) bounds the start with the broker's error.
    starting.await.map_err(|e| Failure::messaging("serve", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_keeps_integers_and_rejects_strings() {
        assert_eq!(add(&json!({"a": 40, "b": 2})).unwrap(), json!(42));
        assert_eq!(add(&json!({"a": 0.5, "b": 2})).unwrap(), json!(2.5));
        assert_eq!(add(&json!({"a": i64::MAX, "b": 1})).unwrap().to_string(), "9223372036854775808");
        let inf = add(&pyjson::from_str(r#"{"a": Infinity, "b": 1}"#).unwrap()).unwrap();
        assert_eq!(pyjson::to_string(&inf).unwrap(), "Infinity");
        let err = add(&json!({"a": "1", "b": 2})).unwrap_err();
        assert_eq!(err.remote().exc_type, "TypeError");
    }
}
