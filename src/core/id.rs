//! Identifiers: who a peer is, which stream it wants, and the tracker's 20-byte swarm id.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use core::fmt;
use core::str::FromStr;
use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

/// A peer's identity in the swarm: the 20-byte `peer_id` of the WebTorrent tracker protocol, so
/// the id a tracker hands out is the id the core uses. The caller draws it at random.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PeerId(pub [u8; 20]);

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for PeerId {
    /// The first 6 bytes in hex: enough to tell peers apart in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A stream's identity: the broadcaster's ed25519 public key. Whoever holds the stream id can
/// verify every byte of the stream; only the holder of the secret key can produce it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StreamId(pub [u8; 32]);

/// Why a text is not a stream id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Not URL-safe base64 without padding.
    #[error("stream id is not URL-safe base64")]
    NotBase64,
    /// Decodes to the wrong number of bytes.
    #[error("stream id has {got} bytes, expected 32")]
    WrongLength {
        /// Bytes decoded.
        got: usize,
    },
}

impl StreamId {
    /// The 20-byte swarm id (`info_hash`) under which peers of this stream meet at a tracker:
    /// SHA-1 of a domain-separated stream id, so it is fixed by the stream id alone and is the
    /// 20-byte hash WebTorrent trackers expect.
    pub fn info_hash(&self) -> [u8; 20] {
        let mut h = Sha1::new();
        h.update(b"swarmcast/v1/info_hash");
        h.update(self.0);
        h.finalize().into()
    }
}

impl fmt::Display for StreamId {
    /// 43 characters of URL-safe base64: fits in a link and an HTML attribute unescaped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&URL_SAFE_NO_PAD.encode(self.0))
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamId({self})")
    }
}

impl FromStr for StreamId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(s.trim())
            .map_err(|_| IdError::NotBase64)?;
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| IdError::WrongLength { got: bytes.len() })?;
        Ok(StreamId(arr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_id_text_round_trips() {
        let id = StreamId([7; 32]);
        let text = id.to_string();
        assert_eq!(text.len(), 43);
        assert!(text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_eq!(text.parse::<StreamId>(), Ok(id));
    }

    #[test]
    fn bad_stream_ids_are_rejected() {
        assert_eq!("!!".parse::<StreamId>(), Err(IdError::NotBase64));
        assert_eq!(
            "AAAA".parse::<StreamId>(),
            Err(IdError::WrongLength { got: 3 })
        );
    }

    #[test]
    fn info_hash_depends_on_stream() {
        assert_ne!(StreamId([1; 32]).info_hash(), StreamId([2; 32]).info_hash());
        assert_eq!(StreamId([1; 32]).info_hash(), StreamId([1; 32]).info_hash());
    }
}
