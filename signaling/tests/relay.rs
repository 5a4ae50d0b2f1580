//! Offer/answer relay over real loopback WebSockets: 2 clients, then 200.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test]
async fn two_peers_exchange_offer_and_answer() {
    let server = start(config()).await;
    let ih = id(77);
    let (pa, pb) = (id(1), id(2));
    let mut a = Client::connect(server.addr).await;
    // WebTorrent clients use the tracker URL as given, often with no path.
    let mut b = Client::connect_path(server.addr, "/").await;

    let r = a.announce(&ih, &pa, json!([])).await;
    assert_eq!(r["action"], "announce");
    assert_eq!(r["info_hash"], ih.as_str());
    assert_eq!(r["interval"], 120);
    assert_eq!(
        (r["complete"].as_u64(), r["incomplete"].as_u64()),
        (Some(0), Some(1))
    );

    let r = b.announce(&ih, &pb, offers("b", 3)).await;
    assert_eq!(r["incomplete"], 2);
    // Only one other peer: exactly one of the three offers is forwarded, to A.
    let offer = a.recv().await;
    assert_eq!(offer["action"], "announce");
    assert_eq!(
        offer["peer_id"],
        pb.as_str(),
        "offer carries the offerer's id"
    );
    assert_eq!(offer["info_hash"], ih.as_str());
    assert_eq!(offer["offer"]["type"], "offer");
    let offer_id = offer["offer_id"].as_str().unwrap().to_owned();
    assert!(offer["offer"]["sdp"]
        .as_str()
        .unwrap()
        .starts_with("v=0 b "));
    assert!(a.try_recv(Duration::from_millis(200)).await.is_none());
    // The offerer never gets its own offers.
    assert!(b.try_recv(Duration::from_millis(100)).await.is_none());

    a.send(json!({
        "action": "announce", "info_hash": ih, "peer_id": pa, "to_peer_id": pb,
        "offer_id": offer_id, "answer": {"type": "answer", "sdp": "v=0 answer"},
    }))
    .await;
    let ans = b.recv().await;
    assert_eq!(ans["answer"]["sdp"], "v=0 answer");
    assert_eq!(ans["peer_id"], pa.as_str());
    assert_eq!(ans["offer_id"], offer_id.as_str());
    assert_eq!(ans["info_hash"], ih.as_str());
    // No reply to the answerer.
    assert!(a.try_recv(Duration::from_millis(200)).await.is_none());

    // A replayed answer is not delivered again.
    a.send(json!({
        "action": "announce", "info_hash": ih, "peer_id": pa, "to_peer_id": pb,
        "offer_id": offer_id, "answer": {"type": "answer", "sdp": "again"},
    }))
    .await;
    assert!(b.try_recv(Duration::from_millis(300)).await.is_none());
    assert_eq!(server.state.metrics.rejected("answer_unmatched"), 1);

    // Scrape sees both; stopped removes one; disconnect removes the other.
    b.send(json!({"action": "scrape", "info_hash": ih})).await;
    let s = b.recv().await;
    assert_eq!(s["action"], "scrape");
    assert_eq!(s["files"][&ih]["incomplete"], 2);
    assert_eq!(s["flags"]["min_request_interval"], 120);
    b.send(json!({"action": "announce", "info_hash": ih, "peer_id": pb, "event": "stopped", "numwant": 0}))
        .await;
    assert_eq!(b.recv().await["incomplete"], 1);
    drop(a);
    let st = server.state.clone();
    eventually(|| st.sizes() == (0, 0)).await;
    server.shutdown().await;
}

#[tokio::test]
async fn seeders_count_as_complete() {
    let server = start(config()).await;
    let ih = id(5);
    let mut a = Client::connect(server.addr).await;
    a.send(json!({"action":"announce","info_hash":ih,"peer_id":id(1),"left":0,"event":"started"}))
        .await;
    let r = a.recv().await;
    assert_eq!(
        (r["complete"].as_u64(), r["incomplete"].as_u64()),
        (Some(1), Some(0))
    );
    a.send(json!({"action":"announce","info_hash":ih,"peer_id":id(2),"left":5}))
        .await;
    a.recv().await;
    a.send(
        json!({"action":"announce","info_hash":ih,"peer_id":id(2),"event":"completed","left":0}),
    )
    .await;
    let r = a.recv().await;
    assert_eq!(
        (r["complete"].as_u64(), r["incomplete"].as_u64()),
        (Some(2), Some(0))
    );
    a.send(json!({"action":"scrape"})).await;
    let s = a.recv().await;
    assert_eq!(s["files"][&ih]["downloaded"], 1);
    server.shutdown().await;
}

