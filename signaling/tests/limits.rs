//! Every limit, and malformed input, against a real server over loopback.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn malformed_messages_get_failure_reason_and_connection_survives() {
    let server = start(config()).await;
    let mut c = Client::connect(server.addr).await;
    let cases: &[(&str, &str)] = &[
        ("not json", "invalid JSON"),
        ("[1,2,3]", "invalid action in WS request: undefined"),
        ("{\"action\":\"hello\"}", "invalid action in WS request: hello"),
        ("{}", "invalid action in WS request: undefined"),
        ("{\"action\":\"announce\",\"info_hash\":\"short\"}", "invalid info_hash"),
        ("{\"action\":\"announce\",\"info_hash\":7}", "invalid info_hash"),
        ("{\"action\":\"announce\",\"info_hash\":\"aaaaaaaaaaaaaaaaaaaa\",\"peer_id\":[]}", "invalid peer_id"),
        (
            "{\"action\":\"announce\",\"info_hash\":\"aaaaaaaaaaaaaaaaaaaa\",\"peer_id\":\"\u{4e00}aaaaaaaaaaaaaaaaaaa\"}",
            "invalid peer_id",
        ),
        (
            "{\"action\":\"announce\",\"info_hash\":\"aaaaaaaaaaaaaaaaaaaa\",\"peer_id\":\"aaaaaaaaaaaaaaaaaaaa\",\"answer\":{\"sdp\":\"x\"}}",
            "invalid `to_peer_id` (required with `answer`)",
        ),
        (
            "{\"action\":\"announce\",\"info_hash\":\"aaaaaaaaaaaaaaaaaaaa\",\"peer_id\":\"aaaaaaaaaaaaaaaaaaaa\",\"offers\":[{\"offer\":{}}]}",
            "invalid offer_id",
        ),
        (
            "{\"action\":\"announce\",\"info_hash\":\"aaaaaaaaaaaaaaaaaaaa\",\"peer_id\":\"aaaaaaaaaaaaaaaaaaaa\",\"offers\":[{\"offer\":\"x\",\"offer_id\":\"1\"}]}",
            "invalid offer",
        ),
        (
            "{\"action\":\"announce\",\"info_hash\":\"aaaaaaaaaaaaaaaaaaaa\",\"peer_id\":\"aaaaaaaaaaaaaaaaaaaa\",\"event\":\"exploded\"}",
            "invalid event",
        ),
        ("{\"action\":\"scrape\",\"info_hash\":[\"abc\"]}", "invalid info_hash"),
        ("{\"action\":\"announce\",\"action\":\"scrape\"}", "invalid JSON"),
    ];
    for (msg, want) in cases {
        c.send_raw(Message::Text((*msg).into())).await;
        let r = c.recv().await;
        let reason = r["failure reason"]
            .as_str()
            .unwrap_or_else(|| panic!("{msg}: {r}"));
        assert!(
            reason.starts_with(want),
            "{msg}: got {reason:?}, want {want:?}"
        );
    }
    // Binary frames carrying JSON are accepted like the reference server does.
    let good = json!({"action":"announce","info_hash":id(1),"peer_id":id(2)}).to_string();
    c.send_raw(Message::Binary(good.into_bytes().into())).await;
    assert_eq!(c.recv().await["action"], "announce");
    assert_eq!(server.state.metrics.rejected("malformed_json"), 2);
    server.shutdown().await;
}

#[tokio::test]
async fn oversized_frame_closes_with_1009() {
    let mut cfg = config();
    cfg.max_message_bytes = 4096;
    let server = start(cfg).await;
    let mut c = Client::connect(server.addr).await;
    c.send_raw(Message::Text("x".repeat(10_000).into())).await;
    let f = c.closed(Duration::from_secs(5)).await.expect("close frame");
    assert_eq!(u16::from(f.code), 1009);
    assert_eq!(server.state.metrics.rejected("frame_too_large"), 1);
    // A legal size still works on a new connection.
    let mut d = Client::connect(server.addr).await;
    let r = d.announce(&id(1), &id(2), offers("x", 2)).await;
    assert_eq!(r["action"], "announce");
    server.shutdown().await;
}

#[tokio::test]
async fn too_many_offers_is_refused() {
    let mut cfg = config();
    cfg.max_offers = 3;
    let server = start(cfg).await;
    let mut c = Client::connect(server.addr).await;
    let r = c.announce(&id(1), &id(2), offers("x", 4)).await;
    assert_eq!(r["failure reason"], "too many offers (max 3)");
    assert_eq!(r["info_hash"], id(1).as_str());
    assert_eq!(
        server.state.sizes(),
        (0, 0),
        "a refused announce does not join"
    );
    server.shutdown().await;
}

