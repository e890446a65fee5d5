//! tracing setup: human-readable lines by default, JSON with `--log-format json` or
//! `[logging] format = "json"`; `RUST_LOG` overrides the configured level. sled and actix log
//! through `log`, which tracing-subscriber bridges.

use crate::config::LogFormat;
use tracing_subscriber::EnvFilter;

/// Install the global subscriber (stderr). Colours only on a terminal, and never with
/// `NO_COLOR` set, so log files and journald get plain text.
pub fn init(format: LogFormat, level: &str) {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
