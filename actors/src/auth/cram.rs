//! CRAM-MD5 (RFC 2195) without storing the password.
//!
//! HMAC-MD5(key, m) = MD5((key ⊕ opad) ‖ MD5((key ⊕ ipad) ‖ m)). Both inner and outer hashes
//! start with one 64-byte block that depends only on the key, so — as Dovecot does — we store
//! the MD5 state after that block (16 bytes each) instead of the password. That is the least
//! that works: it cannot be used to log in with PLAIN/LOGIN or reveal the password, but it *is*
//! sufficient to answer any CRAM-MD5 challenge, so it must be protected like a password. This
//! is why CRAM-MD5 is a per-listener option (docs/CONFIG.md).

use md5::Digest;

const IV: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];

/// The precomputed inner and outer HMAC-MD5 states for one user.
#[derive(Clone, PartialEq, Eq)]
pub struct CramSecret {
    inner: [u32; 4],
    outer: [u32; 4],
}

impl std::fmt::Debug for CramSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CramSecret(<redacted>)")
    }
}

fn pad_key(password: &[u8], pad: u8) -> [u8; 64] {
    let mut key = [0u8; 64];
    if password.len() > 64 {
        key[..16].copy_from_slice(&md5::Md5::digest(password));
    } else {
        key[..password.len()].copy_from_slice(password);
    }
    key.map(|b| b ^ pad)
}

/// Finish an MD5 computation that already absorbed `done` bytes into `state`.
fn finish(mut state: [u32; 4], done: u64, data: &[u8]) -> [u8; 16] {
    let total_bits = (done + u64::try_from(data.len()).unwrap_or(0)).wrapping_mul(8);
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&total_bits.to_le_bytes());
    let blocks: Vec<[u8; 64]> = msg
        .chunks_exact(64)
        .map(|c| c.try_into().unwrap_or([0; 64]))
        .collect();
    md5::block_api::compress(&mut state, &blocks);
    let mut out = [0u8; 16];
    for (i, w) in state.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
    }
    out
}

impl CramSecret {
    /// Precompute from a password.
    pub fn from_password(password: &str) -> Self {
        Self::from_key(password.as_bytes())
    }

    /// Precompute from raw key bytes (keys over 64 bytes are hashed first, RFC 2104).
    fn from_key(key: &[u8]) -> Self {
        let mut inner = IV;
        md5::block_api::compress(&mut inner, &[pad_key(key, 0x36)]);
        let mut outer = IV;
        md5::block_api::compress(&mut outer, &[pad_key(key, 0x5c)]);
        Self { inner, outer }
    }

    /// HMAC-MD5 of `message` under the stored key.
    pub fn hmac(&self, message: &[u8]) -> [u8; 16] {
        let inner = finish(self.inner, 64, message);
        finish(self.outer, 64, &inner)
    }

    /// Check a client's hex digest for `challenge`.
    pub fn verify(&self, challenge: &str, digest_hex: &str) -> bool {
        let expected = hex(&self.hmac(challenge.as_bytes()));
        super::constant_time_eq(
            expected.as_bytes(),
            digest_hex.to_ascii_lowercase().as_bytes(),
        )
    }

    /// The storage form: 64 hex digits (inner state, then outer state, little-endian words).
    pub fn to_hex(&self) -> String {
        self.inner
            .iter()
            .chain(&self.outer)
            .map(|w| hex(&w.to_le_bytes()))
            .collect()
    }

    /// Parse the storage form.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let word = |i: usize| -> Option<u32> {
            let bytes: Vec<u8> = (0..4)
                .map(|j| u8::from_str_radix(&s[i * 8 + j * 2..i * 8 + j * 2 + 2], 16))
                .collect::<Result<_, _>>()
                .ok()?;
            Some(u32::from_le_bytes(bytes.try_into().ok()?))
        };
        let w: Vec<u32> = (0..8).map(word).collect::<Option<_>>()?;
        Some(Self {
            inner: [w[0], w[1], w[2], w[3]],
            outer: [w[4], w[5], w[6], w[7]],
        })
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2195_example() {
        // RFC 2195 §2: user "tim", password "tanstaaftanstaaf".
        let s = CramSecret::from_password("tanstaaftanstaaf");
        let challenge = "<1896.697170952@postoffice.reston.mci.net>";
        assert_eq!(
            hex(&s.hmac(challenge.as_bytes())),
            "b913a602c7eda7a495b4e6e7334d3890"
        );
        assert!(s.verify(challenge, "B913A602C7EDA7A495B4E6E7334D3890"));
        assert!(!s.verify(challenge, "b913a602c7eda7a495b4e6e7334d3891"));
        assert!(!s.verify("<other@x>", "b913a602c7eda7a495b4e6e7334d3890"));
    }

    #[test]
    fn rfc2104_vectors_and_long_keys() {
        // RFC 2104 / RFC 2202 test case 2: key "Jefe".
        let s = CramSecret::from_password("Jefe");
        assert_eq!(
            hex(&s.hmac(b"what do ya want for nothing?")),
            "750c783e6ab0b503eaa86e310a5db738"
        );
        // RFC 2202 test case 6: an 80-byte key is hashed first.
        let s = CramSecret::from_key(&[0xaa; 80]);
        assert_eq!(
            hex(&s.hmac(b"Test Using Larger Than Block-Size Key - Hash Key First")),
            "6b1ab7fe4bd7bf8f0b62e6ce61b9d0cd"
        );
        // Messages of every length around the block boundary round-trip through storage.
        let s = CramSecret::from_password("pw");
        let back = CramSecret::from_hex(&s.to_hex()).unwrap();
        for n in 0..200 {
            let m = vec![b'x'; n];
            assert_eq!(s.hmac(&m), back.hmac(&m));
        }
        assert!(CramSecret::from_hex("zz").is_none());
    }
}
