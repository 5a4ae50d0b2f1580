//! The wire protocol between neighbours: postcard-encoded [`Message`]s, one per data channel
//! message, each at most [`MAX_MESSAGE_SIZE`] bytes. PROTOCOL.md is the normative description.

use super::id::{PeerId, StreamId};
use super::segment::{InitSegment, SignedHeader, MAX_PIECES_PER_SEGMENT, PIECE_SIZE};
use serde::{Deserialize, Serialize};

/// Protocol version spoken in [`Message::Handshake`]; a peer speaking another one is disconnected.
pub const PROTOCOL_VERSION: u16 = 1;

/// No message may be longer: it is what browsers deliver in one data channel message everywhere.
pub const MAX_MESSAGE_SIZE: usize = 16 * 1024;

/// Longest availability bitfield, in bytes (covers 2,048 segments, far more than any window).
pub const MAX_BITFIELD_BYTES: usize = 256;

/// Most peer ids in one peer-exchange message.
pub const MAX_PEX_PEERS: usize = 32;

/// Longest relayed signalling payload (an SDP offer or answer with candidates).
pub const MAX_SIGNAL_SIZE: usize = 12 * 1024;

/// Most stripes a stream may be split into (a [`Message::Status`] carries one depth per stripe).
pub const MAX_STRIPES: usize = 32;

/// Depth advertised for a stripe the sender does not currently receive.
pub const NO_DEPTH: u8 = u8::MAX;

/// Postcard tag (variant index) of [`Message::Piece`]: the hot path decodes and encodes pieces
/// without building a [`Message`], so the payload is copied once per hop, not three times.
const PIECE_TAG: u8 = 4;

/// What a peer is in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// The broadcaster: holds the stream key, originates every segment.
    Source,
    /// A viewer: receives, verifies, plays, and forwards.
    Viewer,
}

/// Why a peer says it is leaving or refusing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectReason {
    /// No room for another neighbour or child.
    Full,
    /// Not the stream the other side asked for.
    WrongStream,
    /// Protocol version not spoken.
    Version,
    /// Shutting down.
    Leaving,
}

/// One message between neighbours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// First message on every connection, both ways. Nothing else is accepted before it.
    Handshake {
        /// [`PROTOCOL_VERSION`].
        version: u16,
        /// The stream this connection is for.
        stream: StreamId,
        /// The sender's id (must match the id the connection was set up with).
        peer: PeerId,
        /// Source or viewer.
        role: Role,
        /// Upload the sender offers the swarm, kbit/s (0: none, a receive-only peer).
        upload_kbps: u32,
    },
    /// Which complete, verified segments the sender holds: bit `i` (LSB first within each byte)
    /// stands for segment `base + i`.
    Bitfield {
        /// First segment covered.
        base: u64,
        /// The bits.
        bits: Vec<u8>,
    },
    /// The sender has completed and verified one more segment.
    Have {
        /// Its sequence number.
        seq: u64,
    },
    /// A signed segment header; always sent before the first piece of that segment on a
    /// connection, so that every piece can be verified on arrival.
    Header(SignedHeader),
    /// Piece `index` of segment `seq`.
    Piece {
        /// Segment.
        seq: u64,
        /// Piece index within the segment.
        index: u16,
        /// The bytes (at most [`PIECE_SIZE`]).
        data: Vec<u8>,
    },
    /// Asks for pieces of a segment: bit `i` of `pieces` asks for piece `i`.
    Request {
        /// Segment.
        seq: u64,
        /// Bitmask of wanted pieces.
        pieces: u64,
    },
    /// Withdraws a request (the pieces came from elsewhere, or are too late).
    Cancel {
        /// Segment.
        seq: u64,
    },
    /// Asks the receiver to push every fresh piece of `stripe` as it arrives.
    Subscribe {
        /// Stripe number.
        stripe: u8,
    },
    /// Stops a subscription.
    Unsubscribe {
        /// Stripe number.
        stripe: u8,
    },
    /// Answers a subscription: accepted with the sender's distance from the source on that
    /// stripe, or refused.
    SubscribeAck {
        /// Stripe number.
        stripe: u8,
        /// Accepted.
        accepted: bool,
        /// Hops from the source on this stripe (0 = the source itself).
        depth: u8,
    },
    /// Refusal of a request or a connection.
    Reject {
        /// Why.
        reason: RejectReason,
    },
    /// The stream's init segment.
    Init(InitSegment),
    /// Peer exchange: some of the sender's neighbours, reachable through it by [`Message::Relay`].
    Peers {
        /// Their ids.
        peers: Vec<PeerId>,
    },
    /// WebRTC signalling for a peer that is not (yet) a neighbour, relayed by a common
    /// neighbour, so that after bootstrap the tracker is needed less.
    Relay {
        /// Originator.
        from: PeerId,
        /// Final recipient (the relaying neighbour's neighbour).
        to: PeerId,
        /// Opaque signalling payload (SDP offer/answer as the binding encodes it).
        payload: Vec<u8>,
    },
    /// The sender is closing the connection.
    Goodbye {
        /// Why.
        reason: RejectReason,
    },
    /// The sender's place in each stripe tree and its room for stripe-children: what a
    /// neighbour needs to choose a parent (lowest depth with spare capacity) without probing.
    Status {
        /// Per stripe, hops from the source (0: the source; [`NO_DEPTH`]: not receiving it).
        /// Exactly as many entries as the stream has stripes.
        depths: Vec<u8>,
        /// Further stripe-child subscriptions the sender would accept now.
        free: u16,
        /// When full: a subscriber advertising at least this upload (kbit/s) is still accepted,
        /// displacing the sender's weakest child. `u32::MAX`: no displacement possible.
        displace_kbps: u32,
    },
    /// Round-trip probe; answered with [`Message::Pong`] carrying the same token.
    Ping {
        /// Opaque to the receiver (the sender puts its clock in it).
        token: u64,
    },
    /// Answer to [`Message::Ping`].
    Pong {
        /// The ping's token.
        token: u64,
    },
}

