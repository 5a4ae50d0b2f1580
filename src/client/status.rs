//! What a player tells the person watching: one state name (for pages and tests) and one
//! sentence (for the overlay), from what the binding knows about trackers, neighbours and media.

/// What the binding knows at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// `destroy()` was called.
    pub destroyed: bool,
    /// An error waiting cannot fix (no MSE, unsupported codec, playback keeps failing).
    pub fatal: Option<String>,
    /// This peer is the source.
    pub is_source: bool,
    /// Segments arrived recently.
    pub media_fresh: bool,
    /// Media arrived at some point (the broadcast was on air once).
    pub ever_media: bool,
    /// The playhead is moving.
    pub playing: bool,
    /// Trackers configured.
    pub trackers: usize,
    /// Trackers with an open socket.
    pub trackers_open: usize,
    /// Every tracker failed its last connection attempt.
    pub trackers_failing: bool,
    /// Neighbours with the handshake done.
    pub neighbours: usize,
    /// The core says the swarm has too little upload for this viewer (a stripe without a parent
    /// for a while although neighbours exist): the reason to give when playback falters.
    pub capacity_short: bool,
}

/// What a viewer starved by the swarm's capacity is told (not just a spinner).
pub const CAPACITY_SHORT: &str =
    "Not enough upload in this swarm right now: playback may stutter until more viewers share";

/// The page-visible state: `(name, message)`. Names: `destroyed`, `error`, `live` (source),
/// `playing`, `buffering`, `unreachable`, `connecting`, `waiting`.
pub fn page_state(f: &Facts) -> (&'static str, String) {
    let say = |name, msg: &str| (name, msg.to_owned());
    if f.destroyed {
        return say("destroyed", "");
    }
    if let Some(msg) = &f.fatal {
        return ("error", msg.clone());
    }
    if f.is_source {
        return say("live", "");
    }
    if f.media_fresh {
        return match (f.playing, f.capacity_short) {
            (true, false) => say("playing", ""),
            (true, true) => say("playing", CAPACITY_SHORT),
            (false, false) => say("buffering", ""),
            (false, true) => say("buffering", CAPACITY_SHORT),
        };
    }
    // No media. Say why as precisely as we can: no way to find peers, not connected yet, or
    // connected but nothing is broadcast.
    if f.neighbours == 0 && f.trackers > 0 && f.trackers_failing && f.trackers_open == 0 {
        return say("unreachable", "Cannot reach the tracker; retrying…");
    }
    if f.neighbours == 0 && f.trackers_open == 0 {
        return say("connecting", "Connecting…");
    }
    if f.capacity_short && f.neighbours > 0 {
        return say("waiting", CAPACITY_SHORT);
    }
    if f.ever_media {
        say(
            "waiting",
            "The broadcast stopped; waiting for it to resume…",
        )
    } else {
        say("waiting", "Waiting for the broadcast to start…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn viewer() -> Facts {
        Facts {
            trackers: 2,
            ..Facts::default()
        }
    }

    #[test]
    fn playing_needs_fresh_media_and_a_moving_playhead() {
        let f = Facts {
            media_fresh: true,
            playing: true,
            ..viewer()
        };
        assert_eq!(page_state(&f).0, "playing");
        let f = Facts {
            playing: false,
            ..f
        };
        assert_eq!(page_state(&f).0, "buffering");
        // A moving playhead over old buffer while nothing arrives is not "playing".
        let f = Facts {
            media_fresh: false,
            playing: true,
            trackers_open: 1,
            ever_media: true,
            ..viewer()
        };
        assert_eq!(page_state(&f).0, "waiting");
        assert!(page_state(&f).1.contains("resume"));
    }

    #[test]
    fn explains_why_nothing_plays() {
        assert_eq!(page_state(&viewer()).0, "connecting");
        let down = Facts {
            trackers_failing: true,
            ..viewer()
        };
        assert_eq!(page_state(&down).0, "unreachable");
        // Peers found another way (relay) make a dead tracker no reason to complain.
        let down_but_peers = Facts {
            neighbours: 1,
            ..down.clone()
        };
        assert_eq!(page_state(&down_but_peers).0, "waiting");
        let up = Facts {
            trackers_open: 1,
            ..viewer()
        };
        assert_eq!(
            page_state(&up),
            ("waiting", "Waiting for the broadcast to start…".to_owned())
        );
    }

    #[test]
    fn a_capacity_shortage_is_said_not_just_shown_as_buffering() {
        let f = Facts {
            media_fresh: true,
            playing: false,
            capacity_short: true,
            neighbours: 3,
            ..viewer()
        };
        assert_eq!(page_state(&f), ("buffering", CAPACITY_SHORT.to_owned()));
        let f = Facts { playing: true, ..f };
        assert_eq!(page_state(&f), ("playing", CAPACITY_SHORT.to_owned()));
        let f = Facts {
            media_fresh: false,
            playing: false,
            ever_media: true,
            trackers_open: 1,
            ..f
        };
        assert_eq!(page_state(&f), ("waiting", CAPACITY_SHORT.to_owned()));
        // Without the core's signal, a stop is a stop.
        let f = Facts {
            capacity_short: false,
            ..f
        };
        assert!(page_state(&f).1.contains("resume"));
    }

    #[test]
    fn fatal_errors_and_roles_win() {
        let f = Facts {
            fatal: Some("codec".into()),
            media_fresh: true,
            playing: true,
            ..viewer()
        };
        assert_eq!(page_state(&f), ("error", "codec".to_owned()));
        let src = Facts {
            is_source: true,
            ..viewer()
        };
        assert_eq!(page_state(&src).0, "live");
        let gone = Facts {
            destroyed: true,
            ..f
        };
        assert_eq!(page_state(&gone).0, "destroyed");
    }
}
