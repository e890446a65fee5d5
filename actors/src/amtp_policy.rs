//! AMTP policy (spec/AMTP.md §4–§6): Mail Policy Codes on MAIL, published and unadvertised
//! MPC rules, per-identity rate limits, relay limits for public connections, and the binding of
//! SMTP AUTH users to private certificates.
//!
//! Pure decisions over immutable configuration, called by the session; the only shared state
//! is the rate limiter (sharded, lock-light), so no actor round trip sits on the per-message
//! path. (The design sketch routed these through the policy actor; a message per MAIL would
//! only add latency, since nothing here does I/O.)

use crate::amtp_tls::TrustClass;
use crate::config::FieldError;
use crate::metrics;
use amtp_proto::Reply;
use amtp_proto::mpc::{Mpc, MpcError, MpcPolicy, Verdict};
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An unadvertised rule: when its selectors match, the listed MPCs are refused.
#[derive(Debug, Clone, Default)]
pub struct MpcRule {
    /// Applies to senders in this domain (checked at MAIL).
    pub sender_domain: Option<String>,
    /// Applies to recipients in this domain (checked per RCPT).
    pub recipient_domain: Option<String>,
    /// Applies to this client identity (certificate name; checked at MAIL).
    pub client: Option<String>,
    /// The refused codes, as DENY declarations (`mpc/individual` is never refused).
    pub deny: MpcPolicy,
}

impl AmtpPolicy {
    /// The policy `[amtp]` describes; every field that does not build is reported.
    pub fn from_config(c: &crate::config::AmtpConfig) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let published = MpcPolicy::parse_declarations(&c.mpc_policy)
            .map_err(|e| errors.push(FieldError::new("mpc_policy", e.to_string())))
            .unwrap_or_default();
        let norm = |s: &str| s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
        let mut rules = Vec::new();
        for (i, r) in c.rule.iter().enumerate() {
            if r.sender_domain.is_none() && r.recipient_domain.is_none() && r.client.is_none() {
                errors.push(FieldError::in_entry(
                    "rule",
                    i,
                    "",
                    "give sender_domain, recipient_domain or client",
                ));
            }
            if r.recipient_domain.is_some() && (r.sender_domain.is_some() || r.client.is_some()) {
                errors.push(FieldError::in_entry(
                    "rule",
                    i,
                    "recipient_domain",
                    "recipient_domain rules are checked per RCPT and cannot be combined with sender_domain or client",
                ));
            }
            let decls: Vec<String> = r.deny.iter().map(|d| format!("DENY={d}")).collect();
            match MpcPolicy::parse_declarations(&decls.join(" ")) {
                Ok(deny) => rules.push(MpcRule {
                    sender_domain: r.sender_domain.as_deref().map(norm),
                    recipient_domain: r.recipient_domain.as_deref().map(norm),
                    client: r.client.as_deref().map(norm),
                    deny,
                }),
                Err(e) => errors.push(FieldError::in_entry("rule", i, "deny", e.to_string())),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            published,
            rules,
            relay_domains: c.relay_domains.iter().map(|d| norm(d)).collect(),
            auth_bindings: c
                .auth_bindings
                .iter()
                .map(|(u, names)| (u.clone(), names.iter().map(|n| norm(n)).collect()))
                .collect(),
            private_require_ptr: c.private_require_ptr,
            rate_limit: (c.rate_limit_per_minute > 0)
                .then(|| RateLimiter::new(c.rate_limit_per_minute)),
        })
    }
}

/// Everything an AMTP listener enforces beyond the identity check.
#[derive(Debug, Default)]
pub struct AmtpPolicy {
    /// Published in EHLO and enforced at MAIL.
    pub published: MpcPolicy,
    /// Enforced without being advertised.
    pub rules: Vec<MpcRule>,
    /// Domains besides the local ones that public connections may address (configured private
    /// next hops, e.g. customer domains we deliver for).
    pub relay_domains: HashSet<String>,
    /// Private connections: AUTH user → certificate names it may use.
    pub auth_bindings: HashMap<String, Vec<String>>,
    /// Private connections must also pass the PTR check.
    pub private_require_ptr: bool,
    /// Messages per minute per client identity (None: unlimited).
    pub rate_limit: Option<RateLimiter>,
}

fn policy_violation() -> Reply {
    Reply::new(550, "5.7.1", "MPC policy violation")
}

