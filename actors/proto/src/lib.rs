//! `amtp-proto` — the pure grammar of SMTP (RFC 5321) and AMTP (draft-weinman-amtp).
//!
//! This crate does no I/O and depends on nothing but `std`, so Cargo itself enforces that
//! protocol decisions stay testable as plain functions over bytes. Partial input is a normal
//! result ("need more bytes"), never an error: the session drivers in `amtp-actors` feed bytes
//! as they arrive and act on whatever complete units come out.
//!
//! # Layout
//! - [`line`] — splits a byte stream into command lines with a hard bound on line length.
//! - [`client`] — the outbound (client) side as a state machine, and dot-stuffing.
//! - [`command`] — parses one command line into a [`Command`] (verbs, paths, MAIL/RCPT parameters).
//! - [`address`] — mailbox, path and domain grammar shared by MAIL, RCPT and EHLO.
//! - [`reply`] — replies with enhanced status codes, written as single- or multi-line responses.
//! - [`dsn`] — delivery status notifications (RFC 3464) for bounces.
//! - [`ehlo`] — the EHLO keyword list a server advertises.
//! - [`headers`] — header lookup (Message-ID, MPC) without a full message parser.
//! - [`data`] — the DATA receiver — dot-unstuffing, end-of-data detection, SMTP-smuggling defence.
//! - [`mpc`] — Mail Policy Codes, the EHLO `MPC` policy line and its evaluation.
//! - [`outcome`] — delivery outcomes with their cause (status, remote MTA, diagnostic).
//! - [`received`] — the `Received:` trace header and RFC 5322 dates.
//! - [`limits`] — the RFC 5321 §4.5.3.1 size limits.
#![forbid(unsafe_code)]

pub mod address;
pub mod client;
pub mod command;
pub mod data;
pub mod dsn;
pub mod ehlo;
pub mod headers;
pub mod limits;
pub mod line;
pub mod mpc;
pub mod outcome;
pub mod received;
pub mod reply;

pub use address::{Domain, Mailbox, ReversePath};
pub use command::{Body, Command, CommandError, MailFrom, RcptTo};
pub use data::{DataError, DataReceiver, Progress};
pub use line::{LineBuffer, LineError};
pub use mpc::{Class, Mpc, MpcError, MpcPolicy, Role, Verdict};
pub use reply::{EnhancedStatus, Reply};
