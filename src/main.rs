//! `amtp-relay` — an AMTP/SMTP edge relay.
//!
//! The binary only: command line, configuration, logging, and starting the actor system.
//! Protocol logic lives in `amtp-proto`, actors in `amtp-actors`, the queue in
//! `amtp-storage`.
//!
//! # Layout
//! - `config` — the config file: structure, embedded dev default, validation.
//! - `devinit` — first-start dev certificate and dev user.
//! - `logging` — tracing setup.
//! - `preflight` — the checks that read the files a configuration names (certificates, keys,
//!   CA sets, users), shared by `check-config`, `serve` and reload.
//! - `serve` — `serve`: bind, open, start, then the control loop (signals, admin commands).
//! - `reload` — apply a configuration file to a running relay without dropping a session.
//! - `notify` — systemd readiness notification.
//! - `queue_cmd` — `queue list|show`, via the admin socket or the data directory.
//! - `probe` — `probe TARGET`: check (and send to) an AMTP peer with the outbound client.

mod config;
mod devinit;
mod logging;
mod notify;
mod preflight;
mod probe;
mod queue_cmd;
mod reload;
mod serve;

use clap::{Parser, Subcommand};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for configuration errors (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(name = "amtp-relay", version, about = "AMTP/SMTP edge relay")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay (without --config: the embedded loopback dev configuration).
    Serve {
        /// Configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override the log format from the configuration.
        #[arg(long, value_enum)]
        log_format: Option<config::LogFormat>,
    },
    /// Validate a configuration file and the files it names (certificate, key, CA sets,
    /// users); prints every error and warning, exits 64 when there is an error.
    CheckConfig {
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Make the running relay re-read its configuration file (like SIGHUP); prints the
    /// outcome, exits 1 if the new configuration was refused.
    Reload(AdminArgs),
    /// Stop taking new connections (readiness 503, new connections get 421 4.3.2); open
    /// sessions and delivery continue.
    Drain(AdminArgs),
    /// Undo `drain`.
    Resume(AdminArgs),
    /// Inspect the queue (read-only), of a running or stopped relay.
    Queue {
        #[command(subcommand)]
        action: QueueAction,
        /// The relay's data directory (default: from --config, else ./amtp-data).
        #[arg(long, global = true)]
        data_dir: Option<PathBuf>,
        /// Take the data directory from this configuration file.
        #[arg(long, global = true)]
        config: Option<PathBuf>,
    },
    /// The fleet as this relay sees it in Redis (`[cluster]`): `cluster status` lists the
    /// nodes, their version, queue depth and when each was last seen. Asks the running relay
    /// over its admin socket.
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
        /// The relay's data directory (default: from --config, else ./amtp-data).
        #[arg(long, global = true)]
        data_dir: Option<PathBuf>,
        /// Take the data directory from this configuration file.
        #[arg(long, global = true)]
        config: Option<PathBuf>,
    },
    /// Check an AMTP peer step by step (SRV, TCP, TLS, identity, EHLO, MPC policy, MAIL,
    /// RCPT), and with --send send it a message. Exit codes: 0 accepted, 1 other failure,
    /// 3 connect failed, 4 TLS refused, 5 identity refused (504), 6 policy refused (550),
    /// 64 bad options.
    Probe(Box<probe::ProbeArgs>),
    /// Read a password from stdin and print a users-file entry for it.
    HashPassword {
        /// The user name for the entry.
        #[arg(long, default_value = "user")]
        user: String,
        /// Also store a CRAM-MD5 secret (see docs/CONFIG.md for the trade-off).
        #[arg(long)]
        cram_md5: bool,
    },
}

/// How a life-cycle command finds the running relay's admin socket.
#[derive(clap::Args)]
struct AdminArgs {
    /// The relay's data directory (default: from --config, else ./amtp-data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Take the data directory from this configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ClusterAction {
    /// The nodes and when each was last seen.
    Status,
}

