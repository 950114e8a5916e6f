//! Exchange, queue and binding declarations exactly as oslo.messaging 18.3.1 makes them
//! (`impl_rabbit.py::_get_queue_arguments`, `declare_*_consumer`, `*_send`), checked against the
//! captured topology in `wire-format.md` §3.

use lapin::types::{AMQPValue, FieldTable};
use lapin::ExchangeKind;

use crate::config::RabbitConfig;

/// An exchange declaration.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ExchangeSpec {
    pub name: String,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
}

/// A queue declaration (never exclusive in oslo).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QueueSpec {
    pub name: String,
    pub durable: bool,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

/// A queue bound to an exchange.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BindingSpec {
    pub queue: String,
    pub exchange: String,
    pub routing_key: String,
}

/// What a listener declares and consumes, in declaration order.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Topology {
    pub exchanges: Vec<ExchangeSpec>,
    pub queues: Vec<QueueSpec>,
    pub bindings: Vec<BindingSpec>,
    /// Queues to consume, in order (consumer tags "1", "2", ... as oslo counts them).
    pub consume: Vec<String>,
    /// Queues deleted when the listener is cleaned up (the private fanout queue).
    pub delete_on_cleanup: Vec<String>,
    /// Open a confirm-mode channel on the consuming connection for publishing (an RPC server's
    /// replies, a client's calls; see the crate docs on connections).
    pub publish_channel: bool,
}

/// An integer as py-amqp encodes a Python `int` in a table: signed 32-bit when it fits, else 64-bit.
fn py_int(value: i64) -> AMQPValue {
    match i32::try_from(value) {
        Ok(small) => AMQPValue::LongInt(small),
        Err(_) => AMQPValue::LongLongInt(value),
    }
}

/// oslo `_get_queue_arguments(rabbit_ha_queues, ttl, quorum, quorum_config, stream=False)`.
pub(crate) fn queue_arguments(config: &RabbitConfig, ttl_seconds: i64, quorum: bool) -> FieldTable {
    let mut args = FieldTable::default();
    if config.rabbit_ha_queues {
        args.insert("x-ha-policy".into(), AMQPValue::LongString("all".into()));
    }
    if quorum {
        args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        if config.rabbit_quorum_delivery_limit != 0 {
            args.insert("x-delivery-limit".into(), py_int(config.rabbit_quorum_delivery_limit));
        }
        if config.rabbit_quorum_max_memory_length != 0 {
            args.insert("x-max-in-memory-length".into(), py_int(config.rabbit_quorum_max_memory_length));
        }
        if config.rabbit_quorum_max_memory_bytes != 0 {
            args.insert("x-max-in-memory-bytes".into(), py_int(config.rabbit_quorum_max_memory_bytes));
        }
    }
    if ttl_seconds > 0 {
        args.insert("x-expires".into(), py_int(ttl_seconds.saturating_mul(1000)));
    }
    args
}

/// Consumer arguments: `x-cancel-on-ha-failover` when `enable_cancel_on_failover`.
pub(crate) fn consumer_arguments(config: &RabbitConfig) -> FieldTable {
    let mut args = FieldTable::default();
    if config.enable_cancel_on_failover {
        args.insert("x-cancel-on-ha-failover".into(), AMQPValue::Boolean(true));
    }
    args
}

/// The topic exchange `E` (control exchange or target exchange): topic, `durable`, `amqp_auto_delete`.
pub(crate) fn topic_exchange(config: &RabbitConfig, name: &str) -> ExchangeSpec {
    ExchangeSpec {
        name: name.to_string(),
        kind: ExchangeKind::Topic,
        durable: config.durable(),
        auto_delete: config.amqp_auto_delete,
    }
}

/// `<topic>_fanout`: fanout, durable = `rabbit_transient_quorum_queue`, auto_delete = true.
pub(crate) fn fanout_exchange(config: &RabbitConfig, topic: &str) -> ExchangeSpec {
    ExchangeSpec {
        name: fanout_exchange_name(topic),
        kind: ExchangeKind::Fanout,
        durable: config.rabbit_transient_quorum_queue,
        auto_delete: true,
    }
}

/// The fanout exchange name of a topic.
pub(crate) fn fanout_exchange_name(topic: &str) -> String {
    format!("{topic}_fanout")
}

/// `<topic>` / `<topic>.<server>` / pool queues (`declare_topic_consumer`): `durable`,
/// `amqp_auto_delete`, ha/quorum arguments, no TTL.
pub(crate) fn topic_queue(config: &RabbitConfig, name: &str) -> QueueSpec {
    QueueSpec {
        name: name.to_string(),
        durable: config.durable(),
        auto_delete: config.amqp_auto_delete,
        arguments: queue_arguments(config, 0, config.rabbit_quorum_queue),
    }
}

