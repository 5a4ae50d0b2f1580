//! The wasm-bindgen binding: browser WebRTC data channels, WebSocket signaling, MSE playback.
//!
//! [`peer::SwarmPeer`] is the one object pages use. Behind it one [`crate::client::node::Node`]
//! makes every decision (connections, tracker schedule, relay, rejoin, viewer state); the
//! modules here are adapters that each own their JS handles — [`rtc`] the peer connections,
//! [`tracker`] the tracker sockets, [`player`] MSE — and report what the browser does as typed
//! events into the one queue of [`queue`], whose dispatcher feeds them to the node.

mod keys;
mod muxer;
mod peer;
mod player;
mod queue;
mod rtc;
mod tracker;
mod util;