impl AmtpPolicy {
    /// The checks at MAIL: MPC present and valid, published and unadvertised rules, rate.
    pub fn check_mail(
        &self,
        mpc: Option<&str>,
        sender_domain: Option<&str>,
        identity: &str,
        now: Instant,
    ) -> Result<Mpc, Reply> {
        let Some(text) = mpc else {
            metrics::mpc_refused("missing");
            return Err(Reply::new(550, "5.7.1", "MPC parameter required"));
        };
        let mpc: Mpc = text.parse().map_err(|e: MpcError| {
            tracing::debug!(error = %e, "MPC refused");
            metrics::mpc_refused("malformed");
            policy_violation()
        })?;
        if self.published.evaluate(&mpc) == Verdict::Deny {
            metrics::mpc_refused("published_policy");
            return Err(policy_violation());
        }
        let denied = self.rules.iter().any(|r| {
            r.recipient_domain.is_none()
                && (r.sender_domain.is_some() || r.client.is_some())
                && r.sender_domain
                    .as_deref()
                    .is_none_or(|d| sender_domain == Some(d))
                && r.client.as_deref().is_none_or(|c| c == identity)
                && r.deny.evaluate(&mpc) == Verdict::Deny
        });
        if denied {
            metrics::mpc_refused("sender_rule");
            return Err(policy_violation());
        }
        if let Some(limiter) = &self.rate_limit
            && !limiter.allow(identity, now)
        {
            metrics::rate_limited();
            return Err(Reply::new(
                451,
                "4.7.1",
                "Rate limit exceeded; try again later",
            ));
        }
        Ok(mpc)
    }

    /// The checks per RCPT. `local` says whether the domain is one of ours.
    pub fn check_rcpt(
        &self,
        mpc: &Mpc,
        domain: &str,
        local: bool,
        class: TrustClass,
        authenticated: bool,
    ) -> Result<(), Reply> {
        let reachable = local || self.relay_domains.contains(domain);
        match class {
            TrustClass::Public if !reachable => {
                metrics::public_relay_refused();
                return Err(Reply::new(
                    550,
                    "5.7.1",
                    "Relaying denied: public AMTP mail may only be addressed to our domains",
                ));
            }
            TrustClass::Private if !reachable && !authenticated => {
                return Err(Reply::new(530, "5.7.0", "Authentication required"));
            }
            _ => {}
        }
        let denied = self.rules.iter().any(|r| {
            r.recipient_domain.as_deref() == Some(domain) && r.deny.evaluate(mpc) == Verdict::Deny
        });
        if denied {
            metrics::mpc_refused("recipient_rule");
            Err(policy_violation())
        } else {
            Ok(())
        }
    }

    /// Whether AUTH `user` may speak for certificate name `identity`.
    pub fn auth_bound(&self, user: &str, identity: &str) -> bool {
        self.auth_bindings
            .get(user)
            .is_some_and(|names| names.iter().any(|n| n == identity))
    }
}

/// Fixed-window message counter per key (one-minute windows), sharded; bounded by dropping
/// keys whose window has passed. With `[cluster]` and Redis reachable, the limit is
/// fleet-wide ([`crate::cluster::rate`], never waiting on Redis); else per node.
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: u32,
    shards: Vec<Mutex<HashMap<String, (Instant, u32)>>>,
    fleet: Arc<crate::cluster::rate::FleetView>,
}

