//! amtp-loadtest: capacity-planning tools for SMTP and AMTP relays, treating the relay as a
//! black box (the protocol crate is its only project dependency).
//!
//! - [`blast`]: the load generator (smtp, STARTTLS, implicit TLS, AMTP mutual TLS with many
//!   client identities; closed or open loop; HDR latency per phase).
//! - [`fixtures`]: CA, server and client certificates, zone files and a relay config for a run.
//! - [`dns`]: serves the fixture zones on loopback.
//! - [`sink`]: an accept-and-discard next hop with delay and failure injection.
//! - [`hold`]: idle sessions, for memory per connection.
//! - [`report`]: HTML charts from JSON results.
//!
//! Every address is checked by [`safety`]: loopback only unless the operator opts out.

pub mod blast;
pub mod client;
pub mod dns;
pub mod fixtures;
pub mod hold;
pub mod identities;
pub mod message;
pub mod procfs;
pub mod report;
pub mod safety;
pub mod sink;
pub mod stats;
pub mod target;
pub mod tls;
pub mod units;
