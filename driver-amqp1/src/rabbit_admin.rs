//! Queue housekeeping on RabbitMQ over AMQP 0-9-1 (same port, same credentials).
//!
//! RabbitMQ 3.x's `rabbitmq_amqp1_0` plugin has no dynamic (temporary) sources and makes a
//! never-deleted `amq.gen-*` queue for every receiver on an exchange, and no AMQP 1.0 operation
//! deletes a queue. So on RabbitMQ the driver declares its private queues (the reply queue and
//! each server's fanout queue) itself, over AMQP 0-9-1, with `x-expires` as a safety net for a
//! process that dies, binds them to `amq.direct`, consumes them over AMQP 1.0 through
//! `/amq/queue/<name>`, and deletes them on `cleanup()`.

use std::time::Duration;

use lapin::options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties};
use oslo_core::{Error, Result};
use tokio::sync::Mutex;

use crate::connect::Broker;
use crate::DRIVER_NAME;

/// The exchange private queues are bound to; AMQP 1.0 senders reach them through
/// `/exchange/amq.direct/<queue name>` (it always exists, so attaching never fails).
pub(crate) const EXCHANGE: &str = "amq.direct";

/// Private queues expire this long after their last consumer went away (a crashed process).
const EXPIRES_MS: i32 = 30 * 60 * 1000;

/// An AMQP 0-9-1 side connection for declaring and deleting the driver's private queues.
pub(crate) struct RabbitAdmin {
    vhost: String,
    tls: bool,
    state: Mutex<Option<(Connection, Channel)>>,
}

impl std::fmt::Debug for RabbitAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitAdmin").field("vhost", &self.vhost).finish()
    }
}

fn admin_error(what: &str, err: impl std::fmt::Display) -> Error {
    Error::transport(DRIVER_NAME, format!("RabbitMQ queue housekeeping ({what}): {err}"), true)
}

impl RabbitAdmin {
    pub fn new(vhost: Option<&str>, tls: bool) -> Self {
        RabbitAdmin {
            vhost: vhost.unwrap_or("/").to_string(),
            tls,
            state: Mutex::new(None),
        }
    }

    async fn channel(&self, broker: &Broker) -> Result<Channel> {
        let mut state = self.state.lock().await;
        if let Some((connection, channel)) = state.as_ref() {
            if connection.status().connected() && channel.status().connected() {
                return Ok(channel.clone());
            }
        }
        let uri = broker.amqp091_uri(&self.vhost, self.tls);
        let properties = ConnectionProperties::default().with_connection_name(format!("amqp1-housekeeping:{}", std::process::id()).into());
        let connection = tokio::time::timeout(Duration::from_secs(30), Connection::connect_uri(uri, properties))
            .await
            .map_err(|_| admin_error("connect", "timed out"))?
            .map_err(|e| admin_error("connect", e))?;
        let channel = connection.create_channel().await.map_err(|e| admin_error("channel", e))?;
        *state = Some((connection, channel.clone()));
        Ok(channel)
    }

    /// Declare `queue` (non-durable, `x-expires`) and bind it to [`EXCHANGE`] with `key`.
    pub async fn declare_private_queue(&self, broker: &Broker, queue: &str, key: &str) -> Result<()> {
        self.declare_bound_queue(broker, queue, key, true).await
    }

    /// Declare a shared queue (non-durable, no expiry: the same arguments the AMQP 1.0 plugin
    /// uses for `/queue/<name>`, so both declarations agree) and bind it to [`EXCHANGE`] with `key`.
    pub async fn declare_shared_queue(&self, broker: &Broker, queue: &str, key: &str) -> Result<()> {
        self.declare_bound_queue(broker, queue, key, false).await
    }

    async fn declare_bound_queue(&self, broker: &Broker, queue: &str, key: &str, expires: bool) -> Result<()> {
        let mut last = None;
        for _ in 0..2 {
            let channel = self.channel(broker).await?;
            let mut args = FieldTable::default();
            if expires {
                args.insert("x-expires".into(), AMQPValue::LongInt(EXPIRES_MS));
            }
            let declared = channel.queue_declare(queue.into(), QueueDeclareOptions::default(), args).await;
            let bound = match declared {
                Ok(_) => {
                    channel
                        .queue_bind(
                            queue.into(),
                            EXCHANGE.into(),
                            key.into(),
                            QueueBindOptions::default(),
                            FieldTable::default(),
                        )
                        .await
                }
                Err(e) => Err(e),
            };
            match bound {
                Ok(()) => return Ok(()),
                Err(e) => {
                    // A closed channel is reopened once.
                    *self.state.lock().await = None;
                    last = Some(e);
                }
            }
        }
        Err(admin_error("declare", last.expect("an error")))
    }

    /// Delete `queue` if it exists.
    pub async fn delete_queue(&self, broker: &Broker, queue: &str) -> Result<()> {
        let channel = self.channel(broker).await?;
        match tokio::time::timeout(
            Duration::from_secs(10),
            channel.queue_delete(queue.into(), QueueDeleteOptions::default()),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                *self.state.lock().await = None;
                Err(admin_error("delete", e))
            }
            Err(_) => Err(admin_error("delete", "timed out")),
        }
    }

    /// Close the side connection.
    pub async fn close(&self) {
        if let Some((connection, _)) = self.state.lock().await.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), connection.close(200, "cleanup".into())).await;
        }
    }
}