#[derive(Subcommand)]
enum QueueAction {
    /// One line per message: id, size, sender, recipients, Message-ID.
    List,
    /// Envelope, status and headers of one message.
    Show {
        /// The queue id (16 hex digits).
        id: String,
    },
    /// Counts by state and destination, oldest age.
    Stats,
    /// Make a message (or all) due now; messages being delivered are left alone.
    Retry {
        /// The queue id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every message.
        #[arg(long)]
        all: bool,
    },
    /// Remove a message without telling the sender.
    Delete {
        /// The queue id.
        id: String,
    },
    /// Return a message to its sender (DSN) and remove it.
    Bounce {
        /// The queue id.
        id: String,
    },
    /// Compact the spool now: move the last live bodies out of sparse segments.
    Compact,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config: path,
            log_format,
        } => {
            let config = match config::load(path.as_deref()) {
                Ok(c) => c,
                Err(e) => return config_errors(&e),
            };
            // What check-config refuses, serve refuses, before anything starts.
            let report = preflight::check(&config);
            if report.errors().next().is_some() {
                for e in report.errors() {
                    eprintln!("amtp-relay: {e}");
                }
                return ExitCode::from(EXIT_CONFIG);
            }
            let level = logging::init(
                log_format.unwrap_or(config.file.logging.format),
                &config.file.logging.level,
            );
            tracing::info!(config = %config.origin, "starting amtp-relay {}", env!("CARGO_PKG_VERSION"));
            for w in report.warnings() {
                tracing::warn!("{w}");
            }
            // A fatal error is printed once: logged (stderr, in the configured format), or
            // printed plainly when the log filter would drop it.
            match serve::run(config, path, level) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    if tracing::enabled!(tracing::Level::ERROR) {
                        tracing::error!("{e:#}");
                    } else {
                        eprintln!("amtp-relay: {e:#}");
                    }
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig { config } => check_config(&config),
        Command::Reload(args) => life_cycle(&args, "reload"),
        Command::Drain(args) => life_cycle(&args, "drain"),
        Command::Resume(args) => life_cycle(&args, "resume"),
        Command::Queue {
            action,
            data_dir,
            config,
        } => {
            let (data_dir, hostname) = match (data_dir, config) {
                (Some(d), _) => (d, "localhost".to_string()),
                (None, Some(c)) => match config::load(Some(&c)) {
                    Ok(c) => (c.data_dir, c.file.server.hostname),
                    Err(e) => return config_errors(&e),
                },
                (None, None) => (PathBuf::from("./amtp-data"), "localhost".to_string()),
            };
            let query = match action {
                QueueAction::List => "list".to_string(),
                QueueAction::Show { id } => format!("show {id}"),
                QueueAction::Stats => "stats".to_string(),
                QueueAction::Retry { all: true, .. } => "retry --all".to_string(),
                QueueAction::Retry { id, .. } => format!("retry {}", id.unwrap_or_default()),
                QueueAction::Delete { id } => format!("delete {id}"),
                QueueAction::Bounce { id } => format!("bounce {id}"),
                QueueAction::Compact => "compact".to_string(),
            };
            match queue_cmd::run(&data_dir, &query, &hostname) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("amtp-relay: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Cluster {
            action: ClusterAction::Status,
            data_dir,
            config,
        } => {
            let data_dir = match (data_dir, config) {
                (Some(d), _) => d,
                (None, Some(c)) => match config::load(Some(&c)) {
                    Ok(c) => c.data_dir,
                    Err(e) => {
                        eprintln!("amtp-relay: {e}");
                        return ExitCode::from(EXIT_CONFIG);
                    }
                },
                (None, None) => PathBuf::from("./amtp-data"),
            };
            let socket = data_dir.join("admin.sock");
            match amtp_actors::admin::query(&socket, "cluster status") {
                Ok(Some(Ok(text))) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Ok(Some(Err(e))) => {
                    eprintln!("amtp-relay: {e}");
                    ExitCode::FAILURE
                }
                Ok(None) => {
                    eprintln!(
                        "amtp-relay: no relay answers on {} (cluster status asks a running relay)",
                        socket.display()
                    );
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("amtp-relay: {}: {e}", socket.display());
                    ExitCode::FAILURE
                }
            }
        }
        Command::Probe(args) => probe::run(*args),
        Command::HashPassword { user, cram_md5 } => {
            let mut line = String::new();
            if std::io::stdin().lock().read_line(&mut line).is_err()
                || line.trim_end_matches(['\r', '\n']).is_empty()
            {
                eprintln!("amtp-relay: expected the password on standard input");
                return ExitCode::FAILURE;
            }
            print!(
                "{}",
                amtp_actors::auth::users::users_file_entry(
                    &user,
                    line.trim_end_matches(['\r', '\n']),
                    cram_md5
                )
            );
            ExitCode::SUCCESS
        }
    }
}

/// `check-config`: every error and warning, in file order; exit 64 on any error.
fn check_config(path: &std::path::Path) -> ExitCode {
    let c = match config::load(Some(path)) {
        Ok(c) => c,
        Err(e) => return config_errors(&e),
    };
    let report = preflight::check(&c);
    for f in &report.findings {
        eprintln!("amtp-relay: {f}");
    }
    if report.errors().next().is_some() {
        return ExitCode::from(EXIT_CONFIG);
    }
    println!(
        "{}: OK ({} listener(s), data_dir {})",
        c.origin,
        c.file.listeners.len(),
        c.data_dir.display()
    );
    ExitCode::SUCCESS
}

/// `reload`, `drain`, `resume`: one command over the running relay's admin socket.
fn life_cycle(args: &AdminArgs, command: &str) -> ExitCode {
    let data_dir = match (&args.data_dir, &args.config) {
        (Some(d), _) => d.clone(),
        (None, Some(c)) => match config::load(Some(c)) {
            Ok(c) => c.data_dir,
            Err(e) => return config_errors(&e),
        },
        (None, None) => PathBuf::from("./amtp-data"),
    };
    let socket = data_dir.join("admin.sock");
    match amtp_actors::admin::query(&socket, command) {
        Ok(Some(Ok(text))) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Ok(Some(Err(e))) => {
            eprintln!("amtp-relay: {command} refused: {e}");
            ExitCode::FAILURE
        }
        Ok(None) => {
            eprintln!(
                "amtp-relay: no relay is running with data directory {} (no admin socket at {})",
                data_dir.display(),
                socket.display()
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!(
                "amtp-relay: cannot reach the relay at {}: {e}",
                socket.display()
            );
            ExitCode::FAILURE
        }
    }
}

/// Print every configuration error, one per line; exit 64.
fn config_errors(errors: &config::ConfigErrors) -> ExitCode {
    for e in &errors.0 {
        eprintln!("amtp-relay: {e}");
    }
    ExitCode::from(EXIT_CONFIG)
}
