//! `amtp-actors` — the relay's actors, the messages between them, and the pure logic they
//! drive.
//!
//! Data path: a [`listener`] per bound address accepts and applies connection limits, then
//! hands the connection to a [`worker`] in a pool of arbiters (one per core by default), which
//! runs the TLS handshake and the [`session`]. The session is a pure state machine; its driver
//! performs the effects it asks for — ask the [`policy`] actor about AUTH, hand the message to
//! the [`queue_actor`], which group-commits through `amtp-storage` before the 250 is sent.
//! [`wiring`] starts and connects them; [`admin`] answers queue queries over a Unix socket.
//!
//! # Layout
//! - [`messages`] — every cross-actor message type.
//! - [`config`] — per-component configuration sections (serde), [`units`] for "30s"/"25MB",
//!   [`validate`] for each section's own rules (typed field errors).
//! - [`listener`], [`worker`], [`policy`], [`queue_actor`] — the actors.
//! - [`session`] — state machine, SASL, driver and stream.
//! - [`auth`] — users file, CRAM-MD5 secrets, failure throttling.
//! - [`cluster`] — `[cluster]`: limits shared by a fleet through Redis, heartbeats, fallback.
//! - [`delivery`] — outbound delivery: retry schedule, next-hop ordering (pure parts so far).
//! - [`identity`] — AMTP identity: certificate name = PTR name = EHLO, cached per (IP, cert).
//! - [`limits`] — connection limits and permits.
//! - [`lifecycle`] — stop phases (SIGTERM: no new transaction; grace over: 421 and close).
//! - [`runtime`] — the swap point for settings a reload changes.
//! - [`proxy`] — the PROXY protocol (v1/v2) in front of a listener: trusted balancers, the header.
//! - [`resolver`] — the DNS/rDNS caching resolver (shared sharded cache + actor for misses).
//! - [`tls`] — certificate loading and rustls configuration: cipher preference, key-exchange groups.
//! - [`tickets`] — stateless session tickets: keys, lifetime, the re-check of a resumed AMTP chain.
//! - [`tls_accept`] — the implicit-TLS AMTP accept: a returning peer's ClientHello ([`client_hello`])
//!   picks the classical-groups configuration.
//! - [`tls_wire`] — the cursor over TLS encodings that [`client_hello`] and [`tickets`] read with.
//! - [`chain_cache`] — verified AMTP client chains, so a known peer's full handshake skips the CA signatures.
//! - [`amtp_policy`] — MPC rules (published and unadvertised), rate limits, AMTP relay limits.
//! - [`amtp_tls`] — AMTP mutual TLS: public/private trust sets, depth limit, CRLs, classification.
//! - [`ttl_cache`] — the sharded, bounded TTL cache shared across cores.
//! - [`admin`] — queue listing text, admin socket server and client.
//! - [`metrics`] — the Prometheus catalog, recording functions, pool meters, the HTTP endpoint.
//! - [`health`] — readiness (listeners up, storage healthy, not draining).
//! - [`wiring`] — starts everything (the only module naming concrete actor types).
#![forbid(unsafe_code)]

pub mod admin;
pub mod amtp_policy;
pub mod amtp_tls;
pub mod auth;
pub mod chain_cache;
pub mod client_hello;
pub mod cluster;
pub mod config;
pub mod delivery;
pub mod health;
pub mod identity;
pub mod lifecycle;
pub mod limits;
pub mod listener;
pub mod messages;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod queue_actor;
pub mod resolver;
pub mod runtime;
pub mod session;
pub mod tickets;
pub mod tls;
pub mod tls_accept;
pub mod tls_wire;
pub mod ttl_cache;
pub mod units;
pub mod validate;
pub mod wiring;
pub mod worker;
