//! End-to-end tests (layer 5): the real `amtp-relay serve` binary, started with a config in a
//! temporary directory, driven over real sockets on 127.0.0.1 with real TLS (the relay's own
//! generated dev CA) and real sled files. Each test starts its own relay.

mod bad_input;
mod cli;
mod harness;
mod smtp;
