//! The cost floor of a relaying WebSocket server on this machine, with nothing of ours in the
//! way: one thread, one edge-triggered epoll (mio), plain non-blocking sockets, no tokio, no
//! locks, no per-connection task. Same contract as `floor.rs`: every message read gets a fixed
//! announce reply, and for each `lg-t=` stamp in it a fixed offer carrying that stamp goes to a
//! random other connection — one `read` and two `write`s per relayed offer, no JSON, hashing or
//! swarm bookkeeping. `floor.rs` is the floor of our socket layer (tokio, write-through
//! outboxes); this is the floor of the kernel's loopback TCP path under `loadgen`, which no
//! server can beat here (BENCHMARKS.md, "Issue 5's floor, measured").
//!
//! ```sh
//! cargo build --release -p swarmcast-signaling --example floor_epoll --example loadgen
//! target/release/examples/loadgen --targets ours,npm --server-bin target/release/examples/floor_epoll
//! ```
//! (It accepts and ignores the flags `loadgen` passes to the real server.)

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use swarmcast_signaling::ws::{self, Incoming};

const REPLY: &str = r#"{"action":"announce","interval":120,"info_hash":"xxxxxxxxxxxxxxxxxxxx","complete":0,"incomplete":10000}"#;
const LISTENER: Token = Token(usize::MAX);

struct Conn {
    tcp: TcpStream,
    /// The HTTP upgrade request until its end has been read; `None` once upgraded.
    head: Option<Vec<u8>>,
    reader: ws::Reader,
    /// Bytes the socket did not take yet.
    out: Vec<u8>,
}

impl Conn {
    /// Writes what waits; false when the connection is dead.
    fn flush(&mut self) -> bool {
        while !self.out.is_empty() {
            match self.tcp.write(&self.out) {
                Ok(0) => return false,
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        }
        true
    }

    /// Writes `frame` now if nothing waits ahead of it, else queues it (unbounded: this is a
    /// measuring tool, not a server).
    fn send(&mut self, frame: &[u8]) {
        if !self.out.is_empty() {
            self.out.extend_from_slice(frame);
            return;
        }
        match self.tcp.write(frame) {
            Ok(n) => self.out.extend_from_slice(&frame[n..]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => self.out.extend_from_slice(frame),
            Err(_) => {}
        }
    }

    /// Reads the upgrade request; answers it once complete.
    fn upgrade(&mut self) -> std::io::Result<bool> {
        let head = self.head.as_mut().expect("not upgraded yet");
        let mut b = [0u8; 2048];
        loop {
            match self.tcp.read(&mut b) {
                Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
                Ok(n) => head.extend_from_slice(&b[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        let text = String::from_utf8_lossy(head);
        let key = text
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("sec-websocket-key")
                    .then(|| v.trim().to_owned())
            })
            .unwrap_or_default();
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let resp = format!("HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {accept}\r\n\r\n");
        self.head = None;
        self.send(resp.as_bytes());
        Ok(true)
    }

    /// Reads all that is readable; pushes each message's stamps (`Some`) and a reply marker
    /// (`None`) to `work`. Returns false when the connection is dead.
    fn read(&mut self, work: &mut Vec<Option<u64>>) -> bool {
        loop {
            match self.tcp.read(self.reader.spare()) {
                Ok(0) => return false,
                Ok(n) => self.reader.filled(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
            loop {
                match self.reader.next_message() {
                    Ok(Some(Incoming::Text(t))) => {
                        for (pos, _) in t.match_indices("lg-t=") {
                            let digits = &t[pos + 5..];
                            let end = digits
                                .find(|c: char| !c.is_ascii_digit())
                                .unwrap_or(digits.len());
                            work.push(Some(digits[..end].parse().unwrap_or(0)));
                        }
                        work.push(None);
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => return false,
                }
            }
        }
    }
}

fn main() -> std::io::Result<()> {
    let mut listener = TcpListener::bind("127.0.0.1:0".parse().expect("address"))?;
    println!("listening on http://{}", listener.local_addr()?);
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut conns: HashMap<usize, Conn> = HashMap::new();
    // Upgraded connections, for picking a random receiver.
    let mut ids: Vec<usize> = Vec::new();
    let mut next = 0usize;
    let mut rng = 1u64;
    let mut events = Events::with_capacity(1024);
    let mut reply = Vec::new();
    ws::write_text(&mut reply, REPLY);
    let pad = "x".repeat(400);
    let (mut text, mut offer) = (String::new(), Vec::new());
    let mut work = Vec::new();
    loop {
        poll.poll(&mut events, None)?;
        for ev in events.iter() {
            if ev.token() == LISTENER {
                while let Ok((mut tcp, _)) = listener.accept() {
                    tcp.set_nodelay(true)?;
                    next += 1;
                    poll.registry().register(
                        &mut tcp,
                        Token(next),
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    let c = Conn {
                        tcp,
                        head: Some(Vec::new()),
                        reader: ws::Reader::new(2048, 64 * 1024),
                        out: Vec::new(),
                    };
                    conns.insert(next, c);
                }
                continue;
            }
            let id = ev.token().0;
            let Some(c) = conns.get_mut(&id) else {
                continue;
            };
            work.clear();
            let mut alive = !ev.is_writable() || c.flush();
            if alive && ev.is_readable() && c.head.is_some() {
                match c.upgrade() {
                    Ok(true) => ids.push(id),
                    Ok(false) => {}
                    Err(_) => alive = false,
                }
            }
            if alive && ev.is_readable() && c.head.is_none() {
                alive = c.read(&mut work);
            }
            for &w in &work {
                let Some(stamp) = w else {
                    if let Some(c) = conns.get_mut(&id) {
                        c.send(&reply);
                    }
                    continue;
                };
                if ids.len() < 2 {
                    continue;
                }
                let to = loop {
                    rng = rng
                        .wrapping_add(0x9E37_79B9_7F4A_7C15)
                        .wrapping_mul(0xBF58_476D_1CE4_E5B9);
                    let t = ids[((u128::from(rng) * ids.len() as u128) >> 64) as usize];
                    if t != id {
                        break t;
                    }
                };
                text.clear();
                let _ = write!(
                    text,
                    r#"{{"action":"announce","offer":{{"type":"offer","sdp":"v=0 lg-t={stamp} {pad}"}},"offer_id":"o","peer_id":"p","info_hash":"i"}}"#
                );
                offer.clear();
                ws::write_text(&mut offer, &text);
                if let Some(c) = conns.get_mut(&to) {
                    c.send(&offer);
                }
            }
            if !alive {
                if let Some(mut c) = conns.remove(&id) {
                    poll.registry().deregister(&mut c.tcp)?;
                }
                ids.retain(|&i| i != id);
            }
        }
    }
}
