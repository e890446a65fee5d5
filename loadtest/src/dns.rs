//! `amtp-loadtest dns`: an authoritative DNS server (hickory-server) on loopback for the zone
//! files `fixtures` writes, so a load run's PTR, A and SRV lookups are answered by a real DNS
//! server without touching the machine's resolver. Any other DNS server can load the same
//! master files instead.

use anyhow::Context;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{LowerName, Name};
use hickory_server::Server;
use hickory_server::proto::serialize::txt::Parser;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct DnsArgs {
    /// Directory of master files named `<origin>.zone` (as `fixtures` writes them).
    #[arg(long)]
    pub zones: PathBuf,
    /// UDP and TCP address to answer on.
    #[arg(long, default_value = "127.0.0.1:5353")]
    pub listen: SocketAddr,
    /// Stop after this long.
    #[arg(long, default_value = "24h", value_parser = crate::units::parse_duration)]
    pub duration: Duration,
    /// Permit listening outside loopback.
    #[arg(long)]
    pub allow_non_loopback: bool,
}

/// Loads every `*.zone` file in `dir` (named after its origin) into a catalog.
pub fn catalog(dir: &Path) -> anyhow::Result<(Catalog, Vec<String>)> {
    let mut zones = Vec::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        let Some(origin) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".zone"))
        else {
            continue;
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        zones.push((origin.to_string(), text));
    }
    anyhow::ensure!(!zones.is_empty(), "no *.zone files in {}", dir.display());
    catalog_from(zones).with_context(|| format!("zones in {}", dir.display()))
}

/// A catalog of master-file zones given as (origin, text).
pub fn catalog_from(zones: Vec<(String, String)>) -> anyhow::Result<(Catalog, Vec<String>)> {
    let mut catalog = Catalog::new();
    let mut origins = Vec::new();
    for (origin, text) in zones {
        let origin = format!("{}.", origin.trim_end_matches('.'));
        let name = Name::from_str(&origin).with_context(|| format!("zone name {origin}"))?;
        let (name, records) = Parser::new(text, None, Some(name))
            .parse()
            .with_context(|| format!("parsing zone {origin}"))?;
        let zone = InMemoryZoneHandler::<TokioRuntimeProvider>::new(
            name,
            records,
            ZoneType::Primary,
            AxfrPolicy::Deny,
        )
        .map_err(|e| anyhow::anyhow!("loading zone {origin}: {e}"))?;
        catalog.upsert(LowerName::from_str(&origin)?, vec![Arc::new(zone)]);
        origins.push(origin);
    }
    origins.sort();
    Ok((catalog, origins))
}

/// A DNS server answering on one address over UDP and TCP.
pub struct DnsServer {
    server: Server<Catalog>,
    pub addr: SocketAddr,
}

impl DnsServer {
    /// Binds UDP on `listen` (port 0 picks one) and TCP on the same port.
    ///
    /// With port 0 the UDP port is free but the same TCP port may not be (another process
    /// may hold it): then another UDP port is tried, a bounded number of times.
    pub async fn bind(catalog: Catalog, listen: SocketAddr) -> anyhow::Result<Self> {
        const TRIES: usize = 20;
        let mut server = Server::new(catalog);
        let mut attempt = 0;
        let (udp, tcp, addr) = loop {
            attempt += 1;
            let udp = tokio::net::UdpSocket::bind(listen)
                .await
                .with_context(|| format!("binding UDP {listen}"))?;
            let addr = udp.local_addr()?;
            match tokio::net::TcpListener::bind(addr).await {
                Ok(tcp) => break (udp, tcp, addr),
                Err(e)
                    if listen.port() == 0
                        && e.kind() == std::io::ErrorKind::AddrInUse
                        && attempt < TRIES => {}
                Err(e) => return Err(e).with_context(|| format!("binding TCP {addr}")),
            }
        };
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 4096);
        Ok(Self { server, addr })
    }

    /// Answers until `stop` resolves.
    pub async fn serve_until(mut self, stop: impl std::future::Future<Output = ()>) {
        stop.await;
        let _ = self.server.shutdown_gracefully().await;
    }
}

/// `amtp-loadtest dns` from the command line.
pub fn main(args: DnsArgs) -> anyhow::Result<()> {
    crate::safety::check("listen address", args.listen, args.allow_non_loopback)?;
    let (catalog, origins) = catalog(&args.zones)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let server = DnsServer::bind(catalog, args.listen).await?;
        eprintln!("dns: serving {} on {}", origins.join(" "), server.addr);
        let stop = async {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                () = tokio::time::sleep(args.duration) => {}
            }
        };
        server.serve_until(stop).await;
        Ok(())
    })
}