/// A message decoded without copying a piece's payload: pieces are most of the traffic.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A [`Message::Piece`], payload borrowed from the input.
    Piece {
        /// Segment.
        seq: u64,
        /// Piece index.
        index: u16,
        /// The bytes.
        data: &'a [u8],
    },
    /// Any other message.
    Other(Message),
}

#[derive(Deserialize)]
struct PieceRef<'a> {
    seq: u64,
    index: u16,
    data: &'a [u8],
}

/// Why bytes are not a valid message. Any of these from a neighbour disconnects it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Longer than [`MAX_MESSAGE_SIZE`].
    #[error("message of {got} bytes exceeds {max}")]
    Oversized {
        /// Bytes received.
        got: usize,
        /// Limit.
        max: usize,
    },
    /// Not a postcard encoding of a [`Message`] (truncated, unknown tag, bad varint...).
    #[error("undecodable message: {0}")]
    Malformed(&'static str),
    /// Bytes left over after a complete message.
    #[error("{extra} trailing bytes after message")]
    Trailing {
        /// Extra bytes.
        extra: usize,
    },
    /// Decodes, but a field is out of bounds.
    #[error("field out of bounds: {0}")]
    OutOfBounds(&'static str),
}

impl Message {
    /// Encodes for the wire.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising our own in-memory enum into a Vec cannot fail. Most messages are small:
        // starting with room for them saves the reallocations of growing from empty.
        postcard::to_extend(self, Vec::with_capacity(64)).unwrap_or_default()
    }

    /// Decodes one message, rejecting oversized, malformed, trailing and out-of-bounds input.
    pub fn decode(bytes: &[u8]) -> Result<Message, WireError> {
        match Message::decode_borrowed(bytes)? {
            Decoded::Piece { seq, index, data } => Ok(Message::Piece {
                seq,
                index,
                data: data.to_vec(),
            }),
            Decoded::Other(m) => Ok(m),
        }
    }

    /// Like [`Message::decode`] (same acceptance, same errors) but borrows a piece's payload.
    pub fn decode_borrowed(bytes: &[u8]) -> Result<Decoded<'_>, WireError> {
        if bytes.len() > MAX_MESSAGE_SIZE {
            return Err(WireError::Oversized {
                got: bytes.len(),
                max: MAX_MESSAGE_SIZE,
            });
        }
        if bytes.first() == Some(&PIECE_TAG) {
            let (p, rest): (PieceRef<'_>, &[u8]) =
                postcard::take_from_bytes(&bytes[1..]).map_err(malformed)?;
            if !rest.is_empty() {
                return Err(WireError::Trailing { extra: rest.len() });
            }
            check_piece(p.index, p.data.len())?;
            return Ok(Decoded::Piece {
                seq: p.seq,
                index: p.index,
                data: p.data,
            });
        }
        let (msg, rest): (Message, &[u8]) = postcard::take_from_bytes(bytes).map_err(malformed)?;
        if !rest.is_empty() {
            return Err(WireError::Trailing { extra: rest.len() });
        }
        msg.check_bounds()?;
        Ok(Decoded::Other(msg))
    }

    fn check_bounds(&self) -> Result<(), WireError> {
        use WireError::OutOfBounds as Oob;
        match self {
            Message::Bitfield { bits, .. } if bits.len() > MAX_BITFIELD_BYTES => {
                Err(Oob("bitfield"))
            }
            Message::Header(h) if h.header.piece_hashes.len() > MAX_PIECES_PER_SEGMENT => {
                Err(Oob("piece count"))
            }
            Message::Piece { data, index, .. } => check_piece(*index, data.len()),
            Message::Status { depths, .. } if depths.is_empty() || depths.len() > MAX_STRIPES => {
                Err(Oob("stripe count"))
            }
            Message::Peers { peers } if peers.len() > MAX_PEX_PEERS => Err(Oob("peer list")),
            Message::Relay { payload, .. } if payload.len() > MAX_SIGNAL_SIZE => {
                Err(Oob("signal size"))
            }
            Message::Init(init) if init.mime.len() > super::segment::MAX_MIME_LEN => {
                Err(Oob("mime"))
            }
            _ => Ok(()),
        }
    }
}

