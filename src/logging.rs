//! tracing setup: human-readable lines by default, JSON with `--log-format json` or
//! `[logging] format = "json"`; `RUST_LOG` overrides the configured level. sled and actix log
//! through `log`, which tracing-subscriber bridges.
//!
//! The level filter sits behind a reload handle ([`LevelHandle`]), so a configuration reload
//! changes `[logging] level` in the running process (unless `RUST_LOG` overrides it; the
//! format is fixed at start).
//!
//! A log line that cannot be written (stderr closed: `amtp-relay serve 2>&1 | head`, a dead
//! log collector) is dropped and counted (`amtp_log_lines_dropped_total`); the relay keeps
//! serving. tracing-subscriber would otherwise report the failure with `eprintln!`, which
//! panics on the same broken stderr.

use crate::config::LogFormat;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

/// Changes the level filter of the running process.
pub struct LevelHandle {
    handle: reload::Handle<EnvFilter, Registry>,
    /// `RUST_LOG` was set: it wins over the configuration, also after a reload.
    from_env: bool,
}

impl LevelHandle {
    /// Apply `level` (already validated by the configuration check). Returns whether the
    /// filter changed (`false` when `RUST_LOG` overrides the configuration).
    pub fn set(&self, level: &str) -> bool {
        if self.from_env {
            return false;
        }
        match EnvFilter::try_new(level) {
            Ok(filter) => self.handle.reload(filter).is_ok(),
            Err(_) => false,
        }
    }
}

/// Install the global subscriber (stderr). Colours only on a terminal, and never with
/// `NO_COLOR` set, so log files and journald get plain text.
pub fn init(format: LogFormat, level: &str) -> LevelHandle {
    use std::io::IsTerminal;
    let (filter, from_env) = match EnvFilter::try_from_default_env() {
        Ok(f) => (f, true),
        Err(_) => (EnvFilter::new(level), false),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let text = (format == LogFormat::Text).then(|| {
        fmt::layer()
            .with_writer(|| Stderr)
            .log_internal_errors(false)
            .with_ansi(ansi)
    });
    let json = (format == LogFormat::Json).then(|| {
        fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(|| Stderr)
            .log_internal_errors(false)
            .with_ansi(false)
    });
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .try_init();
    LevelHandle { handle, from_env }
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
