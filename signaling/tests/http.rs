//! Static files, health, metrics, and the binary's start/stop contract.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;

fn static_dir(with_index: bool) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "swarmcast-signaling-static-{}-{with_index}",
        std::process::id()
    ));
    std::fs::create_dir_all(d.join("pkg")).unwrap();
    if with_index {
        std::fs::write(d.join("index.html"), "<!doctype html><p>INDEX</p>").unwrap();
    }
    std::fs::write(d.join("pkg/app.wasm"), b"\0asm\x01\0\0\0").unwrap();
    std::fs::write(d.join("embed.mjs"), "export const x = 1;\n").unwrap();
    std::fs::write(d.join("big.js"), "console.log('hello');\n".repeat(200)).unwrap();
    d
}

/// Issue 24: only regular files that resolve inside the static folder are served; no
/// symlinks out of it, no dotfiles, and an over-long segment is a 404 (it was a 500).
#[tokio::test]
async fn static_files_stay_inside_the_folder() {
    let d = static_dir(false).join("confined");
    let outside = d.with_file_name(format!("outside-{}", std::process::id()));
    std::fs::create_dir_all(d.join("sub")).unwrap();
    std::fs::create_dir_all(d.join(".git")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "SECRET").unwrap();
    std::fs::write(d.join("sub/ok.txt"), "OK").unwrap();
    std::fs::write(d.join("sub/index.html"), "SUBINDEX").unwrap();
    std::fs::write(d.join(".env"), "TOKEN=1").unwrap();
    std::fs::write(d.join(".git/config"), "[core]").unwrap();
    let link = |target: &std::path::Path, name: &str| {
        let _ = std::fs::remove_file(d.join(name));
        std::os::unix::fs::symlink(target, d.join(name)).unwrap();
    };
    link(std::path::Path::new("/"), "rootlink");
    link(&outside, "outlink");
    link(&outside.join("secret.txt"), "secret.txt");
    link(&d.join("sub/ok.txt"), "inside.txt");
    let mut cfg = config();
    cfg.static_dir = Some(d.clone());
    let server = start(cfg).await;
    let a = server.addr;
    for path in [
        "/rootlink/etc/passwd",
        "/rootlink/etc/hostname",
        "/outlink/secret.txt",
        "/secret.txt",
        "/.env",
        "/.git/config",
        "/sub/%2e%2e/.env",
        "/%2e%2e/outside/secret.txt",
        "/sub/.%2E/.env",
    ] {
        let (st, _, body) = http_get(a, path, "").await;
        assert_eq!(st, 404, "{path}: {}", String::from_utf8_lossy(&body));
        assert!(!body.starts_with(b"SECRET") && !body.starts_with(b"root:"));
    }
    let long = format!("/{}", "a".repeat(300));
    assert_eq!(http_get(a, &long, "").await.0, 404, "over-long segment");
    let (st, _, body) = http_get(a, "/sub/ok.txt", "").await;
    assert_eq!((st, &body[..]), (200, &b"OK"[..]));
    // A symlink whose target is inside the folder is fine.
    let (st, _, body) = http_get(a, "/inside.txt", "").await;
    assert_eq!((st, &body[..]), (200, &b"OK"[..]));
    let (st, _, body) = http_get(a, "/sub/", "").await;
    assert_eq!((st, &body[..]), (200, &b"SUBINDEX"[..]));
    let (st, h, _) = http_get(a, "/sub", "").await;
    assert_eq!((st, header(&h, "location")), (308, Some("/sub/")));
    server.shutdown().await;
}

