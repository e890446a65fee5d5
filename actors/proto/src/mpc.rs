//! Mail Policy Codes (AMTP draft §4.5) and the EHLO `MPC` policy line (§4.4.2).
//!
//! An MPC is `role/class` from two closed lists. A server publishes ALLOW/DENY declarations;
//! evaluation runs them in order over an implied first rule (`DENY */*` when the first
//! declaration is ALLOW, `ALLOW */*` when it is DENY) and the last matching declaration wins
//! (spec/AMTP.md §5, our rule). `mpc/individual` is always accepted, whatever the rules say.

use std::fmt;
use std::str::FromStr;

macro_rules! closed_list {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $(#[doc = $text] $variant),+ }
        impl $name {
            /// Every value, in the draft's order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];
            /// The wire token.
            pub fn as_str(self) -> &'static str { match self { $(Self::$variant => $text),+ } }
            fn from_token(s: &str) -> Option<Self> {
                $(if s.eq_ignore_ascii_case($text) { return Some(Self::$variant); })+
                None
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
    };
}

closed_list!(
    /// Who sends (draft §4.5.1).
    Role { Per = "per", Com = "com", Ngo = "ngo", Net = "net", Gov = "gov", Pol = "pol", Mpc = "mpc" }
);
closed_list!(
    /// What kind of message it is (draft §4.5.2).
    Class { Individual = "individual", Autoresponse = "autoresponse", Customer = "customer", Optout = "optout", Optin = "optin", Confirmed = "confirmed" }
);

/// Why an MPC or a policy line was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MpcError {
    /// Not `token/token`.
    Malformed(String),
    /// A role outside the closed list.
    UndefinedRole(String),
    /// A class outside the closed list.
    UndefinedClass(String),
    /// `mpc/<anything but individual>`.
    InvalidMpcRole,
    /// A policy declaration that is neither ALLOW nor DENY.
    BadDeclaration(String),
}

impl fmt::Display for MpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(s) => write!(f, "malformed MPC {s:?}: expected role/class"),
            Self::UndefinedRole(s) => write!(f, "undefined MPC role {s:?}"),
            Self::UndefinedClass(s) => write!(f, "undefined MPC class {s:?}"),
            Self::InvalidMpcRole => write!(f, "the mpc role is only valid as mpc/individual"),
            Self::BadDeclaration(s) => write!(
                f,
                "bad MPC declaration {s:?}: expected ALLOW=role/class or DENY=role/class"
            ),
        }
    }
}

impl std::error::Error for MpcError {}

/// Whether `s` has the shape `token/token` (ASCII letters/digits), before any list lookup.
pub fn is_well_formed(s: &str) -> bool {
    let token = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric());
    matches!(s.split_once('/'), Some((r, c)) if token(r) && token(c))
}

/// A valid Mail Policy Code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mpc {
    /// Sender role.
    pub role: Role,
    /// Message class.
    pub class: Class,
}

impl Mpc {
    /// `net/autoresponse`: what an MTA's own bounces carry.
    pub const BOUNCE: Self = Self {
        role: Role::Net,
        class: Class::Autoresponse,
    };
    /// `mpc/individual`: always accepted.
    pub const MPC_INDIVIDUAL: Self = Self {
        role: Role::Mpc,
        class: Class::Individual,
    };
}

impl FromStr for Mpc {
    type Err = MpcError;
    fn from_str(s: &str) -> Result<Self, MpcError> {
        if !is_well_formed(s) {
            return Err(MpcError::Malformed(s.to_string()));
        }
        let (r, c) = s
            .split_once('/')
            .ok_or_else(|| MpcError::Malformed(s.to_string()))?;
        let role = Role::from_token(r).ok_or_else(|| MpcError::UndefinedRole(r.to_string()))?;
        let class = Class::from_token(c).ok_or_else(|| MpcError::UndefinedClass(c.to_string()))?;
        if role == Role::Mpc && class != Class::Individual {
            return Err(MpcError::InvalidMpcRole);
        }
        Ok(Self { role, class })
    }
}

impl fmt::Display for Mpc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.role, self.class)
    }
}

/// The outcome of evaluating a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Accept (250).
    Allow,
    /// Refuse (550 5.7.1 MPC policy violation).
    Deny,
}

/// One `ALLOW=role/class` or `DENY=role/class`; `None` is the `*` wildcard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Declaration {
    /// ALLOW or DENY.
    pub verdict: Verdict,
    /// Role pattern (`None` = `*`).
    pub role: Option<Role>,
    /// Class pattern (`None` = `*`).
    pub class: Option<Class>,
}

