//! tracing setup: human-readable lines by default, JSON with `--log-format json` or
//! `[logging] format = "json"`; `RUST_LOG` overrides the configured level. sled and actix log
//! through `log`, which tracing-subscriber bridges.
//!
//! A log line that cannot be written (stderr closed: `amtp-relay serve 2>&1 | head`, a dead
//! log collector) is dropped and counted (`amtp_log_lines_dropped_total`); the relay keeps
//! serving. tracing-subscriber would otherwise report the failure with `eprintln!`, which
//! panics on the same broken stderr.

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
        .with_writer(|| Stderr)
        .log_internal_errors(false)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// stderr that never fails: a line it cannot write is dropped and counted.
struct Stderr;

impl std::io::Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf).map(|()| buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if std::io::stderr().write_all(buf).is_err() {
            amtp_actors::metrics::log_line_dropped();
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}
