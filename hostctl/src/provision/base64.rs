//! Standard base64 (RFC 4648) decoding, whitespace ignored: what
//! cloud-init's `encoding: b64` needs. Written here because it is 20 lines
//! and the one use; the workspace has no base64 crate of its own.

/// Decodes `text`.
pub fn decode(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter(|c| !c.is_ascii_whitespace()) {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => return Err(format!("'{}' is not base64", c as char)),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64() {
        assert_eq!(decode("aGVsbG8gd29ybGQ=").unwrap(), b"hello world");
        assert_eq!(decode("YQ==\n").unwrap(), b"a");
        assert!(decode("!!").is_err());
    }
}
