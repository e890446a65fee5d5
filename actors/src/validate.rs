//! Validation of each configuration section by itself: every section has a `validate()` that
//! returns typed [`FieldError`]s — which field, what is wrong — so the binary can name the
//! field and its line without parsing message text, and report every error at once. Rules
//! that span sections (a listener that needs a certificate, a route that needs trust anchors)
//! stay with the binary's file loading.

pub use crate::config::FieldError;
use crate::config::{
    AmtpConfig, AuthConfig, DeliveryConfig, ListenerConfig, PoolConfig, QueueConfig,
    ResolverConfig, SessionConfig,
};

fn at_least_one(errors: &mut Vec<FieldError>, key: &'static str, zero: bool) {
    if zero {
        errors.push(FieldError::new(key, "must be at least 1"));
    }
}

fn more_than_zero(errors: &mut Vec<FieldError>, key: &'static str, zero: bool) {
    if zero {
        errors.push(FieldError::new(key, "must be more than 0"));
    }
}

impl ListenerConfig {
    /// This listener's own rules (uniqueness across listeners is the file's rule).
    pub fn validate(&self) -> Vec<FieldError> {
        let mut e = Vec::new();
        if self.name.is_empty() {
            e.push(FieldError::new("name", "must not be empty"));
        }
        if self.max_connections == 0 || self.max_connections_per_ip == 0 {
            e.push(FieldError::new(
                "max_connections",
                "connection limits must be at least 1",
            ));
        }
        if self.cram_md5 && !self.auth_enabled() {
            e.push(FieldError::new(
                "cram_md5",
                "CRAM-MD5 needs AUTH enabled on this listener",
            ));
        }
        if self.role.requires_auth() && self.auth == Some(false) {
            e.push(FieldError::new(
                "auth",
                format!(
                    "a {} listener requires AUTH before MAIL; it cannot be disabled",
                    self.role.as_str()
                ),
            ));
        }
        e
    }
}

impl SessionConfig {
    /// Limits and timeouts that make sense.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut e = Vec::new();
        more_than_zero(&mut e, "max_message_size", self.max_message_size.0 == 0);
        if self.max_message_size.0 > 1 << 30 {
            e.push(FieldError::new(
                "max_message_size",
                "at most 1GiB (messages are held in memory while received)",
            ));
        }
        at_least_one(&mut e, "max_recipients", self.max_recipients == 0);
        at_least_one(&mut e, "max_errors", self.max_errors == 0);
        more_than_zero(&mut e, "command_timeout", self.command_timeout.0.is_zero());
        more_than_zero(&mut e, "data_timeout", self.data_timeout.0.is_zero());
        more_than_zero(
            &mut e,
            "tls_handshake_timeout",
            self.tls_handshake_timeout.0.is_zero(),
        );
        e
    }
}

impl AuthConfig {
    /// Failure limits of at least 1.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut e = Vec::new();
        at_least_one(&mut e, "max_failures_per_ip", self.max_failures_per_ip == 0);
        at_least_one(
            &mut e,
            "max_failures_per_user",
            self.max_failures_per_user == 0,
        );
        e
    }
}

impl QueueConfig {
    /// Batch and capacity of at least 1.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut e = Vec::new();
        at_least_one(&mut e, "batch_max", self.batch_max == 0);
        at_least_one(&mut e, "capacity", self.capacity == 0);
        e
    }
}

impl PoolConfig {
    /// Mailboxes of at least 1 (0 workers means one per core).
    pub fn validate(&self) -> Vec<FieldError> {
        let mut e = Vec::new();
        at_least_one(&mut e, "worker_mailbox", self.worker_mailbox == 0);
        e
    }
}

impl ResolverConfig {
    /// A timeout and at least one try.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut e = Vec::new();
        more_than_zero(&mut e, "timeout", self.timeout.0.is_zero());
        at_least_one(&mut e, "attempts", self.attempts == 0);
        e
    }
}

impl DeliveryConfig {
    /// Routes and limits of the section itself (trust anchors and certificates are the
    /// file's cross-section rules).
    pub fn validate(&self) -> Vec<FieldError> {
        let mut e = Vec::new();
        for (i, r) in self.route.iter().enumerate() {
            if r.domains.is_empty() || r.host.is_empty() || r.port == 0 {
                e.push(FieldError::in_entry(
                    "route",
                    i,
                    "",
                    "a route needs domains, host and a non-zero port",
                ));
            }
        }
        at_least_one(
            &mut e,
            "concurrency_per_destination",
            self.concurrency_per_destination == 0,
        );
        at_least_one(
            &mut e,
            "max_messages_per_connection",
            self.max_messages_per_connection == 0,
        );
        e
    }
}

impl AmtpConfig {
    /// The trust sets are given and the policy builds
    /// ([`crate::amtp_policy::AmtpPolicy::from_config`]).
    pub fn validate(&self) -> Vec<FieldError> {
        let mut e = Vec::new();
        if self.public_ca.is_none() && self.private_ca.is_empty() {
            e.push(FieldError::new(
                "public_ca",
                "give public_ca (public peers) or private_ca (private clients), or both",
            ));
        }
        if let Err(policy) = crate::amtp_policy::AmtpPolicy::from_config(self) {
            e.extend(policy);
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_typed_and_all_reported() {
        let s: SessionConfig =
            toml::from_str("max_recipients = 0\nmax_errors = 0\ncommand_timeout = \"0s\"\n")
                .unwrap();
        let keys: Vec<&str> = s.validate().iter().map(|e| e.key).collect();
        assert_eq!(keys, ["max_recipients", "max_errors", "command_timeout"]);

        let a: AmtpConfig = toml::from_str(
            "mpc_policy = \"DENY=com/nonsense\"\n[[rule]]\ndeny = [\"com/optout\"]\n[[rule]]\nrecipient_domain = \"kids.test\"\ndeny = [\"bogus\"]\n",
        )
        .unwrap();
        let errors = a.validate();
        let paths: Vec<String> = errors.iter().map(|e| e.path("amtp")).collect();
        assert_eq!(
            paths,
            [
                "amtp.public_ca",
                "amtp.mpc_policy",
                "amtp.rule[0]",
                "amtp.rule[1].deny"
            ],
            "{errors:?}"
        );
        assert!(
            errors.iter().all(|e| !e.message.starts_with("amtp.")),
            "{errors:?}"
        );
    }
}
