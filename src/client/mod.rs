//! The browser peer's decisions that need no browser: the WebTorrent tracker protocol, relayed
//! signalling payloads, and the player's latency, gap and trimming rules.
//!
//! `src/web` (wasm32 only) is the thin platform side that feeds these with events from
//! WebSocket, WebRTC and MSE; keeping the logic here lets `cargo test` check it natively.

pub mod binstr;
pub mod jitter;
pub mod links;
pub mod node;
pub mod playback;
pub mod status;
#[cfg(feature = "test-hooks")]
pub mod test_hooks;
pub mod tracker;