/// 200 clients in one swarm; each announces 5 offers; every receiver answers every offer it
/// gets; every offerer must get exactly the answers to the offers that were forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_peers_relay_offers_and_answers() {
    const N: u32 = 200;
    const OFFERS: usize = 5;
    let server = start(config()).await;
    let ih = id(9999);
    let mut clients = Vec::new();
    for i in 0..N {
        let mut c = Client::connect(server.addr).await;
        let r = c.announce(&ih, &id(i), json!([])).await;
        assert_eq!(r["incomplete"].as_u64(), Some(u64::from(i) + 1));
        clients.push(c);
    }
    // Offers from each, sequentially so we can attribute them.
    for i in 0..N {
        let c = &mut clients[i as usize];
        // The reply may arrive after offers from earlier peers; the drain below sorts them out.
        c.send(json!({
            "action": "announce", "info_hash": ih, "peer_id": id(i), "numwant": OFFERS,
            "offers": offers(&format!("p{i}"), OFFERS),
        }))
        .await;
    }
    // Drain everyone in rounds until quiet: answer every offer, collect answers and replies.
    let pids: HashMap<String, u32> = (0..N).map(|i| (id(i), i)).collect();
    let mut received_from: HashMap<u32, Vec<u32>> = HashMap::new();
    let mut answered_by: HashMap<u32, Vec<u32>> = HashMap::new();
    let mut replies = vec![0; N as usize];
    loop {
        let mut quiet = true;
        for (i, c) in clients.iter_mut().enumerate() {
            let i = i as u32;
            while let Some(m) = c.try_recv(Duration::from_millis(5)).await {
                quiet = false;
                if m["offer"].is_object() {
                    let from = pids[m["peer_id"].as_str().unwrap()];
                    assert_ne!(from, i, "offer sent back to its sender");
                    received_from.entry(from).or_default().push(i);
                    c.send(json!({
                        "action": "announce", "info_hash": ih, "peer_id": id(i), "to_peer_id": id(from),
                        "offer_id": m["offer_id"], "answer": {"type": "answer", "sdp": format!("from {i}")},
                    }))
                    .await;
                } else if m["answer"].is_object() {
                    assert!(m["offer_id"]
                        .as_str()
                        .unwrap()
                        .starts_with(&format!("p{i}-")));
                    answered_by
                        .entry(i)
                        .or_default()
                        .push(pids[m["peer_id"].as_str().unwrap()]);
                } else {
                    assert_eq!(m["interval"], 120, "{m}");
                    replies[i as usize] += 1;
                }
            }
        }
        if quiet {
            break;
        }
    }
    assert!(
        replies.iter().all(|&r| r == 1),
        "one reply per offering announce"
    );
    for i in 0..N {
        let mut got = received_from.get(&i).cloned().unwrap_or_default();
        assert_eq!(got.len(), OFFERS, "peer {i}'s offers each went to one peer");
        got.sort_unstable();
        got.dedup();
        assert_eq!(
            got.len(),
            OFFERS,
            "peer {i}'s offers went to distinct peers"
        );
        let mut from = answered_by.get(&i).cloned().unwrap_or_default();
        from.sort_unstable();
        assert_eq!(
            from, got,
            "peer {i} got answers exactly from the peers it offered to"
        );
    }
    let text = server.state.metrics.render(0, 0);
    assert!(text.contains(&format!(
        "messages_out_total{{type=\"offer\"}} {}",
        N as usize * OFFERS
    )));
    assert!(text.contains(&format!(
        "messages_out_total{{type=\"answer\"}} {}",
        N as usize * OFFERS
    )));
    server.shutdown().await;
}
