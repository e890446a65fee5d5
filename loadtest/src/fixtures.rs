//! `amtp-loadtest fixtures`: everything an AMTP load run needs, generated in one command — a
//! test CA, a server certificate, N client identities (certificate, key, source address on
//! 127/8, PTR and A records), the DNS zone files, an identities manifest for `blast`, and a
//! complete relay configuration wired to all of it.
//!
//! Client identities are `c00001.<domain>` … bound to 127.1.0.1 upwards, so each one is a
//! distinct host to the relay: its own source address, PTR record and certificate — which is
//! what exercises the relay's identity cache and rDNS path realistically.

use crate::identities::{Identity, Manifest};
use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    date_time_ymd,
};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

/// What to generate.
#[derive(Debug, Clone, clap::Args)]
pub struct FixturesArgs {
    /// Directory to write into (created; existing files are overwritten).
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// Number of client identities.
    #[arg(long, default_value_t = 100)]
    pub clients: u32,
    /// DNS domain of the fixture hosts.
    #[arg(long, default_value = "load.test")]
    pub domain: String,
    /// Address the relay's AMTP listener will use (written into relay.toml and the SRV record).
    #[arg(long, default_value = "127.0.0.1:3025")]
    pub relay_amtp: SocketAddr,
    /// Address the relay's plain SMTP (mx role) listener will use.
    #[arg(long, default_value = "127.0.0.1:2525")]
    pub relay_smtp: SocketAddr,
    /// Address the relay's implicit-TLS submission listener will use (AUTH as user `load`).
    #[arg(long, default_value = "127.0.0.1:2465")]
    pub relay_tls: SocketAddr,
    /// Where `amtp-loadtest dns` will serve the zones (the relay's resolver).
    #[arg(long, default_value = "127.0.0.1:5353")]
    pub dns: SocketAddr,
    /// Where `amtp-loadtest sink` will listen (the relay's delivery route for sink.<domain>).
    #[arg(long, default_value = "127.0.0.1:2526")]
    pub sink: SocketAddr,
    /// The relay's metrics endpoint (`[metrics] listen`), for `blast --metrics-url`.
    #[arg(long, default_value = "127.0.0.1:9425")]
    pub relay_metrics: SocketAddr,
}

/// The largest number of identities (one /16 of source addresses).
pub const MAX_CLIENTS: u32 = 65_000;

/// Source address of identity `i` (0-based): 127.1.0.1 upwards.
pub fn source_address(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 1, 0, 1)) + i)
}

