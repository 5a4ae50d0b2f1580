//! Issue 24's attacks, bounded, against a running server, for the figures in BENCHMARKS.md
//! ("Signaling under attack"). Loopback only.
//!
//! - `slowloris`: `--count` connections each sending a request head one byte per second;
//!   reports how long until the server closed each (min/median/max) and whether `/healthz`
//!   still answered meanwhile.
//! - `stalled`: `--count` pairs of a reader that never reads (small receive window; it
//!   reconnects at once when closed) and a flooder sending announces with one offer of
//!   `--sdp-bytes` into the reader's swarm; samples the server's RSS (from `/proc/<--pid>`)
//!   every second.
//!
//! ```sh
//! cargo build --release -p swarmcast-signaling --example attack
//! target/release/swarmcast-signaling --listen 127.0.0.1:8000 &
//! target/release/examples/attack stalled --addr 127.0.0.1:8000 --pid $! --count 300 --secs 30
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug, Clone)]
struct Args {
    /// `slowloris` or `stalled`.
    mode: String,
    /// The server.
    #[arg(long, default_value = "127.0.0.1:8000")]
    addr: SocketAddr,
    /// The server's pid (for RSS).
    #[arg(long)]
    pid: Option<u32>,
    /// Connections (slowloris) or reader/flooder pairs (stalled).
    #[arg(long, default_value_t = 300)]
    count: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 30.0)]
    secs: f64,
    /// SDP size of each flooded offer.
    #[arg(long, default_value_t = 60_000)]
    sdp_bytes: usize,
}

fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn id(n: u64) -> String {
    let mut b = [b'a'; 20];
    b[..8].copy_from_slice(&n.to_be_bytes());
    b.iter().map(|&c| char::from(c)).collect()
}

async fn healthz(addr: SocketAddr) -> Option<Duration> {
    let t0 = Instant::now();
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    out.starts_with(b"HTTP/1.1 200").then(|| t0.elapsed())
}

async fn slowloris(a: Args) {
    let closed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..a.count {
        let closed = closed.clone();
        let addr = a.addr;
        tasks.push(tokio::spawn(async move {
            let Ok(s) = TcpStream::connect(addr).await else {
                return;
            };
            let t0 = Instant::now();
            let (mut r, mut w) = s.into_split();
            let writer = tokio::spawn(async move {
                for b in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: "
                    .iter()
                    .chain([b'a'; 4096].iter())
                {
                    if w.write_all(&[*b]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
            let mut buf = [0u8; 1024];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            writer.abort();
            closed.lock().unwrap().push(t0.elapsed());
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "healthz under {} slowloris sockets: {:?}",
        a.count,
        healthz(a.addr).await
    );
    let deadline = Instant::now() + Duration::from_secs_f64(a.secs);
    while Instant::now() < deadline && closed.lock().unwrap().len() < a.count {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut c = closed.lock().unwrap().clone();
    c.sort();
    let pick = |q: f64| c.get(((c.len() as f64 - 1.0) * q) as usize).copied();
    println!(
        "slowloris: {} of {} closed by the server within {:.0} s; min {:?} median {:?} max {:?}",
        c.len(),
        a.count,
        a.secs,
        pick(0.0),
        pick(0.5),
        pick(1.0)
    );
}

async fn ws_connect(
    addr: SocketAddr,
    small_window: bool,
) -> Option<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>> {
    let sock = TcpSocket::new_v4().ok()?;
    if small_window {
        sock.set_recv_buffer_size(4096).ok()?;
    }
    let tcp = sock.connect(addr).await.ok()?;
    let (ws, _) = tokio_tungstenite::client_async(
        format!("ws://{addr}/announce"),
        tokio_tungstenite::MaybeTlsStream::Plain(tcp),
    )
    .await
    .ok()?;
    Some(ws)
}

fn announce(ih: u64, pid: u64, sdp: Option<&str>) -> String {
    let offers = match sdp {
        Some(sdp) => serde_json::json!([{"offer": {"type": "offer", "sdp": sdp}, "offer_id": "o"}]),
        None => serde_json::json!([]),
    };
    serde_json::json!({"action": "announce", "info_hash": id(ih), "peer_id": id(pid),
        "numwant": 1, "offers": offers})
    .to_string()
}

async fn stalled(a: Args) {
    let sent = Arc::new(AtomicU64::new(0));
    let reconnects = Arc::new(AtomicU64::new(0));
    let sdp: Arc<str> = "s".repeat(a.sdp_bytes).into();
    let stop = Instant::now() + Duration::from_secs_f64(a.secs);
    for p in 0..a.count as u64 {
        let addr = a.addr;
        let reconnects = reconnects.clone();
        // The reader: announces, never reads; reconnects when the server closes it.
        tokio::spawn(async move {
            while Instant::now() < stop {
                let Some(mut ws) = ws_connect(addr, true).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                if ws
                    .send(Message::Text(announce(p, 1_000_000 + p, None).into()))
                    .await
                    .is_err()
                {
                    continue;
                }
                // Wait for the server to give up on us (a write error or EOF shows on a
                // ping we send now and then), without reading what it sends.
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if Instant::now() >= stop
                        || ws.send(Message::Ping(Vec::new().into())).await.is_err()
                    {
                        break;
                    }
                }
                reconnects.fetch_add(1, Relaxed);
            }
        });
        let sent = sent.clone();
        let sdp = sdp.clone();
        // The flooder: offers into the reader's swarm as fast as the server takes them, and
        // reads its own replies so that only the reader falls behind.
        tokio::spawn(async move {
            let Some(ws) = ws_connect(addr, false).await else {
                return;
            };
            let (mut tx, mut rx) = ws.split();
            tokio::spawn(async move { while rx.next().await.is_some() {} });
            let msg = announce(p, 2_000_000 + p, Some(&sdp));
            while Instant::now() < stop {
                if tx.send(Message::Text(msg.clone().into())).await.is_err() {
                    return;
                }
                sent.fetch_add(1, Relaxed);
            }
        });
    }
    let mut peak = 0;
    let t0 = Instant::now();
    while Instant::now() < stop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss = rss_kib(a.pid);
        peak = peak.max(rss.unwrap_or(0));
        println!(
            "t={:>4.1}s rss={} MiB offers_sent={} reader_reconnects={}",
            t0.elapsed().as_secs_f64(),
            rss.map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
            sent.load(Relaxed),
            reconnects.load(Relaxed)
        );
    }
    println!(
        "stalled: {} pairs, {} offers of {} bytes sent, peak RSS {:.1} MiB",
        a.count,
        sent.load(Relaxed),
        a.sdp_bytes,
        peak as f64 / 1024.0
    );
}

#[tokio::main]
async fn main() {
    let a = Args::parse();
    match a.mode.as_str() {
        "slowloris" => slowloris(a).await,
        "stalled" => stalled(a).await,
        m => eprintln!("unknown mode {m:?}: slowloris or stalled"),
    }
}
