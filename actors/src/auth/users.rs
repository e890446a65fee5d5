//! The users file: who may use SMTP AUTH, and with what.
//!
//! ```toml
//! [[user]]
//! name = "alice"
//! password = "$argon2id$v=19$m=19456,t=2,p=1$…"   # PHC string, `amtp-relay hash-password`
//! cram_md5 = "…64 hex digits…"                      # optional, only for CRAM-MD5 listeners
//! mpc = "com/customer"                              # optional: MPC for this user's mail
//! ```
//! PLAIN and LOGIN verify against the argon2 hash (slow by design). A user without
//! `cram_md5` simply cannot use CRAM-MD5. Unknown users cost the same argon2 verification as
//! known ones, so response time does not reveal which names exist.

use super::Credentials;
use super::cram::CramSecret;
use amtp_proto::mpc::Mpc;
use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;

/// Why the users file was refused.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// Unreadable.
    #[error("cannot read users file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not valid TOML or wrong fields (the message names the line).
    #[error("users file {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// toml's message, with line and column.
        message: String,
    },
    /// A semantic problem with one entry.
    #[error("users file {path}: user {user:?}: {message}")]
    Entry {
        /// The file.
        path: String,
        /// The user name.
        user: String,
        /// What is wrong.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    user: Vec<UserEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    name: String,
    password: String,
    cram_md5: Option<String>,
    mpc: Option<String>,
}

#[derive(Debug)]
struct User {
    password_hash: String,
    cram: Option<CramSecret>,
    /// The Mail Policy Code for this user's mail when MAIL carries none.
    mpc: Option<Mpc>,
}

/// The loaded users.
#[derive(Debug)]
pub struct UserDb {
    users: HashMap<String, User>,
    /// Verified against when the user does not exist, to keep timing uniform.
    dummy_hash: String,
}

impl UserDb {
    /// An empty database (AUTH always fails).
    pub fn empty() -> Self {
        Self {
            users: HashMap::new(),
            dummy_hash: hash_password("not a real password"),
        }
    }

    /// Load and validate a users file.
    pub fn load(path: &Path) -> Result<Self, UsersError> {
        let text = std::fs::read_to_string(path).map_err(|source| UsersError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parse users-file text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, UsersError> {
        let file: UsersFile = toml::from_str(text).map_err(|e| UsersError::Parse {
            path: origin.into(),
            message: e.to_string(),
        })?;
        let mut users = HashMap::new();
        for entry in file.user {
            let err = |message: &str| UsersError::Entry {
                path: origin.into(),
                user: entry.name.clone(),
                message: message.into(),
            };
            if entry.name.is_empty()
                || entry
                    .name
                    .chars()
                    .any(|c| c.is_control() || c.is_whitespace())
            {
                return Err(err(
                    "user names must be non-empty without spaces or control characters",
                ));
            }
            PasswordHash::new(&entry.password).map_err(|_| {
                err("password must be a PHC hash string (use `amtp-relay hash-password`)")
            })?;
            let cram = match &entry.cram_md5 {
                Some(hex) => Some(CramSecret::from_hex(hex).ok_or_else(|| err("cram_md5 must be 64 hex digits (use `amtp-relay hash-password --cram-md5`)"))?),
                None => None,
            };
            let mpc = match &entry.mpc {
                Some(text) => Some(text.parse::<Mpc>().map_err(|e| {
                    err(&format!(
                        "mpc: {e} (a defined Mail Policy Code such as per/individual or com/customer)"
                    ))
                })?),
                None => None,
            };
            if users
                .insert(
                    entry.name.clone(),
                    User {
                        password_hash: entry.password,
                        cram,
                        mpc,
                    },
                )
                .is_some()
            {
                return Err(err("listed twice"));
            }
        }
        Ok(Self {
            users,
            dummy_hash: hash_password("not a real password"),
        })
    }

    /// Each user's configured Mail Policy Code (users without one are left out).
    pub fn mpcs(&self) -> HashMap<String, Mpc> {
        self.users
            .iter()
            .filter_map(|(name, u)| u.mpc.map(|m| (name.clone(), m)))
            .collect()
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether there are no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether any user can do CRAM-MD5.
    pub fn has_cram_secrets(&self) -> bool {
        self.users.values().any(|u| u.cram.is_some())
    }

    /// Check credentials; `Some(user)` on success. CPU-heavy for passwords (argon2): call it
    /// off the reactor.
    pub fn verify(&self, credentials: &Credentials) -> Option<String> {
        match credentials {
            Credentials::Password { user, password } => {
                let known = self.users.get(user);
                let hash = known.map_or(self.dummy_hash.as_str(), |u| u.password_hash.as_str());
                let ok = PasswordHash::new(hash).is_ok_and(|h| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &h)
                        .is_ok()
                });
                (ok && known.is_some()).then(|| user.clone())
            }
            Credentials::CramMd5 {
                user,
                challenge,
                digest,
            } => {
                let secret = self.users.get(user)?.cram.as_ref()?;
                secret.verify(challenge, digest).then(|| user.clone())
            }
        }
    }
}

/// An argon2id PHC hash of `password` with a random salt.
pub fn hash_password(password: &str) -> String {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).expect("the OS random number generator must work");
    let salt = SaltString::encode_b64(&salt).expect("16 bytes is a valid salt length");
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters cannot fail")
        .to_string()
}

