//! The sans-IO swarm core: no I/O, no clock, no randomness of its own.
//!
//! Time comes in as [`Instant`] values the caller reads from its own clock (`performance.now()`
//! in the browser, a virtual clock in the simulator); randomness comes in as a seed in
//! [`Config`]. The same inputs therefore give the same outputs, in the browser, in the simulator
//! and in tests. The integration loop is str0m's:
//!
//! ```text
//! swarm.handle_input(now, Input::Receive { peer, data })?;
//! while let Some(out) = swarm.poll_output() { /* transmit, play, disconnect ... */ }
//! let wake_at = swarm.poll_timeout();
//! ```

mod api;
mod bitfield;
mod bucket;
mod data;
mod discovery;
mod id;
mod identity;
mod maintenance;
mod neighbour;
mod playout;
mod publish;
pub(crate) mod rng;
mod scheduler;
mod segment;
mod sender;
mod session;
mod stats;
mod store;
mod stripes;
mod swarm;
#[cfg(test)]
mod tests;
mod time;
mod timers;
pub mod wire;

pub use api::{Config, DisconnectReason, Input, Output, PlayableSegment, PublishError};
pub use id::{IdError, PeerId, StreamId};
pub use identity::{verify_piece, StreamKey, StreamVerifier, VerifyError};
pub use segment::{
    InitSegment, SegmentHeader, SegmentMeta, SignedHeader, MAX_INIT_SIZE, MAX_PIECES_PER_SEGMENT,
    PIECE_SIZE,
};
pub use stats::{NeighbourStats, Stats};
pub use swarm::Swarm;
pub use time::Instant;
pub use wire::Role;
