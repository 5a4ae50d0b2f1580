//! Property tests of the message parser: it never panics, and what a client encodes with any
//! ids (all 256 byte values) and offer ids decodes to the same values; what the server encodes
//! is valid JSON that carries the ids back unchanged.

use proptest::prelude::*;
use serde_json::{json, Value};
use swarmcast_signaling::protocol::{self, Id20, Request};

fn id20() -> impl Strategy<Value = Id20> {
    proptest::array::uniform20(any::<u8>()).prop_map(Id20)
}

fn offer_id() -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), 1..=protocol::MAX_OFFER_ID_CHARS)
        .prop_map(|v| v.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = protocol::parse(&bytes);
    }

    #[test]
    fn json_shaped_noise_never_panics(
        action in prop_oneof![Just("announce".to_string()), Just("scrape".to_string()), ".{0,8}"],
        ih in ".{0,24}", pid in ".{0,24}", extra in proptest::option::of(any::<i64>()),
        offers in proptest::collection::vec((".{0,4}", any::<bool>()), 0..4),
    ) {
        let offers: Vec<Value> = offers.into_iter().map(|(s, obj)| if obj {
            json!({"offer": {"sdp": s}, "offer_id": s})
        } else {
            json!({"offer": s})
        }).collect();
        let msg = json!({"action": action, "info_hash": ih, "peer_id": pid, "left": extra,
                         "offers": offers, "answer": extra, "to_peer_id": pid});
        let _ = protocol::parse(msg.to_string().as_bytes());
    }

    #[test]
    fn announce_round_trips(ih in id20(), pid in id20(), oid in offer_id(), sdp in ".{0,64}",
                            left in 0u32..3) {
        let msg = json!({
            "action": "announce", "info_hash": ih.to_binary_string(), "peer_id": pid.to_binary_string(),
            "left": left, "event": "started",
            "offers": [{"offer": {"type": "offer", "sdp": sdp}, "offer_id": oid}],
        });
        let text = msg.to_string();
        let Ok(Request::Announce(a)) = protocol::parse(text.as_bytes()) else {
            panic!("valid announce rejected: {msg}");
        };
        prop_assert_eq!(a.info_hash, ih);
        prop_assert_eq!(a.peer_id, pid);
        prop_assert_eq!(a.seeder, left == 0);
        prop_assert_eq!(&a.offers[0].offer_id, &oid);
        // The forwarded offer, as the receiving client parses it.
        let fwd: Value = serde_json::from_str(&protocol::encode_offer(&a.offers[0], &pid, &ih)).unwrap();
        prop_assert_eq!(Id20::from_binary_str(fwd["peer_id"].as_str().unwrap()), Some(pid));
        prop_assert_eq!(Id20::from_binary_str(fwd["info_hash"].as_str().unwrap()), Some(ih));
        prop_assert_eq!(fwd["offer_id"].as_str().unwrap(), oid.as_str());
        prop_assert_eq!(fwd["offer"]["sdp"].as_str().unwrap(), sdp.as_str());
        // Our JSON escaping matches serde_json's reading of it and JSON.stringify's form for ids.
        let mut s = String::new();
        ih.write_json(&mut s);
        prop_assert_eq!(serde_json::from_str::<String>(&s).unwrap(), ih.to_binary_string());
    }

    #[test]
    fn answer_round_trips(ih in id20(), pid in id20(), to in id20(), oid in offer_id()) {
        let msg = json!({
            "action": "announce", "info_hash": ih.to_binary_string(), "peer_id": pid.to_binary_string(),
            "to_peer_id": to.to_binary_string(), "offer_id": oid, "answer": {"type": "answer", "sdp": "x"},
        });
        let text = msg.to_string();
        let Ok(Request::Announce(a)) = protocol::parse(text.as_bytes()) else {
            panic!("valid answer rejected: {msg}");
        };
        let ans = a.answer.expect("answer");
        prop_assert_eq!(ans.to_peer_id, to);
        prop_assert_eq!(&ans.offer_id, &oid);
        let fwd: Value = serde_json::from_str(&protocol::encode_answer(&ans, &pid, &ih)).unwrap();
        prop_assert_eq!(Id20::from_binary_str(fwd["peer_id"].as_str().unwrap()), Some(pid));
        prop_assert_eq!(fwd["answer"]["type"].as_str(), Some("answer"));
    }

    #[test]
    fn failure_replies_are_json(reason in ".{0,80}", ih in id20()) {
        let v: Value = serde_json::from_str(&protocol::encode_failure(&reason)).unwrap();
        prop_assert_eq!(v["failure reason"].as_str(), Some(reason.as_str()));
        let v: Value = serde_json::from_str(&protocol::encode_announce_failure(&reason, &ih)).unwrap();
        prop_assert_eq!(v["failure reason"].as_str(), Some(reason.as_str()));
    }
}