impl RateLimiter {
    /// `per_minute` messages per key per minute.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            shards: (0..16).map(|_| Mutex::new(HashMap::new())).collect(),
            fleet: crate::cluster::rate::FleetView::new(),
        }
    }

    /// Count one message for `key`; false when over the limit (fleet-wide when the cluster
    /// is up; the local count is kept either way, so a Redis outage falls back to a warm
    /// per-node limit).
    pub fn allow(&self, key: &str, now: Instant) -> bool {
        let local = self.allow_local(key, now);
        match crate::cluster::get().and_then(|c| c.rate_admit(&self.fleet, key, self.per_minute)) {
            Some(fleet) => fleet,
            None => local,
        }
    }

    /// Before MAIL: with `[cluster]`, make sure a fleet token for `key` is held or on its way
    /// (waits at most the cluster deadline, and only for the first message of a minute).
    pub async fn prepare(&self, key: &str) {
        if let Some(c) = crate::cluster::get() {
            c.rate_prepare(&self.fleet, key, self.per_minute).await;
        }
    }

    fn allow_local(&self, key: &str, now: Instant) -> bool {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        let i = usize::try_from(h.finish() % 16).unwrap_or(0);
        let mut shard = self.shards[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if shard.len() > 10_000 && !shard.contains_key(key) {
            shard.retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(60));
        }
        let entry = shard.entry(key.to_string()).or_insert((now, 0));
        if now.duration_since(entry.0) >= Duration::from_secs(60) {
            *entry = (now, 0);
        }
        entry.1 += 1;
        entry.1 <= self.per_minute
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> AmtpPolicy {
        let deny = |s: &str| MpcPolicy::parse_declarations(s).unwrap();
        AmtpPolicy {
            published: deny("DENY=com/optout"),
            rules: vec![
                MpcRule {
                    sender_domain: Some("spam.test".into()),
                    deny: deny("DENY=*/*"),
                    ..MpcRule::default()
                },
                MpcRule {
                    recipient_domain: Some("kids.test".into()),
                    deny: deny("DENY=com/* DENY=pol/*"),
                    ..MpcRule::default()
                },
                MpcRule {
                    client: Some("noisy.test".into()),
                    deny: deny("DENY=com/optin"),
                    ..MpcRule::default()
                },
            ],
            relay_domains: ["customer.test".to_string()].into_iter().collect(),
            auth_bindings: [(
                "alice".to_string(),
                vec!["laptop.customer.test".to_string()],
            )]
            .into_iter()
            .collect(),
            private_require_ptr: false,
            rate_limit: Some(RateLimiter::new(2)),
        }
    }

    #[test]
    fn mail_table() {
        let p = policy();
        let now = Instant::now();
        type Case<'a> = (
            Option<&'a str>,
            Option<&'a str>,
            &'a str,
            Result<&'a str, (u16, &'a str)>,
        );
        let cases: &[Case] = &[
            (
                None,
                Some("a.test"),
                "c1.test",
                Err((550, "MPC parameter required")),
            ),
            (
                Some("com/optin"),
                Some("a.test"),
                "c1.test",
                Ok("com/optin"),
            ),
            (
                Some("foo/optin"),
                Some("a.test"),
                "c1.test",
                Err((550, "MPC policy violation")),
            ),
            (
                Some("mpc/optin"),
                Some("a.test"),
                "c1.test",
                Err((550, "MPC policy violation")),
            ),
            (
                Some("com/optout"),
                Some("a.test"),
                "c1.test",
                Err((550, "MPC policy violation")),
            ),
            (
                Some("per/individual"),
                Some("spam.test"),
                "c2.test",
                Err((550, "MPC policy violation")),
            ),
            (
                Some("mpc/individual"),
                Some("spam.test"),
                "c2.test",
                Ok("mpc/individual"),
            ),
            (
                Some("com/optin"),
                Some("a.test"),
                "noisy.test",
                Err((550, "MPC policy violation")),
            ),
            (
                Some("com/confirmed"),
                Some("a.test"),
                "noisy.test",
                Ok("com/confirmed"),
            ),
        ];
        for (mpc, sender, client, expected) in cases {
            let got = p
                .check_mail(*mpc, *sender, client, now)
                .map(|m| m.to_string())
                .map_err(|r| (r.code, r.text()));
            assert_eq!(
                got,
                expected
                    .map(str::to_string)
                    .map_err(|(c, t)| (c, t.to_string())),
                "{mpc:?} {sender:?} {client}"
            );
        }
    }

    #[test]
    fn rcpt_table() {
        let p = policy();
        let m = |s: &str| s.parse::<Mpc>().unwrap();
        use TrustClass::*;
        type Case<'a> = (&'a str, &'a str, bool, TrustClass, bool, Option<u16>);
        let cases: &[Case] = &[
            ("com/optin", "example.test", true, Public, false, None),
            ("com/optin", "customer.test", false, Public, false, None),
            ("com/optin", "remote.test", false, Public, false, Some(550)),
            ("com/optin", "remote.test", false, Private, true, None),
            ("com/optin", "remote.test", false, Private, false, Some(530)),
            ("com/optin", "kids.test", true, Public, false, Some(550)),
            ("per/individual", "kids.test", true, Public, false, None),
            ("mpc/individual", "kids.test", true, Public, false, None),
        ];
        for (mpc, domain, local, class, auth, expected) in cases {
            assert_eq!(
                p.check_rcpt(&m(mpc), domain, *local, *class, *auth)
                    .err()
                    .map(|r| r.code),
                *expected,
                "{mpc} {domain} {class:?}"
            );
        }
    }

    #[test]
    fn rate_limit_per_identity_and_window() {
        let p = policy();
        let t0 = Instant::now();
        for _ in 0..2 {
            assert!(
                p.check_mail(Some("per/individual"), None, "busy.test", t0)
                    .is_ok()
            );
        }
        let r = p
            .check_mail(Some("per/individual"), None, "busy.test", t0)
            .unwrap_err();
        assert_eq!(
            (r.code, r.status.unwrap().to_string()),
            (451, "4.7.1".to_string())
        );
        assert!(
            p.check_mail(Some("per/individual"), None, "other.test", t0)
                .is_ok(),
            "per identity"
        );
        assert!(
            p.check_mail(
                Some("per/individual"),
                None,
                "busy.test",
                t0 + Duration::from_secs(61)
            )
            .is_ok(),
            "next window"
        );
    }

    #[test]
    fn auth_bindings() {
        let p = policy();
        assert!(p.auth_bound("alice", "laptop.customer.test"));
        assert!(!p.auth_bound("alice", "desktop.customer.test"));
        assert!(!p.auth_bound("bob", "laptop.customer.test"));
    }
}
