//! Bounded log fields for values taken from messages.
//!
//! Method names, ids, reply queue names, error texts (serde's "invalid type: string \"...\""
//! quotes the offending value whole) all come from whoever sent the message: logged whole, a
//! 1 MiB method name makes 1 MiB log lines and a 50 MiB argument 50 MiB ones. Every log field
//! taken from a message goes through [`clip`], which keeps the first [`LOG_FIELD_LIMIT`]
//! characters and says how long the original was.

use std::fmt;

/// Characters of a message-derived value a log line shows at most.
pub const LOG_FIELD_LIMIT: usize = 256;

/// A string shown with at most [`LOG_FIELD_LIMIT`] characters (see [`clip`]).
#[derive(Clone, Copy)]
pub struct Clipped<'a>(&'a str);

/// `text` for a log field: itself when short, else its first [`LOG_FIELD_LIMIT`] characters and
/// `... (N bytes in all)`.
///
/// ```
/// use oslo_core::clip::{clip, LOG_FIELD_LIMIT};
/// assert_eq!(clip("short").to_string(), "short");
/// let long = "x".repeat(1 << 20);
/// let shown = clip(&long).to_string();
/// assert!(shown.len() < LOG_FIELD_LIMIT + 40);
/// assert!(shown.ends_with("... (1048576 bytes in all)"));
/// ```
pub fn clip(text: &str) -> Clipped<'_> {
    Clipped(text)
}

impl fmt::Display for Clipped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(LOG_FIELD_LIMIT) {
            None => f.write_str(self.0),
            Some((end, _)) => write!(f, "{}... ({} bytes in all)", &self.0[..end], self.0.len()),
        }
    }
}

impl fmt::Debug for Clipped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(LOG_FIELD_LIMIT) {
            None => fmt::Debug::fmt(self.0, f),
            Some((end, _)) => write!(f, "{:?}... ({} bytes in all)", &self.0[..end], self.0.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clips_on_character_boundaries() {
        let text = "é".repeat(LOG_FIELD_LIMIT + 1);
        let shown = clip(&text).to_string();
        assert!(shown.starts_with(&"é".repeat(LOG_FIELD_LIMIT)));
        assert!(shown.ends_with(&format!("... ({} bytes in all)", text.len())));
        let exact = "a".repeat(LOG_FIELD_LIMIT);
        assert_eq!(clip(&exact).to_string(), exact);
        assert_eq!(format!("{:?}", clip("a\"b")), "\"a\\\"b\"");
    }
}
