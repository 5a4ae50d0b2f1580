//! The wire decoder on arbitrary bytes: every message from a neighbour goes through it, so it
//! must return a typed error, never panic; the borrowed fast path must agree with it exactly,
//! and whatever it accepts must survive an encode/decode round trip.
//! Run: `cd fuzz && cargo +nightly fuzz run wire_decode`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use swarmcast::core::wire::{Decoded, Message};

fuzz_target!(|data: &[u8]| {
    let owned = Message::decode(data);
    let borrowed = Message::decode_borrowed(data);
    match (&owned, &borrowed) {
        (Ok(m), Ok(Decoded::Other(b))) => assert_eq!(m, b),
        (Ok(Message::Piece { seq, index, data: d }), Ok(Decoded::Piece { seq: s, index: i, data: bd })) => {
            assert_eq!((seq, index, d.as_slice()), (s, i, *bd))
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        _ => panic!("decode and decode_borrowed disagree: {owned:?} vs {borrowed:?}"),
    }
    if let Ok(m) = owned {
        assert!(Message::decode(&m.encode()).as_ref() == Ok(&m));
    }
});
