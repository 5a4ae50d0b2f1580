//! WebSocket framing (RFC 6455), server side, without I/O.
//!
//! The server writes its own frames so that any task can put a message straight into another
//! connection's socket (see `outbox`): a relayed offer then costs one `write`, not a queue
//! push, a task wake-up and a scheduler round trip on the receiving connection. Reading is a
//! pull parser over the connection's read buffer: a text message in one frame (every tracker
//! message in practice) is unmasked in place and handed to the JSON parser without a copy.

use std::ops::Range;

/// Close codes we send or accept.
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The server is going away.
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error.
    pub const PROTOCOL: u16 = 1002;
    /// A text message that is not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// Policy violation (rate limit, slow reader).
    pub const POLICY: u16 = 1008;
    /// Message too big.
    pub const TOO_BIG: u16 = 1009;
}

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Why the peer's bytes are not acceptable WebSocket; each maps to the close code we answer
/// with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WsError {
    /// RSV bits set without a negotiated extension, an unknown opcode, an unmasked client
    /// frame, a fragmented or oversized control frame, or a continuation out of place.
    #[error("WebSocket protocol error: {0}")]
    Protocol(&'static str),
    /// A message or frame over the configured maximum.
    #[error("message too big")]
    TooBig,
    /// A text message that is not UTF-8.
    #[error("text message is not UTF-8")]
    NotUtf8,
}

impl WsError {
    /// The close code that tells the peer why.
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::Protocol(_) => close::PROTOCOL,
            WsError::TooBig => close::TOO_BIG,
            WsError::NotUtf8 => close::INVALID_DATA,
        }
    }
}

/// One complete message from the peer.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A text message (UTF-8 checked).
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
    /// A ping; the payload must be echoed in a pong.
    Ping(&'a [u8]),
    /// A pong (ignored).
    Pong,
    /// The peer closes, with its code if it gave one.
    Close(Option<u16>),
}

/// Incremental reader: bytes go in with [`Reader::spare`] / [`Reader::filled`], messages come
/// out of [`Reader::next_message`].
///
/// Memory: the buffer starts at `initial` bytes and grows to hold a frame that does not fit (up
/// to the message limit), or to [`BURST`] while reads keep filling it (a client whose messages
/// queue up faster than they are handled: reading more of them at once lets their replies leave
/// in one write, see `Outbox::cork`); once drained by a read that did not fill it, it shrinks
/// back. An idle connection keeps `initial` bytes whatever it once received (at most [`BURST`]
/// if its last read happened to fill the buffer exactly).
pub struct Reader {
    buf: Vec<u8>,
    /// Bytes of `buf` holding data.
    len: usize,
    /// Bytes at the front already consumed by a message handed out.
    done: usize,
    /// A fragmented data message being assembled: its opcode and payload so far.
    frag: Option<(u8, Vec<u8>)>,
    /// The last fragmented message handed out, held until the next call.
    assembled: Vec<u8>,
    max_message: usize,
    initial: usize,
    /// Room offered by the last [`Reader::spare`], and whether the read filled all of it.
    offered: usize,
    filled_all: bool,
}

/// The most a [`Reader`] reads at once while a client's messages queue up (bytes).
pub const BURST: usize = 16 * 1024;

/// A parsed frame header.
struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    header_len: usize,
    payload_len: usize,
}

impl Reader {
    /// A reader accepting messages up to `max_message` bytes.
    pub fn new(initial: usize, max_message: usize) -> Reader {
        Reader {
            buf: Vec::new(),
            len: 0,
            done: 0,
            frag: None,
            assembled: Vec::new(),
            max_message,
            initial: initial.max(16),
            offered: 0,
            filled_all: false,
        }
    }

