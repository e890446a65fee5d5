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
//! - `serve` — `serve`: bind, open, start, wait for a signal.
//! - `queue_cmd` — `queue list|show`, via the admin socket or the data directory.
//! - `probe` — `probe TARGET`: check (and send to) an AMTP peer with the outbound client.

mod config;
mod devinit;
mod logging;
mod probe;
mod queue_cmd;
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
    /// Validate a configuration file; exits 64 naming the bad field.
    CheckConfig {
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
    },
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, log_format } => {
            let config = match config::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("amtp-relay: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            logging::init(
                log_format.unwrap_or(config.file.logging.format),
                &config.file.logging.level,
            );
            tracing::info!(config = %config.origin, "starting amtp-relay {}", env!("CARGO_PKG_VERSION"));
            match serve::run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("amtp-relay: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig { config } => match config::load(Some(&config)) {
            Ok(c) => {
                println!(
                    "{}: OK ({} listener(s), data_dir {})",
                    c.origin,
                    c.file.listeners.len(),
                    c.data_dir.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("amtp-relay: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Queue {
            action,
            data_dir,
            config,
        } => {
            let (data_dir, hostname) = match (data_dir, config) {
                (Some(d), _) => (d, "localhost".to_string()),
                (None, Some(c)) => match config::load(Some(&c)) {
                    Ok(c) => (c.data_dir, c.file.server.hostname),
                    Err(e) => {
                        eprintln!("amtp-relay: {e}");
                        return ExitCode::from(EXIT_CONFIG);
                    }
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
