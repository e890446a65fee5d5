//! amtp-loadtest: capacity-planning tools for SMTP and AMTP relays, treating the relay as a
//! black box (the protocol crate is its only project dependency).
//!
//! - [`blast`]: the load generator (smtp, STARTTLS, implicit TLS, AMTP mutual TLS with many
//!   client identities; closed or open loop; HDR latency per phase).
//! - [`fixtures`]: CA, server and client certificates, zone files and a relay config for a run.
//! - [`dns`]: serves the fixture zones on loopback.
//! - [`sink`]: an accept-and-discard next hop with delay and failure injection.
//! - [`hold`]: idle sessions, for memory per connection.
//! - [`report`]: an HTML page from JSON results: summary, time series, environment, sweep and
//!   sizing; [`sizing`] turns measured figures into nodes, connections, memory and disk.
//! - [`scrape`]: the relay's `/metrics` read during a run; [`timeline`] the generator's view
//!   second by second; [`progress`] the progress line; [`environment`] where a run happened.
//!
//! Every address is checked by [`safety`]: loopback only unless the operator opts out.

pub mod blast;
pub mod client;
pub mod dns;
pub mod environment;
pub mod fixtures;
pub mod hold;
pub mod identities;
pub mod message;
pub mod procfs;
pub mod progress;
pub mod report;
pub mod safety;
pub mod scrape;
pub mod sink;
pub mod sizing;
pub mod stats;
pub mod target;
pub mod timeline;
pub mod tls;
pub mod units;