    /// Bytes held by the reader (buffer and partial message), for tests of the memory bound.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
            + self.assembled.capacity()
            + self.frag.as_ref().map_or(0, |(_, v)| v.capacity())
    }

    /// Room to read into (at least 1 byte). Compacts consumed bytes first, and allocates the
    /// buffer on first use, so a connection that never sends holds none.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.done > 0 {
            self.buf.copy_within(self.done..self.len, 0);
            self.len -= self.done;
            self.done = 0;
        }
        let bursting = self.filled_all && self.buf.len() <= BURST;
        if self.len == 0 && self.buf.len() > self.initial && !bursting {
            // Drained after a large message or a burst: give the memory back.
            self.buf = Vec::new();
        }
        if self.buf.is_empty() {
            self.buf = vec![0; self.initial];
        }
        if self.len == self.buf.len() {
            // A frame larger than the buffer: grow, bounded by the largest acceptable frame
            // (the caller has checked the header against the limit in `next_message`).
            let grown = (self.buf.len() * 2)
                .min(self.max_message + 14)
                .max(self.len + 1);
            self.buf.resize(grown, 0);
        } else if self.filled_all && self.buf.len() < BURST {
            // The last read took all the room offered: more is waiting in the socket.
            let grown = (self.buf.len() * 2).min(BURST);
            self.buf.resize(grown, 0);
        }
        self.offered = self.buf.len() - self.len;
        &mut self.buf[self.len..]
    }

    /// Marks `n` bytes of [`Reader::spare`] as read.
    pub fn filled(&mut self, n: usize) {
        self.len = (self.len + n).min(self.buf.len());
        self.filled_all = n >= self.offered;
    }

    /// Whether a partial frame or message is held (an EOF now is a truncated message).
    pub fn is_partial(&self) -> bool {
        self.len > self.done || self.frag.is_some()
    }

    fn header(&self) -> Result<Option<Header>, WsError> {
        let b = &self.buf[self.done..self.len];
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        if b[0] & 0x70 != 0 {
            return Err(WsError::Protocol("reserved bits set"));
        }
        let opcode = b[0] & 0x0F;
        if b[1] & 0x80 == 0 {
            return Err(WsError::Protocol("client frame not masked"));
        }
        let (len, at) = match b[1] & 0x7F {
            126 => {
                if b.len() < 4 {
                    return Ok(None);
                }
                (u64::from(u16::from_be_bytes([b[2], b[3]])), 4)
            }
            127 => {
                if b.len() < 10 {
                    return Ok(None);
                }
                let mut x = [0u8; 8];
                x.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(x), 10)
            }
            n => (u64::from(n), 2),
        };
        let is_control = opcode & 0x8 != 0;
        match opcode {
            OP_CONTINUATION | OP_TEXT | OP_BINARY => {}
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin {
                    return Err(WsError::Protocol("fragmented control frame"));
                }
                if len > 125 {
                    return Err(WsError::Protocol("control frame over 125 bytes"));
                }
            }
            _ => return Err(WsError::Protocol("unknown opcode")),
        }
        if !is_control {
            let before = self.frag.as_ref().map_or(0, |(_, v)| v.len()) as u64;
            if len.saturating_add(before) > self.max_message as u64 {
                return Err(WsError::TooBig);
            }
        }
        if b.len() < at + 4 {
            return Ok(None);
        }
        let mask = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        Ok(Some(Header {
            fin,
            opcode,
            mask,
            header_len: at + 4,
            // Bounded by the checks above (data: max_message; control: 125).
            payload_len: len as usize,
        }))
    }

    /// The next complete message, `Ok(None)` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Incoming<'_>>, WsError> {
        self.assembled = Vec::new();
        loop {
            let Some(h) = self.header()? else {
                return Ok(None);
            };
            let start = self.done + h.header_len;
            let end = start + h.payload_len;
            if end > self.len {
                return Ok(None);
            }
            unmask(&mut self.buf[start..end], h.mask);
            self.done = end;
            let payload = start..end;
            match h.opcode {
                OP_PING => return Ok(Some(Incoming::Ping(&self.buf[payload]))),
                OP_PONG => return Ok(Some(Incoming::Pong)),
                OP_CLOSE => return Ok(Some(Incoming::Close(close_code(&self.buf[payload])?))),
                OP_CONTINUATION => {
                    let Some((_, acc)) = self.frag.as_mut() else {
                        return Err(WsError::Protocol("continuation without a first frame"));
                    };
                    acc.extend_from_slice(&self.buf[payload]);
                    if h.fin {
                        let (op, acc) = self.frag.take().expect("checked above");
                        self.assembled = acc;
                        return data(op, &self.assembled).map(Some);
                    }
                }
                op => {
                    if self.frag.is_some() {
                        return Err(WsError::Protocol("new message inside a fragmented one"));
                    }
                    if h.fin {
                        return data(op, &self.buf[payload]).map(Some);
                    }
                    self.frag = Some((op, self.buf[payload].to_vec()));
                }
            }
        }
    }
}

fn data(op: u8, payload: &[u8]) -> Result<Incoming<'_>, WsError> {
    if op == OP_TEXT {
        simdutf8::basic::from_utf8(payload)
            .map(Incoming::Text)
            .map_err(|_| WsError::NotUtf8)
    } else {
        Ok(Incoming::Binary(payload))
    }
}

fn close_code(payload: &[u8]) -> Result<Option<u16>, WsError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(WsError::Protocol("close frame with a 1-byte payload")),
        _ => {
            if std::str::from_utf8(&payload[2..]).is_err() {
                return Err(WsError::NotUtf8);
            }
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !close_code_allowed(code) {
                return Err(WsError::Protocol("invalid close code"));
            }
            Ok(Some(code))
        }
    }
}

