//! Logs on stderr through `tracing`.
//!
//! One-shot commands log nothing unless asked (`-v`, `RUST_LOG`): their failure is the one
//! line they print. `serve` and `listen` log warnings (lost connections, reconnects), but only
//! once they are up, so that a failure to start is one line too.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::filter::{filter_fn, EnvFilter, FilterExt};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Set up logging: `-v` info, `-vv` debug, `RUST_LOG` overriding both.
pub fn init(verbose: u8, long_running: bool) {
    let explicit = std::env::var_os("RUST_LOG").is_some() || verbose > 0;
    let default = match verbose {
        0 if long_running => "warn,lapin=error",
        0 => "off",
        1 => "info,lapin=error",
        _ => "debug",
    };
    ENABLED.store(explicit, Ordering::Relaxed);
    let levels = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let gate = filter_fn(|_| ENABLED.load(Ordering::Relaxed));
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()))
        .with_filter(levels.and(gate));
    tracing_subscriber::registry().with(layer).init();
}

/// A long-running command is up: let its warnings through from now on.
pub fn started() {
    ENABLED.store(true, Ordering::Relaxed);
}
