//! Property tests of the WebSocket frame reader (`ws::Reader`): whatever bytes arrive, in
//! whatever pieces, it never panics and never holds more than the message limit allows; and
//! any sequence of valid client messages, fragmented and masked at random and delivered in
//! random pieces, comes out whole and in order.

use proptest::prelude::*;
use swarmcast_signaling::ws::{self, Incoming, Reader};

const MAX: usize = 4096;

/// Feeds `bytes` in pieces of the given sizes and collects what comes out, stopping at the
/// first error.
fn run(r: &mut Reader, bytes: &[u8], pieces: &[usize]) -> (Vec<String>, Option<ws::WsError>) {
    let mut out = Vec::new();
    let mut at = 0;
    let mut k = 0;
    while at < bytes.len() {
        let want = pieces.get(k).copied().unwrap_or(bytes.len()).max(1);
        k += 1;
        let s = r.spare();
        let n = s.len().min(want).min(bytes.len() - at);
        s[..n].copy_from_slice(&bytes[at..at + n]);
        r.filled(n);
        at += n;
        loop {
            match r.next_message() {
                Ok(None) => break,
                Ok(Some(m)) => out.push(match m {
                    Incoming::Text(t) => format!("t:{t}"),
                    Incoming::Binary(b) => format!("b:{b:?}"),
                    Incoming::Ping(p) => format!("ping:{p:?}"),
                    Incoming::Pong => "pong".into(),
                    Incoming::Close(c) => format!("close:{c:?}"),
                }),
                Err(e) => return (out, Some(e)),
            }
        }
        assert!(
            r.capacity() <= 2 * (MAX + 14) + 64,
            "holds {} bytes",
            r.capacity()
        );
    }
    (out, None)
}

/// One client frame.
fn frame(fin: bool, op: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut f = vec![(if fin { 0x80 } else { 0 }) | op];
    let n = payload.len();
    if n < 126 {
        f.push(0x80 | n as u8);
    } else if n <= 0xFFFF {
        f.push(0x80 | 126);
        f.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(n as u64).to_be_bytes());
    }
    f.extend_from_slice(&mask);
    let mut p = payload.to_vec();
    ws::unmask(&mut p, mask);
    f.extend_from_slice(&p);
    f
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        pieces in proptest::collection::vec(1usize..300, 0..16),
    ) {
        let mut r = Reader::new(64, MAX);
        let _ = run(&mut r, &bytes, &pieces);
    }

    #[test]
    fn valid_messages_survive_any_fragmentation_and_pieces(
        msgs in proptest::collection::vec((any::<bool>(), ".{0,300}", 1usize..4), 1..8),
        pings in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 0..3),
        mask in any::<[u8; 4]>(),
        pieces in proptest::collection::vec(1usize..700, 0..40),
    ) {
        let mut bytes = Vec::new();
        let mut want = Vec::new();
        for (i, (text, body, parts)) in msgs.iter().enumerate() {
            let data = body.as_bytes();
            let step = data.len().div_ceil(*parts).max(1);
            let chunks: Vec<&[u8]> = if data.is_empty() { vec![&[][..]] } else { data.chunks(step).collect() };
            for (j, c) in chunks.iter().enumerate() {
                let op = if j > 0 { 0 } else if *text { 1 } else { 2 };
                bytes.extend(frame(j + 1 == chunks.len(), op, c, mask));
                // A control frame may arrive between fragments.
                if j == 0 && chunks.len() > 1 {
                    if let Some(p) = pings.get(i % pings.len().max(1)) {
                        bytes.extend(frame(true, 9, p, mask));
                        want.push(format!("ping:{p:?}"));
                    }
                }
            }
            want.push(if *text { format!("t:{body}") } else { format!("b:{data:?}") });
        }
        let mut r = Reader::new(64, MAX);
        let (got, err) = run(&mut r, &bytes, &pieces);
        prop_assert_eq!(err, None);
        prop_assert_eq!(got, want);
        prop_assert!(!r.is_partial());
    }
}
