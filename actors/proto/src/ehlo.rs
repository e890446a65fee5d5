//! The EHLO reply a server advertises (RFC 5321 §4.1.1.1 and the extensions we implement).

use crate::reply::Reply;

/// What to advertise; the session fills it from the listener's configuration and state.
#[derive(Debug, Clone, Default)]
pub struct EhloKeywords {
    /// Maximum message size for `SIZE` (RFC 1870); 0 advertises `SIZE` without a limit.
    pub size: u64,
    /// Offer `STARTTLS` (only before TLS is active).
    pub starttls: bool,
    /// SASL mechanisms to offer with `AUTH` (empty: no AUTH line).
    pub auth_mechanisms: Vec<&'static str>,
    /// The AMTP `MPC` policy line, if any (already formatted, without the code).
    pub mpc_line: Option<String>,
}

impl EhloKeywords {
    /// The complete multi-line 250 reply. `greeting` is the first line (our name and a
    /// salutation).
    pub fn reply(&self, greeting: String) -> Reply {
        let mut lines = vec![
            greeting,
            "PIPELINING".to_string(),
            format!("SIZE {}", self.size),
            "8BITMIME".into(),
            "ENHANCEDSTATUSCODES".into(),
            "SMTPUTF8".into(),
        ];
        if self.starttls {
            lines.push("STARTTLS".into());
        }
        if !self.auth_mechanisms.is_empty() {
            lines.push(format!("AUTH {}", self.auth_mechanisms.join(" ")));
        }
        if let Some(mpc) = &self.mpc_line {
            lines.push(mpc.clone());
        }
        Reply::multi(250, lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyword_lines() {
        let k = EhloKeywords {
            size: 1000,
            starttls: true,
            auth_mechanisms: vec![],
            mpc_line: None,
        };
        let wire = String::from_utf8(k.reply("relay.test Hello".into()).to_bytes()).unwrap();
        assert_eq!(
            wire,
            "250-relay.test Hello\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250 STARTTLS\r\n"
        );
        let k = EhloKeywords {
            size: 5,
            starttls: false,
            auth_mechanisms: vec!["PLAIN", "LOGIN"],
            mpc_line: Some("MPC DENY=com/*".into()),
        };
        let r = k.reply("x".into());
        assert_eq!(
            r.lines[5..],
            [
                "SMTPUTF8".to_string(),
                "AUTH PLAIN LOGIN".into(),
                "MPC DENY=com/*".into()
            ]
        );
    }
}
