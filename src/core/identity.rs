//! Stream identity and integrity: the broadcaster's ed25519 key signs every init and segment
//! header; BLAKE3 piece hashes in the signed header bind every byte.

use super::id::StreamId;
use super::segment::{InitSegment, SegmentHeader, SignedHeader};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

/// Domain separation: a signature made for one purpose never verifies for another.
const HEADER_CONTEXT: &[u8] = b"swarmcast/v1/segment";
const INIT_CONTEXT: &[u8] = b"swarmcast/v1/init";

/// Why data failed verification. Any of these from a neighbour means that neighbour is cut off.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The stream id is not a valid ed25519 public key.
    #[error("stream id is not a valid ed25519 public key")]
    BadStreamKey,
    /// Header inconsistent with itself (piece count vs length, too many pieces).
    #[error("segment {seq}: malformed header")]
    MalformedHeader {
        /// Sequence number claimed.
        seq: u64,
    },
    /// Signature over a segment header does not verify.
    #[error("segment {seq}: bad signature")]
    BadSignature {
        /// Sequence number claimed.
        seq: u64,
    },
    /// Signature over an init segment does not verify.
    #[error("init segment v{version}: bad signature")]
    BadInitSignature {
        /// Version claimed.
        version: u32,
    },
    /// A piece's bytes do not hash to what the signed header says.
    #[error("segment {seq} piece {index}: hash mismatch")]
    BadPiece {
        /// Segment.
        seq: u64,
        /// Piece index.
        index: usize,
    },
}

/// The broadcaster's secret: whoever holds it is the stream.
pub struct StreamKey {
    key: SigningKey,
}

impl StreamKey {
    /// The key whose secret seed is `secret` (32 bytes the caller drew from a secure source).
    pub fn from_secret(secret: [u8; 32]) -> Self {
        StreamKey {
            key: SigningKey::from_bytes(&secret),
        }
    }

    /// The secret seed, for export and persistence.
    pub fn secret(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The stream this key publishes.
    pub fn stream_id(&self) -> StreamId {
        StreamId(self.key.verifying_key().to_bytes())
    }

    /// Signs a segment header.
    pub fn sign_header(&self, header: SegmentHeader) -> SignedHeader {
        let sig = self.key.sign(&header_message(&self.stream_id(), &header));
        SignedHeader {
            header,
            signature: split(sig.to_bytes()),
        }
    }

    /// Makes a signed init segment.
    pub fn sign_init(&self, version: u32, mime: String, data: Vec<u8>) -> InitSegment {
        let msg = init_message(&self.stream_id(), version, &mime, &data);
        let sig = self.key.sign(&msg);
        InitSegment {
            version,
            mime,
            data,
            signature: split(sig.to_bytes()),
        }
    }
}

impl core::fmt::Debug for StreamKey {
    /// Never prints the secret.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "StreamKey({})", self.stream_id())
    }
}

/// Checks data against one stream's public key; decompressing the key once, not per check.
#[derive(Debug, Clone)]
pub struct StreamVerifier {
    stream: StreamId,
    key: VerifyingKey,
}

impl StreamVerifier {
    /// A verifier for `stream`; fails when the id is not a valid public key.
    pub fn new(stream: StreamId) -> Result<Self, VerifyError> {
        let key = VerifyingKey::from_bytes(&stream.0).map_err(|_| VerifyError::BadStreamKey)?;
        Ok(StreamVerifier { stream, key })
    }

    /// Verifies a signed segment header (well-formedness first, then the signature).
    pub fn verify_header(&self, signed: &SignedHeader) -> Result<(), VerifyError> {
        let seq = signed.header.seq;
        if !signed.header.is_well_formed() {
            return Err(VerifyError::MalformedHeader { seq });
        }
        let sig = Signature::from_bytes(&join(signed.signature));
        self.key
            .verify(&header_message(&self.stream, &signed.header), &sig)
            .map_err(|_| VerifyError::BadSignature { seq })
    }

    /// Verifies a signed init segment.
    pub fn verify_init(&self, init: &InitSegment) -> Result<(), VerifyError> {
        let sig = Signature::from_bytes(&join(init.signature));
        self.key
            .verify(
                &init_message(&self.stream, init.version, &init.mime, &init.data),
                &sig,
            )
            .map_err(|_| VerifyError::BadInitSignature {
                version: init.version,
            })
    }
}