/// Whether a peer may send `code` in a close frame (RFC 6455 section 7.4): the defined codes
/// except those reserved for local use (1004, 1005, 1006, 1015), and the registered (3000-3999)
/// and private (4000-4999) ranges.
pub fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// XORs `data` with the 4-byte mask, eight bytes at a time.
pub fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let m8 = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes(c.try_into().expect("chunk of 8")) ^ m8;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    let rest = chunks.into_remainder();
    // The remainder starts at a multiple of 8, so the mask phase is 0 again.
    for (i, b) in rest.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Appends an unmasked server frame (FIN set) with `payload` to `out`.
pub fn write_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    let n = payload.len();
    out.push(0x80 | opcode);
    if n < 126 {
        out.push(n as u8);
    } else if n <= usize::from(u16::MAX) {
        out.push(126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// Appends a text frame.
pub fn write_text(out: &mut Vec<u8>, text: &str) {
    write_frame(out, OP_TEXT, text.as_bytes());
}

/// Appends a ping frame (empty payload).
pub fn write_ping(out: &mut Vec<u8>) {
    write_frame(out, OP_PING, &[]);
}

/// Appends a pong echoing `payload`.
pub fn write_pong(out: &mut Vec<u8>, payload: &[u8]) {
    write_frame(out, OP_PONG, payload);
}

/// Appends a close frame with `code` and `reason` (truncated to fit a control frame).
pub fn write_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut p = code.to_be_bytes().to_vec();
    let mut r = reason;
    while r.len() > 123 {
        let mut cut = 123;
        while !r.is_char_boundary(cut) {
            cut -= 1;
        }
        r = &r[..cut];
    }
    p.extend_from_slice(r.as_bytes());
    write_frame(out, OP_CLOSE, &p);
}

/// The payload range of the first frame in `frame` (a server frame written by this module);
/// for tests.
pub fn payload_range(frame: &[u8]) -> Option<Range<usize>> {
    let n = usize::from(*frame.get(1)? & 0x7F);
    let (len, at) = match n {
        126 => (
            usize::from(u16::from_be_bytes([*frame.get(2)?, *frame.get(3)?])),
            4,
        ),
        127 => (
            usize::try_from(u64::from_be_bytes(frame.get(2..10)?.try_into().ok()?)).ok()?,
            10,
        ),
        n => (n, 2),
    };
    (frame.len() >= at + len).then_some(at..at + len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked with `mask`.
    fn client(fin: bool, op: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut f = Vec::new();
        write_frame(&mut f, op, payload);
        if !fin {
            f[0] &= 0x7F;
        }
        let r = payload_range(&f).unwrap();
        f[1] |= 0x80;
        let mut body = f.split_off(r.start);
        unmask(&mut body, mask);
        f.extend_from_slice(&mask);
        f.extend_from_slice(&body);
        f
    }

    fn feed(r: &mut Reader, bytes: &[u8]) {
        let mut at = 0;
        while at < bytes.len() {
            let s = r.spare();
            let n = s.len().min(bytes.len() - at);
            s[..n].copy_from_slice(&bytes[at..at + n]);
            r.filled(n);
            at += n;
        }
    }

    #[test]
    fn text_in_one_frame_every_length_class() {
        for n in [0usize, 5, 125, 126, 300, 65_535, 65_536, 70_000] {
            let msg = "x".repeat(n);
            let mut r = Reader::new(64, 100_000);
            feed(&mut r, &client(true, OP_TEXT, msg.as_bytes(), [1, 2, 3, 4]));
            assert_eq!(
                r.next_message().unwrap(),
                Some(Incoming::Text(&msg)),
                "len {n}"
            );
            assert_eq!(r.next_message().unwrap(), None);
            assert!(!r.is_partial());
        }
    }

    #[test]
    fn byte_by_byte_and_fragmented_with_control_between() {
        let mut bytes = client(false, OP_TEXT, b"hel", [9, 8, 7, 6]);
        bytes.extend(client(true, OP_PING, b"p", [1, 1, 1, 1]));
        bytes.extend(client(
            true,
            OP_CONTINUATION,
            "lo é".as_bytes(),
            [5, 5, 5, 5],
        ));
        bytes.extend(client(
            true,
            OP_CLOSE,
            &[0x03, 0xE8, b'o', b'k'],
            [0, 0, 0, 1],
        ));
        let mut r = Reader::new(16, 1000);
        let mut got = Vec::new();
        for b in bytes {
            feed(&mut r, &[b]);
            while let Some(m) = r.next_message().unwrap() {
                got.push(format!("{m:?}"));
            }
        }
        assert_eq!(
            got,
            [
                format!("{:?}", Incoming::Ping(b"p")),
                format!("{:?}", Incoming::Text("hello é")),
                format!("{:?}", Incoming::Close(Some(1000))),
            ]
        );
    }

    #[test]
    fn rejects_what_rfc6455_forbids() {
        let cases: Vec<(Vec<u8>, WsError)> = vec![
            (
                {
                    let mut f = Vec::new();
                    write_text(&mut f, "unmasked");
                    f
                },
                WsError::Protocol("client frame not masked"),
            ),
            (
                {
                    let mut f = client(true, OP_TEXT, b"a", [1, 2, 3, 4]);
                    f[0] |= 0x40;
                    f
                },
                WsError::Protocol("reserved bits set"),
            ),
            (
                client(true, 0x3, b"a", [1, 2, 3, 4]),
                WsError::Protocol("unknown opcode"),
            ),
            (
                client(false, OP_PING, b"a", [1, 2, 3, 4]),
                WsError::Protocol("fragmented control frame"),
            ),
            (
                client(true, OP_PING, &[0; 126], [1, 2, 3, 4]),
                WsError::Protocol("control frame over 125 bytes"),
            ),
            (
                client(true, OP_CONTINUATION, b"a", [1, 2, 3, 4]),
                WsError::Protocol("continuation without a first frame"),
            ),
            (
                client(true, OP_TEXT, &[0xC3, 0x28], [1, 2, 3, 4]),
                WsError::NotUtf8,
            ),
            (
                client(true, OP_BINARY, &[0; 101], [1, 2, 3, 4]),
                WsError::TooBig,
            ),
        ];
        for (bytes, want) in cases {
            let mut r = Reader::new(16, 100);
            feed(&mut r, &bytes);
            assert_eq!(r.next_message().unwrap_err(), want);
        }
        // A message growing past the limit over fragments.
        let mut r = Reader::new(16, 100);
        feed(&mut r, &client(false, OP_TEXT, &[b'a'; 60], [1, 2, 3, 4]));
        assert_eq!(r.next_message().unwrap(), None);
        feed(
            &mut r,
            &client(true, OP_CONTINUATION, &[b'a'; 60], [1, 2, 3, 4]),
        );
        assert_eq!(r.next_message().unwrap_err(), WsError::TooBig);
    }

    #[test]
    fn oversized_header_is_refused_before_buffering() {
        // A 64-bit length of 2^62: refused from the header alone, nothing allocated for it.
        let mut f = vec![0x82, 0xFF];
        f.extend_from_slice(&(1u64 << 62).to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0]);
        let mut r = Reader::new(16, 1 << 16);
        feed(&mut r, &f);
        assert_eq!(r.next_message().unwrap_err(), WsError::TooBig);
        assert!(r.capacity() < 1024);
    }

    #[test]
    fn buffer_shrinks_after_a_large_message() {
        let mut r = Reader::new(256, 100_000);
        let msg = "y".repeat(50_000);
        feed(&mut r, &client(true, OP_TEXT, msg.as_bytes(), [3, 1, 4, 1]));
        assert!(matches!(r.next_message().unwrap(), Some(Incoming::Text(t)) if t.len() == 50_000));
        assert!(r.capacity() >= 50_000);
        let _ = r.spare();
        assert!(r.capacity() <= 256, "{}", r.capacity());
    }

    #[test]
    fn reads_grow_while_they_fill_the_buffer_and_shrink_once_drained() {
        let mut r = Reader::new(2048, 1 << 16);
        let one = client(true, OP_TEXT, "z".repeat(500).as_bytes(), [1, 2, 3, 4]);
        let backlog: Vec<u8> = (0..100).flat_map(|_| one.iter().copied()).collect();
        // A socket with a backlog fills every read: each offers more room, up to BURST.
        let mut at = 0;
        let mut offered = Vec::new();
        let mut seen = 0;
        while at < backlog.len() {
            let s = r.spare();
            offered.push(s.len());
            let n = s.len().min(backlog.len() - at);
            s[..n].copy_from_slice(&backlog[at..at + n]);
            r.filled(n);
            at += n;
            while let Some(m) = r.next_message().unwrap() {
                assert!(matches!(m, Incoming::Text(t) if t.len() == 500));
                seen += 1;
            }
        }
        assert_eq!(seen, 100);
        assert_eq!(offered[0], 2048);
        assert!(offered.iter().any(|&o| o > 8 * 1024), "{offered:?}");
        assert!(r.capacity() <= BURST, "{}", r.capacity());
        // A read that does not fill the room ends the burst: drained, the buffer shrinks.
        feed(&mut r, &one);
        assert!(r.next_message().unwrap().is_some());
        let _ = r.spare();
        assert!(r.capacity() <= 2048, "{}", r.capacity());
    }

    #[test]
    fn close_frame_reason_is_truncated_on_a_char_boundary() {
        let mut f = Vec::new();
        write_close(&mut f, close::POLICY, &"é".repeat(100));
        let p = payload_range(&f).unwrap();
        assert!(p.len() <= 125);
        assert!(std::str::from_utf8(&f[p.start + 2..p.end]).is_ok());
    }
}