fn malformed(e: postcard::Error) -> WireError {
    WireError::Malformed(match e {
        postcard::Error::DeserializeUnexpectedEnd => "truncated",
        postcard::Error::DeserializeBadVarint => "bad varint",
        postcard::Error::DeserializeBadEnum => "unknown message or variant tag",
        postcard::Error::DeserializeBadBool => "bad bool",
        postcard::Error::DeserializeBadUtf8 => "bad utf-8",
        _ => "bad encoding",
    })
}

fn check_piece(index: u16, len: usize) -> Result<(), WireError> {
    if len == 0 || len > PIECE_SIZE {
        return Err(WireError::OutOfBounds("piece size"));
    }
    if index as usize >= MAX_PIECES_PER_SEGMENT {
        return Err(WireError::OutOfBounds("piece index"));
    }
    Ok(())
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Bytes a varint of `v` takes.
fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// Length of the canonical encoding of a [`Message::Piece`] with a payload of `len` bytes: what
/// [`encode_piece`] produces. A received piece message of exactly this length is canonical
/// (postcard varints are minimal there; any other spelling is longer), so it can be kept and
/// forwarded as received.
pub fn piece_message_len(seq: u64, index: u16, len: usize) -> usize {
    1 + varint_len(seq) + varint_len(index as u64) + varint_len(len as u64) + len
}

/// Encodes a [`Message::Piece`] straight from a borrowed payload: byte for byte what
/// `Message::Piece { .. }.encode()` gives, without first copying the payload into a `Vec`.
pub fn encode_piece(seq: u64, index: u16, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 16);
    out.push(PIECE_TAG);
    put_varint(&mut out, seq);
    put_varint(&mut out, index as u64);
    put_varint(&mut out, data.len() as u64);
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::segment::{SegmentHeader, SegmentMeta};
    use proptest::prelude::*;

    fn sample_messages() -> Vec<Message> {
        let header = SegmentHeader::describe(
            7,
            1,
            SegmentMeta {
                pts_us: 1,
                duration_us: 2,
                keyframe: true,
            },
            3,
            &[1u8; 40_000],
        );
        vec![
            Message::Handshake {
                version: PROTOCOL_VERSION,
                stream: StreamId([1; 32]),
                peer: PeerId([2; 20]),
                role: Role::Viewer,
                upload_kbps: 4000,
            },
            Message::Bitfield {
                base: 100,
                bits: vec![0xff, 0x01],
            },
            Message::Have { seq: u64::MAX },
            Message::Header(SignedHeader {
                header,
                signature: [[3; 32]; 2],
            }),
            Message::Piece {
                seq: 5,
                index: 2,
                data: vec![7; PIECE_SIZE],
            },
            Message::Request {
                seq: 5,
                pieces: 0b101,
            },
            Message::Cancel { seq: 5 },
            Message::Subscribe { stripe: 3 },
            Message::Unsubscribe { stripe: 3 },
            Message::SubscribeAck {
                stripe: 1,
                accepted: true,
                depth: 2,
            },
            Message::Reject {
                reason: RejectReason::Full,
            },
            Message::Peers {
                peers: vec![PeerId([4; 20]); 3],
            },
            Message::Relay {
                from: PeerId([1; 20]),
                to: PeerId([2; 20]),
                payload: b"sdp".to_vec(),
            },
            Message::Goodbye {
                reason: RejectReason::Leaving,
            },
        ]
    }

    #[test]
    fn every_message_round_trips_and_fits_a_data_channel() {
        for m in sample_messages() {
            let bytes = m.encode();
            assert!(
                bytes.len() <= MAX_MESSAGE_SIZE,
                "{m:?} is {} bytes",
                bytes.len()
            );
            assert_eq!(Message::decode(&bytes), Ok(m));
        }
    }

    #[test]
    fn truncated_trailing_and_oversized_input_is_rejected() {
        let bytes = Message::Piece {
            seq: 1,
            index: 0,
            data: vec![1; 100],
        }
        .encode();
        assert_eq!(
            Message::decode(&bytes[..bytes.len() - 1]),
            Err(WireError::Malformed("truncated"))
        );
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            Message::decode(&long),
            Err(WireError::Trailing { extra: 1 })
        );
        assert!(matches!(
            Message::decode(&vec![0; MAX_MESSAGE_SIZE + 1]),
            Err(WireError::Oversized { .. })
        ));
        assert!(matches!(
            Message::decode(&[200]),
            Err(WireError::Malformed(_))
        ));
        assert_eq!(Message::decode(&[]), Err(WireError::Malformed("truncated")));
    }

    #[test]
    fn out_of_bounds_fields_are_rejected() {
        let empty_piece = Message::Piece {
            seq: 1,
            index: 0,
            data: vec![],
        }
        .encode();
        assert_eq!(
            Message::decode(&empty_piece),
            Err(WireError::OutOfBounds("piece size"))
        );
        let many = Message::Peers {
            peers: vec![PeerId([0; 20]); MAX_PEX_PEERS + 1],
        }
        .encode();
        assert_eq!(
            Message::decode(&many),
            Err(WireError::OutOfBounds("peer list"))
        );
    }

    fn arb_header() -> impl Strategy<Value = SignedHeader> {
        (
            any::<u64>(),
            any::<u32>(),
            any::<u64>(),
            any::<u32>(),
            any::<bool>(),
            any::<u64>(),
            1usize..=MAX_PIECES_PER_SEGMENT * PIECE_SIZE,
            any::<[u8; 32]>(),
            any::<[[u8; 32]; 2]>(),
        )
            .prop_map(
                |(seq, iv, pts, dur, kf, publ, len, h, signature)| SignedHeader {
                    header: SegmentHeader {
                        seq,
                        init_version: iv,
                        pts_us: pts,
                        duration_us: dur,
                        keyframe: kf,
                        published_us: publ,
                        len: len as u32,
                        piece_hashes: vec![h; len.div_ceil(PIECE_SIZE)],
                    },
                    signature,
                },
            )
    }

    fn arb_reason() -> impl Strategy<Value = RejectReason> {
        prop_oneof![
            Just(RejectReason::Full),
            Just(RejectReason::WrongStream),
            Just(RejectReason::Version),
            Just(RejectReason::Leaving),
        ]
    }

    fn arb_peer() -> impl Strategy<Value = PeerId> {
        any::<[u8; 20]>().prop_map(PeerId)
    }

    /// Every message type, with fields anywhere inside their bounds.
    fn arb_message() -> impl Strategy<Value = Message> {
        use proptest::collection::vec;
        prop_oneof![
            (
                any::<u16>(),
                any::<[u8; 32]>(),
                arb_peer(),
                any::<bool>(),
                any::<u32>()
            )
                .prop_map(|(version, s, peer, src, upload_kbps)| Message::Handshake {
                    version,
                    stream: StreamId(s),
                    peer,
                    role: if src { Role::Source } else { Role::Viewer },
                    upload_kbps,
                }),
            (any::<u64>(), vec(any::<u8>(), 0..=MAX_BITFIELD_BYTES))
                .prop_map(|(base, bits)| Message::Bitfield { base, bits }),
            any::<u64>().prop_map(|seq| Message::Have { seq }),
            arb_header().prop_map(Message::Header),
            (
                any::<u64>(),
                0u16..MAX_PIECES_PER_SEGMENT as u16,
                vec(any::<u8>(), 1..=PIECE_SIZE)
            )
                .prop_map(|(seq, index, data)| Message::Piece { seq, index, data }),
            (any::<u64>(), any::<u64>()).prop_map(|(seq, pieces)| Message::Request { seq, pieces }),
            any::<u64>().prop_map(|seq| Message::Cancel { seq }),
            any::<u8>().prop_map(|stripe| Message::Subscribe { stripe }),
            any::<u8>().prop_map(|stripe| Message::Unsubscribe { stripe }),
            (any::<u8>(), any::<bool>(), any::<u8>()).prop_map(|(stripe, accepted, depth)| {
                Message::SubscribeAck {
                    stripe,
                    accepted,
                    depth,
                }
            }),
            arb_reason().prop_map(|reason| Message::Reject { reason }),
            (
                any::<u32>(),
                "[ -~]{0,256}",
                vec(any::<u8>(), 0..=crate::core::segment::MAX_INIT_SIZE),
                any::<[[u8; 32]; 2]>()
            )
                .prop_map(|(version, mime, data, signature)| Message::Init(
                    InitSegment {
                        version,
                        mime,
                        data,
                        signature,
                    }
                )),
            vec(arb_peer(), 0..=MAX_PEX_PEERS).prop_map(|peers| Message::Peers { peers }),
            (
                arb_peer(),
                arb_peer(),
                vec(any::<u8>(), 0..=MAX_SIGNAL_SIZE)
            )
                .prop_map(|(from, to, payload)| Message::Relay { from, to, payload }),
            arb_reason().prop_map(|reason| Message::Goodbye { reason }),
            (
                vec(any::<u8>(), 1..=MAX_STRIPES),
                any::<u16>(),
                any::<u32>()
            )
                .prop_map(|(depths, free, displace_kbps)| Message::Status {
                    depths,
                    free,
                    displace_kbps
                }),
            any::<u64>().prop_map(|token| Message::Ping { token }),
            any::<u64>().prop_map(|token| Message::Pong { token }),
        ]
    }

    #[test]
    fn encode_piece_matches_the_generic_encoding() {
        for len in [1, 127, 128, 300, PIECE_SIZE] {
            let data = vec![3u8; len];
            let m = Message::Piece {
                seq: 1 << 40,
                index: 63,
                data: data.clone(),
            };
            assert_eq!(encode_piece(1 << 40, 63, &data), m.encode());
            assert_eq!(piece_message_len(1 << 40, 63, len), m.encode().len());
        }
    }

    proptest! {
        /// Every message type round-trips, fits one data channel message, and the borrowed
        /// decoder agrees with the owned one.
        #[test]
        fn every_message_type_round_trips(m in arb_message()) {
            let bytes = m.encode();
            prop_assert!(bytes.len() <= MAX_MESSAGE_SIZE, "{} bytes", bytes.len());
            prop_assert_eq!(Message::decode(&bytes), Ok(m.clone()));
            match (Message::decode_borrowed(&bytes), &m) {
                (Ok(Decoded::Piece { seq, index, data }), Message::Piece { seq: s, index: i, data: d }) => {
                    prop_assert_eq!((seq, index, data), (*s, *i, d.as_slice()));
                }
                (Ok(Decoded::Other(o)), _) => prop_assert_eq!(o, m),
                (other, _) => prop_assert!(false, "{:?}", other),
            }
        }

        /// Cutting any message short is always an error, never a panic or a different message.
        #[test]
        fn truncations_are_rejected(m in arb_message(), cut in any::<prop::sample::Index>()) {
            let bytes = m.encode();
            let at = cut.index(bytes.len());
            prop_assert!(Message::decode(&bytes[..at]).is_err());
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = Message::decode(&bytes);
        }

        #[test]
        fn pieces_round_trip(seq in any::<u64>(), index in 0u16..64, data in proptest::collection::vec(any::<u8>(), 1..2000)) {
            let m = Message::Piece { seq, index, data };
            prop_assert_eq!(Message::decode(&m.encode()), Ok(m));
        }

        #[test]
        fn requests_and_bitfields_round_trip(seq in any::<u64>(), pieces in any::<u64>(), bits in proptest::collection::vec(any::<u8>(), 0..MAX_BITFIELD_BYTES)) {
            let r = Message::Request { seq, pieces };
            prop_assert_eq!(Message::decode(&r.encode()), Ok(r));
            let b = Message::Bitfield { base: seq, bits };
            prop_assert_eq!(Message::decode(&b.encode()), Ok(b));
        }
    }
}