impl Declaration {
    fn matches(&self, mpc: &Mpc) -> bool {
        self.role.is_none_or(|r| r == mpc.role) && self.class.is_none_or(|c| c == mpc.class)
    }

    fn parse(verdict: &str, pattern: &str) -> Result<Self, MpcError> {
        let verdict = if verdict.eq_ignore_ascii_case("ALLOW") {
            Verdict::Allow
        } else if verdict.eq_ignore_ascii_case("DENY") {
            Verdict::Deny
        } else {
            return Err(MpcError::BadDeclaration(format!("{verdict} {pattern}")));
        };
        let (r, c) = pattern
            .split_once('/')
            .ok_or_else(|| MpcError::Malformed(pattern.to_string()))?;
        let role = match r {
            "*" => None,
            r => Some(Role::from_token(r).ok_or_else(|| MpcError::UndefinedRole(r.to_string()))?),
        };
        let class = match c {
            "*" => None,
            c => Some(Class::from_token(c).ok_or_else(|| MpcError::UndefinedClass(c.to_string()))?),
        };
        Ok(Self {
            verdict,
            role,
            class,
        })
    }
}

impl fmt::Display for Declaration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = if self.verdict == Verdict::Allow {
            "ALLOW"
        } else {
            "DENY"
        };
        let r = self.role.map_or("*", Role::as_str);
        let c = self.class.map_or("*", Class::as_str);
        write!(f, "{v}={r}/{c}")
    }
}

/// An ordered list of declarations: a published (or configured) MPC policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MpcPolicy {
    /// In order; the last match wins.
    pub declarations: Vec<Declaration>,
}

impl MpcPolicy {
    /// Evaluate an MPC against the declarations (see the module docs for the rules).
    pub fn evaluate(&self, mpc: &Mpc) -> Verdict {
        if *mpc == Mpc::MPC_INDIVIDUAL {
            return Verdict::Allow;
        }
        let implied = match self.declarations.first() {
            None => return Verdict::Allow,
            Some(d) if d.verdict == Verdict::Allow => Verdict::Deny,
            Some(_) => Verdict::Allow,
        };
        self.declarations
            .iter()
            .rev()
            .find(|d| d.matches(mpc))
            .map_or(implied, |d| d.verdict)
    }

