//! A peer's decisions that need no browser: the sans-IO [`node::Node`] above the swarm core
//! (connections, tracker schedule, relay, rejoin, viewer state), the WebTorrent tracker
//! protocol, relayed signalling payloads, and the player's latency, gap and trimming rules.
//!
//! `src/web` (wasm32 only), the simulator and the test harness are platforms that drive these
//! with events (WebSocket, WebRTC and MSE in the browser); keeping the logic here lets
//! `cargo test` check it natively.

pub mod binstr;
pub mod jitter;
pub mod links;
pub mod node;
pub mod playback;
pub mod status;
#[cfg(feature = "test-hooks")]
pub mod test_hooks;
pub mod tracker;
