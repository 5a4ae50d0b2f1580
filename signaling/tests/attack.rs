//! Issue 24, "Signaling under attack": deadlines for connections that send nothing, surviving
//! descriptor exhaustion, per-address budgets, safe takeover, a bound on queued bytes, and a
//! many-torrent WebTorrent client served in full with the defaults. Small configured limits and
//! bounded counts keep each test to seconds.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Reads until EOF or error; the time it took, or `None` if the socket stayed open `within`.
async fn closed_within(
    s: &mut (impl tokio::io::AsyncRead + Unpin),
    within: Duration,
) -> Option<Duration> {
    let t0 = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((t0 + within).into(), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(t0.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn connections_that_send_nothing_are_closed() {
    let mut cfg = config();
    cfg.request_timeout = 0.5;
    let server = start(cfg).await;
    let a = server.addr;
    let bound = Duration::from_secs(4);

    // Connects and sends nothing.
    let mut silent = TcpStream::connect(a).await.unwrap();
    // Slowloris: a request head one byte at a time, never finished.
    let (mut slow, mut w) = TcpStream::connect(a).await.unwrap().into_split();
    let slow_writer = tokio::spawn(async move {
        for b in b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if w.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    // Keep-alive: one request answered, then idle.
    let mut keep = TcpStream::connect(a).await.unwrap();
    keep.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = [0u8; 256];
    let n = keep.read(&mut got).await.unwrap();
    assert!(got[..n].starts_with(b"HTTP/1.1 200"));
    // A WebSocket that never sends a message.
    let mut ws = Client::connect(a).await;

    let t = closed_within(&mut silent, bound)
        .await
        .expect("silent closed");
    eprintln!("silent socket closed after {t:?}");
    let t = closed_within(&mut slow, bound)
        .await
        .expect("slowloris closed");
    eprintln!("slowloris socket closed after {t:?}");
    let t = closed_within(&mut keep, bound)
        .await
        .expect("idle keep-alive closed");
    eprintln!("idle keep-alive closed after {t:?}");
    let f = ws.closed(bound).await.expect("close frame");
    assert_eq!(u16::from(f.code), 1008);
    slow_writer.abort();
    assert!(server.state.metrics.rejected("request_timeout") >= 4);
    // A client that talks is served as before.
    let mut c = Client::connect(a).await;
    assert_eq!(
        c.announce(&id(1), &id(2), json!([])).await["action"],
        "announce"
    );
    server.shutdown().await;
}

/// With the process at a 128-descriptor limit, 300 sockets that send nothing (under a
/// 60 s request deadline) cannot lock `/healthz` out: the oldest are evicted to make room.
#[test]
fn running_out_of_descriptors_is_survived() {
    use std::io::BufRead;
    let mut child = std::process::Command::new("prlimit")
        .args(["--nofile=128:128", "--"])
        .arg(env!("CARGO_BIN_EXE_swarmcast-signaling"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--request-timeout",
            "60",
            "--static-dir",
        ])
        .arg(std::env::temp_dir().join("swarmcast-signaling-no-static"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prlimit (util-linux) runs the server");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("{line:?}"))
        .parse()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (status, metrics) = rt.block_on(async {
        let mut idle = Vec::new();
        for _ in 0..300 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let healthz = tokio::time::timeout(Duration::from_secs(10), http_get(addr, "/healthz", ""))
            .await
            .expect("/healthz answered while flooded");
        let metrics = tokio::time::timeout(Duration::from_secs(10), http_get(addr, "/metrics", ""))
            .await
            .expect("/metrics answered while flooded");
        drop(idle);
        (healthz.0, String::from_utf8_lossy(&metrics.2).to_string())
    });
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    assert_eq!(status, 200);
    let evicted: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("swarmcast_signaling_rejected_total{reason=\"evicted\"} "))
        .and_then(|v| v.parse().ok())
        .expect("evicted counter");
    assert!(evicted > 0, "{metrics}");
    assert!(metrics.contains("swarmcast_signaling_accept_errors_total "));
}

/// A WebTorrent client shares one socket among all its torrents and announces them at once:
/// with the defaults, 100 torrents on one connection are all answered, none refused.
#[tokio::test]
async fn a_hundred_torrents_on_one_socket_are_served_with_the_defaults() {
    let server = start(config()).await;
    let mut c = Client::connect(server.addr).await;
    let t0 = Instant::now();
    for i in 0..100u32 {
        c.send(json!({
            "action": "announce", "info_hash": id(10_000 + i), "peer_id": id(1),
            "event": "started", "numwant": 5, "uploaded": 0, "downloaded": 0, "left": 100,
            "offers": offers(&format!("t{i}"), 5),
        }))
        .await;
    }
    for _ in 0..100 {
        let r = c.try_recv(Duration::from_secs(10)).await.expect("a reply");
        assert_eq!(r["action"], "announce", "{r}");
        assert!(r["failure reason"].is_null(), "{r}");
    }
    eprintln!("100 torrents answered in {:?}", t0.elapsed());
    assert_eq!(server.state.sizes(), (100, 100));
    server.shutdown().await;
}

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().unwrap()
}

/// Item 5: a peer id learned from a relayed offer cannot be taken over from another address;
/// the same address may (the reconnect path), within the taker's own per-connection limit.
#[tokio::test]
async fn takeover_only_from_the_same_address_and_within_the_cap() {
    let mut cfg = config();
    cfg.max_swarms_per_connection = 2;
    let server = start(cfg).await;
    let a = server.addr;
    let mut victim = Client::connect_from(a, ip("127.0.0.1"), &[]).await;
    for ih in [1, 2, 3] {
        let r = victim.announce(&id(ih), &id(100 + ih), json!([])).await;
        assert!(r["failure reason"].is_null(), "{r}");
        if ih == 2 {
            break;
        }
    }
    let mut thief = Client::connect_from(a, ip("127.0.0.2"), &[]).await;
    let r = thief.announce(&id(1), &id(101), json!([])).await;
    assert_eq!(
        r["failure reason"],
        "peer_id is in use by another connection"
    );
    assert_eq!(r["action"], "announce");
    assert_eq!(r["info_hash"], id(1));
    // The victim still gets the offers meant for its peer.
    let mut other = Client::connect(a).await;
    other.announce(&id(1), &id(200), offers("o", 1)).await;
    let got = victim.recv().await;
    assert_eq!(
        (got["offer_id"].as_str(), got["peer_id"].as_str()),
        (Some("o-0"), Some(&*id(200)))
    );
    assert!(thief.try_recv(Duration::from_millis(300)).await.is_none());
    // The same address reconnecting takes its peers over, up to its own cap of 2.
    let mut again = Client::connect_from(a, ip("127.0.0.1"), &[]).await;
    again.announce(&id(9), &id(109), json!([])).await;
    let r = again.announce(&id(1), &id(101), json!([])).await;
    assert!(r["failure reason"].is_null(), "{r}");
    let r = again.announce(&id(2), &id(102), json!([])).await;
    assert_eq!(r["failure reason"], "too many swarms on this connection");
    assert_eq!(server.state.metrics.rejected("peer_id_in_use"), 1);
    server.shutdown().await;
}

/// Item 2: one address, however many connections it opens, holds at most its budget of
/// memberships: it cannot fill the server's swarm table nor a stream's swarm, and what it
/// held is given back when it goes. Behind a trusted proxy, X-Forwarded-For names the client.
#[tokio::test]
async fn one_address_cannot_fill_the_swarm_table_or_a_swarm() {
    let mut cfg = config();
    cfg.max_peers_per_address = 6;
    cfg.max_swarms = 8;
    cfg.max_peers_per_swarm = 8;
    cfg.trusted_proxies = vec![ip("127.0.0.3")];
    let server = start(cfg).await;
    let a = server.addr;
    let mut abuser = Vec::new();
    let mut refused = 0;
    for c in 0..4u32 {
        let mut conn = Client::connect_from(a, ip("127.0.0.2"), &[]).await;
        for i in 0..4u32 {
            // Half new swarms, half the stream a viewer will want.
            let ih = if i % 2 == 0 {
                id(500 + c * 10 + i)
            } else {
                id(1)
            };
            let r = conn.announce(&ih, &id(1000 + c * 10 + i), json!([])).await;
            if !r["failure reason"].is_null() {
                assert_eq!(r["failure reason"], "too many peers from this address");
                assert_eq!(r["action"], "announce");
                assert_eq!(r["info_hash"], ih);
                refused += 1;
            }
        }
        abuser.push(conn);
    }
    assert_eq!(refused, 16 - 6);
    assert_eq!(server.state.held_by(ip("127.0.0.2")), 6);
    // A new stream still gets a swarm, and a viewer still gets into the stream.
    let mut viewer = Client::connect_from(a, ip("127.0.0.1"), &[]).await;
    let r = viewer.announce(&id(777), &id(1), json!([])).await;
    assert!(r["failure reason"].is_null(), "{r}");
    let r = viewer.announce(&id(1), &id(2), json!([])).await;
    assert!(r["failure reason"].is_null(), "{r}");
    // Behind a trusted proxy the forwarded client is charged, not the proxy.
    let mut proxied =
        Client::connect_from(a, ip("127.0.0.3"), &[("x-forwarded-for", "203.0.113.7")]).await;
    proxied.announce(&id(1), &id(3), json!([])).await;
    assert_eq!(server.state.held_by(ip("203.0.113.7")), 1);
    assert_eq!(server.state.held_by(ip("127.0.0.3")), 0);
    // From an untrusted peer the header is ignored.
    let mut forged =
        Client::connect_from(a, ip("127.0.0.4"), &[("x-forwarded-for", "203.0.113.8")]).await;
    forged.announce(&id(1), &id(4), json!([])).await;
    assert_eq!(server.state.held_by(ip("127.0.0.4")), 1);
    assert_eq!(server.state.held_by(ip("203.0.113.8")), 0);
    drop(abuser);
    eventually(|| server.state.held_by(ip("127.0.0.2")) == 0).await;
    server.shutdown().await;
}

/// A client whose socket receive buffer is small, so that a stall shows at the server soon.
async fn small_window_client(addr: SocketAddr) -> Client {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let tcp = sock.connect(addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(
        format!("ws://{addr}/announce"),
        tokio_tungstenite::MaybeTlsStream::Plain(tcp),
    )
    .await
    .unwrap();
    Client { ws }
}

/// Item 3: stalled readers each paired with an offer flooder. The bytes queued over all
/// connections stay within `--max-queued-bytes` (plus at most one message per connection
/// that was keeping up until then); the readers that are behind are shed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_queued_over_all_connections_are_bounded() {
    const PAIRS: u32 = 4;
    const BUDGET: usize = 1024 * 1024;
    const MSG: usize = 60_000;
    let mut cfg = config();
    cfg.rate = 0.0;
    cfg.max_message_bytes = 256 * 1024;
    // Only the server-wide budget binds here.
    cfg.send_queue = 1_000_000;
    cfg.send_queue_bytes = 1 << 30;
    cfg.max_queued_bytes = BUDGET;
    cfg.send_timeout = 60.0;
    let server = start(cfg).await;
    let st = server.state.clone();
    let big = "s".repeat(MSG);
    let mut stalled = Vec::new();
    let mut flooders = Vec::new();
    for p in 0..PAIRS {
        let ih = id(p);
        let mut s = small_window_client(server.addr).await;
        s.announce(&ih, &id(100 + p), json!([])).await;
        stalled.push(s);
        let mut f = Client::connect(server.addr).await;
        f.announce(&ih, &id(200 + p), json!([])).await;
        let m = json!({"action": "announce", "info_hash": ih, "peer_id": id(200 + p),
            "offers": [{"offer": {"type": "offer", "sdp": big}, "offer_id": "o"}]})
        .to_string();
        flooders.push((f, m));
    }
    let mut peak = 0;
    let mut after_first = 0;
    for _ in 0..3000 {
        for (f, m) in flooders.iter_mut() {
            let _ = futures_util::SinkExt::send(&mut f.ws, Message::Text(m.clone().into())).await;
            while f.try_recv(Duration::from_millis(0)).await.is_some() {}
        }
        peak = peak.max(st.queued_bytes());
        // Some more rounds once the first is shed: the bound must hold on.
        if st.metrics.rejected("slow_reader") >= 1 {
            after_first += 1;
            if after_first == 40 {
                break;
            }
        }
    }
    let slack = 2 * PAIRS as usize * (MSG + 1024);
    eprintln!(
        "peak queued {peak} bytes (budget {BUDGET}); {} slow readers shed",
        st.metrics.rejected("slow_reader")
    );
    assert!(peak <= BUDGET + slack, "peak {peak}");
    assert!(peak > 0);
    assert!(st.metrics.rejected("slow_reader") >= 1);
    drop(stalled);
    server.shutdown().await;
}
