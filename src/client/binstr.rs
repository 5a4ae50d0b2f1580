//! "Binary strings": how the WebTorrent tracker protocol carries 20-byte ids in JSON. Each byte
//! becomes the character with that code point (U+0000..=U+00FF), as JavaScript's
//! `String.fromCharCode` does; a JSON encoder then writes non-ASCII ones as UTF-8.

/// The binary string of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// The bytes of a binary string; `None` when a character is above U+00FF (not a binary string).
pub fn decode(text: &str) -> Option<Vec<u8>> {
    text.chars().map(|c| u8::try_from(c).ok()).collect()
}

/// The 20 bytes of a binary-string id; `None` unless it is exactly 20 characters, each a byte.
pub fn decode_id(text: &str) -> Option<[u8; 20]> {
    decode(text)?.as_slice().try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_byte_maps_to_its_code_point() {
        let all: Vec<u8> = (0..=255).collect();
        let s = encode(&all);
        assert_eq!(s.chars().count(), 256);
        assert_eq!(s.chars().nth(0xe9), Some('é'));
        assert_eq!(decode(&s), Some(all));
    }

    #[test]
    fn non_binary_strings_and_wrong_lengths_are_rejected() {
        assert_eq!(decode("a\u{100}"), None);
        assert_eq!(decode_id("short"), None);
        assert_eq!(decode_id(&"x".repeat(21)), None);
        assert_eq!(decode_id(&"x".repeat(20)), Some([b'x'; 20]));
    }

    proptest! {
        #[test]
        fn round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(decode(&encode(&bytes)), Some(bytes));
        }
    }
}
