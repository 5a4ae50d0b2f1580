//! Test-only: a viewer that forges what it forwards, so the end-to-end tests can show that
//! honest peers detect and cut forgers. Exists only with the `test-hooks` cargo feature.

use crate::core::wire::Message;

/// If `data` is an encoded piece, the same piece with every 97th byte flipped, re-encoded;
/// any other message unchanged. The header it follows stays genuine, so receivers see a piece
/// whose hash does not match the signed header.
pub fn corrupt_transmit(data: Vec<u8>) -> Vec<u8> {
    match Message::decode(&data) {
        Ok(Message::Piece {
            seq,
            index,
            data: mut piece,
        }) => {
            for b in piece.iter_mut().step_by(97) {
                *b ^= 0xff;
            }
            Message::Piece {
                seq,
                index,
                data: piece,
            }
            .encode()
        }
        _ => data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_corrupted_and_other_messages_are_not() {
        let piece = Message::Piece {
            seq: 3,
            index: 1,
            data: vec![0; 300],
        };
        match Message::decode(&corrupt_transmit(piece.encode())) {
            Ok(Message::Piece { seq, index, data }) => {
                assert_eq!((seq, index, data.len()), (3, 1, 300));
                assert_eq!(data.iter().filter(|&&b| b == 0xff).count(), 4);
            }
            other => panic!("{other:?}"),
        }
        let have = Message::Have { seq: 9 }.encode();
        assert_eq!(corrupt_transmit(have.clone()), have);
    }
}
