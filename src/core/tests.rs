//! Whole-machine checks of the core from inside: a source and a viewer wired back to back
//! (every transmit delivered after a fixed latency), driven by a virtual clock that steps to
//! the next delivery or timeout, as quinn-proto's `Pair` does.

use super::*;
use std::collections::BTreeMap;

/// One-way latency of the wire.
const LATENCY_US: u64 = 20_000;

/// How the viewer's player reports its position: through [`Input::Playhead`] or through the
/// [`Swarm::playhead`] command.
#[derive(Clone, Copy)]
enum Report {
    Input,
    Command,
}

/// Runs a source and a viewer for `secs` seconds of virtual time, publishing a 200 ms segment
/// every 200 ms and reporting the viewer's playhead at each Play; returns everything the viewer
/// output and every timeout it asked for, with the time it was asked at.
fn run(report: Report, secs: u64) -> (Vec<Output>, Vec<(u64, Option<Instant>)>) {
    let key = StreamKey::from_secret([9; 32]);
    let (sid, vid) = (PeerId([1; 20]), PeerId([2; 20]));
    let mut swarms = [
        Swarm::source(Config::default(), key, sid),
        Swarm::viewer(
            Config {
                seed: 5,
                ..Config::default()
            },
            key_stream(),
            vid,
        ),
    ];
    let ids = [sid, vid];
    // (time, order) -> (to, input); order breaks ties in send order.
    let mut wire: BTreeMap<(u64, u64), (usize, Vec<u8>)> = BTreeMap::new();
    let mut order = 0u64;
    let mut viewer_out = Vec::new();
    let mut timeouts = Vec::new();
    let mut now = 0u64;
    let end = secs * 1_000_000;
    let mut next_publish = 100_000u64;
    let mut seq_pts = 0u64;
    for (i, s) in swarms.iter_mut().enumerate() {
        s.handle_input(
            Instant::from_micros(0),
            Input::Connected { peer: ids[1 - i] },
        );
    }
    swarms[0]
        .publish_init(Instant::from_micros(0), "video/mp4", vec![0; 100])
        .expect("source");
    while now < end {
        for (i, s) in swarms.iter_mut().enumerate() {
            while let Some(out) = s.poll_output() {
                if let Output::Transmit { data, .. } = &out {
                    order += 1;
                    wire.insert((now + LATENCY_US, order), (1 - i, data.to_vec()));
                }
                if i == 1 {
                    if let Output::Play(p) = &out {
                        let at = Instant::from_micros(now);
                        match report {
                            Report::Input => {
                                s.handle_input(at, Input::Playhead { pts_us: p.pts_us })
                            }
                            Report::Command => s.playhead(at, p.pts_us),
                        }
                    }
                    viewer_out.push(out);
                }
            }
        }
        timeouts.push((now, swarms[1].poll_timeout()));
        let wake = swarms
            .iter()
            .filter_map(|s| s.poll_timeout())
            .map(|t| t.as_micros())
            .chain(wire.keys().next().map(|k| k.0))
            .chain([next_publish])
            .min()
            .expect("publishing never stops");
        now = wake.max(now);
        if now >= next_publish {
            let meta = SegmentMeta {
                pts_us: seq_pts,
                duration_us: 200_000,
                keyframe: seq_pts % 1_000_000 == 0,
            };
            swarms[0]
                .publish_segment(Instant::from_micros(now), meta, vec![7; 20_000])
                .expect("source");
            seq_pts += 200_000;
            next_publish += 200_000;
            continue;
        }
        if let Some(entry) = wire.first_entry() {
            if entry.key().0 <= now {
                let (to, data) = entry.remove();
                let peer = ids[1 - to];
                swarms[to].handle_input(
                    Instant::from_micros(now),
                    Input::Receive { peer, data: &data },
                );
                continue;
            }
        }
        for s in swarms.iter_mut() {
            if s.poll_timeout().is_some_and(|t| t.as_micros() <= now) {
                s.handle_input(Instant::from_micros(now), Input::Timeout);
            }
        }
    }
    (viewer_out, timeouts)
}

fn key_stream() -> StreamId {
    StreamKey::from_secret([9; 32]).stream_id()
}

/// The commands do exactly what the inputs they stand for do.
#[test]
fn a_command_is_the_same_as_its_input() {
    let (by_input, t_input) = run(Report::Input, 4);
    let (by_command, t_command) = run(Report::Command, 4);
    let plays = by_input
        .iter()
        .filter(|o| matches!(o, Output::Play(_)))
        .count();
    assert!(plays >= 10, "the viewer played {plays} segments");
    assert!(by_input == by_command, "outputs differ");
    assert_eq!(t_input, t_command);
}

/// While it has a neighbour the core asks to be woken within a maintenance tick, never in the
/// past.
#[test]
fn the_timer_table_wakes_the_core_within_a_tick() {
    let (_, timeouts) = run(Report::Command, 2);
    assert!(timeouts.len() > 100);
    for (now, t) in timeouts {
        let t = t.expect("a neighbour to look after").as_micros();
        assert!(
            (now..=now + 100_000).contains(&t),
            "at {now} µs: wake at {t} µs"
        );
    }
}
