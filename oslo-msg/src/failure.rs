//! What a command reports when it fails: one line on stderr (plus the details of a remote
//! error) and an exit status that tells the kind of failure apart.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use oslo_messaging::{Error, RemoteError};

use crate::style::Paint;

/// The exit statuses, one per kind of failure (documented in `--help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The server's endpoint raised (remote error, `NoSuchMethod`, `UnsupportedVersion`).
    Remote = 1,
    /// Bad command line: options, `KEY=VALUE` arguments, JSON, an invalid target.
    Usage = 2,
    /// Bad transport URL, driver not available, bad option or configuration file.
    Config = 3,
    /// The broker cannot be reached or did not take the message.
    Unreachable = 4,
    /// The broker refused us: authentication failed, access to the virtual host denied, or a
    /// declaration conflicts with what exists.
    Refused = 5,
    /// No reply in time (or `listen --count` not reached within `--timeout`).
    Timeout = 6,
    /// Nobody listens on the target (oslo `MessageUndeliverable`).
    NoListener = 7,
    /// Any other messaging failure (malformed message, internal error).
    Other = 8,
}

/// The `--help` text that documents [`Exit`].
pub const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  success
  1  the server raised an error (remote error, NoSuchMethod, UnsupportedVersion);
     its class, module, message and traceback are printed
  2  bad command line: unknown option, bad KEY=VALUE / KEY:=JSON argument, invalid target
  3  bad transport URL, driver not compiled in or not implemented, bad option or config file
  4  the broker cannot be reached, or did not take the message
  5  the broker refused: authentication failed, virtual host access denied, conflicting queue
  6  timed out: no reply within --timeout (listen: fewer than --count notifications)
  7  nobody listens on the target (MessageUndeliverable)
  8  any other messaging failure

The transport URL is the first argument when it contains a scheme (`rabbit://...`, `fake:`);
otherwise it comes from --config-file's [DEFAULT] transport_url, then from $OSLO_TRANSPORT_URL.
Passwords are never printed.";

/// A failed command: why, and with which exit status.
#[derive(Debug)]
pub struct Failure {
    exit: Exit,
    message: String,
    remote: Option<Box<RemoteError>>,
}

impl Failure {
    /// A failure of kind `exit` described by `message`.
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Failure {
            exit,
            message: message.into(),
            remote: None,
        }
    }

    /// A command-line mistake.
    pub fn usage(message: impl Into<String>) -> Self {
        Failure::new(Exit::Usage, message)
    }

    /// A configuration mistake (URL, options, config file).
    pub fn config(message: impl Into<String>) -> Self {
        Failure::new(Exit::Config, message)
    }

    /// A messaging error, `doing` saying what was attempted (e.g. `call echo`).
    pub fn messaging(doing: &str, error: Error) -> Self {
        let (exit, detail, remote) = classify(&error);
        Failure {
            exit,
            message: format!("{doing}: {detail}"),
            remote,
        }
    }

    /// A messaging error that needs no context (a bad URL, a driver that cannot load).
    pub fn from_error(error: Error) -> Self {
        let (exit, message, remote) = classify(&error);
        Failure { exit, message, remote }
    }

    /// The exit status of this failure.
    pub fn exit(&self) -> Exit {
        self.exit
    }

    /// The one-line message (without the remote details).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The remote error, when the server raised.
    pub fn remote(&self) -> Option<&RemoteError> {
        self.remote.as_deref()
    }

    /// Print to stderr (colored when stderr is a terminal) and give the exit code.
    pub fn report(&self) -> ExitCode {
        let paint = Paint::for_stream(std::io::stderr().is_terminal());
        let mut out = std::io::stderr().lock();
        let _ = writeln!(out, "oslo-msg: {} {}", paint.error("error:"), self.message);
        if let Some(remote) = &self.remote {
            let _ = write!(out, "{}", remote_details(remote, &paint, "  "));
        }
        ExitCode::from(self.exit as u8)
    }
}

/// The class, module, message and traceback of a remote error, one per line, each line
/// starting with `indent`.
pub fn remote_details(remote: &RemoteError, paint: &Paint, indent: &str) -> String {
    let mut text = String::new();
    text.push_str(&format!("{indent}class:     {}\n", paint.bold(&remote.exc_type)));
    text.push_str(&format!("{indent}module:    {}\n", remote.module));
    text.push_str(&format!("{indent}message:   {}\n", remote.message));
    let traceback = remote.traceback();
    if traceback.trim().is_empty() {
        text.push_str(&format!("{indent}traceback: (none sent)\n"));
    } else {
        text.push_str(&format!("{indent}traceback:\n"));
        for line in traceback.lines() {
            text.push_str(&format!("{indent}  {}\n", paint.dim(line)));
        }
    }
    text
}

