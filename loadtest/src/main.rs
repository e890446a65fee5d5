//! The `amtp-loadtest` command: see the crate documentation and loadtest/README.md.

use amtp_loadtest::{blast, dns, fixtures, hold, report, sink};
use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "amtp-loadtest",
    version,
    about = "Load generator, fixtures, sink and reports for SMTP/AMTP relays (loopback by default)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drive a relay with SMTP, STARTTLS, implicit TLS or AMTP load and report throughput and latency.
    Blast(Box<blast::BlastArgs>),
    /// Generate a CA, certificates, client identities, DNS zones and a relay config for a run.
    Fixtures(fixtures::FixturesArgs),
    /// Serve fixture zone files on loopback (authoritative DNS for PTR/A/SRV).
    Dns(dns::DnsArgs),
    /// A fast accept-and-discard SMTP/AMTP next hop.
    Sink(sink::SinkArgs),
    /// Open and hold idle sessions; report the relay's memory per connection.
    Hold(hold::HoldArgs),
    /// Turn `blast --json` results into an HTML page with charts.
    Report(report::ReportArgs),
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Blast(args) => {
            let json = args.json;
            let result = blast::run(*args)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&result)?);
            } else {
                print!("{}", result.table());
            }
        }
        Command::Fixtures(args) => {
            let manifest = fixtures::generate(&args)?;
            println!(
                "fixtures: {} client identities, CA, server certificate, zones and relay.toml in {}\n\
                 next: see the comment at the top of {}",
                manifest.identities.len(),
                args.out.display(),
                args.out.join("relay.toml").display()
            );
        }
        Command::Dns(args) => dns::main(args)?,
        Command::Sink(args) => sink::main(args)?,
        Command::Hold(args) => {
            let json = args.json;
            let result = hold::run(args)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&result)?);
            } else {
                println!("{}", result.text());
            }
        }
        Command::Report(args) => report::main(args)?,
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("amtp-loadtest: {e:#}");
            ExitCode::from(2)
        }
    }
}
