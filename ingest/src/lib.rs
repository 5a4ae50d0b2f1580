//! swarmcast's native ingest: an RTMP server that OBS or ffmpeg publish to (H.264 + AAC), which
//! packages the stream into the fMP4 init and media segments the swarm carries.
//!
//! Layers, from the wire in:
//! - [`server`]: the TCP listener and one task per connection (tokio); RTMP's handshake, chunk
//!   stream and AMF0 commands are `rml_rtmp`'s; this layer decides who may publish.
//! - [`pipeline`]: one published stream, sans-IO: FLV tags in, segments out.
//! - [`flv`] and [`sps`]: parsing of tag bodies and of the SPS (picture size).
//!
//! Not yet a swarm source: that needs a native WebRTC transport. Until then the segments are
//! written to a directory for inspection ([`server::Sink::Dir`]).

pub mod flv;
pub mod pipeline;
pub mod server;
pub mod sps;
