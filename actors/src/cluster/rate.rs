//! The shared per-identity message rate (AMTP `rate_limit_per_minute`, fleet-wide).
//!
//! Tokens, not counts: a node admits a message only with a token claimed from the fleet's
//! budget for that identity and wall-clock minute (one Lua call takes a batch — 1 % of the
//! limit, 1 to 50 — or what is left), so the fleet never admits more than the limit. The
//! per-message path does not wait on Redis: when a node's batch runs out, the admitted message
//! starts the claim of the next one in the background (pipelined on the multiplexed
//! connection). Only the first message of an
//! identity on a node in a minute waits for one claim ([`Cluster::rate_prepare`], called by
//! the session driver before MAIL, bounded by the deadline). A message that finds its token
//! still in flight is admitted on credit and the token, when it arrives, pays it back; a
//! refused claim marks the identity exhausted on this node until the minute ends. A node may
//! end a minute holding part of a batch unused, so the fleet can fall short of the limit by
//! up to a batch per other node — never exceed it (limits under 200 a minute: one message). Keys expire after two minutes. When Redis is away
//! the caller's local limiter decides alone (per node).

use super::Cluster;
use redis::Script;
use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock, Mutex};

/// KEYS: the identity's counter for this minute; ARGV: the limit, the batch wanted → the
/// tokens granted (0: the minute's budget is used up).
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
local left = tonumber(ARGV[1]) - n
if left <= 0 then return 0 end
local take = math.min(left, tonumber(ARGV[2]))
redis.call('INCRBY', KEYS[1], take)
if n == 0 then redis.call('PEXPIRE', KEYS[1], 120000) end
return take
",
    )
});

/// Tokens claimed at once: 1 % of the limit, between 1 and 50. One Redis call per batch; a
/// node may end a minute holding up to a batch unused.
pub fn batch(per_minute: u32) -> u32 {
    (per_minute / 100).clamp(1, 50)
}

const SHARDS: usize = 16;

/// One identity's tokens on this node for one minute.
#[derive(Debug, Clone, Copy, Default)]
struct Tokens {
    minute: u64,
    /// Held tokens; negative: messages admitted on credit of a claim in flight.
    held: i64,
    /// A claim is in flight.
    claiming: bool,
    /// The fleet refused a claim this minute.
    exhausted: bool,
}

/// This node's tokens per identity.
#[derive(Debug, Default)]
pub struct FleetView {
    shards: Vec<Mutex<HashMap<String, Tokens>>>,
}

/// What a message may do, by the node's tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admit {
    /// Admitted; claim the next token (none in flight).
    YesClaim,
    /// Admitted (a token was held, or one is in flight).
    Yes,
    /// The fleet's budget for the minute is used up.
    No,
}

impl FleetView {
    /// No tokens yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        })
    }

    fn with<T>(&self, key: &str, minute: u64, f: impl FnOnce(&mut Tokens) -> T) -> T {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        let i = usize::try_from(h.finish() % SHARDS as u64).unwrap_or(0);
        let mut shard = self.shards[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if shard.len() > 10_000 && !shard.contains_key(key) {
            shard.retain(|_, t| t.minute >= minute);
        }
        let t = shard.entry(key.to_string()).or_default();
        if t.minute != minute {
            *t = Tokens {
                minute,
                ..Tokens::default()
            };
        }
        f(t)
    }

    /// Whether a claim is needed before the next message (none held, none in flight, not
    /// exhausted); marks one in flight when so.
    fn start_claim_if_empty(&self, key: &str, minute: u64) -> bool {
        self.with(key, minute, |t| {
            let need = t.held <= 0 && !t.claiming && !t.exhausted;
            t.claiming |= need;
            need
        })
    }

    fn admit(&self, key: &str, minute: u64) -> Admit {
        self.with(key, minute, |t| {
            if t.held <= 0 && t.exhausted {
                return Admit::No;
            }
            t.held -= 1;
            if t.held <= 0 && !t.claiming && !t.exhausted {
                t.claiming = true;
                Admit::YesClaim
            } else {
                Admit::Yes
            }
        })
    }

    /// A claim ended: tokens granted (0: refused), or `None` (Redis away: forget the claim).
    fn claimed(&self, key: &str, minute: u64, granted: Option<u32>) {
        self.with(key, minute, |t| {
            t.claiming = false;
            match granted {
                Some(0) => t.exhausted = true,
                Some(n) => t.held += i64::from(n),
                None => {}
            }
        });
    }
}

