//! The envelope record stored in sled, with its own hand-written encoding.
//!
//! Byte 0 is the format version; a reader refuses versions it does not know instead of
//! guessing. Integers are little-endian, strings are a u32 length plus UTF-8 bytes, options a
//! 0/1 tag. No serde: the format is ours and changes only with a version bump.

/// Current record format.
pub const VERSION: u8 = 1;

/// How the message reached us; delivery uses it to enforce "no public → public relay".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Unauthenticated SMTP (the mx listener): local domains only.
    Smtp,
    /// Authenticated SMTP submission.
    Submission,
    /// A public AMTP connection.
    AmtpPublic,
    /// A private AMTP connection (customer CA).
    AmtpPrivate,
}

impl Origin {
    fn to_byte(self) -> u8 {
        match self {
            Self::Smtp => 0,
            Self::Submission => 1,
            Self::AmtpPublic => 2,
            Self::AmtpPrivate => 3,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0 => Self::Smtp,
            1 => Self::Submission,
            2 => Self::AmtpPublic,
            3 => Self::AmtpPrivate,
            _ => return None,
        })
    }

    /// Short name for listings.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Smtp => "smtp",
            Self::Submission => "submission",
            Self::AmtpPublic => "amtp-public",
            Self::AmtpPrivate => "amtp-private",
        }
    }
}

/// Where one recipient stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecipientState {
    /// Not yet delivered.
    Pending,
    /// The next hop said 250.
    Delivered,
    /// Permanently failed (bounced).
    Failed,
}

/// One recipient and its delivery state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientStatus {
    /// The address as accepted.
    pub address: String,
    /// Its state.
    pub state: RecipientState,
    /// The last reply from a next hop (for `queue show` and DSNs).
    pub last_reply: Option<String>,
}

/// Who sent a message and how it reached us: fixed when it is accepted, never rewritten.
/// Shared by [`crate::NewMessage`] (what a session hands over) and [`MessageRecord`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Envelope sender; empty for the null sender `<>`.
    pub sender: String,
    /// The AMTP Mail Policy Code, carried unchanged (never rewritten).
    pub mpc: Option<String>,
    /// How it arrived.
    pub origin: Origin,
    /// The listener that accepted it.
    pub listener: String,
    /// The client's IP address.
    pub client_ip: String,
    /// The SMTP AUTH identity, if any.
    pub auth_user: Option<String>,
    /// The Message-ID header value, if the message had one.
    pub message_id: Option<String>,
}

/// Everything the queue knows about a message except its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    /// When it was accepted (ms since epoch).
    pub received_at: u64,
    /// Sender, MPC and origin.
    pub envelope: Envelope,
    /// Recipients with per-recipient status.
    pub recipients: Vec<RecipientStatus>,
    /// Body size in octets.
    pub size: u64,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// When the next attempt is due (ms since epoch).
    pub next_attempt: u64,
    /// A delivery worker holds the message until this time (ms), or 0 for no lease.
    pub lease_until: u64,
}

impl MessageRecord {
    /// Recipients still pending.
    pub fn pending(&self) -> impl Iterator<Item = &RecipientStatus> {
        self.recipients
            .iter()
            .filter(|r| r.state == RecipientState::Pending)
    }

