//! Ordering next hops from DNS answers — pure, with the randomness passed in.
//!
//! AMTP (spec §7): `_amtp._tcp.<domain>` SRV records ordered per RFC 2782 — lowest priority
//! first, and within one priority a weighted random order (weight-0 records still reachable);
//! a single target "." means the domain decidedly offers no AMTP service.
//! SMTP fallback: MX per RFC 5321 §5.1 — lowest preference first, equal preferences shuffled;
//! no MX records means the domain itself (implicit MX); a single MX "." is a null MX (RFC 7505):
//! the domain accepts no mail.

use crate::resolver::{MxHost, SrvTarget};

/// A host and port to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// Host name (resolve to addresses next).
    pub host: String,
    /// Port.
    pub port: u16,
}

/// The ordered next hops for a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Try these in order.
    Hops(Vec<Hop>),
    /// The domain says it has no service (SRV "." or null MX): a permanent failure.
    NoService,
}

/// A source of randomness: returns a uniform value in `0..=max`.
pub trait Pick {
    /// Uniform in `0..=max`.
    fn pick(&mut self, max: u32) -> u32;
}

impl<F: FnMut(u32) -> u32> Pick for F {
    fn pick(&mut self, max: u32) -> u32 {
        self(max).min(max)
    }
}

/// RFC 2782 order for SRV records.
pub fn order_srv(records: &[SrvTarget], rng: &mut impl Pick) -> Route {
    if records.len() == 1 && records[0].target.is_empty() {
        return Route::NoService;
    }
    let mut live: Vec<&SrvTarget> = records.iter().filter(|r| !r.target.is_empty()).collect();
    if live.is_empty() {
        return Route::NoService;
    }
    live.sort_by_key(|r| r.priority);
    let mut hops = Vec::with_capacity(live.len());
    let mut start = 0;
    while start < live.len() {
        let end = start
            + live[start..]
                .iter()
                .take_while(|r| r.priority == live[start].priority)
                .count();
        // Weight-0 records first, then the running-sum selection of §"Usage rules".
        let mut group: Vec<&SrvTarget> = live[start..end].to_vec();
        group.sort_by_key(|r| r.weight != 0);
        while !group.is_empty() {
            let total: u32 = group.iter().map(|r| u32::from(r.weight)).sum();
            let target = rng.pick(total);
            let mut sum = 0;
            let index = group
                .iter()
                .position(|r| {
                    sum += u32::from(r.weight);
                    sum >= target
                })
                .unwrap_or(0);
            let chosen = group.remove(index);
            hops.push(Hop {
                host: chosen.target.clone(),
                port: chosen.port,
            });
        }
        start = end;
    }
    Route::Hops(hops)
}

/// RFC 5321 §5.1 order for MX records. `None` means the domain has no MX records (NODATA):
/// the domain itself is the implicit MX.
pub fn order_mx(domain: &str, records: Option<&[MxHost]>, port: u16, rng: &mut impl Pick) -> Route {
    let Some(records) = records.filter(|r| !r.is_empty()) else {
        return Route::Hops(vec![Hop {
            host: domain.to_string(),
            port,
        }]);
    };
    if records.len() == 1 && records[0].exchange.is_empty() {
        return Route::NoService;
    }
    let mut live: Vec<&MxHost> = records.iter().filter(|r| !r.exchange.is_empty()).collect();
    // Shuffle (Fisher-Yates), then a stable sort by preference keeps ties in random order.
    for i in (1..live.len()).rev() {
        let j = usize::try_from(rng.pick(u32::try_from(i).unwrap_or(u32::MAX))).unwrap_or(0);
        live.swap(i, j);
    }
    live.sort_by_key(|r| r.preference);
    Route::Hops(
        live.into_iter()
            .map(|r| Hop {
                host: r.exchange.clone(),
                port,
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn srv(priority: u16, weight: u16, target: &str) -> SrvTarget {
        SrvTarget {
            priority,
            weight,
            port: 3025,
            target: target.into(),
        }
    }

    /// A deterministic generator (64-bit LCG) for reproducible distributions.
    fn lcg(seed: u64) -> impl FnMut(u32) -> u32 {
        let mut s = seed;
        move |max| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            u32::try_from((s >> 33) % (u64::from(max) + 1)).unwrap_or(0)
        }
    }

    fn hosts(r: Route) -> Vec<String> {
        match r {
            Route::Hops(h) => h.into_iter().map(|h| h.host).collect(),
            Route::NoService => vec!["<none>".into()],
        }
    }

    #[test]
    fn srv_priority_then_weight_and_no_service() {
        let mut rng = lcg(1);
        let records = [
            srv(20, 1, "c"),
            srv(10, 0, "b"),
            srv(10, 5, "a"),
            srv(30, 0, "d"),
        ];
        let order = hosts(order_srv(&records, &mut rng));
        assert_eq!(order.len(), 4);
        assert_eq!(&order[2..], ["c", "d"], "priority 20 after 10, 30 last");
        assert!(order[..2].contains(&"a".to_string()) && order[..2].contains(&"b".to_string()));
        assert_eq!(order_srv(&[srv(0, 0, "")], &mut rng), Route::NoService);
        assert_eq!(order_srv(&[], &mut rng), Route::NoService);
    }

    #[test]
    fn srv_weights_set_the_first_choice_frequency() {
        let mut rng = lcg(42);
        let records = [srv(10, 60, "heavy"), srv(10, 40, "light")];
        let runs = 20_000;
        let heavy_first = (0..runs)
            .filter(|_| hosts(order_srv(&records, &mut rng))[0] == "heavy")
            .count();
        let share = f64::from(u32::try_from(heavy_first).unwrap()) / f64::from(runs);
        assert!(
            (0.57..0.63).contains(&share),
            "weight 60 of 100 chosen first {share}"
        );
        // Weight 0 alongside weighted records is still tried, just rarely first.
        let zero = [srv(10, 0, "zero"), srv(10, 100, "full")];
        for _ in 0..100 {
            assert_eq!(hosts(order_srv(&zero, &mut rng)).len(), 2);
        }
    }

    #[test]
    fn mx_preference_implicit_and_null() {
        let mut rng = lcg(7);
        let mx = |p: u16, e: &str| MxHost {
            preference: p,
            exchange: e.into(),
        };
        let order = hosts(order_mx(
            "d.test",
            Some(&[mx(20, "b"), mx(10, "a1"), mx(10, "a2"), mx(30, "c")]),
            25,
            &mut rng,
        ));
        assert_eq!(&order[2..], ["b", "c"]);
        assert!(order[..2].contains(&"a1".to_string()) && order[..2].contains(&"a2".to_string()));
        // Ties are shuffled: both orders occur.
        let firsts: std::collections::HashSet<String> = (0..50)
            .map(|_| {
                hosts(order_mx(
                    "d.test",
                    Some(&[mx(10, "x"), mx(10, "y")]),
                    25,
                    &mut rng,
                ))[0]
                    .clone()
            })
            .collect();
        assert_eq!(firsts.len(), 2);
        assert_eq!(
            order_mx("d.test", None, 25, &mut rng),
            Route::Hops(vec![Hop {
                host: "d.test".into(),
                port: 25
            }]),
            "implicit MX"
        );
        assert_eq!(
            order_mx("d.test", Some(&[mx(0, "")]), 25, &mut rng),
            Route::NoService,
            "null MX (RFC 7505)"
        );
    }
}