/// `<topic>_fanout_<uuid hex>` (`declare_fanout_consumer`): durable = transient quorum,
/// auto_delete = false, `x-expires`, transient-quorum arguments.
pub(crate) fn fanout_queue(config: &RabbitConfig, name: &str) -> QueueSpec {
    QueueSpec {
        name: name.to_string(),
        durable: config.rabbit_transient_quorum_queue,
        auto_delete: false,
        arguments: queue_arguments(config, config.rabbit_transient_queues_ttl, config.rabbit_transient_quorum_queue),
    }
}

/// `reply_<uuid hex>` (`declare_direct_consumer`): like a fanout queue, default exchange only.
pub(crate) fn reply_queue(config: &RabbitConfig, name: &str) -> QueueSpec {
    fanout_queue(config, name)
}

/// The `<topic>.<priority>` queue the notifier declares (`_publish_and_creates_default_queue`):
/// durable and auto_delete of the exchange, ha/quorum arguments, no TTL.
pub(crate) fn notification_queue(config: &RabbitConfig, name: &str) -> QueueSpec {
    topic_queue(config, name)
}

/// A new private fanout queue name: `<topic>_fanout_<uuid4 hex>`.
pub(crate) fn new_fanout_queue_name(topic: &str) -> String {
    format!("{topic}_fanout_{}", oslo_core::codec::new_id())
}

/// A new reply queue name: `reply_<uuid4 hex>`.
pub(crate) fn new_reply_queue_name() -> String {
    format!("reply_{}", oslo_core::codec::new_id())
}

/// What an RPC server declares (`AMQPDriverBase.listen`): the topic queue, the server queue
/// and a private fanout queue, consumed in that order.
pub(crate) fn rpc_server(config: &RabbitConfig, exchange: &str, topic: &str, server: &str, fanout_queue_name: &str) -> Topology {
    let server_queue = format!("{topic}.{server}");
    let fanout = fanout_exchange(config, topic);
    Topology {
        exchanges: vec![topic_exchange(config, exchange), fanout.clone()],
        queues: vec![
            topic_queue(config, topic),
            topic_queue(config, &server_queue),
            fanout_queue(config, fanout_queue_name),
        ],
        bindings: vec![
            BindingSpec {
                queue: topic.to_string(),
                exchange: exchange.to_string(),
                routing_key: topic.to_string(),
            },
            BindingSpec {
                queue: server_queue.clone(),
                exchange: exchange.to_string(),
                routing_key: server_queue.clone(),
            },
            BindingSpec {
                queue: fanout_queue_name.to_string(),
                exchange: fanout.name,
                routing_key: topic.to_string(),
            },
        ],
        consume: vec![topic.to_string(), server_queue, fanout_queue_name.to_string()],
        delete_on_cleanup: vec![fanout_queue_name.to_string()],
        publish_channel: true,
    }
}