    /// Encode with the version byte.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(128));
        w.u8(VERSION);
        w.u64(self.received_at);
        let e = &self.envelope;
        w.str(&e.sender);
        w.opt(e.mpc.as_deref());
        w.u8(e.origin.to_byte());
        w.str(&e.listener);
        w.str(&e.client_ip);
        w.opt(e.auth_user.as_deref());
        w.opt(e.message_id.as_deref());
        w.u32(u32::try_from(self.recipients.len()).unwrap_or(u32::MAX));
        for r in &self.recipients {
            w.str(&r.address);
            w.u8(match r.state {
                RecipientState::Pending => 0,
                RecipientState::Delivered => 1,
                RecipientState::Failed => 2,
            });
            w.opt(r.last_reply.as_deref());
        }
        w.u64(self.size);
        w.u32(self.attempts);
        w.u64(self.next_attempt);
        w.u64(self.lease_until);
        w.0
    }

    /// Decode; refuses unknown versions and truncated or trailing data.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let mut r = Reader(bytes);
        let version = r.u8()?;
        if version != VERSION {
            return Err(format!(
                "unknown record version {version} (this build reads {VERSION})"
            ));
        }
        let received_at = r.u64()?;
        let envelope = Envelope {
            sender: r.str()?,
            mpc: r.opt()?,
            origin: Origin::from_byte(r.u8()?).ok_or("bad origin")?,
            listener: r.str()?,
            client_ip: r.str()?,
            auth_user: r.opt()?,
            message_id: r.opt()?,
        };
        let n = r.u32()?;
        let mut recipients = Vec::with_capacity(usize::try_from(n).unwrap_or(0).min(10_000));
        for _ in 0..n {
            let address = r.str()?;
            let state = match r.u8()? {
                0 => RecipientState::Pending,
                1 => RecipientState::Delivered,
                2 => RecipientState::Failed,
                s => return Err(format!("bad recipient state {s}")),
            };
            let last_reply = r.opt()?;
            recipients.push(RecipientStatus {
                address,
                state,
                last_reply,
            });
        }
        let rec = Self {
            received_at,
            envelope,
            recipients,
            size: r.u64()?,
            attempts: r.u32()?,
            next_attempt: r.u64()?,
            lease_until: r.u64()?,
        };
        if !r.0.is_empty() {
            return Err(format!("{} trailing bytes", r.0.len()));
        }
        Ok(rec)
    }
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u32(u32::try_from(s.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(s.as_bytes());
    }
    fn opt(&mut self, s: Option<&str>) {
        match s {
            None => self.u8(0),
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        if self.0.len() < n {
            return Err("truncated record".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().map_err(|_| "truncated")?,
        ))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().map_err(|_| "truncated")?,
        ))
    }
    fn str(&mut self) -> Result<String, String> {
        let n = usize::try_from(self.u32()?).map_err(|_| "length overflow")?;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "invalid UTF-8 in record".to_string())
    }
    fn opt(&mut self) -> Result<Option<String>, String> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.str()?)),
            t => Err(format!("bad option tag {t}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> MessageRecord {
        MessageRecord {
            received_at: 1_700_000_000_000,
            envelope: Envelope {
                sender: "a@b.test".into(),
                mpc: Some("com/optin".into()),
                origin: Origin::Submission,
                listener: "submission".into(),
                client_ip: "127.0.0.1".into(),
                auth_user: Some("dev".into()),
                message_id: Some("<1@b.test>".into()),
            },
            recipients: vec![
                RecipientStatus {
                    address: "x@y.test".into(),
                    state: RecipientState::Pending,
                    last_reply: None,
                },
                RecipientStatus {
                    address: "z@y.test".into(),
                    state: RecipientState::Failed,
                    last_reply: Some("550 5.1.1 no".into()),
                },
            ],
            size: 1234,
            attempts: 2,
            next_attempt: 5,
            lease_until: 0,
        }
    }

    #[test]
    fn round_trip() {
        let r = sample();
        assert_eq!(MessageRecord::decode(&r.encode()), Ok(r));
    }

    #[test]
    fn refuses_bad_input() {
        let bytes = sample().encode();
        for cut in 0..bytes.len() {
            assert!(
                MessageRecord::decode(&bytes[..cut]).is_err(),
                "truncated at {cut}"
            );
        }
        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert!(
            MessageRecord::decode(&v2)
                .unwrap_err()
                .contains("unknown record version 2")
        );
        let mut trailing = bytes;
        trailing.push(0);
        assert!(MessageRecord::decode(&trailing).is_err());
    }
}
