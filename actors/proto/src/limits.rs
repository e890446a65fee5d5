//! Size limits from RFC 5321 §4.5.3.1, in one place so every component agrees on them.

/// Maximum command line including CRLF (RFC 5321 §4.5.3.1.4).
pub const COMMAND_LINE: usize = 512;
/// Maximum AUTH command / SASL response line including CRLF (RFC 4954 §4 raises the limit).
pub const AUTH_LINE: usize = 12_288;
/// Maximum text line in DATA including CRLF (RFC 5321 §4.5.3.1.6).
pub const TEXT_LINE: usize = 1000;
/// Maximum local-part length (RFC 5321 §4.5.3.1.1).
pub const LOCAL_PART: usize = 64;
/// Maximum domain length (RFC 5321 §4.5.3.1.2).
pub const DOMAIN: usize = 255;
/// Maximum reverse-path/forward-path length including the angle brackets (RFC 5321 §4.5.3.1.3).
pub const PATH: usize = 256;