/// Issue 24: a connection over its rate is slowed down, never refused: the reference client
/// takes a failure without `action` for a broken socket (and tears down every torrent on
/// it), and one with `action` loses that announce until the next interval.
#[tokio::test]
async fn rate_limit_delays_and_never_refuses() {
    let mut cfg = config();
    cfg.rate = 20.0;
    cfg.rate_burst = 5.0;
    let server = start(cfg).await;
    let mut c = Client::connect(server.addr).await;
    let t0 = std::time::Instant::now();
    for i in 0..25u32 {
        c.send(
            json!({"action": "announce", "info_hash": id(i), "peer_id": id(1000), "numwant": 0}),
        )
        .await;
    }
    for i in 0..25u32 {
        let r = c.recv().await;
        assert_eq!(r["action"], "announce", "{r}");
        assert!(r["failure reason"].is_null(), "{r}");
        assert_eq!(r["info_hash"], id(i));
    }
    // 5 at once, then 20 at 20/s: about a second.
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(800), "{took:?}");
    assert!(server.state.metrics.rejected("rate_limited") >= 1);
    server.shutdown().await;
}

#[tokio::test]
async fn swarm_and_server_limits() {
    let mut cfg = config();
    cfg.max_peers_per_swarm = 2;
    cfg.max_swarms = 3;
    cfg.max_swarms_per_connection = 2;
    let server = start(cfg).await;
    let mut c = Client::connect(server.addr).await;
    let mut d = Client::connect(server.addr).await;
    assert!(c.announce(&id(1), &id(10), json!([])).await["failure reason"].is_null());
    assert!(c.announce(&id(1), &id(11), json!([])).await["failure reason"].is_null());
    assert_eq!(
        c.announce(&id(1), &id(12), json!([])).await["failure reason"],
        "swarm is full"
    );
    // c holds 2 registrations (ih1 twice); another swarm for c is over its per-connection cap.
    assert_eq!(
        c.announce(&id(2), &id(10), json!([])).await["failure reason"],
        "too many swarms on this connection"
    );
    assert_eq!(
        c.announce(&id(3), &id(10), json!([])).await["failure reason"],
        "too many swarms on this connection"
    );
    assert!(d.announce(&id(2), &id(20), json!([])).await["failure reason"].is_null());
    assert!(d.announce(&id(3), &id(20), json!([])).await["failure reason"].is_null());
    let mut e = Client::connect(server.addr).await;
    assert_eq!(
        e.announce(&id(4), &id(30), json!([])).await["failure reason"],
        "too many swarms on this server"
    );
    assert_eq!(server.state.sizes(), (3, 4));
    assert_eq!(server.state.metrics.rejected("swarm_full"), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn connection_limit_and_origin() {
    let mut cfg = config();
    cfg.max_connections = 2;
    cfg.allowed_origins = vec!["https://good.example".into()];
    let server = start(cfg).await;
    let _a = Client::connect(server.addr).await;
    let _b = Client::connect(server.addr).await;
    let st = server.state.clone();
    eventually(|| {
        st.metrics
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
            == 2
    })
    .await;
    let err = tokio_tungstenite::connect_async(format!("ws://{}/announce", server.addr))
        .await
        .expect_err("third connection refused");
    assert!(err.to_string().contains("503"), "{err}");
    drop(_a);
    drop(_b);
    eventually(|| {
        st.metrics
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0
    })
    .await;

    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}/announce", server.addr),
    )
    .unwrap();
    req.headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    let err = tokio_tungstenite::connect_async(req.clone())
        .await
        .expect_err("bad origin");
    assert!(err.to_string().contains("403"), "{err}");
    req.headers_mut()
        .insert("origin", "https://good.example".parse().unwrap());
    tokio_tungstenite::connect_async(req)
        .await
        .expect("good origin");
    assert_eq!(server.state.metrics.rejected("origin"), 1);
    assert_eq!(server.state.metrics.rejected("too_many_connections"), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn idle_connections_are_closed_and_their_peers_removed() {
    let mut cfg = config();
    cfg.idle_timeout = 0.4;
    cfg.ping_interval = 0.1;
    let server = start(cfg).await;
    let mut c = Client::connect(server.addr).await;
    c.announce(&id(1), &id(2), json!([])).await;
    assert_eq!(server.state.sizes(), (1, 1));
    let f = c.closed(Duration::from_secs(5)).await.expect("close frame");
    assert_eq!(u16::from(f.code), 1000);
    assert_eq!(f.reason.as_str(), "idle timeout");
    let st = server.state.clone();
    eventually(|| st.sizes() == (0, 0)).await;
    assert_eq!(server.state.metrics.rejected("idle_timeout"), 1);
    server.shutdown().await;
}

/// A client that never reads while offers pour in is dropped; the server does not buffer for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_is_dropped() {
    let mut cfg = config();
    cfg.send_queue = 8;
    cfg.send_timeout = 1.0;
    cfg.rate = 0.0;
    cfg.max_message_bytes = 256 * 1024;
    let server = start(cfg).await;
    let ih = id(1);
    // The slow one: a raw TCP WebSocket client that never reads after the handshake.
    let mut slow = Client::connect(server.addr).await;
    slow.announce(&ih, &id(2), json!([])).await;
    let mut fast = Client::connect(server.addr).await;
    fast.announce(&ih, &id(3), json!([])).await;
    let big = "s".repeat(60_000);
    let offer = json!([{"offer": {"type": "offer", "sdp": big}, "offer_id": "o"}]);
    let st = server.state.clone();
    let m = json!({"action":"announce","info_hash":ih,"peer_id":id(3),"offers":offer}).to_string();
    for _ in 0..2000 {
        futures_util::SinkExt::send(&mut fast.ws, Message::Text(m.clone().into()))
            .await
            .unwrap();
        // Drain our own replies so that only `slow` falls behind.
        while fast.try_recv(Duration::from_millis(0)).await.is_some() {}
        if st.sizes().1 == 1 {
            break;
        }
    }
    eventually(|| st.sizes() == (1, 1)).await;
    assert_eq!(st.metrics.rejected("slow_reader"), 1);
    server.shutdown().await;
}

/// `--on-full-queue drop`: a reader that falls behind keeps its connection; what does not fit
/// in its queue is discarded and counted, and memory stays bounded all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_drop_policy_keeps_the_connection() {
    let mut cfg = config();
    cfg.send_queue = 8;
    cfg.send_timeout = 30.0;
    cfg.rate = 0.0;
    cfg.max_message_bytes = 256 * 1024;
    cfg.on_full_queue = swarmcast_signaling::config::FullQueue::Drop;
    let server = start(cfg).await;
    let ih = id(1);
    let mut slow = Client::connect(server.addr).await;
    slow.announce(&ih, &id(2), json!([])).await;
    let mut fast = Client::connect(server.addr).await;
    fast.announce(&ih, &id(3), json!([])).await;
    let big = "s".repeat(60_000);
    let offer = json!([{"offer": {"type": "offer", "sdp": big}, "offer_id": "o"}]);
    let st = server.state.clone();
    let m = json!({"action":"announce","info_hash":ih,"peer_id":id(3),"offers":offer}).to_string();
    for _ in 0..2000 {
        futures_util::SinkExt::send(&mut fast.ws, Message::Text(m.clone().into()))
            .await
            .unwrap();
        while fast.try_recv(Duration::from_millis(0)).await.is_some() {}
        if st.metrics.rejected("queue_full") > 0 {
            break;
        }
    }
    assert!(st.metrics.rejected("queue_full") > 0, "offers were dropped");
    assert_eq!(st.metrics.rejected("slow_reader"), 0);
    assert_eq!(st.sizes(), (1, 2), "the slow reader is still in its swarm");
    // It is still served: it reads what was queued, then a fresh offer reaches it.
    while slow.try_recv(Duration::from_millis(300)).await.is_some() {}
    fast.send(json!({"action":"announce","info_hash":ih,"peer_id":id(3),
        "offers":[{"offer":{"type":"offer","sdp":"fresh"},"offer_id":"f"}]}))
        .await;
    let got = slow.recv().await;
    assert_eq!(got["offer"]["sdp"], "fresh");
    server.shutdown().await;
}