/// A users-file entry for `name` (with a CRAM-MD5 secret if asked).
pub fn users_file_entry(name: &str, password: &str, cram_md5: bool) -> String {
    let mut entry = format!(
        "[[user]]\nname = {name:?}\npassword = {:?}\n",
        hash_password(password)
    );
    if cram_md5 {
        entry.push_str(&format!(
            "cram_md5 = {:?}\n",
            CramSecret::from_password(password).to_hex()
        ));
    }
    entry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_verification() {
        let text = format!(
            "{}{}",
            users_file_entry("alice", "s3cret", true),
            users_file_entry("bob", "hunter2", false)
        );
        let db = UserDb::parse(&text, "test").unwrap();
        assert_eq!(db.len(), 2);
        let pw = |u: &str, p: &str| Credentials::Password {
            user: u.into(),
            password: p.into(),
        };
        assert_eq!(db.verify(&pw("alice", "s3cret")).as_deref(), Some("alice"));
        assert_eq!(db.verify(&pw("alice", "wrong")), None);
        assert_eq!(db.verify(&pw("mallory", "s3cret")), None);
        let challenge = "<1.2@relay.test>".to_string();
        let digest = super::super::cram::hex(
            &CramSecret::from_password("s3cret").hmac(challenge.as_bytes()),
        );
        let cram = |u: &str| Credentials::CramMd5 {
            user: u.into(),
            challenge: challenge.clone(),
            digest: digest.clone(),
        };
        assert_eq!(db.verify(&cram("alice")).as_deref(), Some("alice"));
        assert_eq!(db.verify(&cram("bob")), None, "bob has no CRAM-MD5 secret");
        assert!(!format!("{:?}", pw("a", "topsecret")).contains("topsecret"));
    }

    #[test]
    fn a_user_can_carry_its_own_mpc() {
        let hash = hash_password("pw");
        let text = format!(
            "[[user]]\nname = \"shop\"\npassword = \"{hash}\"\nmpc = \"COM/Customer\"\n\n[[user]]\nname = \"plain\"\npassword = \"{hash}\"\n"
        );
        let db = UserDb::parse(&text, "test").unwrap();
        let mpcs = db.mpcs();
        assert_eq!(mpcs.len(), 1);
        assert_eq!(mpcs["shop"].to_string(), "com/customer");
        for bad in ["foo/bar", "com", "mpc/optin"] {
            let text =
                format!("[[user]]\nname = \"shop\"\npassword = \"{hash}\"\nmpc = \"{bad}\"\n");
            let e = UserDb::parse(&text, "test").unwrap_err().to_string();
            assert!(e.contains("user \"shop\": mpc:"), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_files_name_the_problem() {
        let cases = [
            ("[[user]]\nname = \"a\"\n", "missing field `password`"),
            ("[[user]]\nname = \"a\"\npassword = \"plain\"\n", "PHC"),
            (
                "[[user]]\nname = \"a b\"\npassword = \"x\"\n",
                "without spaces",
            ),
            (
                "[[user]]\nname = \"a\"\npasswd = \"x\"\n",
                "unknown field `passwd`",
            ),
        ];
        for (text, needle) in cases {
            let e = UserDb::parse(text, "users.toml").unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
        let twice = format!(
            "{}{}",
            users_file_entry("a", "x", false),
            users_file_entry("a", "y", false)
        );
        assert!(
            UserDb::parse(&twice, "u")
                .unwrap_err()
                .to_string()
                .contains("listed twice")
        );
    }
}