fn minute_now() -> u64 {
    amtp_storage::now_ms() / 60_000
}

impl Cluster {
    async fn claim(&self, view: &FleetView, identity: &str, minute: u64, per_minute: u32) {
        let key = self.key(format_args!("rate:{identity}:{minute}"));
        let granted: Option<u32> = self
            .run("rate", |mut c| async move {
                CLAIM
                    .key(&key)
                    .arg(per_minute)
                    .arg(batch(per_minute))
                    .invoke_async(&mut c)
                    .await
            })
            .await;
        view.claimed(identity, minute, granted);
    }

    /// Before MAIL: make sure a token is held or in flight for `identity`, waiting (within the
    /// deadline) only when the node has none — the first message of a minute.
    pub async fn rate_prepare(&self, view: &FleetView, identity: &str, per_minute: u32) {
        if !self.is_up() {
            return;
        }
        let minute = minute_now();
        if view.start_claim_if_empty(identity, minute) {
            self.claim(view, identity, minute, per_minute).await;
        }
    }

    /// Decide one message for `identity`; `None` when Redis is away (the caller's local
    /// limiter decides). Never waits: the next token is claimed by a spawned task.
    pub fn rate_admit(
        self: &Arc<Self>,
        view: &Arc<FleetView>,
        identity: &str,
        per_minute: u32,
    ) -> Option<bool> {
        if !self.is_up() || tokio::runtime::Handle::try_current().is_err() {
            return None;
        }
        let minute = minute_now();
        match view.admit(identity, minute) {
            Admit::No => Some(false),
            Admit::Yes => Some(true),
            Admit::YesClaim => {
                let (me, view, identity) = (self.clone(), view.clone(), identity.to_string());
                tokio::spawn(async move {
                    me.claim(&view, &identity, minute, per_minute).await;
                });
                Some(true)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_admit_prefetch_pay_back_credit_and_stop_when_the_fleet_is_exhausted() {
        let v = FleetView::new();
        // First message of the minute: claim first, then admit and prefetch the next.
        assert!(v.start_claim_if_empty("a", 1));
        v.claimed("a", 1, Some(1));
        assert!(!v.start_claim_if_empty("a", 1), "a token is held");
        assert_eq!(v.admit("a", 1), Admit::YesClaim);
        // The next message arrives before the prefetched token: admitted on credit.
        assert_eq!(v.admit("a", 1), Admit::Yes);
        v.claimed("a", 1, Some(1));
        // The debt is paid; nothing held, nothing in flight: the next message claims again.
        assert!(v.start_claim_if_empty("a", 1));
        v.claimed("a", 1, Some(0));
        assert_eq!(v.admit("a", 1), Admit::No, "the fleet's budget is used up");
        assert!(!v.start_claim_if_empty("a", 1));
        // Other identities and the next minute start over.
        assert!(v.start_claim_if_empty("b", 1));
        assert!(v.start_claim_if_empty("a", 2));
        // A batch: several messages per claim, the next claim only when it runs out.
        v.claimed("a", 2, Some(3));
        assert_eq!(v.admit("a", 2), Admit::Yes);
        assert_eq!(v.admit("a", 2), Admit::Yes);
        assert_eq!(v.admit("a", 2), Admit::YesClaim);
        assert_eq!((batch(4), batch(1000), batch(1_000_000)), (1, 10, 50));
    }
}
