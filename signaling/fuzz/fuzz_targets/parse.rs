//! Fuzzes the tracker message parser and, for what parses, the encoders that echo its fields:
//! no input may panic, and every encoded reply must be valid JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use swarmcast_signaling::protocol::{self, Request};

fuzz_target!(|data: &[u8]| {
    match protocol::parse(data) {
        Ok(Request::Announce(a)) => {
            for o in &a.offers {
                let s = protocol::encode_offer(o, &a.peer_id, &a.info_hash);
                assert!(serde_json_ok(&s), "{s}");
            }
            if let Some(ans) = &a.answer {
                let s = protocol::encode_answer(ans, &a.peer_id, &a.info_hash);
                assert!(serde_json_ok(&s), "{s}");
            }
        }
        Ok(Request::Scrape(_)) => {}
        Err(e) => {
            let s = protocol::encode_failure(&e.to_string());
            assert!(serde_json_ok(&s), "{s}");
        }
    }
});

fn serde_json_ok(s: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(s).is_ok()
}