    /// Parse declarations in our configuration/EHLO form: `ALLOW=com/* DENY=com/optout`.
    pub fn parse_declarations(s: &str) -> Result<Self, MpcError> {
        let declarations = s
            .split_whitespace()
            .map(|tok| {
                let (v, p) = tok
                    .split_once('=')
                    .ok_or_else(|| MpcError::BadDeclaration(tok.to_string()))?;
                Declaration::parse(v, p)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { declarations })
    }

    /// The EHLO keyword line we publish (`MPC ALLOW=… DENY=…`), or `None` with no rules.
    pub fn ehlo_line(&self) -> Option<String> {
        if self.declarations.is_empty() {
            return None;
        }
        let decls: Vec<String> = self.declarations.iter().map(ToString::to_string).collect();
        Some(format!("MPC {}", decls.join(" ")))
    }

    /// Read a peer's policy from its EHLO reply lines (after the first, the greeting).
    /// Accepts the three forms the draft uses: `MPC ALLOW=a/b DENY=c/d`, `MPC ALLOW a/b`,
    /// and the -00 form `MPC-ALLOW a/b` / `MPC-DENY c/d` (one or more lines). `Ok(None)`
    /// means the peer published no MPC line, which allows everything.
    pub fn from_ehlo_lines<S: AsRef<str>>(lines: &[S]) -> Result<Option<Self>, MpcError> {
        let mut declarations = Vec::new();
        let mut seen = false;
        for line in lines {
            let mut words = line.as_ref().split_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            let upper = keyword.to_ascii_uppercase();
            if upper == "MPC" {
                seen = true;
                let rest: Vec<&str> = words.collect();
                let mut i = 0;
                while i < rest.len() {
                    if let Some((v, p)) = rest[i].split_once('=') {
                        declarations.push(Declaration::parse(v, p)?);
                        i += 1;
                    } else {
                        let pattern = rest
                            .get(i + 1)
                            .ok_or_else(|| MpcError::BadDeclaration(rest[i].to_string()))?;
                        declarations.push(Declaration::parse(rest[i], pattern)?);
                        i += 2;
                    }
                }
            } else if let Some(verdict) = upper.strip_prefix("MPC-") {
                seen = true;
                for pattern in words {
                    declarations.push(Declaration::parse(verdict, pattern)?);
                }
            }
        }
        Ok(seen.then_some(Self { declarations }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Mpc {
        s.parse().unwrap()
    }

    #[test]
    fn parse_values() {
        assert_eq!(
            m("com/optin"),
            Mpc {
                role: Role::Com,
                class: Class::Optin
            }
        );
        assert_eq!(m("MPC/Individual"), Mpc::MPC_INDIVIDUAL);
        let bad: &[(&str, MpcError)] = &[
            ("com", MpcError::Malformed("com".into())),
            ("com/", MpcError::Malformed("com/".into())),
            ("com/opt-in", MpcError::Malformed("com/opt-in".into())),
            ("foo/optin", MpcError::UndefinedRole("foo".into())),
            ("com/bulk", MpcError::UndefinedClass("bulk".into())),
            ("mpc/optin", MpcError::InvalidMpcRole),
        ];
        for (s, e) in bad {
            assert_eq!(s.parse::<Mpc>().as_ref(), Err(e), "{s}");
        }
        // Every combination of the closed lists parses, except mpc/* other than individual.
        for r in Role::ALL {
            for c in Class::ALL {
                let ok = format!("{r}/{c}").parse::<Mpc>().is_ok();
                assert_eq!(ok, *r != Role::Mpc || *c == Class::Individual, "{r}/{c}");
            }
        }
    }

    #[test]
    fn evaluation_table() {
        let cases: &[(&str, &str, Verdict)] = &[
            ("", "com/optin", Verdict::Allow),
            (
                "ALLOW=com/individual DENY=com/*",
                "com/individual",
                Verdict::Deny,
            ),
            (
                "ALLOW=com/individual DENY=com/*",
                "per/individual",
                Verdict::Deny,
            ),
            (
                "DENY=com/* ALLOW=com/individual",
                "com/individual",
                Verdict::Allow,
            ),
            (
                "DENY=com/* ALLOW=com/individual",
                "com/optin",
                Verdict::Deny,
            ),
            (
                "DENY=com/* ALLOW=com/individual",
                "per/individual",
                Verdict::Allow,
            ),
            ("ALLOW=*/individual", "per/individual", Verdict::Allow),
            ("ALLOW=*/individual", "com/optin", Verdict::Deny),
            ("DENY=*/*", "per/individual", Verdict::Deny),
            ("DENY=*/*", "mpc/individual", Verdict::Allow),
            ("ALLOW=com/optin", "mpc/individual", Verdict::Allow),
            (
                "DENY=*/optout ALLOW=gov/* DENY=gov/optout",
                "gov/optout",
                Verdict::Deny,
            ),
            (
                "DENY=*/optout ALLOW=gov/* DENY=gov/optout",
                "gov/optin",
                Verdict::Allow,
            ),
        ];
        for (rules, mpc, verdict) in cases {
            let policy = MpcPolicy::parse_declarations(rules).unwrap();
            assert_eq!(policy.evaluate(&m(mpc)), *verdict, "{rules} / {mpc}");
        }
    }

    #[test]
    fn ehlo_forms() {
        let ours = MpcPolicy::parse_declarations("ALLOW=com/individual DENY=com/*").unwrap();
        assert_eq!(
            ours.ehlo_line().as_deref(),
            Some("MPC ALLOW=com/individual DENY=com/*")
        );
        assert_eq!(MpcPolicy::default().ehlo_line(), None);
        let forms: &[&[&str]] = &[
            &[
                "relay.test",
                "PIPELINING",
                "MPC ALLOW=com/individual DENY=com/*",
            ],
            &["relay.test", "MPC ALLOW com/individual DENY com/*"],
            &[
                "relay.test",
                "MPC-ALLOW com/individual",
                "mpc-deny com/*",
                "8BITMIME",
            ],
        ];
        for lines in forms {
            assert_eq!(
                MpcPolicy::from_ehlo_lines(lines),
                Ok(Some(ours.clone())),
                "{lines:?}"
            );
        }
        assert_eq!(
            MpcPolicy::from_ehlo_lines(&["relay.test", "SIZE 1000"]),
            Ok(None)
        );
        assert!(MpcPolicy::from_ehlo_lines(&["MPC ALLOW"]).is_err());
        assert!(MpcPolicy::from_ehlo_lines(&["MPC PERMIT=com/*"]).is_err());
        assert!(MpcPolicy::parse_declarations("ALLOW=xyz/*").is_err());
    }
}
