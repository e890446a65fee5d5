//! Looking up header fields in a raw RFC 5322 message without parsing the whole thing.
//!
//! Only the header section (up to the first empty line) is scanned; folded lines are
//! unfolded. Used for Message-ID (queue listings) and, for AMTP, to refuse messages that
//! already carry an `MPC:` header.

/// The header section of `message` (without the empty line), or the whole message if it
/// has no body.
pub fn header_section(message: &[u8]) -> &[u8] {
    if message.starts_with(b"\r\n") {
        return &[];
    }
    match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(p) => &message[..p + 2],
        None => message,
    }
}

/// The unfolded, trimmed value of the first header field named `name` (case-insensitive).
pub fn find(message: &[u8], name: &str) -> Option<String> {
    let section = header_section(message);
    let mut lines = section
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .peekable();
    while let Some(line) = lines.next() {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if !line[..colon]
            .trim_ascii_end()
            .eq_ignore_ascii_case(name.as_bytes())
        {
            continue;
        }
        let mut value = String::from_utf8_lossy(&line[colon + 1..])
            .trim()
            .to_string();
        while let Some(next) = lines
            .peek()
            .filter(|l| l.first().is_some_and(|&b| b == b' ' || b == b'\t'))
        {
            value.push(' ');
            value.push_str(String::from_utf8_lossy(next).trim());
            lines.next();
        }
        return Some(value.trim().to_string());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let msg = b"Subject: hi\r\nMessage-ID:\r\n <abc@x.test>\r\nmpc : com/optin\r\n\r\nMessage-ID: <body@x>\r\n";
        assert_eq!(find(msg, "message-id").as_deref(), Some("<abc@x.test>"));
        assert_eq!(find(msg, "MPC").as_deref(), Some("com/optin"));
        assert_eq!(find(msg, "Subject").as_deref(), Some("hi"));
        assert_eq!(find(msg, "From"), None);
        assert_eq!(
            find(b"\r\nMessage-ID: <x>\r\n", "Message-ID"),
            None,
            "no header section"
        );
        assert_eq!(find(b"X: 1\r\n", "X").as_deref(), Some("1"), "headers only");
    }
}
