//! Parsing one command line into a [`Command`] (RFC 5321 §4.1, RFC 4954 AUTH, RFC 3207
//! STARTTLS, RFC 1870 SIZE, RFC 6152 8BITMIME, RFC 6531 SMTPUTF8, and AMTP's `MPC=`).
//!
//! Every failure is a [`CommandError`] whose [`CommandError::reply`] is the one place that
//! decides the reply code for malformed input.

use crate::address::{Domain, Mailbox, ReversePath, split_path};
use crate::limits;
use crate::reply::Reply;

/// The BODY parameter of MAIL (RFC 6152).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// `BODY=7BIT`.
    SevenBit,
    /// `BODY=8BITMIME`.
    EightBitMime,
}

/// `MAIL FROM:<path> [params]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailFrom {
    /// The reverse path (`<>` for bounces).
    pub from: ReversePath,
    /// Declared size (RFC 1870), if given.
    pub size: Option<u64>,
    /// Declared body type, if given.
    pub body: Option<Body>,
    /// The SMTPUTF8 flag (RFC 6531).
    pub smtputf8: bool,
    /// The AMTP Mail Policy Code exactly as sent (`role/class`, syntax-checked only; whether
    /// the role and class exist is a policy decision, see [`crate::mpc`]).
    pub mpc: Option<String>,
    /// The RFC 4954 `AUTH=` parameter (accepted and recorded, not trusted).
    pub auth: Option<String>,
}

/// The RCPT TO forward path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardPath {
    /// `<Postmaster>` without a domain, which RFC 5321 §4.5.1 requires servers to accept.
    Postmaster,
    /// An ordinary mailbox.
    Mailbox(Mailbox),
}

/// `RCPT TO:<path>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptTo {
    /// The recipient.
    pub to: ForwardPath,
}

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `EHLO domain`.
    Ehlo(Domain),
    /// `HELO domain` (AMTP answers 504; SMTP accepts it).
    Helo(String),
    /// `MAIL FROM:`.
    Mail(MailFrom),
    /// `RCPT TO:`.
    Rcpt(RcptTo),
    /// `DATA`.
    Data,
    /// `RSET`.
    Rset,
    /// `NOOP [string]`.
    Noop,
    /// `QUIT`.
    Quit,
    /// `VRFY string` (answered 252: we never confirm mailboxes).
    Vrfy(String),
    /// `HELP [topic]`.
    Help,
    /// `AUTH mechanism [initial-response]` (RFC 4954).
    Auth {
        /// Upper-cased mechanism name.
        mechanism: String,
        /// Base64 initial response as sent (`=` means an empty one).
        initial_response: Option<String>,
    },
    /// `STARTTLS` (RFC 3207).
    StartTls,
}

impl Command {
    /// The verb, for logs and error counting.
    pub fn verb(&self) -> &'static str {
        match self {
            Self::Ehlo(_) => "EHLO",
            Self::Helo(_) => "HELO",
            Self::Mail(_) => "MAIL",
            Self::Rcpt(_) => "RCPT",
            Self::Data => "DATA",
            Self::Rset => "RSET",
            Self::Noop => "NOOP",
            Self::Quit => "QUIT",
            Self::Vrfy(_) => "VRFY",
            Self::Help => "HELP",
            Self::Auth { .. } => "AUTH",
            Self::StartTls => "STARTTLS",
        }
    }
}

