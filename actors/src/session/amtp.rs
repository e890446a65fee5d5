//! The AMTP part of the session (spec/AMTP.md §3–§6), as hooks the SMTP state machine calls
//! on an AMTP listener: EHLO waits for the identity check and publishes the MPC line, HELO is
//! refused, MAIL needs a valid MPC, RCPT obeys the public/private relay rules, and a message
//! that already carries an `MPC:` header is refused after DATA.

use super::{Action, Greeting, Phase, Session, reply};
use crate::amtp_policy::AmtpPolicy;
use crate::amtp_tls::TrustClass;
use crate::identity::{IdentityError, PeerCertificate, check_ehlo};
use amtp_proto::command::MailFrom;
use amtp_proto::ehlo::EhloKeywords;
use amtp_proto::mpc::Mpc;
use amtp_proto::{Domain, ReversePath};
use std::sync::Arc;
use std::time::Instant;

/// Failed EHLOs before the connection is closed (spec §4, our rule).
pub const MAX_FAILED_EHLO: u32 = 3;

/// What an AMTP session knows about its peer and its rules.
#[derive(Debug, Clone)]
pub struct AmtpContext {
    /// The listener's policy.
    pub policy: Arc<AmtpPolicy>,
    /// The client's certificate (verified in the handshake).
    pub peer: PeerCertificate,
    /// Public or private trust.
    pub class: TrustClass,
}

impl Session {
    fn amtp(&self) -> Option<&AmtpContext> {
        self.ctx.amtp.as_ref()
    }

    /// EHLO on an AMTP listener: the identity must be checked first.
    pub(super) fn amtp_ehlo(&mut self, domain: &Domain) -> Vec<Action> {
        self.helo_name = Some(domain.to_string());
        self.phase = Phase::Identifying(domain.to_string());
        vec![Action::VerifyIdentity {
            ehlo: domain.to_string(),
        }]
    }

    /// The identity the driver established for this connection (certificate name bound by
    /// reverse DNS, or for private connections without the PTR rule, the certificate name
    /// equal to the EHLO argument).
    pub fn on_identity(&mut self, result: Result<String, IdentityError>) -> Vec<Action> {
        let Phase::Identifying(ehlo) = std::mem::replace(&mut self.phase, Phase::Fresh) else {
            return reply(503, "5.5.1", "No EHLO in progress");
        };
        let outcome = result.and_then(|name| check_ehlo(&name, &ehlo).map(|()| name));
        match outcome {
            Ok(name) => {
                tracing::debug!(peer = %self.ctx.peer, identity = %name, "AMTP identity verified");
                self.identity = Some(name);
                self.phase = Phase::Ready(Greeting {
                    name: ehlo.clone(),
                    extended: true,
                });
                let keywords = EhloKeywords {
                    size: self.ctx.limits.max_message_size.0,
                    starttls: false,
                    auth_mechanisms: if self.auth_offered() {
                        self.mechanisms()
                    } else {
                        vec![]
                    },
                    mpc_line: self.amtp().and_then(|a| a.policy.published.ehlo_line()),
                };
                vec![Action::Reply(keywords.reply(format!(
                    "{} Hello {} [{}]",
                    self.ctx.hostname,
                    ehlo,
                    self.ctx.peer.ip()
                )))]
            }
            Err(e) => {
                self.failed_ehlos += 1;
                tracing::info!(peer = %self.ctx.peer, ehlo = %ehlo, error = %e, failed = self.failed_ehlos, "AMTP identity refused");
                let mut actions = vec![Action::Reply(e.reply())];
                if self.failed_ehlos >= MAX_FAILED_EHLO {
                    self.phase = Phase::Closed;
                    actions.push(Action::Close);
                }
                actions
            }
        }
    }

    /// AUTH is for private AMTP connections only; on SMTP listeners, per configuration.
    pub(super) fn auth_allowed(&self) -> bool {
        match self.amtp() {
            Some(a) => a.class == TrustClass::Private,
            None => self.ctx.listener.auth_enabled(),
        }
    }

    /// A private connection's AUTH user must be bound to its certificate.
    pub(super) fn amtp_auth_bound(&self, user: &str) -> bool {
        match (self.amtp(), &self.identity) {
            (Some(a), Some(identity)) => a.policy.auth_bound(user, identity),
            (Some(_), None) => false,
            (None, _) => true,
        }
    }

    /// MAIL on an AMTP listener: AUTH for private connections, then the MPC rules.
    pub(super) fn amtp_mail(&self, mail: &MailFrom) -> Result<Option<Mpc>, Vec<Action>> {
        let Some(a) = self.amtp() else {
            return Ok(None);
        };
        if a.class == TrustClass::Private && self.user.is_none() {
            return Err(reply(530, "5.7.0", "Authentication required"));
        }
        let sender_domain = match &mail.from {
            ReversePath::Mailbox(m) => Some(m.domain.normalized()),
            ReversePath::Null => None,
        };
        let identity = self.identity.as_deref().unwrap_or("");
        a.policy
            .check_mail(
                mail.mpc.as_deref(),
                sender_domain.as_deref(),
                identity,
                Instant::now(),
            )
            .map(Some)
            .map_err(|r| vec![Action::Reply(r)])
    }

    /// RCPT on an AMTP listener; `None` when this is not one.
    pub(super) fn amtp_rcpt(
        &self,
        mpc: Option<&Mpc>,
        domain: &str,
        local: bool,
    ) -> Option<Vec<Action>> {
        let a = self.amtp()?;
        let mpc = mpc?;
        let domain = domain
            .strip_suffix('.')
            .unwrap_or(domain)
            .to_ascii_lowercase();
        Some(
            match a
                .policy
                .check_rcpt(mpc, &domain, local, a.class, self.user.is_some())
            {
                Ok(()) => vec![],
                Err(r) => vec![Action::Reply(r)],
            },
        )
    }

    /// After DATA: refuse a message that already carries an MPC header (spec §6).
    pub(super) fn amtp_refuses_body(&self, body: &[u8]) -> Option<Vec<Action>> {
        self.amtp()?;
        amtp_proto::headers::find(body, "MPC")
            .map(|_| reply(550, "5.7.1", "Message already carries an MPC header"))
    }

    /// The Received comment for AMTP: the verified identity and the MPC.
    pub(super) fn amtp_received_comment(&self, mpc: Option<&Mpc>) -> Option<String> {
        let a = self.amtp()?;
        let class = if a.class == TrustClass::Public {
            "public"
        } else {
            "private"
        };
        Some(format!(
            "amtp {class} identity={} mpc={}",
            self.identity.as_deref().unwrap_or("-"),
            mpc.map_or_else(|| "-".to_string(), ToString::to_string)
        ))
    }

    /// Queue origin for AMTP messages.
    pub(super) fn amtp_origin(&self) -> Option<amtp_storage::Origin> {
        self.amtp().map(|a| {
            if a.class == TrustClass::Public {
                amtp_storage::Origin::AmtpPublic
            } else {
                amtp_storage::Origin::AmtpPrivate
            }
        })
    }
}