/// Requests that arrive together are answered together (one write per read, `Outbox::cork`)
/// and in full: the replies to a burst far longer than the send queue neither close the
/// connection (close policy) nor get dropped, and come back in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_requests_is_answered_in_full_under_a_small_queue() {
    let mut cfg = config();
    cfg.send_queue = 4;
    cfg.rate = 0.0;
    let server = start(cfg).await;
    let ih = id(1);
    let mut c = Client::connect(server.addr).await;
    c.announce(&ih, &id(2), json!([])).await;
    // 200 announces in one flush (~26 KB): the server reads them in a few growing reads.
    for i in 0..200 {
        let m = json!({"action":"announce","info_hash":ih,"peer_id":id(2),"numwant":0,
            "uploaded": i});
        futures_util::SinkExt::feed(&mut c.ws, Message::Text(m.to_string().into()))
            .await
            .unwrap();
    }
    futures_util::SinkExt::flush(&mut c.ws).await.unwrap();
    for i in 0..200 {
        let r = c.recv().await;
        assert_eq!(r["action"], "announce", "reply {i}: {r}");
        assert!(r["interval"].is_number(), "reply {i}: {r}");
    }
    assert!(c.try_recv(Duration::from_millis(200)).await.is_none());
    let st = server.state.clone();
    assert_eq!(st.metrics.rejected("slow_reader"), 0);
    assert_eq!(st.metrics.rejected("queue_full"), 0);
    assert_eq!(st.sizes(), (1, 1), "still connected and in its swarm");
    server.shutdown().await;
}