/// Why a command line was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// Unknown verb.
    Unrecognized,
    /// Structurally wrong arguments.
    Syntax(&'static str),
    /// A MAIL/RCPT parameter we do not implement (RFC 5321 §4.1.1.11 → 555).
    UnknownParameter(String),
    /// A known parameter with a bad value.
    InvalidParameter(&'static str),
    /// Malformed or repeated `MPC=` (AMTP, our rule: 501 5.5.4).
    Mpc(&'static str),
    /// Longer than RFC 5321 §4.5.3.1.4 allows.
    LineTooLong,
    /// A NUL byte in a command.
    NulByte,
}

impl CommandError {
    /// The reply for this error — the single mapping from parse errors to reply codes.
    pub fn reply(&self) -> Reply {
        match self {
            Self::Unrecognized => Reply::new(500, "5.5.1", "Command unrecognized"),
            Self::Syntax(why) => Reply::new(501, "5.5.2", format!("Syntax error: {why}")),
            Self::UnknownParameter(p) => {
                Reply::new(555, "5.5.4", format!("Unsupported parameter {p}"))
            }
            Self::InvalidParameter(why) => {
                Reply::new(501, "5.5.4", format!("Invalid parameter: {why}"))
            }
            Self::Mpc(why) => Reply::new(501, "5.5.4", format!("Invalid MPC parameter: {why}")),
            Self::LineTooLong => Reply::new(
                500,
                "5.5.2",
                format!("Line too long (limit {} octets)", limits::COMMAND_LINE),
            ),
            Self::NulByte => Reply::new(500, "5.5.2", "NUL character not allowed"),
        }
    }
}

/// Parse one command line (without CRLF). Lines longer than [`limits::COMMAND_LINE`] are
/// refused except AUTH, which RFC 4954 allows up to [`limits::AUTH_LINE`].
pub fn parse(line: &[u8]) -> Result<Command, CommandError> {
    if line.contains(&0) {
        return Err(CommandError::NulByte);
    }
    let is_auth = line.len() >= 5 && line[..5].eq_ignore_ascii_case(b"AUTH ");
    let limit = if is_auth {
        limits::AUTH_LINE
    } else {
        limits::COMMAND_LINE
    };
    if line.len() + 2 > limit {
        return Err(CommandError::LineTooLong);
    }
    let line = std::str::from_utf8(line).map_err(|_| CommandError::Syntax("invalid UTF-8"))?;
    let (verb, args) = match line.split_once(' ') {
        Some((v, a)) => (v, a),
        None => (line, ""),
    };
    let upper = verb.to_ascii_uppercase();
    match upper.as_str() {
        "EHLO" => Domain::parse(args.trim())
            .map(Command::Ehlo)
            .map_err(CommandError::Syntax),
        "HELO" => {
            let arg = args.trim();
            if arg.is_empty() {
                return Err(CommandError::Syntax("HELO requires a domain"));
            }
            Ok(Command::Helo(arg.to_string()))
        }
        "MAIL" => parse_mail(args).map(Command::Mail),
        "RCPT" => parse_rcpt(args).map(Command::Rcpt),
        "DATA" => no_args(args, Command::Data),
        "RSET" => no_args(args, Command::Rset),
        "QUIT" => no_args(args, Command::Quit),
        "STARTTLS" => no_args(args, Command::StartTls),
        "NOOP" => Ok(Command::Noop),
        "HELP" => Ok(Command::Help),
        "VRFY" => {
            if args.trim().is_empty() {
                return Err(CommandError::Syntax("VRFY requires an argument"));
            }
            Ok(Command::Vrfy(args.trim().to_string()))
        }
        "AUTH" => {
            let mut parts = args.split(' ').filter(|s| !s.is_empty());
            let mechanism = parts
                .next()
                .ok_or(CommandError::Syntax("AUTH requires a mechanism"))?;
            if !mechanism
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(CommandError::Syntax("invalid SASL mechanism name"));
            }
            let initial_response = parts.next().map(str::to_string);
            if parts.next().is_some() {
                return Err(CommandError::Syntax(
                    "AUTH takes a mechanism and at most one initial response",
                ));
            }
            Ok(Command::Auth {
                mechanism: mechanism.to_ascii_uppercase(),
                initial_response,
            })
        }
        _ => Err(CommandError::Unrecognized),
    }
}

fn no_args(args: &str, cmd: Command) -> Result<Command, CommandError> {
    if args.trim().is_empty() {
        Ok(cmd)
    } else {
        Err(CommandError::Syntax("no parameters allowed"))
    }
}

/// Strip `keyword:` case-insensitively, tolerating a space after the colon (common in the wild).
fn strip_keyword<'a>(args: &'a str, keyword: &str) -> Option<&'a str> {
    let head = args.get(..keyword.len())?;
    head.eq_ignore_ascii_case(keyword)
        .then(|| args[keyword.len()..].trim_start_matches(' '))
}

