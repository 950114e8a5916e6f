//! `demo`: an RPC server and client on the in-memory `fake://` transport, showing call, cast,
//! fanout, a timeout and a remote error coming back; each step checks what it got.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use oslo_messaging::{context, get_transport, Error, JsonMap, RpcClient, Target};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::failure::{remote_details, Exit, Failure};
use crate::serve;
use crate::style::Paint;

const TOPIC: &str = "demo";
const SERVERS: [&str; 2] = ["demo-1", "demo-2"];

fn unexpected(step: &str, got: impl std::fmt::Debug) -> Failure {
    Failure::new(Exit::Other, format!("demo: {step}: unexpected outcome {got:?}"))
}

/// Run the demo; fails (non-zero exit) when any step does not behave as shown.
pub async fn run() -> Result<(), Failure> {
    let paint = Paint::for_stream(std::io::stdout().is_terminal());
    let transport = get_transport("fake://oslo-msg-demo").map_err(Failure::from_error)?;
    println!("{} transport {}", paint.bold("oslo-msg demo:"), transport.url());

    // Every request the servers handle is reported here, so the demo can show who got what.
    let (seen_tx, mut seen) = mpsc::unbounded_channel::<(String, String, Value)>();
    let hook: serve::RequestHook = Arc::new(move |server: &str, method: &str, args: &Value| {
        let _ = seen_tx.send((server.to_string(), method.to_string(), args.clone()));
    });
    let mut servers = Vec::new();
    for name in SERVERS {
        let target = Target::new(TOPIC).with_server(name);
        servers.push(serve::start(&transport, target, None, "1.0", hook.clone()).await?);
    }
    println!(
        "servers {} listening on topic {TOPIC:?} (endpoints echo, add, fail, sleep, whoami)",
        SERVERS.join(", ")
    );

    let ctxt = context(json!({"request_id": "req-oslo-msg-demo", "user_id": "demo"}));
    let client = RpcClient::new(transport.clone(), Target::new(TOPIC)).timeout(Duration::from_secs(5));
    let outcome = steps(&client, &ctxt, &mut seen, &paint).await;

    for server in &servers {
        server.shutdown().await;
    }
    transport.cleanup().await;
    outcome?;
    println!("\n{}", paint.ok("done: every step behaved as expected"));
    println!("Against a real broker: `oslo-msg serve rabbit://guest:guest@127.0.0.1:5672/ --topic demo` in one shell,");
    println!("then `oslo-msg call rabbit://guest:guest@127.0.0.1:5672/ --topic demo add a:=40 b:=2` in another.");
    Ok(())
}

async fn steps(
    client: &RpcClient,
    ctxt: &JsonMap,
    seen: &mut mpsc::UnboundedReceiver<(String, String, Value)>,
    paint: &Paint,
) -> Result<(), Failure> {
    let show = |label: &str, command: &str, result: &str| {
        println!("\n{}\n  {} {}\n  {result}", paint.bold(label), paint.dim("$"), paint.dim(command));
    };

    // call: the result comes back.
    let sum = client.call(ctxt, "add", json!({"a": 40, "b": 2})).await;
    match sum {
        Ok(value) if value == json!(42) => show(
            "call: the result comes back",
            "oslo-msg call URL --topic demo add a:=40 b:=2",
            &value.to_string(),
        ),
        other => return Err(unexpected("call add", other)),
    }
    drain(seen);

    // call to one server.
    match client.prepare().server("demo-2").call(ctxt, "whoami", json!({})).await {
        Ok(value) if value["server"] == "demo-2" => show(
            "call one server of the topic",
            "oslo-msg call URL --topic demo --server demo-2 whoami",
            &value.to_string(),
        ),
        other => return Err(unexpected("call whoami on demo-2", other)),
    }
    drain(seen);

    // cast: one server gets it, nothing comes back.
    client
        .cast(ctxt, "echo", json!({"sent_as": "cast"}))
        .await
        .map_err(|e| Failure::messaging("demo: cast echo", e))?;
    let got = deliveries(seen, 1).await;
    if got.len() != 1 {
        return Err(unexpected("cast echo", got));
    }
    show(
        "cast: one server of the topic handles it, no result",
        "oslo-msg cast URL --topic demo echo sent_as=cast",
        &format!("handled by {}", got.join(", ")),
    );

    // fanout: every server gets it.
    client
        .prepare()
        .fanout(true)
        .cast(ctxt, "echo", json!({"sent_as": "fanout"}))
        .await
        .map_err(|e| Failure::messaging("demo: fanout echo", e))?;
    let mut got = deliveries(seen, 2).await;
    got.sort();
    if got != SERVERS {
        return Err(unexpected("fanout echo", got));
    }
    show(
        "fanout: every server of the topic handles it",
        "oslo-msg fanout URL --topic demo echo sent_as=fanout",
        &format!("handled by {}", got.join(" and ")),
    );

    // A timeout: the server sleeps longer than the client waits.
    match client
        .prepare()
        .timeout(Duration::from_millis(300))
        .call(ctxt, "sleep", json!({"seconds": 1}))
        .await
    {
        Err(error @ Error::MessagingTimeout { .. }) => {
            let failure = Failure::messaging("call sleep", error);
            show(
                "a timeout: the server takes 1 s, the client waits 0.3 s",
                "oslo-msg call URL --topic demo --timeout 0.3 sleep seconds:=1",
                &format!("{} (exit status {})", failure.message(), failure.exit() as u8),
            );
        }
        other => return Err(unexpected("call sleep with a 0.3 s timeout", other)),
    }

    // A remote error: the server's exception comes back with class, module and traceback.
    match client
        .call(ctxt, "fail", json!({"class": "ValueError", "message": "flavor is required"}))
        .await
    {
        Err(error @ Error::Remote(_)) => {
            let failure = Failure::messaging("call fail", error);
            show(
                "a remote error: the server's exception comes back",
                "oslo-msg call URL --topic demo fail class=ValueError message='flavor is required'",
                &format!("{} (exit status {})", failure.message(), failure.exit() as u8),
            );
            if let Some(remote) = failure.remote() {
                print!("{}", remote_details(remote, paint, "    "));
            }
        }
        other => return Err(unexpected("call fail", other)),
    }
    Ok(())
}

/// Forget the deliveries seen so far.
fn drain(seen: &mut mpsc::UnboundedReceiver<(String, String, Value)>) {
    while seen.try_recv().is_ok() {}
}

/// The servers that handled the next `count` requests (waiting at most 5 s).
async fn deliveries(seen: &mut mpsc::UnboundedReceiver<(String, String, Value)>, count: usize) -> Vec<String> {
    let mut servers = Vec::new();
    while servers.len() < count {
        match tokio::time::timeout(Duration::from_secs(5), seen.recv()).await {
            Ok(Some((server, _method, _args))) => servers.push(server),
            _ => break,
        }
    }
    servers
}
