//! Bounded loopback load generator for WebTorrent trackers: swarmcast-signaling and, as the
//! baseline in the same run, the npm `bittorrent-tracker` server.
//!
//! For each target it starts the server, opens `--connections` WebSockets (each announces once
//! into one swarm, as viewers of one live stream do) and measures:
//! 1. server memory per connection (RSS delta / connections, read from /proc);
//! 2. announces/s: `--active` connections announce without offers, closed loop;
//! 3. relay latency p50/p99 at a fixed offered load (`--rate` offers/s, open loop): time from
//!    sending an announce with one offer to the forwarded offer arriving at another client;
//! 4. relay throughput: `--active` connections announce with one offer each, closed loop;
//!    offers delivered per second.
//!
//! Each phase lasts `--secs` seconds. Example (see BENCHMARKS.md):
//! ```sh
//! ulimit -n 65536
//! cargo build --release -p swarmcast-signaling --example loadgen
//! target/release/examples/loadgen --connections 10000
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug, Clone)]
struct Args {
    /// WebSocket connections held open (each announces once).
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Connections that send in the closed-loop phases.
    #[arg(long, default_value_t = 200)]
    active: usize,
    /// Offered load for the latency phase, offers per second.
    #[arg(long, default_value_t = 2_000.0)]
    rate: f64,
    /// Seconds per phase.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Targets to run, in order: `ours`, `npm`.
    #[arg(long, value_delimiter = ',', default_value = "ours,npm")]
    targets: Vec<String>,
    /// The swarmcast-signaling binary.
    #[arg(long, default_value = "target/release/swarmcast-signaling")]
    server_bin: PathBuf,
    /// Folder with the npm reference server script (`server.mjs`, node_modules installed).
    #[arg(long, default_value = "signaling/tests/interop")]
    npm_dir: PathBuf,
}