/// Map a core error to an exit status, a one-line description and the remote details.
fn classify(error: &Error) -> (Exit, String, Option<Box<RemoteError>>) {
    const DISPATCHER: &str = "oslo_messaging.rpc.dispatcher";
    match error {
        Error::Remote(remote) => (
            Exit::Remote,
            format!("the server raised {}: {}", remote.exc_type, remote.message),
            Some(remote.clone()),
        ),
        Error::NoSuchMethod { .. } | Error::UnsupportedVersion { .. } => {
            let (class, message) = (error.oslo_class(), message_of(error));
            (
                Exit::Remote,
                format!("the server raised {class}: {message}"),
                Some(Box::new(RemoteError::new(class, DISPATCHER, message))),
            )
        }
        Error::MessagingTimeout { message } => (
            Exit::Timeout,
            format!("timed out (MessagingTimeout): {message} No server answered in time; raise --timeout if the method is slow."),
            None,
        ),
        Error::MessageUndeliverable { exchange, routing_key } => (
            Exit::NoListener,
            format!(
                "nobody is listening: no queue is bound to routing key {routing_key:?} on exchange {exchange:?} (MessageUndeliverable)"
            ),
            None,
        ),
        Error::InvalidTransportUrl { reason, url } => (Exit::Config, format!("invalid transport URL {url}: {reason}"), None),
        Error::DriverLoadFailure { .. } | Error::Configuration { .. } => (Exit::Config, error.to_string(), None),
        Error::InvalidTarget { .. } | Error::RpcVersionCap { .. } | Error::Serialization(_) => (Exit::Usage, error.to_string(), None),
        Error::MessageDeliveryFailure { message, .. } => (Exit::Unreachable, format!("MessageDeliveryFailure: {message}"), None),
        Error::Transport {
            retryable: false, message, ..
        } => (Exit::Refused, format!("the broker refused: {message}"), None),
        Error::Transport { message, .. } => (Exit::Unreachable, format!("broker connection failed: {message}"), None),
        other => (Exit::Other, other.to_string(), None),
    }
}

/// The Display text of a typed error without its `Class: ` prefix.
fn message_of(error: &Error) -> String {
    let text = error.to_string();
    match text.split_once(": ") {
        Some((_, rest)) => rest.to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_kind_has_its_own_exit_status() {
        let cases = [
            (Error::timeout("no reply"), Exit::Timeout),
            (
                Error::MessageUndeliverable {
                    exchange: "openstack".into(),
                    routing_key: "t".into(),
                },
                Exit::NoListener,
            ),
            (Error::transport("rabbit", "authentication failed", false), Exit::Refused),
            (Error::transport("rabbit", "connection reset", true), Exit::Unreachable),
            (
                Error::MessageDeliveryFailure {
                    message: "Unable to connect".into(),
                    retryable: true,
                },
                Exit::Unreachable,
            ),
            (Error::configuration("rabbit_bogus", "no such option"), Exit::Config),
            (Error::NoSuchMethod { method: "m".into() }, Exit::Remote),
            (Error::invalid_message("bad"), Exit::Other),
        ];
        for (error, exit) in cases {
            assert_eq!(Failure::messaging("call m", error).exit(), exit);
        }
    }

    #[test]
    fn remote_errors_keep_their_details() {
        let mut remote = RemoteError::new("ValueError", "builtins", "boom");
        remote.tb = vec!["Traceback (most recent call last):\n".into(), "ValueError: boom\n".into()];
        let failure = Failure::messaging("call fail", Error::Remote(Box::new(remote)));
        assert_eq!(failure.exit(), Exit::Remote);
        assert_eq!(failure.message(), "call fail: the server raised ValueError: boom");
        let details = remote_details(failure.remote().unwrap(), &Paint::for_stream(false), "  ");
        assert!(details.contains("module:    builtins"), "{details}");
        assert!(details.contains("    ValueError: boom"), "{details}");
    }

    #[test]
    fn dispatcher_errors_are_shown_as_remote() {
        let failure = Failure::messaging("call x", Error::NoSuchMethod { method: "x".into() });
        let remote = failure.remote().unwrap();
        assert_eq!(remote.exc_type, "NoSuchMethod");
        assert_eq!(remote.message, "Endpoint does not support RPC method x");
    }
}
