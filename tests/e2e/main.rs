//! End-to-end tests (layer 5): the real `amtp-relay serve` binary, started with a config in a
//! temporary directory, driven over real sockets on 127.0.0.1 with real TLS (the relay's own
//! generated dev CA) and real sled files. Each test starts its own relay. The AMTP tests also
//! run a real DNS server in the test process and bind distinct 127.0.0.x client addresses.
//! `loadtest.rs` drives the relay with the amtp-loadtest library and its fixtures; `probe.rs`
//! runs `amtp-relay probe` against it; `lifecycle.rs` reloads, drains and stops it.

mod amtp;
mod bad_input;
mod balancer;
mod chain;
mod check_config;
mod cli;
mod delivery;
mod deploy;
mod disk_full;
mod dns;
mod fleet;
mod harness;
mod lifecycle;
mod loadtest;
mod metrics;
mod monitoring;
mod pki;
mod probe;
mod sink;
mod smtp;
