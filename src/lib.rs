//! swarmcast: peer-to-peer live video streaming in the browser.
//!
//! [`core`] is the sans-IO swarm protocol (time and events in, actions out) shared byte for byte
//! by the browser, the simulator and the tests; [`media`] packages encoded frames into segments
//! MSE plays; `web` (wasm32 only) is the thin binding to WebRTC, WebSocket signaling and MSE.
#![deny(missing_docs)]

pub mod client;
pub mod core;
pub mod media;
#[cfg(not(target_arch = "wasm32"))]
pub mod sim;
#[cfg(target_arch = "wasm32")]
mod web;
