//! swarmcast's signaling server: the WebTorrent tracker WebSocket protocol (so any WebTorrent
//! tracker can bootstrap our peers and WebTorrent clients can use ours), plus static files for
//! the www/ bundle, `/healthz` and `/metrics`.
//!
//! Layering: [`protocol`] parses and encodes messages, [`tracker`] holds swarms without I/O
//! (charging each registration to its client address, [`budget`]), [`server`] owns the
//! WebSocket tasks, [`listen`] accepts connections and serves HTTP with deadlines, [`files`]
//! decides which static files may be served, [`tls`] adds HTTPS/`wss://`, [`metrics`] counts,
//! [`config`] is the command line.
#![deny(missing_docs)]

pub mod budget;
pub mod config;
pub mod files;
pub mod listen;
pub mod metrics;
pub mod offers;
pub mod outbox;
pub mod protocol;
pub mod server;
pub mod tls;
pub mod tracker;
pub mod ws;