struct Target {
    name: String,
    child: Child,
    addr: SocketAddr,
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_target(name: &str, args: &Args) -> Target {
    let mut cmd = match name {
        "ours" => {
            let mut c = Command::new(&args.server_bin);
            // Benchmark settings: no per-connection rate limit (the closed loops exceed 20/s per
            // connection by design), room for all connections.
            c.args([
                "--listen",
                "127.0.0.1:0",
                "--rate",
                "0",
                "--max-connections",
                "200000",
            ]);
            c.env("RUST_LOG", "warn");
            c
        }
        "npm" => {
            let mut c = Command::new("node");
            c.arg("server.mjs").current_dir(&args.npm_dir);
            c
        }
        other => panic!("unknown target {other}"),
    };
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start server");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("{name} said {line:?}"))
        .parse()
        .unwrap();
    Target {
        name: name.into(),
        child,
        addr,
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU seconds (user + system) the process has used so far, from /proc/<pid>/stat. Under a
/// loaded machine wall-clock rates drift with the neighbours; work per CPU-second does not.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the `(comm)`: state is field 3; utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn id(n: u64, tag: u8) -> String {
    let mut b = [tag; 20];
    b[..8].copy_from_slice(&n.to_be_bytes());
    b.iter().map(|&x| char::from(x)).collect()
}

/// Shared counters the reader tasks update.
#[derive(Default)]
struct Stats {
    replies: AtomicU64,
    offers: AtomicU64,
    failures: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
    record: std::sync::atomic::AtomicBool,
}

type Sink = futures_util::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    Message,
>;

struct Conn {
    sink: Sink,
    replied: Arc<Notify>,
    peer: String,
}

async fn open(
    addr: SocketAddr,
    i: usize,
    ih: &str,
    t0: Instant,
    stats: Arc<Stats>,
) -> Result<Conn, String> {
    // Spread source addresses over 127.0.0.0/8 so 2 x 10,000 connections never run out of
    // ephemeral ports.
    let src = IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        1 + (i / 20_000) as u8,
        1 + (i % 250) as u8,
    ));
    let ts = Instant::now();
    let sock = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    sock.bind(SocketAddr::new(src, 0))
        .map_err(|e| e.to_string())?;
    let tcp = sock.connect(addr).await.map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let cfg = WebSocketConfig::default().read_buffer_size(4096);
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        format!("ws://{addr}/announce"),
        tcp,
        Some(cfg),
    )
    .await
    .map_err(|e| e.to_string())?;
    let t_hs = ts.elapsed();
    let (mut sink, mut stream) = ws.split();
    let peer = serde_json::to_string(&id(i as u64, 0xab)).unwrap();
    let hello = format!(
        r#"{{"action":"announce","info_hash":{ih},"peer_id":{peer},"event":"started","numwant":0,"uploaded":0,"downloaded":0,"left":1}}"#
    );
    sink.send(Message::Text(hello.into()))
        .await
        .map_err(|e| e.to_string())?;
    let replied = Arc::new(Notify::new());
    let first = Arc::new(Notify::new());
    let (r, f) = (replied.clone(), first.clone());
    tokio::spawn(async move {
        let mut seen_first = false;
        while let Some(Ok(m)) = stream.next().await {
            let Message::Text(t) = m else { continue };
            if let Some(pos) = t.find("lg-t=") {
                let rest = &t[pos + 5..];
                let end = rest
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(rest.len());
                if let Ok(sent) = rest[..end].parse::<u64>() {
                    let now = t0.elapsed().as_micros() as u64;
                    stats.offers.fetch_add(1, Relaxed);
                    if stats.record.load(Relaxed) {
                        let us = now.saturating_sub(sent).min(u64::from(u32::MAX)) as u32;
                        stats.latencies_us.lock().unwrap().push(us);
                    }
                }
            } else if t.contains("\"interval\"") {
                stats.replies.fetch_add(1, Relaxed);
                if seen_first {
                    r.notify_one();
                } else {
                    seen_first = true;
                    f.notify_one();
                }
            } else if t.contains("failure reason") {
                stats.failures.fetch_add(1, Relaxed);
                r.notify_one();
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(30), first.notified())
        .await
        .map_err(|_| "no announce reply".to_string())?;
    if std::env::var_os("LOADGEN_DEBUG").is_some() && i.is_multiple_of(500) {
        eprintln!(
            "conn {i}: handshake {t_hs:?}, first reply {:?}",
            ts.elapsed()
        );
    }
    Ok(Conn {
        sink,
        replied,
        peer,
    })
}

/// Builds an announce by hand (no JSON tree per message: the generator shares the two cores
/// with the server under test and must stay cheap). `ih` and `peer` are JSON string literals.
fn announce_msg(ih: &str, peer: &str, offer_at_us: Option<u64>) -> Message {
    let offers = match offer_at_us {
        Some(t) => format!(
            r#","offers":[{{"offer":{{"type":"offer","sdp":"v=0 lg-t={t} {SDP}"}},"offer_id":"{t:020}"}}]"#
        ),
        None => String::new(),
    };
    Message::Text(
        format!(
            r#"{{"action":"announce","info_hash":{ih},"peer_id":{peer},"numwant":1,"uploaded":0,"downloaded":0,"left":1{offers}}}"#
        )
        .into(),
    )
}

/// A plausible data-channel-only SDP body (about 400 bytes, like a real offer without
/// candidates).
const SDP: &str = "o=- 4611731400430051336 2 IN IP4 127.0.0.1\\r\\ns=-\\r\\nt=0 0\\r\\na=group:BUNDLE 0\\r\\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\\r\\nc=IN IP4 0.0.0.0\\r\\na=ice-ufrag:abcd\\r\\na=ice-pwd:abcdefghijklmnopqrstuvwx\\r\\na=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\\r\\na=setup:actpass\\r\\na=mid:0\\r\\na=sctp-port:5000\\r\\n";

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

/// Closed loop: each of `conns` sends, waits for its reply, repeats until `until`.
async fn closed_loop(
    conns: Vec<Conn>,
    ih: Arc<String>,
    with_offer: bool,
    t0: Instant,
    until: Instant,
) -> Vec<Conn> {
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            let ih = ih.clone();
            tokio::spawn(async move {
                while Instant::now() < until {
                    let t = with_offer.then(|| t0.elapsed().as_micros() as u64);
                    if c.sink.send(announce_msg(&ih, &c.peer, t)).await.is_err() {
                        break;
                    }
                    if tokio::time::timeout(Duration::from_secs(5), c.replied.notified())
                        .await
                        .is_err()
                    {
                        eprintln!("closed loop: no reply within 5 s; this connection stops");
                        break;
                    }
                }
                c
            })
        })
        .collect();
    let mut back = Vec::new();
    for t in tasks {
        if let Ok(c) = t.await {
            back.push(c);
        }
    }
    back
}

