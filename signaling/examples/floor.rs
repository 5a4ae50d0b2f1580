//! The cost floor of a relaying WebSocket server on this machine, for BENCHMARKS.md: the same
//! socket layer as swarmcast-signaling (its `ws` framing and write-through `Outbox`, tokio, one
//! task per connection) with no tracker behind it. Every message read gets a fixed announce
//! reply, and for each load generator's `lg-t=` stamp in it (one per offer), a fixed offer with
//! that stamp goes to a random other connection: the syscalls and wake-ups of a relay, none of its JSON,
//! hashing or swarm bookkeeping. What `loadgen` measures against this is the most our socket
//! layer can relay here; `floor_epoll.rs` is the same without that layer (the kernel's floor).
//!
//! ```sh
//! cargo build --release -p swarmcast-signaling --example floor --example loadgen
//! target/release/examples/loadgen --targets ours --server-bin target/release/examples/floor
//! ```
//! (It accepts and ignores the flags `loadgen` passes to the real server.)

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use swarmcast_signaling::metrics::{Kind, Metrics};
use swarmcast_signaling::outbox::Outbox;
use swarmcast_signaling::ws::{self, Incoming};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const REPLY: &str = r#"{"action":"announce","interval":120,"info_hash":"xxxxxxxxxxxxxxxxxxxx","complete":0,"incomplete":10000}"#;

struct Shared {
    conns: Mutex<Vec<Arc<Outbox>>>,
    rng: AtomicU64,
    metrics: Metrics,
}

impl Shared {
    fn random(&self, not: u64) -> Option<Arc<Outbox>> {
        let conns = self.conns.lock().unwrap();
        if conns.len() < 2 {
            return None;
        }
        loop {
            let x = self
                .rng
                .fetch_add(0x9E37_79B9_7F4A_7C15, Relaxed)
                .wrapping_mul(0xBF58_476D_1CE4_E5B9);
            let c = &conns[((u128::from(x) * conns.len() as u128) >> 64) as usize];
            if c.id != not {
                return Some(c.clone());
            }
        }
    }
}

#[tokio::main]
async fn main() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("listening on http://{}", listener.local_addr().unwrap());
    let shared = Arc::new(Shared {
        conns: Mutex::new(Vec::new()),
        rng: AtomicU64::new(1),
        metrics: Metrics::default(),
    });
    let mut next = 0u64;
    loop {
        let (tcp, _) = listener.accept().await.unwrap();
        next += 1;
        tokio::spawn(connection(tcp, next, shared.clone()));
    }
}

async fn connection(mut tcp: TcpStream, id: u64, shared: Arc<Shared>) {
    let _ = tcp.set_nodelay(true);
    // The HTTP upgrade, minimally.
    let mut head = Vec::new();
    let mut b = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tcp.read(&mut b).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&b[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head);
    let Some(key) = text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("sec-websocket-key")
            .then(|| v.trim().to_owned())
    }) else {
        return;
    };
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let resp = format!("HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {accept}\r\n\r\n");
    if tcp.write_all(resp.as_bytes()).await.is_err() {
        return;
    }
    let (mut rd, wr) = tokio::io::split(tcp);
    let me = Arc::new(Outbox::new(id, Some(Box::new(wr)), 256, false));
    shared.conns.lock().unwrap().push(me.clone());
    let mut reader = ws::Reader::new(2048, 64 * 1024);
    let m = &shared.metrics;
    'conn: loop {
        tokio::select! {
            () = me.wanted() => {
                if me.flush(m, std::time::Duration::from_secs(10)).await.is_err() {
                    break;
                }
            }
            r = rd.read(reader.spare()) => {
                match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => reader.filled(n),
                }
                loop {
                    match reader.next_message() {
                        Ok(Some(Incoming::Text(t))) => {
                            me.send(REPLY, Kind::Announce, None, m);
                            // One offer out per offer in: each carries the stamp.
                            for (pos, _) in t.match_indices("lg-t=") {
                                let stamp: String = t[pos..].chars().take_while(|c| *c != ' ').collect();
                                let offer = format!(
                                    r#"{{"action":"announce","offer":{{"type":"offer","sdp":"v=0 {stamp} {}"}},"offer_id":"o","peer_id":"p","info_hash":"i"}}"#,
                                    "x".repeat(400)
                                );
                                if let Some(to) = shared.random(id) {
                                    to.send(&offer, Kind::Offer, Some(Instant::now()), m);
                                }
                            }
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => break 'conn,
                    }
                }
            }
        }
    }
    shared.conns.lock().unwrap().retain(|c| c.id != id);
}