/// What a notification listener declares (`AMQPDriverBase.listen_for_notifications`): per
/// `(exchange, <topic>.<priority>)` a queue named after the routing key, or the pool's queue
/// bound once per routing key. Each queue is consumed once.
pub(crate) fn notification_listener(config: &RabbitConfig, bindings: &[(String, String)], pool: Option<&str>) -> Topology {
    let mut topology = Topology::default();
    for (exchange, routing_key) in bindings {
        let exchange_spec = topic_exchange(config, exchange);
        if !topology.exchanges.contains(&exchange_spec) {
            topology.exchanges.push(exchange_spec);
        }
        let queue_name = pool.unwrap_or(routing_key).to_string();
        if !topology.queues.iter().any(|q| q.name == queue_name) {
            topology.queues.push(topic_queue(config, &queue_name));
            topology.consume.push(queue_name.clone());
        }
        let binding = BindingSpec {
            queue: queue_name,
            exchange: exchange.clone(),
            routing_key: routing_key.clone(),
        };
        if !topology.bindings.contains(&binding) {
            topology.bindings.push(binding);
        }
    }
    topology
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_topology_matches_the_capture() {
        let c = RabbitConfig::default();
        let t = rpc_server(&c, "openstack", "wirecap", "wirecap-a", "wirecap_fanout_99d4");
        assert_eq!(
            t.exchanges,
            vec![
                ExchangeSpec {
                    name: "openstack".into(),
                    kind: ExchangeKind::Topic,
                    durable: false,
                    auto_delete: false
                },
                ExchangeSpec {
                    name: "wirecap_fanout".into(),
                    kind: ExchangeKind::Fanout,
                    durable: false,
                    auto_delete: true
                },
            ]
        );
        let names: Vec<_> = t.queues.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(names, ["wirecap", "wirecap.wirecap-a", "wirecap_fanout_99d4"]);
        for q in &t.queues[..2] {
            assert!(!q.durable && !q.auto_delete);
            assert!(q.arguments.inner().is_empty(), "{q:?}");
        }
        let fanout = &t.queues[2];
        assert!(!fanout.durable && !fanout.auto_delete);
        assert_eq!(fanout.arguments.inner().get("x-expires"), Some(&AMQPValue::LongInt(1_800_000)));
        assert_eq!(fanout.arguments.inner().len(), 1);
        assert_eq!(t.bindings[2].exchange, "wirecap_fanout");
        assert_eq!(t.bindings[2].routing_key, "wirecap");
        assert_eq!(t.consume, ["wirecap", "wirecap.wirecap-a", "wirecap_fanout_99d4"]);
        assert_eq!(t.delete_on_cleanup, ["wirecap_fanout_99d4"]);
        let reply = reply_queue(&c, "reply_x");
        assert!(!reply.durable && !reply.auto_delete);
        assert_eq!(reply.arguments.inner().get("x-expires"), Some(&AMQPValue::LongInt(1_800_000)));
    }

    #[test]
    fn quorum_ha_durable_variants() {
        let c = RabbitConfig {
            rabbit_quorum_queue: true,
            rabbit_quorum_delivery_limit: 5,
            rabbit_quorum_max_memory_bytes: 5_000_000_000,
            ..RabbitConfig::default()
        };
        let q = topic_queue(&c, "t");
        assert!(q.durable);
        let args = q.arguments.inner();
        assert_eq!(args.get("x-queue-type"), Some(&AMQPValue::LongString("quorum".into())));
        assert_eq!(args.get("x-delivery-limit"), Some(&AMQPValue::LongInt(5)));
        assert_eq!(args.get("x-max-in-memory-bytes"), Some(&AMQPValue::LongLongInt(5_000_000_000)));
        assert!(!args.contains_key("x-expires"));
        assert!(topic_exchange(&c, "openstack").durable);
        // Reply/fanout queues stay classic unless transient quorum is on.
        assert!(!fanout_queue(&c, "f").arguments.inner().contains_key("x-queue-type"));

        let c = RabbitConfig {
            rabbit_transient_quorum_queue: true,
            rabbit_quorum_delivery_limit: 5,
            ..RabbitConfig::default()
        };
        let reply = reply_queue(&c, "reply_h1");
        assert!(reply.durable);
        let args = reply.arguments.inner();
        assert_eq!(args.get("x-queue-type"), Some(&AMQPValue::LongString("quorum".into())));
        assert_eq!(args.get("x-delivery-limit"), Some(&AMQPValue::LongInt(5)));
        assert_eq!(args.get("x-expires"), Some(&AMQPValue::LongInt(1_800_000)));
        assert!(fanout_exchange(&c, "t").durable);
        assert!(!topic_exchange(&c, "openstack").durable);

        let c = RabbitConfig {
            rabbit_ha_queues: true,
            amqp_durable_queues: true,
            amqp_auto_delete: true,
            rabbit_transient_queues_ttl: 0,
            ..RabbitConfig::default()
        };
        let q = topic_queue(&c, "t");
        assert!(q.durable && q.auto_delete);
        assert_eq!(q.arguments.inner().get("x-ha-policy"), Some(&AMQPValue::LongString("all".into())));
        let f = fanout_queue(&c, "f");
        assert!(!f.durable && !f.auto_delete);
        assert!(!f.arguments.inner().contains_key("x-expires"), "ttl 0 leaves x-expires off");
        assert!(f.arguments.inner().contains_key("x-ha-policy"));
        let e = topic_exchange(&c, "x");
        assert!(e.durable && e.auto_delete);
    }

    #[test]
    fn notification_pools_bind_once_per_key_and_consume_once() {
        let c = RabbitConfig::default();
        let keys = vec![
            ("openstack".to_string(), "n.info".to_string()),
            ("openstack".to_string(), "n.error".to_string()),
        ];
        let t = notification_listener(&c, &keys, None);
        assert_eq!(t.consume, ["n.info", "n.error"]);
        assert_eq!(t.exchanges.len(), 1);
        let t = notification_listener(&c, &keys, Some("pool1"));
        assert_eq!(t.consume, ["pool1"]);
        assert_eq!(t.queues.len(), 1);
        assert_eq!(
            t.bindings.iter().map(|b| b.routing_key.as_str()).collect::<Vec<_>>(),
            ["n.info", "n.error"]
        );
        assert!(t.delete_on_cleanup.is_empty());
    }

    #[test]
    fn generated_names() {
        let name = new_fanout_queue_name("t");
        assert!(name.starts_with("t_fanout_") && name.len() == "t_fanout_".len() + 32);
        let reply = new_reply_queue_name();
        assert!(reply.starts_with("reply_") && reply.len() == 38);
        assert!(consumer_arguments(&RabbitConfig::default()).inner().is_empty());
    }
}
