//! Load is only ever aimed at loopback unless the operator says otherwise: a load generator
//! pointed at a production relay by a typo is an outage. Every address a run connects to,
//! binds or serves on passes through here first.

use std::net::{IpAddr, SocketAddr};

/// Whether `ip` is on the loopback network (127.0.0.0/8 or ::1).
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Refuses a non-loopback address unless `allow_remote` (the `--allow-non-loopback` flag).
pub fn check(what: &str, addr: SocketAddr, allow_remote: bool) -> anyhow::Result<()> {
    if is_loopback(addr.ip()) || allow_remote {
        Ok(())
    } else {
        anyhow::bail!(
            "{what} {addr} is not a loopback address; load runs stay on 127.0.0.0/8 and ::1 \
             unless --allow-non-loopback is given"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses_pass_and_others_need_the_flag() {
        for ok in [
            "127.0.0.1:25",
            "127.9.8.7:1",
            "[::1]:25",
            "[::ffff:127.0.0.2]:25",
        ] {
            assert!(check("target", ok.parse().unwrap(), false).is_ok(), "{ok}");
        }
        for remote in ["10.0.0.1:25", "[2001:db8::1]:25", "0.0.0.0:25", "[::]:25"] {
            let err = check("target", remote.parse().unwrap(), false).unwrap_err();
            assert!(err.to_string().contains("--allow-non-loopback"), "{remote}");
            assert!(check("target", remote.parse().unwrap(), true).is_ok());
        }
    }
}
