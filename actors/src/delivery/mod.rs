//! Outbound delivery (issue 5), built up from pure parts first.
//!
//! - [`schedule`] — when to retry a deferred message, and when to give up (tested as a whole
//!   schedule).
//! - [`route`] — ordering next hops: SRV per RFC 2782 (AMTP), MX per RFC 5321 §5.1 with implicit
//!   and null MX (SMTP fallback).
//!
//! - [`plan`] — where each recipient goes: route choice, the no-public→public rule, the MPC
//!   header rule, jobs per destination (pure, table-tested).
//! - [`lookup`] — the DNS lookups a plan needs, interpreted by `plan`.
//! - [`finalize`] — what an attempt's outcomes mean: recipient states, DSN, retry (pure,
//!   table-tested).
//! - [`outbound`] — one outbound connection running the pure client over TCP/TLS.
//! - [`router`] — the Router actor: due messages → next hops → destinations → outcomes (the
//!   I/O around `plan` and `finalize`).
//! - [`destination`] — a Destination actor per next hop: concurrency, reuse, failover.
//! - [`fresh`] — bodies of just-committed messages handed to the router in memory, and one
//!   router wake-up per commit batch.
//! - [`bounce`] — DSNs for permanent failures.

pub mod bounce;
pub mod destination;
pub mod finalize;
pub mod fresh;
pub mod lookup;
pub mod outbound;
pub mod plan;
pub mod route;
pub mod router;
pub mod schedule;