async fn run_target(args: &Args, name: &str) {
    let target = start_target(name, args);
    let pid = target.child.id();
    let t0 = Instant::now();
    let stats = Arc::new(Stats::default());
    let ih = Arc::new(serde_json::to_string(&id(0xfeed, 0x11)).unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss0 = rss_kib(pid);

    // Connect in bounded parallel batches.
    let started = Instant::now();
    let mut conns: Vec<Conn> = Vec::with_capacity(args.connections);
    let mut errors = 0usize;
    let batch = 250;
    let mut i = 0;
    while i < args.connections {
        let n = batch.min(args.connections - i);
        let futs: Vec<_> = (i..i + n)
            .map(|k| {
                let (ih, st) = (ih.clone(), stats.clone());
                let addr = target.addr;
                tokio::spawn(async move { open(addr, k, &ih, t0, st).await })
            })
            .collect();
        for f in futs {
            match f.await {
                Ok(Ok(c)) => conns.push(c),
                Ok(Err(e)) => {
                    errors += 1;
                    if errors <= 3 {
                        eprintln!("{name}: connect error: {e}");
                    }
                }
                Err(_) => errors += 1,
            }
        }
        i += n;
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss1 = rss_kib(pid);
    let per_conn = (rss1.saturating_sub(rss0)) as f64 * 1024.0 / conns.len().max(1) as f64;
    println!(
        "[{name}] {} connections open and announced in {connect_secs:.1} s ({errors} errors); server RSS {rss0} KiB -> {rss1} KiB = {:.0} bytes/connection",
        conns.len(),
        per_conn
    );

    let secs = Duration::from_secs_f64(args.secs);
    let active = args.active.min(conns.len());
    let rest = conns.split_off(active);

    // Phase: announces/s.
    let r0 = stats.replies.load(Relaxed);
    let c0 = cpu_secs(pid);
    let s = Instant::now();
    let conns_active = closed_loop(conns, ih.clone(), false, t0, s + secs).await;
    let n = stats.replies.load(Relaxed) - r0;
    let ann = n as f64 / s.elapsed().as_secs_f64();
    let cpu = cpu_secs(pid) - c0;
    println!(
        "[{name}] announces/s (closed loop, {active} active): {ann:.0}; server CPU {cpu:.2} s = {:.0} announces per server CPU-second",
        n as f64 / cpu.max(0.01)
    );

    // Phase: latency at fixed offered load (open loop, round robin over active connections).
    let mut conns_active = conns_active;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stats.latencies_us.lock().unwrap().clear();
    stats.record.store(true, Relaxed);
    let o0 = stats.offers.load(Relaxed);
    let s = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1.0));
    let mut next = tokio::time::Instant::now();
    let mut k = 0usize;
    let mut sent = 0u64;
    while s.elapsed() < secs && !conns_active.is_empty() {
        next += interval;
        tokio::time::sleep_until(next).await;
        let idx = k % conns_active.len();
        k += 1;
        let c = &mut conns_active[idx];
        let t = t0.elapsed().as_micros() as u64;
        if c.sink
            .send(announce_msg(&ih, &c.peer, Some(t)))
            .await
            .is_ok()
        {
            sent += 1;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stats.record.store(false, Relaxed);
    let got = stats.offers.load(Relaxed) - o0;
    let mut lat = std::mem::take(&mut *stats.latencies_us.lock().unwrap());
    lat.sort_unstable();
    println!(
        "[{name}] relay latency at {:.0} offers/s offered ({sent} sent, {got} delivered): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        sent as f64 / secs.as_secs_f64(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.last().map_or(f64::NAN, |&m| f64::from(m) / 1000.0)
    );
    // Drain replies of the open loop before the next closed loop.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Phase: relay throughput (closed loop with one offer per announce).
    stats.latencies_us.lock().unwrap().clear();
    stats.record.store(true, Relaxed);
    let o0 = stats.offers.load(Relaxed);
    let c0 = cpu_secs(pid);
    let s = Instant::now();
    let conns_active = closed_loop(conns_active, ih.clone(), true, t0, s + secs).await;
    let el = s.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stats.record.store(false, Relaxed);
    let cpu = cpu_secs(pid) - c0;
    let delivered = stats.offers.load(Relaxed) - o0;
    let relayed = delivered as f64 / el;
    let mut lat = std::mem::take(&mut *stats.latencies_us.lock().unwrap());
    lat.sort_unstable();
    let rss2 = rss_kib(pid);
    println!(
        "[{name}] relay throughput (closed loop, {active} active): {relayed:.0} offers/s delivered; server CPU {cpu:.2} s = {:.0} offers relayed per server CPU-second; latency under saturation p50 {:.2} ms, p99 {:.2} ms; server RSS now {rss2} KiB; failures {}",
        delivered as f64 / cpu.max(0.01),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        stats.failures.load(Relaxed)
    );
    drop(conns_active);
    drop(rest);
    println!("[{}] done", target.name);
    drop(target);
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    println!(
        "loadgen: {} connections, {} active, {:.0} offers/s latency load, {} s phases, targets {:?}",
        args.connections, args.active, args.rate, args.secs, args.targets
    );
    for t in args.targets.clone() {
        run_target(&args, &t).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
