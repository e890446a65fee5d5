//! A cursor over big-endian TLS encodings (RFC 8446 §3), for the two structures the relay
//! reads itself rather than through rustls: a ClientHello ([`crate::client_hello`]) and
//! rustls' stored server session inside a ticket ([`crate::tickets`]). Every read fails
//! (`None`) instead of reading past the end, so a short or lying length is never a panic.

/// See the module docs.
#[derive(Debug, Clone, Copy)]
pub struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// Over `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self(bytes)
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    /// An unsigned integer of `bytes` bytes (at most 8).
    pub fn uint(&mut self, bytes: usize) -> Option<u64> {
        Some(
            self.take(bytes)?
                .iter()
                .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
        )
    }

    /// One byte.
    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    /// Two bytes.
    pub fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    /// A length of `bytes` bytes.
    pub fn len(&mut self, bytes: usize) -> Option<usize> {
        usize::try_from(self.uint(bytes)?).ok()
    }

    /// A one-byte boolean (0 or 1; anything else is malformed).
    pub fn flag(&mut self) -> Option<bool> {
        match self.u8()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    /// A vector whose length takes `len_bytes` bytes, as a cursor of its own.
    pub fn vec(&mut self, len_bytes: usize) -> Option<Reader<'a>> {
        let n = self.len(len_bytes)?;
        self.take(n).map(Reader)
    }

    /// What is left.
    pub fn rest(&self) -> &'a [u8] {
        self.0
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stop_at_the_end_and_lengths_must_fit() {
        let mut r = Reader::new(&[1, 0, 2, 0xaa, 0xbb, 0x02]);
        assert_eq!(r.flag(), Some(true));
        let mut v = r.vec(2).unwrap();
        assert_eq!(v.rest(), [0xaa, 0xbb]);
        assert_eq!(v.u16(), Some(0xaabb));
        assert!(v.is_empty());
        assert_eq!(r.flag(), None, "2 is not a boolean");
        assert_eq!(r.u8(), None, "past the end");
        assert!(
            Reader::new(&[0, 5, 1]).vec(2).is_none(),
            "a length past the end"
        );
        assert_eq!(Reader::new(&[0, 0, 1, 2]).uint(4), Some(258));
    }
}
