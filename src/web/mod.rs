//! The wasm-bindgen binding: browser WebRTC data channels, WebSocket signaling, MSE playback.
//!
//! [`peer::SwarmPeer`] is the one object pages use. It owns a [`crate::core::Swarm`] and is the
//! only seam between the sans-IO core and the browser: events from WebRTC ([`rtc`]), the tracker
//! ([`tracker`]) and MSE ([`player`]) become core inputs with a `performance.now()` timestamp;
//! core outputs become `send`, `close` and `appendBuffer` calls. Decisions that need no browser
//! live in [`crate::client`] and are tested natively.

mod keys;
mod muxer;
mod peer;
mod player;
mod rtc;
mod tracker;
mod util;
