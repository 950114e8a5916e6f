//! The README's main job: an RPC server and client on the embedded `fake://` transport,
//! showing call, cast, fanout, a timeout and a remote error coming back.
//!
//! Run with `cargo run -p oslo-messaging --example demo`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use oslo_messaging::{context, get_transport, Endpoint, Error, HandlerError, JsonMap, RpcClient, RpcServer, Target};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
struct Add {
    a: i64,
    b: i64,
}

fn endpoint(name: &'static str, casts: Arc<AtomicUsize>) -> Endpoint {
    Endpoint::new()
        .with_target(Target::endpoint(None, Some("1.1")))
        .method(
            "add",
            |_ctxt: JsonMap, args: Add| async move { Ok::<_, HandlerError>(args.a + args.b) },
        )
        .method("whoami", move |ctxt: JsonMap, _args: Value| async move {
            Ok::<_, HandlerError>(json!({"server": name, "request_id": ctxt.get("request_id")}))
        })
        .method("record", move |_ctxt: JsonMap, args: Value| {
            let casts = casts.clone();
            async move {
                casts.fetch_add(1, Ordering::SeqCst);
                println!("  [{name}] got cast/fanout: {args}");
                Ok::<_, HandlerError>(())
            }
        })
        .method("slow", |_ctxt: JsonMap, _args: Value| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, HandlerError>("too late")
        })
        .method("divide", |_ctxt: JsonMap, args: Add| async move {
            if args.b == 0 {
                return Err(HandlerError::new("ZeroDivisionError", "division by zero"));
            }
            Ok(args.a / args.b)
        })
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "off".into()))
        .init();

    let transport = get_transport("fake://demo")?;
    println!("transport: {}", transport.url());

    let casts = Arc::new(AtomicUsize::new(0));
    let mut servers = Vec::new();
    for name in ["calc-1", "calc-2"] {
        let server = RpcServer::builder(transport.clone(), Target::new("calculator").with_server(name))
            .endpoint(endpoint(name, casts.clone()))
            .start()
            .await?;
        servers.push(server);
    }
    println!("two servers listening on topic 'calculator'");

    let ctxt = context(json!({"request_id": "req-demo-1", "user_id": "demo"}));
    let client = RpcClient::new(transport.clone(), Target::new("calculator").with_version("1.1")).timeout(Duration::from_secs(2));

    let sum = client.call(&ctxt, "add", json!({"a": 40, "b": 2})).await?;
    println!("call add(40, 2)            -> {sum}");

    let who = client.prepare().server("calc-2").call(&ctxt, "whoami", json!({})).await?;
    println!("call whoami on calc-2      -> {who}");

    client.cast(&ctxt, "record", json!({"kind": "cast"})).await?;
    client
        .prepare()
        .fanout(true)
        .cast(&ctxt, "record", json!({"kind": "fanout"}))
        .await?;
    // A call after the casts returns once they were processed (one client, in order, per server).
    for server in ["calc-1", "calc-2"] {
        client.prepare().server(server).call(&ctxt, "whoami", json!({})).await?;
    }
    println!(
        "cast + fanout delivered    -> {} deliveries (1 cast + 2 fanout)",
        casts.load(Ordering::SeqCst)
    );

    match client
        .prepare()
        .timeout(Duration::from_millis(300))
        .call(&ctxt, "slow", json!({}))
        .await
    {
        Err(err @ Error::MessagingTimeout { .. }) => println!("call slow (300 ms timeout) -> {err}"),
        other => println!("call slow: unexpected {other:?}"),
    }

    match client.call(&ctxt, "divide", json!({"a": 1, "b": 0})).await {
        Err(Error::Remote(remote)) => println!(
            "call divide(1, 0)          -> remote {}: {} (module {})",
            remote.exc_type, remote.message, remote.module
        ),
        other => println!("call divide: unexpected {other:?}"),
    }

    match client.call(&ctxt, "no_such", json!({})).await {
        Err(err) => println!("call no_such               -> {err}"),
        Ok(v) => println!("call no_such: unexpected {v}"),
    }

    match client.prepare().version("2.0").call(&ctxt, "add", json!({"a": 1, "b": 1})).await {
        Err(err) => println!("call add at version 2.0    -> {err}"),
        Ok(v) => println!("call at 2.0: unexpected {v}"),
    }

    for server in &servers {
        server.shutdown().await;
    }
    transport.cleanup().await;
    println!("done");
    Ok(())
}
