//! The README's "Writing a server and a client" example, kept compiling by `cargo test`.
//!
//! Run against RabbitMQ with `cargo run -p oslo-messaging --example server_client [URL]`
//! (default `rabbit://guest:guest@127.0.0.1:5672/`; `fake://` works too).

use std::time::Duration;

use oslo_messaging::{context, get_transport, Endpoint, Error, HandlerError, JsonMap, RpcClient, RpcServer, Target};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
struct Resize {
    instance: String,
    flavor: String,
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "rabbit://guest:guest@127.0.0.1:5672/".into());
    let transport = get_transport(&url)?;

    // Server: topic "compute", this host's name; endpoints by namespace and version.
    let server = RpcServer::builder(transport.clone(), Target::new("compute").with_server("host-1"))
        .endpoint(Endpoint::new().with_target(Target::endpoint(None, Some("1.3"))).method(
            "resize",
            |ctxt: JsonMap, args: Resize| async move {
                if args.flavor.is_empty() {
                    // Travels back as a remote error; a Python caller gets a ValueError.
                    return Err(HandlerError::new("ValueError", "flavor is required"));
                }
                Ok(json!({"instance": args.instance, "by": ctxt.get("user_id")}))
            },
        ))
        .start()
        .await?;

    // Client: call waits for the result, cast does not, fanout reaches every server.
    let client = RpcClient::new(transport.clone(), Target::new("compute").with_version("1.2")).timeout(Duration::from_secs(30));
    let ctxt = context(json!({"user_id": "u1", "request_id": "req-1"}));
    let result = client
        .call(&ctxt, "resize", json!({"instance": "vm-1", "flavor": "m1.small"}))
        .await?;
    client
        .prepare()
        .server("host-1")
        .cast(&ctxt, "resize", json!({"instance": "vm-2", "flavor": "m1.tiny"}))
        .await?;
    println!("{result}");
    match client.call(&ctxt, "resize", json!({"instance": "vm-3", "flavor": ""})).await {
        Err(Error::Remote(remote)) => println!("remote error: {} {}", remote.exc_type, remote.message),
        other => println!("unexpected: {other:?}"),
    }

    server.shutdown().await; // stop taking requests, finish the ones in flight
    transport.cleanup().await;
    Ok(())
}
