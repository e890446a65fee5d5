//! tracing setup: human-readable lines by default, JSON with `--log-format json` or
//! `[logging] format = "json"`; `RUST_LOG` overrides the configured level. sled and actix log
//! through `log`, which tracing-subscriber bridges.

use crate::config::LogFormat;
use tracing_subscriber::EnvFilter;

/// Install the global subscriber (stderr).
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