/// Generate every fixture into `args.out`.
pub fn generate(args: &FixturesArgs) -> anyhow::Result<Manifest> {
    anyhow::ensure!(
        (1..=MAX_CLIENTS).contains(&args.clients),
        "--clients must be between 1 and {MAX_CLIENTS}"
    );
    for addr in [
        args.relay_amtp,
        args.relay_smtp,
        args.relay_tls,
        args.dns,
        args.sink,
        args.relay_metrics,
    ] {
        crate::safety::check("fixture address", addr, false)?;
    }
    let out = &args.out;
    std::fs::create_dir_all(out.join("clients"))
        .with_context(|| format!("creating {}", out.display()))?;
    std::fs::create_dir_all(out.join("zones"))?;
    let domain = args.domain.trim_end_matches('.').to_ascii_lowercase();
    let server_name = format!("relay.{domain}");

    let ca = Ca::new(&format!("amtp-loadtest CA ({domain})"))?;
    write(out, "ca.pem", &ca.pem)?;
    let server = ca.host(&[server_name.as_str(), "localhost", "127.0.0.1"])?;
    write(out, "server.pem", &server.0)?;
    write(out, "server-key.pem", &server.1)?;

    let mut identities = Vec::with_capacity(args.clients as usize);
    for i in 0..args.clients {
        let name = format!("c{:05}.{domain}", i + 1);
        let (cert, key) = ca.host(&[name.as_str()])?;
        let cert_path = format!("clients/{name}.pem");
        let key_path = format!("clients/{name}-key.pem");
        write(out, &cert_path, &cert)?;
        write(out, &key_path, &key)?;
        identities.push(Identity {
            name,
            source: source_address(i).into(),
            cert: cert_path.into(),
            key: key_path.into(),
        });
    }
    let manifest = Manifest {
        ca: "ca.pem".into(),
        server_name: server_name.clone(),
        identities,
    };
    write(
        out,
        "identities.json",
        &serde_json::to_string_pretty(&manifest)?,
    )?;
    let (forward, reverse) = zones(&domain, &manifest, args);
    write(out, &format!("zones/{domain}.zone"), &forward)?;
    write(out, "zones/127.in-addr.arpa.zone", &reverse)?;
    write(out, "relay.toml", &relay_config(&domain, args))?;
    write(out, "users.toml", &users_file()?)?;
    Ok(manifest)
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

/// The forward zone (A records, SRV for the relay's AMTP port) and the reverse zone for 127/8
/// (a PTR for every identity and for the relay), as master files.
fn zones(domain: &str, manifest: &Manifest, args: &FixturesArgs) -> (String, String) {
    const SOA: &str = "@ IN SOA ns.{d}. hostmaster.{d}. 1 3600 600 86400 30\n@ IN NS ns.{d}.\n";
    let soa = SOA.replace("{d}", domain);
    let mut forward = format!("$ORIGIN {domain}.\n$TTL 3600\n{soa}ns IN A 127.0.0.1\n");
    let mut reverse = format!("$ORIGIN 127.in-addr.arpa.\n$TTL 3600\n{soa}");
    let relay_ip = match args.relay_amtp.ip() {
        std::net::IpAddr::V4(v4) => v4,
        std::net::IpAddr::V6(_) => Ipv4Addr::LOCALHOST,
    };
    forward.push_str(&format!(
        "relay IN A {relay_ip}\nsink IN A {}\n",
        args.sink.ip()
    ));
    forward.push_str(&format!(
        "_amtp._tcp IN SRV 0 0 {} relay.{domain}.\n",
        args.relay_amtp.port()
    ));
    reverse.push_str(&format!(
        "{} IN PTR relay.{domain}.\n",
        reverse_label(relay_ip)
    ));
    for id in &manifest.identities {
        if let std::net::IpAddr::V4(v4) = id.source {
            let label = id
                .name
                .strip_suffix(&format!(".{domain}"))
                .unwrap_or(&id.name);
            forward.push_str(&format!("{label} IN A {v4}\n"));
            reverse.push_str(&format!("{} IN PTR {}.\n", reverse_label(v4), id.name));
        }
    }
    (forward, reverse)
}

/// The owner name of `ip` relative to `127.in-addr.arpa.` (127.1.0.5 → `5.0.1`).
fn reverse_label(ip: Ipv4Addr) -> String {
    let [_, b, c, d] = ip.octets();
    format!("{d}.{c}.{b}")
}

/// The submission user of a load run.
pub const USER: &str = "load";
/// Its password: these are throwaway loopback fixtures, so it is fixed and documented.
pub const PASSWORD: &str = "load-password";

/// A relay users file (docs/CONFIG.md) with user `load`: an argon2id PHC string.
fn users_file() -> anyhow::Result<String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("random salt: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    let hash = argon2::Argon2::default()
        .hash_password(PASSWORD.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing the fixture password: {e}"))?;
    Ok(format!(
        "# Written by `amtp-loadtest fixtures`: user {USER:?}, password {PASSWORD:?}.\n\
         [[user]]\nname = {USER:?}\npassword = \"{hash}\"\n"
    ))
}

/// A complete relay configuration for a load run against these fixtures: mx and amtp
/// listeners with limits raised for load, the fixture CA as the public AMTP trust anchor, the
/// fixture DNS server as resolver, and delivery of `sink.<domain>` to the sink.
fn relay_config(domain: &str, args: &FixturesArgs) -> String {
    format!(
        r#"# amtp-relay configuration for a load run, written by `amtp-loadtest fixtures`.
# Start the pieces (each in its own terminal or in the background):
#   amtp-loadtest dns --zones zones --listen {dns}
#   amtp-loadtest sink --listen {sink}
#   amtp-relay serve --config relay.toml
# then drive it, for example:
#   amtp-loadtest blast --protocol amtp --target {amtp} --identities identities.json --messages 10000 \\
#       --metrics-url http://{metrics}/metrics
#   amtp-loadtest blast --protocol tls --target {tls} --ca ca.pem --auth {user}:{password}

[server]
hostname = "relay.{domain}"
data_dir = "relay-data"
local_domains = ["sink.{domain}"]

[tls]
certificate = "server.pem"
private_key = "server-key.pem"

[logging]
# info: listeners and the metrics endpoint are logged at start-up, refusals as they happen.
level = "info"

[metrics]
listen = "{metrics}"

[[listener]]
name = "mx"
role = "mx"
address = "{smtp}"
max_connections = 20000
max_connections_per_ip = 20000

[[listener]]
name = "amtp"
role = "amtp"
address = "{amtp}"
max_connections = 20000
max_connections_per_ip = 20000

[[listener]]
name = "submissions"
role = "submissions"
address = "{tls}"
max_connections = 20000
max_connections_per_ip = 20000

[auth]
users_file = "users.toml"

[amtp]
public_ca = "ca.pem"
mpc_policy = "ALLOW=per/* ALLOW=com/confirmed ALLOW=com/optin ALLOW=net/*"

[resolver]
servers = ["{dns}"]

[delivery]
concurrency_per_destination = 8
max_messages_per_connection = 100

[[delivery.route]]
domains = ["sink.{domain}"]
host = "{sink_ip}"
port = {sink_port}
protocol = "smtp"
tls = "none"
"#,
        dns = args.dns,
        sink = args.sink,
        metrics = args.relay_metrics,
        amtp = args.relay_amtp,
        smtp = args.relay_smtp,
        tls = args.relay_tls,
        user = USER,
        password = PASSWORD,
        sink_ip = args.sink.ip(),
        sink_port = args.sink.port(),
    )
}

/// A CA that signs the fixture certificates (ECDSA P-256: what a planner should deploy).
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> anyhow::Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2099, 1, 1);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            issuer: Issuer::new(params, key),
            pem: cert.pem(),
        })
    }

    /// A leaf for `names` (the first is also the CN): (certificate PEM, key PEM).
    fn host(&self, names: &[&str]) -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2099, 1, 1);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_count_up_from_127_1_0_1_across_octets() {
        assert_eq!(source_address(0), Ipv4Addr::new(127, 1, 0, 1));
        assert_eq!(source_address(254), Ipv4Addr::new(127, 1, 0, 255));
        assert_eq!(source_address(255), Ipv4Addr::new(127, 1, 1, 0));
        assert_eq!(reverse_label(Ipv4Addr::new(127, 1, 2, 3)), "3.2.1");
    }

    #[test]
    fn the_relay_config_logs_at_info_and_serves_metrics() {
        let args = FixturesArgs {
            out: "unused".into(),
            clients: 1,
            domain: "load.test".into(),
            // Text only: nothing is bound. The metrics address differs from the default
            // so the assertions below prove it is the one written.
            relay_amtp: "127.0.0.1:0".parse().unwrap(),
            relay_smtp: "127.0.0.1:0".parse().unwrap(),
            relay_tls: "127.0.0.1:0".parse().unwrap(),
            dns: "127.0.0.1:0".parse().unwrap(),
            sink: "127.0.0.1:0".parse().unwrap(),
            relay_metrics: "127.0.0.1:9426".parse().unwrap(),
        };
        let config = relay_config("load.test", &args);
        assert!(config.contains("[logging]\n# info"), "{config}");
        assert!(config.contains("level = \"info\""), "{config}");
        assert!(
            config.contains("[metrics]\nlisten = \"127.0.0.1:9426\""),
            "{config}"
        );
        assert!(config.contains("--metrics-url http://127.0.0.1:9426/metrics"));
    }
}
