//! Outbound delivery (issue 5), built up from pure parts first.
//!
//! - [`schedule`] — when to retry a deferred message, and when to give up (tested as a whole
//!   schedule).
//! - [`route`] — ordering next hops: SRV per RFC 2782 (AMTP), MX per RFC 5321 §5.1 with implicit
//!   and null MX (SMTP fallback).
//!
//! The Router and Destination actors, the outbound sessions and DSNs build on these.

pub mod route;
pub mod schedule;
