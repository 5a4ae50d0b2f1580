//! Parse cost of the two messages aquatic_ws_load_test sends most (a 5-offer announce and an
//! answer, shaped and escaped as its serde encoder writes them): ns per `protocol::parse_str`.
//! `cargo run --release -p swarmcast-signaling --example parsebench` (BENCHMARKS.md).
use std::time::Instant;
fn bin(seed: u8) -> String {
    (0..20u8)
        .map(|i| char::from(i.wrapping_mul(37).wrapping_add(seed)))
        .collect()
}
fn main() {
    let js = |s: &str| serde_json::to_string(s).unwrap();
    let offers: Vec<String> = (0..5u8)
        .map(|i| format!("{{\"offer_id\":{},\"offer\":{{\"type\":\"offer\",\"sdp\":\"abcdefg-abcdefg-abcdefg-abcdefg-abcdefg-abcdefg\"}}}}", js(&bin(i * 11))))
        .collect();
    let msg = format!(
        "{{\"action\":\"announce\",\"info_hash\":{},\"peer_id\":{},\"bytes_left\":50,\"event\":\"started\",\"numwant\":5,\"offers\":[{}]}}",
        js(&bin(3)), js(&bin(200)), offers.join(",")
    );
    let ans = format!(
        "{{\"action\":\"announce\",\"info_hash\":{},\"peer_id\":{},\"to_peer_id\":{},\"offer_id\":{},\"answer\":{{\"type\":\"answer\",\"sdp\":\"abcdefg-abcdefg-abcdefg-abcdefg-abcdefg-abcdefg\"}},\"bytes_left\":50,\"numwant\":0}}",
        js(&bin(3)), js(&bin(200)), js(&bin(9)), js(&bin(77))
    );
    for (name, m) in [("announce5", &msg), ("answer", &ans)] {
        assert!(swarmcast_signaling::protocol::parse_str(m).is_ok(), "{m}");
        let n = 1_000_000;
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(
                swarmcast_signaling::protocol::parse_str(std::hint::black_box(m)).is_ok(),
            );
        }
        println!(
            "{name} ({} B): {:.0} ns",
            m.len(),
            t.elapsed().as_nanos() as f64 / n as f64
        );
    }
}