#[tokio::test]
async fn static_files_health_and_metrics() {
    let mut cfg = config();
    cfg.static_dir = Some(static_dir(true));
    let server = start(cfg).await;
    let a = server.addr;

    let (st, h, body) = http_get(a, "/", "").await;
    assert_eq!(st, 200);
    assert_eq!(body, b"<!doctype html><p>INDEX</p>");
    assert_eq!(header(&h, "cache-control"), Some("no-cache"));

    let (st, h, body) = http_get(a, "/pkg/app.wasm", "").await;
    assert_eq!(st, 200);
    assert_eq!(header(&h, "content-type"), Some("application/wasm"));
    assert_eq!(body, b"\0asm\x01\0\0\0");
    // Other sites embed the player: the module and its wasm must be readable cross-origin.
    assert_eq!(header(&h, "access-control-allow-origin"), Some("*"));

    let (_, h, _) = http_get(a, "/embed.mjs", "").await;
    assert!(header(&h, "content-type")
        .unwrap()
        .starts_with("text/javascript"));

    let (st, h, body) = http_get(a, "/big.js", "Accept-Encoding: gzip\r\n").await;
    assert_eq!(st, 200);
    assert_eq!(header(&h, "content-encoding"), Some("gzip"));
    assert!(header(&h, "content-type")
        .unwrap()
        .starts_with("text/javascript"));
    assert!(body.len() < 200, "compressed to {} bytes", body.len());
    let (_, h, _) = http_get(a, "/big.js", "Accept-Encoding: br\r\n").await;
    assert_eq!(header(&h, "content-encoding"), Some("br"));

    let (st, _, _) = http_get(a, "/nope.html", "").await;
    assert_eq!(st, 404);
    let (st, _, _) = http_get(a, "/../../etc/passwd", "").await;
    assert_ne!(st, 200);

    let (st, _, body) = http_get(a, "/healthz", "").await;
    assert_eq!((st, &body[..]), (200, &b"ok\n"[..]));

    let (st, h, _) = http_get(a, "/announce", "").await;
    assert_eq!(st, 426);
    assert_eq!(header(&h, "upgrade"), Some("websocket"));

    let mut c = Client::connect(a).await;
    c.announce(&id(1), &id(2), json!([])).await;
    c.send(json!({"action": "bogus"})).await;
    c.recv().await;
    let (st, h, body) = http_get(a, "/metrics", "").await;
    assert_eq!(st, 200);
    assert!(header(&h, "content-type")
        .unwrap()
        .starts_with("text/plain"));
    let text = String::from_utf8(body).unwrap();
    for line in [
        "swarmcast_signaling_connections 1\n",
        "swarmcast_signaling_swarms 1\n",
        "swarmcast_signaling_peers 1\n",
        "swarmcast_signaling_messages_in_total{type=\"announce\"} 1\n",
        "swarmcast_signaling_rejected_total{reason=\"bad_action\"} 1\n",
        "swarmcast_signaling_relay_latency_seconds_count 0\n",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn root_without_index_links_the_demo() {
    let mut cfg = config();
    cfg.static_dir = Some(static_dir(false));
    let server = start(cfg).await;
    let (st, _, body) = http_get(server.addr, "/", "").await;
    assert_eq!(st, 200);
    assert!(String::from_utf8_lossy(&body).contains("demo.html"));
    server.shutdown().await;
}

/// The binary prints `listening on http://127.0.0.1:PORT` first, serves, and on SIGTERM closes
/// WebSockets with 1001 and exits 0.
#[tokio::test]
async fn binary_prints_address_and_shuts_down_gracefully() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_swarmcast-signaling"))
        .args(["--listen", "127.0.0.1:0", "--static-dir"])
        .arg(static_dir(true))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("first line {line:?}"))
        .trim()
        .parse()
        .unwrap();
    let mut c = Client::connect(addr).await;
    assert_eq!(c.announce(&id(1), &id(2), json!([])).await["incomplete"], 1);
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let f = c.closed(Duration::from_secs(5)).await.expect("close frame");
    assert_eq!(u16::from(f.code), 1001);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn bad_listen_address_is_a_clear_error() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_swarmcast-signaling"))
        .args(["--listen", &addr])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot listen on"), "{err}");
}
