//! SASL exchanges for SMTP AUTH (RFC 4954): PLAIN (RFC 4616), LOGIN, CRAM-MD5 (RFC 2195).
//!
//! Pure state machines: each step takes the client's line and yields the next 334 challenge,
//! the collected [`Credentials`], or a failure reply. Checking the credentials is the policy
//! actor's job.

use crate::auth::Credentials;
use amtp_proto::Reply;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

/// Mechanisms we implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// RFC 4616.
    Plain,
    /// The de-facto LOGIN mechanism.
    Login,
    /// RFC 2195.
    CramMd5,
}

impl Mechanism {
    /// By name as sent in AUTH (already upper-cased).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "PLAIN" => Some(Self::Plain),
            "LOGIN" => Some(Self::Login),
            "CRAM-MD5" => Some(Self::CramMd5),
            _ => None,
        }
    }

    /// The advertised name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::Login => "LOGIN",
            Self::CramMd5 => "CRAM-MD5",
        }
    }
}

/// Where an exchange stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exchange {
    /// PLAIN without an initial response: waiting for it.
    PlainResponse,
    /// LOGIN: waiting for the user name.
    LoginUser,
    /// LOGIN: waiting for the password.
    LoginPassword {
        /// The user name already received.
        user: String,
    },
    /// CRAM-MD5: waiting for `user digest`.
    CramResponse {
        /// The challenge we sent.
        challenge: String,
    },
}

/// The result of one step.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this 334 and wait for the next line in the given state.
    Continue(Reply, Exchange),
    /// Credentials complete: verify them.
    Done(Credentials),
    /// The exchange failed (cancelled or malformed).
    Fail(Reply),
}

fn challenge_reply(text: &[u8]) -> Reply {
    Reply::new(334, "", B64.encode(text))
}

fn decode(line: &str) -> Result<Vec<u8>, Reply> {
    if line == "*" {
        return Err(Reply::new(501, "5.7.0", "Authentication cancelled"));
    }
    if line == "=" {
        return Ok(Vec::new());
    }
    B64.decode(line.trim())
        .map_err(|_| Reply::new(501, "5.5.2", "Invalid base64 data"))
}

fn utf8(bytes: Vec<u8>) -> Result<String, Reply> {
    String::from_utf8(bytes).map_err(|_| Reply::new(501, "5.5.2", "Credentials must be UTF-8"))
}

fn plain(bytes: Vec<u8>) -> Step {
    let mut parts = bytes.split(|&b| b == 0);
    let (Some(authz), Some(authc), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Step::Fail(Reply::new(501, "5.5.2", "Malformed PLAIN response"));
    };
    let (authz, user, password) = match (
        utf8(authz.to_vec()),
        utf8(authc.to_vec()),
        utf8(password.to_vec()),
    ) {
        (Ok(a), Ok(u), Ok(p)) => (a, u, p),
        _ => return Step::Fail(Reply::new(501, "5.5.2", "Credentials must be UTF-8")),
    };
    if !authz.is_empty() && authz != user {
        // Acting on behalf of another identity is not supported.
        return Step::Fail(Reply::new(
            535,
            "5.7.8",
            "Authentication credentials invalid",
        ));
    }
    Step::Done(Credentials::Password { user, password })
}

/// Begin an exchange. `challenge` is a fresh, unique CRAM-MD5 challenge
/// (`<random.counter@hostname>`), ignored by the other mechanisms.
pub fn start(mechanism: Mechanism, initial: Option<&str>, challenge: String) -> Step {
    match (mechanism, initial) {
        (Mechanism::Plain, None) => {
            Step::Continue(Reply::new(334, "", ""), Exchange::PlainResponse)
        }
        (Mechanism::Plain, Some(ir)) => match decode(ir) {
            Ok(bytes) => plain(bytes),
            Err(reply) => Step::Fail(reply),
        },
        (Mechanism::Login, None) => {
            Step::Continue(challenge_reply(b"Username:"), Exchange::LoginUser)
        }
        (Mechanism::Login, Some(ir)) => match decode(ir).and_then(utf8) {
            Ok(user) => Step::Continue(
                challenge_reply(b"Password:"),
                Exchange::LoginPassword { user },
            ),
            Err(reply) => Step::Fail(reply),
        },
        (Mechanism::CramMd5, Some(_)) => Step::Fail(Reply::new(
            501,
            "5.5.2",
            "CRAM-MD5 takes no initial response",
        )),
        (Mechanism::CramMd5, None) => Step::Continue(
            challenge_reply(challenge.as_bytes()),
            Exchange::CramResponse { challenge },
        ),
    }
}

