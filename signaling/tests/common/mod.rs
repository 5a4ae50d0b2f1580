//! Helpers shared by the integration tests: an in-process server on a free port and a small
//! WebSocket client speaking the tracker protocol over real loopback sockets.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use swarmcast_signaling::config::Config;
use swarmcast_signaling::server::{self, Running};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Default test config: port 0, no rate limit surprises unless a test sets them.
pub fn config() -> Config {
    let mut c = Config::with_listen("127.0.0.1:0".parse().unwrap());
    c.static_dir = Some(std::env::temp_dir().join("swarmcast-signaling-no-static"));
    c
}

pub async fn start(c: Config) -> Running {
    server::start(c).await.expect("server starts")
}

/// A 20-byte id as the binary string clients send.
pub fn bin(bytes: [u8; 20]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// Id with a recognisable pattern, including bytes above 0x7f and control chars.
pub fn id(n: u32) -> String {
    let mut b = [0u8; 20];
    b[..4].copy_from_slice(&n.to_be_bytes());
    b[4] = 0xff;
    b[5] = 0x01;
    b[6] = b'"';
    bin(b)
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        Self::connect_path(addr, "/announce").await
    }

    pub async fn connect_path(addr: SocketAddr, path: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}{path}"))
            .await
            .expect("ws connect");
        Client { ws }
    }

    /// Connects from local address `from` (e.g. 127.0.0.2: another client address on
    /// loopback) with extra request headers.
    pub async fn connect_from(
        addr: SocketAddr,
        from: std::net::IpAddr,
        headers: &[(&'static str, &str)],
    ) -> Client {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(from, 0)).unwrap();
        let tcp = sock.connect(addr).await.expect("tcp connect");
        let mut req = format!("ws://{addr}/announce")
            .into_client_request()
            .unwrap();
        for (k, v) in headers {
            req.headers_mut()
                .insert(*k, v.parse().expect("header value"));
        }
        let (ws, _) = tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(tcp))
            .await
            .expect("ws connect");
        Client { ws }
    }

    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("send");
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.expect("send");
    }

    /// Next JSON text message (skipping pings), within 5 s.
    pub async fn recv(&mut self) -> Value {
        self.try_recv(Duration::from_secs(5))
            .await
            .expect("a message within 5 s")
    }

    pub async fn try_recv(&mut self, within: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match m {
                Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).expect("JSON")),
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                Ok(other) => panic!("unexpected frame {other:?}"),
                Err(e) => panic!("ws error {e}"),
            }
        }
    }

    /// Waits for the server to close; returns the close frame.
    pub async fn closed(&mut self, within: Duration) -> Option<CloseFrame> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("not closed within {within:?}"),
                Ok(None) => return None,
                Ok(Some(Ok(Message::Close(f)))) => return f,
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_))) => return None,
            }
        }
    }

    pub async fn announce(&mut self, info_hash: &str, peer_id: &str, offers: Value) -> Value {
        self.send(json!({
            "action": "announce", "info_hash": info_hash, "peer_id": peer_id,
            "event": "started", "numwant": offers.as_array().map_or(0, |a| a.len()),
            "uploaded": 0, "downloaded": 0, "left": 100, "offers": offers,
        }))
        .await;
        self.recv().await
    }
}

/// `n` offers with recognisable SDP and ids.
pub fn offers(tag: &str, n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| {
                json!({
                    "offer": {"type": "offer", "sdp": format!("v=0 {tag} {i}")},
                    "offer_id": format!("{tag}-{i}"),
                })
            })
            .collect(),
    )
}

/// A minimal HTTP/1.1 GET; returns (status, lowercase headers, body bytes).
pub async fn http_get(
    addr: SocketAddr,
    path: &str,
    extra: &str,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = buf[split + 4..].to_vec();
    // De-chunk if needed (enough for our small responses).
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let nl = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let n = usize::from_str_radix(std::str::from_utf8(&rest[..nl]).unwrap().trim(), 16)
                .unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&rest[nl + 2..nl + 2 + n]);
            rest = &rest[nl + 2 + n + 2..];
        }
        body = out;
    }
    (status, headers, body)
}

pub fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Polls `f` until true (up to 5 s).
pub async fn eventually(mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not met within 5 s");
}