/// Verifies one piece against an already verified header.
pub fn verify_piece(header: &SegmentHeader, index: usize, data: &[u8]) -> Result<(), VerifyError> {
    let bad = VerifyError::BadPiece {
        seq: header.seq,
        index,
    };
    let range = header.piece_range(index).ok_or(bad.clone())?;
    if range.len() != data.len() || blake3::hash(data).as_bytes() != &header.piece_hashes[index] {
        return Err(bad);
    }
    Ok(())
}

fn header_message(stream: &StreamId, header: &SegmentHeader) -> Vec<u8> {
    let mut msg = Vec::with_capacity(64 + header.piece_hashes.len() * 32);
    msg.extend_from_slice(HEADER_CONTEXT);
    msg.extend_from_slice(&stream.0);
    // postcard is deterministic, so every peer rebuilds exactly the bytes the source signed.
    msg.extend_from_slice(&postcard::to_allocvec(header).unwrap_or_default());
    msg
}

fn init_message(stream: &StreamId, version: u32, mime: &str, data: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(128 + mime.len());
    msg.extend_from_slice(INIT_CONTEXT);
    msg.extend_from_slice(&stream.0);
    msg.extend_from_slice(&version.to_le_bytes());
    msg.extend_from_slice(&(mime.len() as u32).to_le_bytes());
    msg.extend_from_slice(mime.as_bytes());
    msg.extend_from_slice(blake3::hash(data).as_bytes());
    msg
}

fn split(sig: [u8; 64]) -> [[u8; 32]; 2] {
    let mut out = [[0u8; 32]; 2];
    out[0].copy_from_slice(&sig[..32]);
    out[1].copy_from_slice(&sig[32..]);
    out
}

fn join(halves: [[u8; 32]; 2]) -> [u8; 64] {
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(&halves[0]);
    out[32..].copy_from_slice(&halves[1]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::segment::{SegmentMeta, PIECE_SIZE};

    fn key(n: u8) -> StreamKey {
        StreamKey::from_secret([n; 32])
    }

    fn signed(k: &StreamKey, data: &[u8]) -> SignedHeader {
        let meta = SegmentMeta {
            pts_us: 10,
            duration_us: 200_000,
            keyframe: true,
        };
        k.sign_header(SegmentHeader::describe(4, 1, meta, 99, data))
    }

    #[test]
    fn a_signed_header_verifies_and_a_tampered_one_does_not() {
        let k = key(1);
        let v = StreamVerifier::new(k.stream_id()).unwrap();
        let mut s = signed(&k, &[1, 2, 3]);
        assert_eq!(v.verify_header(&s), Ok(()));
        s.header.pts_us += 1;
        assert_eq!(
            v.verify_header(&s),
            Err(VerifyError::BadSignature { seq: 4 })
        );
    }

    #[test]
    fn another_key_cannot_sign_for_the_stream() {
        let v = StreamVerifier::new(key(1).stream_id()).unwrap();
        assert!(v.verify_header(&signed(&key(2), &[1, 2, 3])).is_err());
        let init = key(2).sign_init(1, "video/mp4".into(), vec![1, 2]);
        assert_eq!(
            v.verify_init(&init),
            Err(VerifyError::BadInitSignature { version: 1 })
        );
    }

    #[test]
    fn init_segments_verify_and_bind_their_bytes() {
        let k = key(3);
        let v = StreamVerifier::new(k.stream_id()).unwrap();
        let mut init = k.sign_init(2, "video/mp4; codecs=\"avc1.42001f\"".into(), vec![5; 100]);
        assert_eq!(v.verify_init(&init), Ok(()));
        init.data[0] ^= 1;
        assert!(v.verify_init(&init).is_err());
    }

    #[test]
    fn pieces_verify_against_the_header() {
        let data: Vec<u8> = (0..PIECE_SIZE + 10).map(|i| i as u8).collect();
        let s = signed(&key(1), &data);
        assert_eq!(verify_piece(&s.header, 0, &data[..PIECE_SIZE]), Ok(()));
        assert_eq!(verify_piece(&s.header, 1, &data[PIECE_SIZE..]), Ok(()));
        let mut forged = data[PIECE_SIZE..].to_vec();
        forged[0] ^= 0xff;
        assert_eq!(
            verify_piece(&s.header, 1, &forged),
            Err(VerifyError::BadPiece { seq: 4, index: 1 })
        );
        assert!(verify_piece(&s.header, 2, &[]).is_err());
        assert!(verify_piece(&s.header, 1, &data[PIECE_SIZE - 1..]).is_err());
    }

    #[test]
    fn secret_round_trips() {
        let k = key(9);
        assert_eq!(
            StreamKey::from_secret(k.secret()).stream_id(),
            k.stream_id()
        );
    }
}
