//! The server's own WebSocket layer against a raw TCP client that writes frames byte by byte:
//! the handshake (and its refusals), masking, fragmentation, control frames, and the close
//! codes RFC 6455 asks for on bad input.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{config, id, start};
use serde_json::{json, Value};
use swarmcast_signaling::ws;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw client: the HTTP upgrade by hand, then frames as bytes.
struct Raw {
    tcp: TcpStream,
    buf: Vec<u8>,
}

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

async fn handshake(addr: SocketAddr, extra: &str) -> (TcpStream, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /announce HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{extra}\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut b))
            .await
            .expect("response in time")
            .expect("response");
        head.push(b[0]);
    }
    (tcp, String::from_utf8(head).unwrap())
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        let (tcp, head) = handshake(
            addr,
            &format!("Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n"),
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        // RFC 6455's own example key and accept value.
        assert!(
            head.to_ascii_lowercase()
                .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{head}"
        );
        Raw {
            tcp,
            buf: Vec::new(),
        }
    }

    /// Writes one client frame, masked unless `masked` is false, a byte at a time.
    async fn frame(&mut self, fin: bool, op: u8, payload: &[u8], masked: bool) {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut f = vec![(if fin { 0x80 } else { 0 }) | op];
        let bit = if masked { 0x80 } else { 0 };
        let n = payload.len();
        if n < 126 {
            f.push(bit | n as u8);
        } else {
            f.push(bit | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        let mut p = payload.to_vec();
        if masked {
            f.extend_from_slice(&mask);
            ws::unmask(&mut p, mask);
        }
        f.extend_from_slice(&p);
        for b in f {
            self.tcp.write_all(&[b]).await.unwrap();
        }
    }

    /// The next server frame: (opcode, payload); `None` at EOF.
    async fn next(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if let Some(r) = ws::payload_range(&self.buf) {
                assert_eq!(self.buf[1] & 0x80, 0, "server frames are not masked");
                let op = self.buf[0] & 0x0f;
                let p = self.buf[r.clone()].to_vec();
                self.buf.drain(..r.end);
                return Some((op, p));
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), self.tcp.read(&mut chunk))
                .await
                .expect("server frame in time")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn json(&mut self) -> Value {
        let (op, p) = self.next().await.expect("a frame");
        assert_eq!(op, 1, "text frame");
        serde_json::from_slice(&p).unwrap()
    }

    /// Expects a close frame with `code`, then EOF.
    async fn expect_close(&mut self, code: u16) {
        let (op, p) = self.next().await.expect("close frame");
        assert_eq!(op, 8);
        assert_eq!(
            u16::from_be_bytes([p[0], p[1]]),
            code,
            "{:?}",
            String::from_utf8_lossy(&p[2..])
        );
        assert!(
            self.next().await.is_none(),
            "socket closed after the close frame"
        );
    }
}

#[tokio::test]
async fn fragmented_announce_with_a_ping_between_is_answered() {
    let server = start(config()).await;
    let mut c = Raw::connect(server.addr).await;
    let msg = json!({"action": "announce", "info_hash": id(1), "peer_id": id(2), "numwant": 0})
        .to_string();
    let (a, b) = msg.as_bytes().split_at(msg.len() / 2);
    c.frame(false, 1, a, true).await;
    c.frame(true, 9, b"hi", true).await;
    c.frame(true, 0, b, true).await;
    let (op, p) = c.next().await.unwrap();
    assert_eq!(
        (op, p.as_slice()),
        (0xA, &b"hi"[..]),
        "pong echoes the ping"
    );
    let r = c.json().await;
    assert_eq!(r["action"], "announce");
    assert_eq!(r["incomplete"], 1);
    // The client closes: the server answers with a close frame and hangs up.
    c.frame(true, 8, &1000u16.to_be_bytes(), true).await;
    c.expect_close(1000).await;
    common::eventually(|| server.state.sizes() == (0, 0)).await;
    server.shutdown().await;
}

#[tokio::test]
async fn protocol_violations_close_with_the_rfc_codes() {
    let server = start(config()).await;
    let cases: [(&str, bool, u8, Vec<u8>, u16); 4] = [
        ("unmasked", false, 1, b"{}".to_vec(), ws::close::PROTOCOL),
        (
            "reserved opcode",
            true,
            3,
            b"x".to_vec(),
            ws::close::PROTOCOL,
        ),
        (
            "text not UTF-8",
            true,
            1,
            vec![0xc3, 0x28],
            ws::close::INVALID_DATA,
        ),
        (
            "stray continuation",
            true,
            0,
            b"x".to_vec(),
            ws::close::PROTOCOL,
        ),
    ];
    for (what, masked, op, payload, code) in cases {
        let mut c = Raw::connect(server.addr).await;
        c.frame(true, op, &payload, masked).await;
        c.expect_close(code).await;
        eprintln!("{what}: closed with {code}");
    }
    assert!(server.state.metrics.rejected("bad_frame") >= 4);
    server.shutdown().await;
}

#[tokio::test]
async fn handshake_refusals() {
    let server = start(config()).await;
    let (_t, head) = handshake(
        server.addr,
        &format!("Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: {KEY}\r\n"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-version: 13"),
        "{head}"
    );
    let (_t, head) = handshake(server.addr, "Sec-WebSocket-Version: 13\r\n").await;
    assert!(head.starts_with("HTTP/1.1 400"), "no key: {head}");
    // Issue 24: an empty key, and keys that are not the base64 of 16 bytes.
    for key in [
        "",
        "abc",
        "dGhlIHNhbXBsZSBub25jZQ",
        "dGhlIHNhbXBsZSBub25j*Q==",
    ] {
        let (_t, head) = handshake(
            server.addr,
            &format!("Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"),
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 400"), "key {key:?}: {head}");
    }
    assert_eq!(server.state.metrics.rejected("bad_handshake"), 6);
    server.shutdown().await;
}

/// Issue 24: the opening handshake is HTTP/1.1 (RFC 6455 section 4.1); an HTTP/1.0 upgrade is
/// refused.
#[tokio::test]
async fn http10_upgrade_is_refused() {
    let server = start(config()).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let req = format!(
        "GET /announce HTTP/1.0\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n",
        server.addr
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out))
        .await
        .expect("answered and closed")
        .unwrap();
    let head = String::from_utf8_lossy(&out);
    assert!(head.contains(" 400 "), "{head}");
    assert!(!head.contains(" 101 "), "{head}");
    assert_eq!(server.state.metrics.rejected("bad_handshake"), 1);
    server.shutdown().await;
}

/// Issue 24: close codes a peer may not send (RFC 6455 section 7.4) are a protocol error;
/// allowed ones are echoed.
#[tokio::test]
async fn invalid_close_codes_are_protocol_errors() {
    let server = start(config()).await;
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 2999, 5000, 65535] {
        let mut c = Raw::connect(server.addr).await;
        c.frame(true, 8, &code.to_be_bytes(), true).await;
        c.expect_close(ws::close::PROTOCOL).await;
    }
    for code in [1000u16, 1001, 1003, 1011, 3000, 4999] {
        let mut c = Raw::connect(server.addr).await;
        c.frame(true, 8, &code.to_be_bytes(), true).await;
        c.expect_close(ws::close::NORMAL).await;
    }
    server.shutdown().await;
}
