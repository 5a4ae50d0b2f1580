//! The wasm-bindgen binding: browser WebRTC data channels, WebSocket signaling, MSE playback.

mod keys;
mod muxer;
