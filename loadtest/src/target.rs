//! What a run connects to and as whom: the target, protocol, server trust, and the client
//! identities (source address, EHLO name, client certificate) — turned into one
//! [`ConnectionPlan`] per identity. Shared by `blast` and `hold`.

use crate::client::{ConnectionPlan, Protocol};
use crate::identities::Manifest;
use crate::tls::{ServerTrust, client_config};
use anyhow::Context;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// The relay's listener (loopback unless --allow-non-loopback).
    #[arg(long)]
    pub target: SocketAddr,
    #[arg(long, value_enum, default_value = "smtp")]
    pub protocol: Protocol,
    /// Client identities from `amtp-loadtest fixtures` (required for amtp): each connection
    /// uses the next identity's source address, EHLO name and (amtp) certificate.
    #[arg(long)]
    pub identities: Option<PathBuf>,
    /// Without --identities: spread connections over this many source addresses from
    /// 127.2.0.1 upwards (0 = let the system choose).
    #[arg(long, default_value_t = 0)]
    pub sources: u32,
    /// CA to verify the server with (default: the manifest's CA).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Name expected in the server certificate (default: the manifest's, else localhost).
    #[arg(long)]
    pub server_name: Option<String>,
    /// Do not verify the server certificate.
    #[arg(long)]
    pub insecure: bool,
    /// Never resume TLS sessions: every handshake is a full one (the worst case for the
    /// relay). By default sessions resume as real clients' do.
    #[arg(long)]
    pub no_resumption: bool,
    /// AUTH PLAIN as `user:password`.
    #[arg(long)]
    pub auth: Option<String>,
    /// EHLO name when no identities are given.
    #[arg(long, default_value = "loadtest.load.test")]
    pub ehlo: String,
    /// Per-step timeout (connect, TLS, each reply).
    #[arg(long, default_value = "30s", value_parser = crate::units::parse_duration)]
    pub timeout: Duration,
    /// Permit a target outside 127.0.0.0/8 and ::1.
    #[arg(long)]
    pub allow_non_loopback: bool,
}

/// The largest --sources.
const MAX_SOURCES: u32 = 65_000;

/// One plan per identity or source address (or a single plan).
pub fn plans(args: &ConnectArgs) -> anyhow::Result<Vec<ConnectionPlan>> {
    crate::safety::check("target", args.target, args.allow_non_loopback)?;
    anyhow::ensure!(
        args.sources <= MAX_SOURCES,
        "--sources is at most {MAX_SOURCES}"
    );
    let manifest = args.identities.as_deref().map(Manifest::load).transpose()?;
    if args.protocol == Protocol::Amtp && manifest.is_none() {
        anyhow::bail!(
            "--protocol amtp needs --identities (client certificates, source addresses and PTRs: \
             make them with `amtp-loadtest fixtures`)"
        );
    }
    let uses_tls = args.protocol != Protocol::Smtp;
    let trust = match (&args.ca, &manifest, args.insecure) {
        (_, _, true) => ServerTrust::Insecure,
        (Some(ca), _, false) => ServerTrust::Ca(ca.clone()),
        (None, Some(m), false) => ServerTrust::Ca(m.ca.clone()),
        (None, None, false) if uses_tls => anyhow::bail!(
            "--protocol {} needs --ca (the relay's CA) or --insecure",
            args.protocol.name()
        ),
        (None, None, false) => ServerTrust::Insecure,
    };
    let server_name = args
        .server_name
        .clone()
        .or_else(|| manifest.as_ref().map(|m| m.server_name.clone()))
        .unwrap_or_else(|| "localhost".to_string());
    let server_name = rustls::pki_types::ServerName::try_from(server_name.clone())
        .with_context(|| format!("bad server name {server_name:?}"))?;
    let auth = match &args.auth {
        Some(a) => {
            let (u, p) = a.split_once(':').context("--auth must be user:password")?;
            Some((u.to_string(), p.to_string()))
        }
        None => None,
    };
    let shared_tls = if uses_tls && args.protocol != Protocol::Amtp {
        Some(client_config(&trust, None, !args.no_resumption)?)
    } else {
        None
    };
    let plan = |source: Option<IpAddr>, ehlo: String, tls| ConnectionPlan {
        target: args.target,
        source,
        protocol: args.protocol,
        tls,
        server_name: server_name.clone(),
        ehlo,
        auth: auth.clone(),
        timeout: args.timeout,
    };
    let Some(manifest) = manifest else {
        if args.sources == 0 {
            return Ok(vec![plan(None, args.ehlo.clone(), shared_tls)]);
        }
        let first = u32::from(Ipv4Addr::new(127, 2, 0, 1));
        return Ok((0..args.sources)
            .map(|i| {
                let ip = IpAddr::V4(Ipv4Addr::from(first + i));
                plan(Some(ip), args.ehlo.clone(), shared_tls.clone())
            })
            .collect());
    };
    let mut plans = Vec::with_capacity(manifest.identities.len());
    for id in &manifest.identities {
        crate::safety::check(
            "source address",
            SocketAddr::new(id.source, 0),
            args.allow_non_loopback,
        )?;
        let tls = if args.protocol == Protocol::Amtp {
            Some(client_config(
                &trust,
                Some((&id.cert, &id.key)),
                !args.no_resumption,
            )?)
        } else {
            shared_tls.clone()
        };
        plans.push(plan(Some(id.source), id.name.clone(), tls));
    }
    Ok(plans)
}