/// Feed the client's next line.
pub fn next(exchange: Exchange, line: &str) -> Step {
    let bytes = match decode(line) {
        Ok(b) => b,
        Err(reply) => return Step::Fail(reply),
    };
    match exchange {
        Exchange::PlainResponse => plain(bytes),
        Exchange::LoginUser => match utf8(bytes) {
            Ok(user) => Step::Continue(
                challenge_reply(b"Password:"),
                Exchange::LoginPassword { user },
            ),
            Err(r) => Step::Fail(r),
        },
        Exchange::LoginPassword { user } => match utf8(bytes) {
            Ok(password) => Step::Done(Credentials::Password { user, password }),
            Err(r) => Step::Fail(r),
        },
        Exchange::CramResponse { challenge } => match utf8(bytes) {
            Ok(text) => match text.rsplit_once(' ') {
                Some((user, digest))
                    if digest.len() == 32 && digest.bytes().all(|b| b.is_ascii_hexdigit()) =>
                {
                    Step::Done(Credentials::CramMd5 {
                        user: user.to_string(),
                        challenge,
                        digest: digest.to_ascii_lowercase(),
                    })
                }
                _ => Step::Fail(Reply::new(501, "5.5.2", "Malformed CRAM-MD5 response")),
            },
            Err(r) => Step::Fail(r),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pw(u: &str, p: &str) -> Step {
        Step::Done(Credentials::Password {
            user: u.into(),
            password: p.into(),
        })
    }

    #[test]
    fn plain_table() {
        let enc = |b: &[u8]| B64.encode(b);
        let (a, b, c, d) = (
            enc(b"\0alice\0pw"),
            enc(b"alice\0alice\0pw"),
            enc(b"bob\0alice\0pw"),
            enc(b"alice\0pw"),
        );
        let cases: Vec<(Option<&str>, Step)> = vec![
            (Some(&a), pw("alice", "pw")),
            (Some(&b), pw("alice", "pw")),
            (
                Some(&c),
                Step::Fail(Reply::new(
                    535,
                    "5.7.8",
                    "Authentication credentials invalid",
                )),
            ),
            (
                Some(&d),
                Step::Fail(Reply::new(501, "5.5.2", "Malformed PLAIN response")),
            ),
            (
                Some("!!!notbase64"),
                Step::Fail(Reply::new(501, "5.5.2", "Invalid base64 data")),
            ),
            (
                Some("*"),
                Step::Fail(Reply::new(501, "5.7.0", "Authentication cancelled")),
            ),
            (
                None,
                Step::Continue(Reply::new(334, "", ""), Exchange::PlainResponse),
            ),
        ];
        for (ir, expected) in cases {
            assert_eq!(
                start(Mechanism::Plain, ir, String::new()),
                expected,
                "{ir:?}"
            );
        }
        assert_eq!(
            next(Exchange::PlainResponse, &B64.encode(b"\0u\0p")),
            pw("u", "p")
        );
        assert_eq!(
            next(Exchange::PlainResponse, "*"),
            Step::Fail(Reply::new(501, "5.7.0", "Authentication cancelled"))
        );
    }

    #[test]
    fn login_dialogue() {
        let Step::Continue(r, ex) = start(Mechanism::Login, None, String::new()) else {
            panic!()
        };
        assert_eq!(r.to_bytes(), b"334 VXNlcm5hbWU6\r\n");
        let Step::Continue(r, ex) = next(ex, &B64.encode("alice")) else {
            panic!()
        };
        assert_eq!(r.to_bytes(), b"334 UGFzc3dvcmQ6\r\n");
        assert_eq!(next(ex, &B64.encode("pw")), pw("alice", "pw"));
        let Step::Continue(_, ex) =
            start(Mechanism::Login, Some(&B64.encode("carol")), String::new())
        else {
            panic!()
        };
        assert_eq!(
            ex,
            Exchange::LoginPassword {
                user: "carol".into()
            }
        );
        assert!(matches!(next(Exchange::LoginUser, "%%%"), Step::Fail(r) if r.code == 501));
    }

    #[test]
    fn cram_dialogue() {
        let challenge = "<123.1@relay.test>".to_string();
        let Step::Continue(r, ex) = start(Mechanism::CramMd5, None, challenge.clone()) else {
            panic!()
        };
        assert_eq!(r.lines[0], B64.encode(&challenge));
        let resp = B64.encode("alice b913a602c7eda7a495b4e6e7334d3890");
        assert_eq!(
            next(ex.clone(), &resp),
            Step::Done(Credentials::CramMd5 {
                user: "alice".into(),
                challenge,
                digest: "b913a602c7eda7a495b4e6e7334d3890".into()
            })
        );
        assert!(matches!(next(ex, &B64.encode("alice nothex")), Step::Fail(r) if r.code == 501));
        assert!(
            matches!(start(Mechanism::CramMd5, Some("x"), String::new()), Step::Fail(r) if r.code == 501)
        );
    }
}
