//! RPC: client, server and dispatcher.

mod client;
mod dispatcher;
mod server;

pub use client::RpcClient;
pub use dispatcher::{AccessPolicy, Endpoint, RpcDispatcher, PING_METHOD};
pub use server::{RpcServer, RpcServerBuilder};
