//! Fuzzes the WebSocket frame reader: the first byte picks the read size, the rest arrives
//! in pieces of that size. No input may panic, and the reader never holds more than its
//! message limit allows.
#![no_main]

use libfuzzer_sys::fuzz_target;
use swarmcast_signaling::{protocol, ws::{Incoming, Reader}};

const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&piece, bytes)) = data.split_first() else { return };
    let piece = usize::from(piece).max(1);
    let mut r = Reader::new(64, MAX);
    for chunk in bytes.chunks(piece) {
        let mut at = 0;
        while at < chunk.len() {
            let s = r.spare();
            let n = s.len().min(chunk.len() - at);
            s[..n].copy_from_slice(&chunk[at..at + n]);
            r.filled(n);
            at += n;
            loop {
                match r.next_message() {
                    Ok(None) => break,
                    // What a connection does with a message: parse it.
                    Ok(Some(Incoming::Text(t))) => drop(protocol::parse_str(t)),
                    Ok(Some(Incoming::Binary(b))) => drop(protocol::parse(b)),
                    Ok(Some(_)) => {}
                    Err(_) => return,
                }
            }
            assert!(r.capacity() <= 2 * (MAX + 14) + 64);
        }
    }
});
