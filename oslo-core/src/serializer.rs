//! The serializer hook for entities and context (oslo `serializer.py`).

use std::fmt;

use serde_json::Value;

use crate::codec::JsonMap;
use crate::error::Result;

/// Converts application objects to and from JSON on the way out and in (oslo `Serializer`).
///
/// The client serializes the context and every argument before sending and deserializes the
/// result; the server does the reverse. Every method defaults to the identity.
pub trait Serializer: Send + Sync + fmt::Debug {
    /// Turn an outgoing argument or result into plain JSON.
    fn serialize_entity(&self, _context: &JsonMap, entity: Value) -> Result<Value> {
        Ok(entity)
    }

    /// Turn an incoming argument or result back into the application's form.
    fn deserialize_entity(&self, _context: &JsonMap, entity: Value) -> Result<Value> {
        Ok(entity)
    }

    /// Turn the application's context into the dict sent on the wire.
    fn serialize_context(&self, context: &JsonMap) -> Result<JsonMap> {
        Ok(context.clone())
    }

    /// Turn the received context dict into the application's context.
    fn deserialize_context(&self, context: JsonMap) -> Result<JsonMap> {
        Ok(context)
    }
}

/// The identity serializer (oslo `NoOpSerializer`), the default.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoOpSerializer;

impl Serializer for NoOpSerializer {}