/// Split `KEY[=VALUE]` parameters, validating RFC 5321 esmtp-keyword / esmtp-value syntax.
fn params(rest: &str) -> Result<Vec<(String, Option<&str>)>, CommandError> {
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(CommandError::Syntax("expected a space after the path"));
    }
    rest.split(' ')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = match p.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (p, None),
            };
            let key_ok = !k.is_empty()
                && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && k.as_bytes()[0].is_ascii_alphanumeric();
            let value_ok = v.is_none_or(|v| {
                !v.is_empty()
                    && v.bytes()
                        .all(|b| (33..=126).contains(&b) && b != b'=' || b >= 0x80)
            });
            if key_ok && value_ok {
                Ok((k.to_ascii_uppercase(), v))
            } else {
                Err(CommandError::Syntax("malformed parameter"))
            }
        })
        .collect()
}

fn parse_mail(args: &str) -> Result<MailFrom, CommandError> {
    let rest =
        strip_keyword(args, "FROM:").ok_or(CommandError::Syntax("expected MAIL FROM:<address>"))?;
    let (path, rest) = split_path(rest).map_err(CommandError::Syntax)?;
    let from = if path.is_empty() {
        ReversePath::Null
    } else {
        ReversePath::Mailbox(Mailbox::parse(path).map_err(CommandError::Syntax)?)
    };
    let mut mail = MailFrom {
        from,
        size: None,
        body: None,
        smtputf8: false,
        mpc: None,
        auth: None,
    };
    for (key, value) in params(rest)? {
        match (key.as_str(), value) {
            ("SIZE", Some(v)) => {
                let n = v
                    .parse()
                    .map_err(|_| CommandError::InvalidParameter("SIZE must be a number"))?;
                mail.size = Some(n);
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => mail.body = Some(Body::SevenBit),
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => {
                mail.body = Some(Body::EightBitMime)
            }
            ("BODY", _) => {
                return Err(CommandError::InvalidParameter(
                    "BODY must be 7BIT or 8BITMIME",
                ));
            }
            ("SMTPUTF8", None) => mail.smtputf8 = true,
            ("SMTPUTF8", Some(_)) => {
                return Err(CommandError::InvalidParameter("SMTPUTF8 takes no value"));
            }
            ("AUTH", Some(v)) => mail.auth = Some(v.to_string()),
            ("MPC", v) => {
                if mail.mpc.is_some() {
                    return Err(CommandError::Mpc("exactly one MPC parameter is allowed"));
                }
                let v = v.ok_or(CommandError::Mpc("expected MPC=role/class"))?;
                if !crate::mpc::is_well_formed(v) {
                    return Err(CommandError::Mpc("expected MPC=role/class"));
                }
                mail.mpc = Some(v.to_ascii_lowercase());
            }
            (k, _) => return Err(CommandError::UnknownParameter(k.to_string())),
        }
    }
    Ok(mail)
}

fn parse_rcpt(args: &str) -> Result<RcptTo, CommandError> {
    let rest =
        strip_keyword(args, "TO:").ok_or(CommandError::Syntax("expected RCPT TO:<address>"))?;
    let (path, rest) = split_path(rest).map_err(CommandError::Syntax)?;
    let to = if path.eq_ignore_ascii_case("postmaster") {
        ForwardPath::Postmaster
    } else if path.is_empty() {
        return Err(CommandError::Syntax("empty recipient"));
    } else {
        ForwardPath::Mailbox(Mailbox::parse(path).map_err(CommandError::Syntax)?)
    };
    if let Some((k, _)) = params(rest)?.into_iter().next() {
        return Err(CommandError::UnknownParameter(k));
    }
    Ok(RcptTo { to })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb(s: &str) -> Mailbox {
        Mailbox::parse(s).unwrap()
    }

    fn mail(from: Option<&str>) -> MailFrom {
        MailFrom {
            from: from.map_or(ReversePath::Null, |f| ReversePath::Mailbox(mb(f))),
            size: None,
            body: None,
            smtputf8: false,
            mpc: None,
            auth: None,
        }
    }

    #[test]
    fn accepted_commands() {
        let cases: Vec<(&str, Command)> = vec![
            (
                "EHLO client.test",
                Command::Ehlo(Domain::parse("client.test").unwrap()),
            ),
            (
                "ehlo [127.0.0.1]",
                Command::Ehlo(Domain::parse("[127.0.0.1]").unwrap()),
            ),
            ("HELO client.test", Command::Helo("client.test".into())),
            (
                "MAIL FROM:<a@b.test>",
                Command::Mail(mail(Some("a@b.test"))),
            ),
            (
                "mail from: <a@b.test>",
                Command::Mail(mail(Some("a@b.test"))),
            ),
            ("MAIL FROM:<>", Command::Mail(mail(None))),
            (
                "MAIL FROM:<a@b.test> SIZE=1000 BODY=8BITMIME",
                Command::Mail(MailFrom {
                    size: Some(1000),
                    body: Some(Body::EightBitMime),
                    ..mail(Some("a@b.test"))
                }),
            ),
            (
                "MAIL FROM:<a@b.test> body=7bit SMTPUTF8",
                Command::Mail(MailFrom {
                    body: Some(Body::SevenBit),
                    smtputf8: true,
                    ..mail(Some("a@b.test"))
                }),
            ),
            (
                "MAIL FROM:<a@b.test> MPC=com/optin",
                Command::Mail(MailFrom {
                    mpc: Some("com/optin".into()),
                    ..mail(Some("a@b.test"))
                }),
            ),
            (
                "MAIL FROM:<a@b.test> mpc=COM/OptIn",
                Command::Mail(MailFrom {
                    mpc: Some("com/optin".into()),
                    ..mail(Some("a@b.test"))
                }),
            ),
            (
                "MAIL FROM:<a@b.test> MPC=foo/bar",
                Command::Mail(MailFrom {
                    mpc: Some("foo/bar".into()),
                    ..mail(Some("a@b.test"))
                }),
            ),
            (
                "MAIL FROM:<a@b.test> AUTH=<>",
                Command::Mail(MailFrom {
                    auth: Some("<>".into()),
                    ..mail(Some("a@b.test"))
                }),
            ),
            (
                "MAIL FROM:<a@b.test>  SIZE=5",
                Command::Mail(MailFrom {
                    size: Some(5),
                    ..mail(Some("a@b.test"))
                }),
            ),
            (
                "RCPT TO:<x@y.test>",
                Command::Rcpt(RcptTo {
                    to: ForwardPath::Mailbox(mb("x@y.test")),
                }),
            ),
            (
                "RCPT TO:<Postmaster>",
                Command::Rcpt(RcptTo {
                    to: ForwardPath::Postmaster,
                }),
            ),
            (
                "RCPT TO:<@relay.test:x@y.test>",
                Command::Rcpt(RcptTo {
                    to: ForwardPath::Mailbox(mb("x@y.test")),
                }),
            ),
            ("DATA", Command::Data),
            ("rset", Command::Rset),
            ("NOOP anything", Command::Noop),
            ("QUIT", Command::Quit),
            ("VRFY bob", Command::Vrfy("bob".into())),
            ("HELP", Command::Help),
            ("STARTTLS", Command::StartTls),
            (
                "AUTH plain",
                Command::Auth {
                    mechanism: "PLAIN".into(),
                    initial_response: None,
                },
            ),
            (
                "AUTH PLAIN AGFiAGM=",
                Command::Auth {
                    mechanism: "PLAIN".into(),
                    initial_response: Some("AGFiAGM=".into()),
                },
            ),
            (
                "AUTH CRAM-MD5",
                Command::Auth {
                    mechanism: "CRAM-MD5".into(),
                    initial_response: None,
                },
            ),
        ];
        for (line, expected) in cases {
            assert_eq!(parse(line.as_bytes()), Ok(expected), "{line}");
        }
    }

    #[test]
    fn refused_commands() {
        let long = format!("NOOP {}", "x".repeat(600));
        let long_auth_ok = format!("AUTH PLAIN {}", "A".repeat(2000));
        let cases: Vec<(&[u8], CommandError, u16)> = vec![
            (b"FOO", CommandError::Unrecognized, 500),
            (b"", CommandError::Unrecognized, 500),
            (b"EHLO", CommandError::Syntax("empty domain"), 501),
            (
                b"EHLO bad..name",
                CommandError::Syntax("invalid domain label"),
                501,
            ),
            (b"HELO", CommandError::Syntax("HELO requires a domain"), 501),
            (
                b"MAIL TO:<a@b.test>",
                CommandError::Syntax("expected MAIL FROM:<address>"),
                501,
            ),
            (
                b"MAIL FROM:a@b.test",
                CommandError::Syntax("path must be enclosed in <>"),
                501,
            ),
            (
                b"MAIL FROM:<a@b.test> FOO=1",
                CommandError::UnknownParameter("FOO".into()),
                555,
            ),
            (
                b"MAIL FROM:<a@b.test> SIZE=abc",
                CommandError::InvalidParameter("SIZE must be a number"),
                501,
            ),
            (
                b"MAIL FROM:<a@b.test> BODY=BINARYMIME",
                CommandError::InvalidParameter("BODY must be 7BIT or 8BITMIME"),
                501,
            ),
            (
                b"MAIL FROM:<a@b.test> MPC=com/optin MPC=com/optin",
                CommandError::Mpc("exactly one MPC parameter is allowed"),
                501,
            ),
            (
                b"MAIL FROM:<a@b.test> MPC=comoptin",
                CommandError::Mpc("expected MPC=role/class"),
                501,
            ),
            (
                b"MAIL FROM:<a@b.test> MPC=com/",
                CommandError::Mpc("expected MPC=role/class"),
                501,
            ),
            (
                b"MAIL FROM:<a@b.test> MPC",
                CommandError::Mpc("expected MPC=role/class"),
                501,
            ),
            (
                b"MAIL FROM:<a@b.test>SIZE=1",
                CommandError::Syntax("expected a space after the path"),
                501,
            ),
            (b"RCPT TO:<>", CommandError::Syntax("empty recipient"), 501),
            (
                b"RCPT TO:<x@y.test> NOTIFY=NEVER",
                CommandError::UnknownParameter("NOTIFY".into()),
                555,
            ),
            (
                b"DATA now",
                CommandError::Syntax("no parameters allowed"),
                501,
            ),
            (
                b"STARTTLS x",
                CommandError::Syntax("no parameters allowed"),
                501,
            ),
            (
                b"VRFY",
                CommandError::Syntax("VRFY requires an argument"),
                501,
            ),
            (
                b"AUTH",
                CommandError::Syntax("AUTH requires a mechanism"),
                501,
            ),
            (
                b"AUTH PLAIN a b",
                CommandError::Syntax("AUTH takes a mechanism and at most one initial response"),
                501,
            ),
            (b"NO\0OP", CommandError::NulByte, 500),
            (long.as_bytes(), CommandError::LineTooLong, 500),
            (
                b"MAIL FROM:<\xff@b.test>",
                CommandError::Syntax("invalid UTF-8"),
                501,
            ),
        ];
        for (line, expected, code) in cases {
            let got = parse(line);
            assert_eq!(
                got,
                Err(expected.clone()),
                "{:?}",
                String::from_utf8_lossy(line)
            );
            assert_eq!(expected.reply().code, code);
        }
        assert!(
            parse(long_auth_ok.as_bytes()).is_ok(),
            "RFC 4954 allows long AUTH lines"
        );
    }
}
