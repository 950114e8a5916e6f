//! Notifier drivers other than `messagingv2` (test, noop, log, messaging v1, routing), on fake://.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use oslo_messaging::notify::{RoutingConfig, TestNotifications};
use oslo_messaging::{
    context, get_transport, Notification, NotificationEndpoint, NotificationListener, NotificationResult, Notifier, NotifierDriver,
    Priority, Retry, Target, Transport,
};
use serde_json::json;

fn transport(name: &str) -> Transport {
    get_transport(&format!("fake://notify-api-{name}")).unwrap()
}

async fn listen(transport: &Transport, topic: &str) -> (NotificationListener, Arc<Mutex<Vec<Notification>>>) {
    let inbox: Arc<Mutex<Vec<Notification>>> = Arc::default();
    let mut endpoint = NotificationEndpoint::new();
    for priority in Priority::ALL {
        let inbox = inbox.clone();
        endpoint = endpoint.on(priority, move |n| {
            let inbox = inbox.clone();
            async move {
                inbox.lock().unwrap().push(n);
                NotificationResult::Handled
            }
        });
    }
    let listener = NotificationListener::builder(transport.clone(), vec![Target::new(topic)])
        .endpoint(endpoint)
        .start()
        .await
        .unwrap();
    (listener, inbox)
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn test_driver_keeps_messages_with_oslo_fields_and_redacted_context() {
    let sink = TestNotifications::new();
    let notifier = Notifier::new(transport("test-driver"))
        .publisher_id("svc.host")
        .driver(NotifierDriver::Test(sink.clone()))
        .retry(Retry::Limited(2));
    notifier
        .error(
            &context(json!({"user": "u", "auth_token": "secret"})),
            "svc.failed",
            json!({"code": 7}),
        )
        .await
        .unwrap();
    let sent = sink.sent();
    assert_eq!(sent.len(), 1);
    let message = &sent[0].message;
    assert_eq!(message["priority"], "ERROR");
    assert_eq!(message["publisher_id"], "svc.host");
    assert_eq!(message["event_type"], "svc.failed");
    assert_eq!(message["payload"], json!({"code": 7}));
    let id = message["message_id"].as_str().unwrap();
    assert_eq!((id.len(), id.matches('-').count()), (36, 4), "dashed uuid4: {id}");
    let ts = message["timestamp"].as_str().unwrap();
    assert!(ts.len() == 26 || ts.len() == 19, "{ts}");
    assert_eq!(&ts[10..11], " ", "space, not T: {ts}");
    assert!(sent[0].context["auth_token"].is_null());
    assert_eq!(sent[0].retry, Retry::Limited(2));
    let keys: Vec<&str> = message.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["message_id", "publisher_id", "event_type", "priority", "payload", "timestamp"],
        "oslo's key order"
    );
    sink.clear();
    assert!(sink.sent().is_empty());
}

#[tokio::test]
async fn noop_and_log_send_nothing_over_the_transport() {
    let t = transport("noop-log");
    let (listener, inbox) = listen(&t, "quiet").await;
    let noop = Notifier::new(t.clone()).topics(["quiet"]).driver(NotifierDriver::Noop);
    assert!(!noop.is_enabled());
    noop.info(&context(json!({})), "e", json!({})).await.unwrap();
    let log = Notifier::new(t.clone()).topics(["quiet"]).driver(NotifierDriver::Log);
    assert!(log.is_enabled());
    log.warn(&context(json!({})), "e", json!({"password": "x"})).await.unwrap();
    settle().await;
    assert!(inbox.lock().unwrap().is_empty());
    listener.shutdown().await;
}

#[tokio::test]
async fn messaging_v1_and_v2_both_reach_listeners() {
    let t = transport("v1v2");
    let (listener, inbox) = listen(&t, "both").await;
    let base = Notifier::new(t.clone()).topics(["both"]).publisher_id("p");
    base.prepare()
        .driver(NotifierDriver::Messaging)
        .info(&context(json!({})), "v1", json!({}))
        .await
        .unwrap();
    base.info(&context(json!({})), "v2", json!({})).await.unwrap();
    settle().await;
    let mut events: Vec<String> = inbox.lock().unwrap().iter().map(|n| n.event_type.clone()).collect();
    events.sort();
    assert_eq!(events, ["v1", "v2"]);
    listener.shutdown().await;
}

#[tokio::test]
async fn routing_driver_sends_by_event_type_and_priority() {
    let t = transport("routing");
    let (listener, inbox) = listen(&t, "routed").await;
    let config = RoutingConfig::from_yaml(
        "group_1:\n  messagingv2:\n    accepted_events: ['compute.instance.*']\n    accepted_priorities: [info, error]\n  log: {}\n",
    )
    .unwrap();
    let notifier = Notifier::new(t.clone())
        .topics(["routed"])
        .driver(NotifierDriver::Routing(Arc::new(config)));
    let ctxt = context(json!({}));
    notifier.info(&ctxt, "compute.instance.create", json!({})).await.unwrap(); // routed
    notifier.debug(&ctxt, "compute.instance.debug", json!({})).await.unwrap(); // wrong priority
    notifier.info(&ctxt, "volume.attach", json!({})).await.unwrap(); // wrong event
    settle().await;
    let events: Vec<String> = inbox.lock().unwrap().iter().map(|n| n.event_type.clone()).collect();
    assert_eq!(events, ["compute.instance.create"]);
    listener.shutdown().await;
}

#[tokio::test]
async fn listener_needs_handlers_and_topics() {
    let t = transport("invalid");
    let err = NotificationListener::builder(t.clone(), vec![Target::new("x")])
        .start()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no endpoint handles any priority"), "{err}");
    let endpoint = NotificationEndpoint::new().on(Priority::Info, |_n| async { NotificationResult::Handled });
    let err = NotificationListener::builder(t, vec![Target::default()])
        .endpoint(endpoint)
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, oslo_messaging::Error::InvalidTarget { .. }), "{err}");
}
