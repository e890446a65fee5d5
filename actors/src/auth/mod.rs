//! SMTP AUTH: who the users are, how their secrets are stored and checked, and how repeated
//! failures are throttled.
//!
//! - [`users`] — the users file: argon2 password hashes and optional CRAM-MD5 secrets.
//! - [`cram`] — CRAM-MD5 (RFC 2195) from precomputed HMAC-MD5 contexts, never the password.
//! - [`throttle`] — failure counting per key over a window, with lock-outs.

pub mod cram;
pub mod throttle;
pub mod users;

/// What a client proved it knows, as collected by the SASL exchange.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// PLAIN or LOGIN: a user name and a password.
    Password {
        /// Authentication identity.
        user: String,
        /// The password (never logged).
        password: String,
    },
    /// CRAM-MD5: the user, the challenge we sent, and the client's hex digest.
    CramMd5 {
        /// Authentication identity.
        user: String,
        /// The challenge we issued.
        challenge: String,
        /// The client's HMAC-MD5 in lower-case hex.
        digest: String,
    },
}

impl Credentials {
    /// The user name claimed.
    pub fn user(&self) -> &str {
        match self {
            Self::Password { user, .. } | Self::CramMd5 { user, .. } => user,
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Password { user, .. } => {
                write!(f, "Password {{ user: {user:?}, password: <redacted> }}")
            }
            Self::CramMd5 { user, .. } => write!(f, "CramMd5 {{ user: {user:?} }}"),
        }
    }
}

/// Compare secrets without an early exit (timing-safe for equal lengths).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
