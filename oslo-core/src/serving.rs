//! The consume loop shared by `RpcServer` and `NotificationListener` (oslo's
//! `MessageHandlingServer`): bounded concurrency, optional batching, and an ordered
//! stop → wait that lets messages already taken finish.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{watch, Mutex, Semaphore};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::driver::{IncomingMessage, Listener};

/// Handles one message, or one batch of messages.
pub(crate) type MessageHandler = Arc<dyn Fn(Vec<Box<dyn IncomingMessage>>) -> BoxFuture<'static, ()> + Send + Sync>;

/// How a [`ServerHandle`] takes messages.
pub(crate) struct ServeOptions {
    /// Messages (or batches) handled at once.
    pub pool_size: usize,
    /// Gather up to this many messages, waiting at most this long, per handler call.
    pub batch: Option<(usize, Duration)>,
}

/// A running consume loop.
#[derive(Debug)]
pub(crate) struct ServerHandle {
    stop: watch::Sender<bool>,
    /// Becomes true once the listener stopped consuming (every `stop()` caller waits for it).
    stopped: watch::Receiver<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl ServerHandle {
    /// Start consuming from `listener`, handing messages to `handler`.
    pub(crate) fn spawn(listener: Box<dyn Listener>, options: ServeOptions, span: tracing::Span, handler: MessageHandler) -> Self {
        let (stop, stop_receiver) = watch::channel(false);
        let (stopped_sender, stopped) = watch::channel(false);
        let task = tokio::spawn(serve(listener, options, handler, stop_receiver, stopped_sender).instrument(span));
        ServerHandle {
            stop,
            stopped,
            task: Mutex::new(Some(task)),
        }
    }

    /// Stop taking messages; returns once the listener stopped consuming.
    pub(crate) async fn stop(&self) {
        let _ = self.stop.send(true);
        // Err means the loop already ended, which also means it stopped.
        let _ = self.stopped.clone().wait_for(|stopped| *stopped).await;
    }

    /// Wait for the messages taken to be handled and the listener to be cleaned up.
    pub(crate) async fn wait(&self) {
        if let Some(task) = self.task.lock().await.take() {
            if let Err(err) = task.await {
                tracing::error!(error = %err, "consume loop failed");
            }
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        // A dropped server stops consuming; messages taken still finish in the background.
        let _ = self.stop.send(true);
    }
}

async fn serve(
    mut listener: Box<dyn Listener>,
    options: ServeOptions,
    handler: MessageHandler,
    mut stop: watch::Receiver<bool>,
    stopped: watch::Sender<bool>,
) {
    let pool_size = options.pool_size.clamp(1, u32::MAX as usize);
    // A handler task holds one slot until it ends (even by a panic), so taking every slot
    // back below means every message taken has been handled.
    let slots = Arc::new(Semaphore::new(pool_size));
    loop {
        // Take a message only when a slot is free: what the driver has not handed over stays
        // with it, bounded by its own flow control (rabbit: the listener prefetch; amqp1: link
        // credit; zmq: the high-water mark; fake: the queue bound).
        let permit = tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => break,
            permit = slots.clone().acquire_owned() => permit.expect("semaphore never closed"),
        };
        let first = tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => break,
            message = listener.next() => message,
        };
        let Some(first) = first else { break };
        let mut messages = vec![first];
        if let Some((size, timeout)) = options.batch {
            let deadline = tokio::time::Instant::now() + timeout;
            while messages.len() < size {
                tokio::select! {
                    biased;
                    _ = stop.wait_for(|stop| *stop) => break,
                    _ = tokio::time::sleep_until(deadline) => break,
                    message = listener.next() => match message {
                        Some(message) => messages.push(message),
                        None => break,
                    },
                }
            }
        }
        let work = handler(messages);
        // The handler task keeps the server's span, so its logs say which server they are from.
        // (A plain task, not a JoinSet: that would take two more locks per message.)
        tokio::spawn(
            async move {
                work.await;
                drop(permit);
            }
            .in_current_span(),
        );
    }
    listener.stop().await;
    let _ = stopped.send(true);
    let _ = slots.acquire_many(pool_size as u32).await;
    listener.cleanup().await;
}
