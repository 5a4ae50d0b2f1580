//! In-process swarm scenarios: a source and dozens of viewers, each a real `client::Node`, over
//! the in-memory network of `common` (per-link latency, per-peer uplink serialisation, a fake
//! tracker), driven by a virtual clock that steps to the next event or timeout (quinn-proto's
//! `Pair`, scaled up); and single-core scenarios scripted message by message. Everything is
//! seeded: a failing seed reproduces exactly.

use std::collections::BTreeSet;
use std::time::Duration;
use swarmcast::core::wire::Message;
use swarmcast::core::{
    Config, DisconnectReason, Input, Instant, Output, PeerId, SegmentHeader, SegmentMeta,
    SignedHeader, StreamKey, Swarm,
};

mod common;
use common::{Net, Rng, BITRATE_BPS};

fn viewers_config(_: usize) -> Config {
    Config::default()
}

/// Checks every viewer played a consecutive run of segments from its start to near the end,
/// with only verified bytes. Returns (total skips, worst start seq).
fn check_playback(net: &Net, skip: &BTreeSet<usize>, last_seq: u64) -> (usize, u64) {
    let mut skips = 0;
    let mut worst_start = 0;
    for (i, n) in net.peers.iter().enumerate().skip(1) {
        assert_eq!(n.bad_plays, 0, "viewer {i} played forged or wrong bytes");
        if skip.contains(&i) {
            continue;
        }
        assert!(!n.played.is_empty(), "viewer {i} played nothing");
        let first = n.played[0];
        worst_start = worst_start.max(first);
        let mut expect = first;
        let mut all: Vec<u64> = n.played.iter().chain(&n.skipped).copied().collect();
        all.sort_unstable();
        for s in &all {
            assert_eq!(*s, expect, "viewer {i}: out of order / gap at {expect}");
            expect += 1;
        }
        assert!(
            expect > last_seq,
            "viewer {i} only reached {expect}, stream reached {last_seq}"
        );
        let mut sorted = n.played.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, n.played, "viewer {i} played out of order");
        skips += n.skipped.len();
    }
    (skips, worst_start)
}

#[test]
fn thirty_viewers_play_everything_in_order_and_the_source_stays_capped() {
    let viewers = 32;
    let mut net = Net::new(0xC0FFEE, viewers, viewers_config);
    let mut joins: Vec<(u64, usize)> = (1..=viewers)
        .map(|i| (200_000 + i as u64 * 100_000, i))
        .collect();
    let duration = 30_000_000;
    net.run(duration, duration - 1, &mut joins);
    // Let the last segments propagate.
    net.run(duration + 3_000_000, duration - 1, &mut joins);
    let last_seq = *net.published.keys().last().unwrap();
    for (i, n) in net.peers.iter().enumerate() {
        let st = n.node.stats();
        println!(
            "node {i}: played {} (from {:?}) skipped {} {:?} depths {:?} nb {} src {} peers {} up {} dup {} pulled {} stalls {} lag {:?} cut {:?}",
            n.played.len(), n.played.first(), n.skipped.len(), &n.skipped[..n.skipped.len().min(8)], st.stripe_depths, st.neighbours,
            st.bytes_from_source, st.bytes_from_peers, st.bytes_up, st.duplicate_bytes, st.pieces_pulled, st.stalls, st.play_lag, n.cut
        );
    }
    let (skips, worst_start) = check_playback(&net, &BTreeSet::new(), last_seq - 1);
    assert_eq!(skips, 0, "segments skipped");
    assert!(
        worst_start <= 12,
        "a viewer started at segment {worst_start}"
    );
    // Upload to spare everywhere: nobody may claim the swarm is short of capacity.
    for (i, n) in net.peers.iter().enumerate().skip(1) {
        assert!(
            !n.node.stats().capacity_short,
            "viewer {i} reports insufficient capacity"
        );
    }

    // The source's cap: 3 × bitrate over the run, plus the bucket's burst (a quarter second).
    let src = net.peers[0].node.stats().clone();
    let secs = (duration + 3_000_000) as f64 / 1e6;
    let cap = 3.0 * BITRATE_BPS as f64 / 8.0;
    let ratio = src.wire_bytes_up as f64 / (secs * BITRATE_BPS as f64 / 8.0);
    println!(
        "source uploaded {} bytes = {ratio:.2} × bitrate",
        src.wire_bytes_up
    );
    assert!(
        (src.wire_bytes_up as f64) <= cap * secs + cap / 4.0 + 16_384.0,
        "source sent {} bytes in {secs}s, cap {cap} B/s",
        src.wire_bytes_up
    );
    let (from_src, from_peers): (u64, u64) = net.peers[1..]
        .iter()
        .map(|n| {
            (
                n.node.stats().bytes_from_source,
                n.node.stats().bytes_from_peers,
            )
        })
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    let lags: Vec<f64> = net.peers[1..]
        .iter()
        .filter_map(|n| n.node.stats().play_lag)
        .map(|d| d.as_secs_f64())
        .collect();
    println!(
        "peers carried {:.1}% of viewer traffic; play lag mean {:.2}s max {:.2}s",
        100.0 * from_peers as f64 / (from_src + from_peers) as f64,
        lags.iter().sum::<f64>() / lags.len() as f64,
        lags.iter().cloned().fold(0.0, f64::max)
    );
}

#[test]
fn a_viewer_forwarding_forged_pieces_is_cut_off_and_nothing_forged_is_played() {
    let viewers = 30;
    let mut net = Net::new(0xBAD5EED, viewers, viewers_config);
    let forger = 3;
    net.peers[forger].corrupt = true;
    let mut joins: Vec<(u64, usize)> = (1..=viewers)
        .map(|i| (200_000 + i as u64 * 100_000, i))
        .collect();
    let duration = 20_000_000;
    net.run(duration, duration - 1, &mut joins);
    net.run(duration + 3_000_000, duration - 1, &mut joins);
    assert!(
        !net.victims.is_empty(),
        "the forger never got to forward anything: the test proves nothing"
    );
    for &(f, v) in &net.victims {
        assert!(
            net.peers[v]
                .cut
                .iter()
                .any(|(p, r)| *p == f && *r == DisconnectReason::Forged),
            "node {v} received forged pieces from {f} but did not cut it off: {:?}",
            net.peers[v].cut
        );
        assert!(net.peers[v].node.stats().forgers_cut >= 1);
    }
    println!("forger cut off by {} peers", net.victims.len());
    let last_seq = *net.published.keys().last().unwrap();
    let (skips, _) = check_playback(&net, &BTreeSet::from([forger]), last_seq - 1);
    let honest_segments: usize = net.peers[1..].iter().map(|n| n.played.len()).sum();
    println!("skips among honest viewers: {skips} of {honest_segments}");
    assert!(skips * 100 <= honest_segments, "{skips} skips");
}

/// A lone viewer with one fake neighbour we script by hand.
fn lone_viewer() -> (Swarm, PeerId, Vec<u8>) {
    let key = StreamKey::from_secret([9; 32]);
    let me = PeerId([1; 20]);
    let them = PeerId([2; 20]);
    let mut v = Swarm::viewer(Config::default(), key.stream_id(), me);
    v.handle_input(Instant::ZERO, Input::Connected { peer: them });
    let hs = Message::Handshake {
        version: swarmcast::core::wire::PROTOCOL_VERSION,
        stream: key.stream_id(),
        peer: them,
        role: swarmcast::core::Role::Viewer,
        upload_kbps: 1000,
    }
    .encode();
    (v, them, hs)
}

fn disconnects(s: &mut Swarm) -> Vec<(PeerId, DisconnectReason)> {
    let mut out = Vec::new();
    while let Some(o) = s.poll_output() {
        if let Output::Disconnect { peer, reason } = o {
            out.push((peer, reason));
        }
    }
    out
}

/// Drains outputs: (pings sent to `them`, disconnect reasons).
fn pings_and_disconnects(s: &mut Swarm, them: PeerId) -> (usize, Vec<DisconnectReason>) {
    let (mut pings, mut cuts) = (0, Vec::new());
    while let Some(o) = s.poll_output() {
        match o {
            Output::Transmit { peer, data } if peer == them => {
                if matches!(Message::decode(&data), Ok(Message::Ping { .. })) {
                    pings += 1;
                }
            }
            Output::Disconnect { peer, reason } if peer == them => cuts.push(reason),
            _ => {}
        }
    }
    (pings, cuts)
}

#[test]
fn a_neighbour_that_goes_silent_is_dropped_but_not_one_that_only_pings_or_a_frozen_self() {
    let (mut v, them, hs) = lone_viewer();
    let ms = Instant::from_millis;
    v.handle_input(
        ms(10),
        Input::Receive {
            peer: them,
            data: &hs,
        },
    );
    pings_and_disconnects(&mut v, them);
    // An idle but live neighbour (it only answers pings) stays, however long, and the idle link
    // is pinged so that it hears from us too.
    let mut pings = 0;
    for t in (100..=10_000).step_by(100) {
        v.handle_input(ms(t), Input::Timeout);
        if t % 300 == 0 {
            let pong = Message::Pong { token: 0 }.encode();
            v.handle_input(
                ms(t),
                Input::Receive {
                    peer: them,
                    data: &pong,
                },
            );
        }
        let (p, cuts) = pings_and_disconnects(&mut v, them);
        assert!(cuts.is_empty(), "dropped at {t} ms: {cuts:?}");
        pings += p;
    }
    assert!(pings >= 10, "only {pings} pings on an idle link in 10 s");
    assert_eq!(v.stats().neighbours, 1);

    // Then nothing more from it: dropped as silent after 4 s, not before.
    let mut dropped_at = None;
    for t in (10_100..=16_000).step_by(100) {
        v.handle_input(ms(t), Input::Timeout);
        let (_, cuts) = pings_and_disconnects(&mut v, them);
        if !cuts.is_empty() {
            assert_eq!(cuts, vec![DisconnectReason::Silent]);
            assert!(dropped_at.is_none(), "dropped twice");
            dropped_at = Some(t);
        }
    }
    let at = dropped_at.expect("a silent neighbour was never dropped");
    assert!(
        (13_900..=14_600).contains(&at),
        "dropped at {at} ms (last heard at 9,900 ms)"
    );
    assert_eq!(v.stats().neighbours, 0);

    // A peer that was itself frozen for 10 s (no input at all) does not blame its neighbours
    // for the silence: their messages are still queued for it.
    let (mut v, them, hs) = lone_viewer();
    v.handle_input(
        ms(10),
        Input::Receive {
            peer: them,
            data: &hs,
        },
    );
    v.handle_input(ms(10_010), Input::Timeout);
    v.handle_input(ms(10_110), Input::Timeout);
    let (_, cuts) = pings_and_disconnects(&mut v, them);
    assert!(
        cuts.is_empty(),
        "a frozen peer dropped its neighbour: {cuts:?}"
    );
    assert_eq!(v.stats().neighbours, 1);
}

#[test]
fn a_restarted_source_is_noticed_from_its_first_genuine_header_and_replays_are_not() {
    let header = test_header;
    let feed = |v: &mut Swarm, them: PeerId, h: SignedHeader| {
        let data = Message::Header(h).encode();
        v.handle_input(
            Instant::from_millis(20),
            Input::Receive {
                peer: them,
                data: &data,
            },
        );
        let mut out = (0, Vec::new());
        while let Some(o) = v.poll_output() {
            match o {
                Output::SourceRestarted => out.0 += 1,
                Output::Disconnect { reason, .. } => out.1.push(reason),
                _ => {}
            }
        }
        out
    };
    // A viewer holding session 1: segments 0..=20, captured at 1,000 s + 0.2 s each.
    let viewer_of_session_1 = || {
        let (mut v, them, hs) = lone_viewer();
        v.handle_input(
            Instant::from_millis(10),
            Input::Receive {
                peer: them,
                data: &hs,
            },
        );
        for seq in 0..=20 {
            assert_eq!(
                feed(&mut v, them, header(seq, 1_000_000 + seq * 200)),
                (0, vec![])
            );
        }
        (v, them)
    };
    let (mut v, them) = viewer_of_session_1();
    // Old genuine headers replayed: nothing.
    assert_eq!(feed(&mut v, them, header(3, 1_000_600)), (0, vec![]));
    assert_eq!(feed(&mut v, them, header(19, 1_003_800)), (0, vec![]));
    // A forged header claiming a later capture time: cut as a forger, no restart.
    let mut forged = header(0, 1_010_000);
    forged.header.pts_us += 1;
    assert_eq!(
        feed(&mut v, them, forged),
        (0, vec![DisconnectReason::Forged])
    );
    // The restarted source's first header (numbered from 0 again, captured later), from an
    // honest neighbour: reported once.
    let (mut v, them) = viewer_of_session_1();
    assert_eq!(feed(&mut v, them, header(0, 1_010_000)), (1, vec![]));
    assert_eq!(feed(&mut v, them, header(1, 1_010_200)), (0, vec![]));
    // A viewer following the new session (fresh, after rejoining) is offered an old-session
    // segment numbered beyond its newest by a neighbour that has not noticed the restart:
    // ignored, the neighbour is not cut, and it is never played.
    let (mut v, them, hs) = lone_viewer();
    v.handle_input(
        Instant::from_millis(10),
        Input::Receive {
            peer: them,
            data: &hs,
        },
    );
    for seq in 0..=2 {
        feed(&mut v, them, header(seq, 1_010_000 + seq * 200));
    }
    assert_eq!(feed(&mut v, them, header(8, 1_001_600)), (0, vec![]));
    assert_eq!(v.stats().newest_seq, Some(2));
    assert_eq!(v.stats().neighbours, 1);
}

/// Signed header of a one-piece segment `seq` captured at `pts_ms` (stream key `[9; 32]`).
fn test_header(seq: u64, pts_ms: u64) -> SignedHeader {
    let key = StreamKey::from_secret([9; 32]);
    let meta = SegmentMeta {
        pts_us: pts_ms * 1000,
        duration_us: 200_000,
        keyframe: true,
    };
    key.sign_header(SegmentHeader::describe(
        seq,
        0,
        meta,
        pts_ms * 1000,
        &[seq as u8; 100],
    ))
}

/// Feeds `msg` from `from` at `t_ms`; returns (restart reports, disconnects, messages sent).
#[allow(clippy::type_complexity)]
fn feed_msg(
    v: &mut Swarm,
    t_ms: u64,
    from: PeerId,
    msg: &Message,
) -> (
    usize,
    Vec<(PeerId, DisconnectReason)>,
    Vec<(PeerId, Message)>,
) {
    let data = msg.encode();
    v.handle_input(
        Instant::from_millis(t_ms),
        Input::Receive {
            peer: from,
            data: &data,
        },
    );
    let mut out = (0, Vec::new(), Vec::new());
    while let Some(o) = v.poll_output() {
        match o {
            Output::SourceRestarted => out.0 += 1,
            Output::Disconnect { peer, reason } => out.1.push((peer, reason)),
            Output::Transmit { peer, data } => {
                if let Ok(m) = Message::decode(&data) {
                    out.2.push((peer, m));
                }
            }
            _ => {}
        }
    }
    out
}

/// Connects `peer` (handshake in, with `role`) to `v` at `t_ms`.
fn add_neighbour(v: &mut Swarm, t_ms: u64, peer: PeerId, role: swarmcast::core::Role) {
    v.handle_input(Instant::from_millis(t_ms), Input::Connected { peer });
    let hs = Message::Handshake {
        version: swarmcast::core::wire::PROTOCOL_VERSION,
        stream: StreamKey::from_secret([9; 32]).stream_id(),
        peer,
        role,
        upload_kbps: 1000,
    };
    feed_msg(v, t_ms, peer, &hs);
}

#[test]
fn a_restart_reaches_viewers_holding_the_old_numbers_and_those_not_connected_to_the_source() {
    use swarmcast::core::Role;
    let (a, b, src) = (PeerId([2; 20]), PeerId([3; 20]), PeerId([4; 20]));
    // A viewer that followed session 1 from its start: it holds segments 0..=20, so the new
    // session's numbers are all ones it holds.
    let session_1 = || {
        let mut v = Swarm::viewer(
            Config::default(),
            StreamKey::from_secret([9; 32]).stream_id(),
            PeerId([1; 20]),
        );
        add_neighbour(&mut v, 10, a, Role::Viewer);
        add_neighbour(&mut v, 10, b, Role::Viewer);
        for seq in 0..=20 {
            let (r, cut, _) = feed_msg(
                &mut v,
                20,
                a,
                &Message::Header(test_header(seq, 1_000_000 + seq * 200)),
            );
            assert_eq!((r, cut), (0, vec![]));
        }
        v
    };

    // The restarted source connects and announces its segment 0, a number we hold (the old
    // session's): we ask it for that header, once, and it shows the restart.
    let mut v = session_1();
    add_neighbour(&mut v, 30, src, Role::Source);
    let (_, _, sent) = feed_msg(&mut v, 40, src, &Message::Have { seq: 0 });
    assert!(
        sent.contains(&(src, Message::Request { seq: 0, pieces: 0 })),
        "no header probe: {sent:?}"
    );
    let (_, _, sent) = feed_msg(&mut v, 41, src, &Message::Have { seq: 1 });
    assert!(
        !sent.contains(&(src, Message::Request { seq: 1, pieces: 0 })),
        "probed twice: {sent:?}"
    );
    let new_0 = test_header(0, 1_010_000);
    let (restarts, cuts, sent) = feed_msg(&mut v, 50, src, &Message::Header(new_0.clone()));
    assert_eq!((restarts, cuts), (1, vec![]));
    // ...and passes the header on to the neighbours that may not have noticed.
    for p in [a, b] {
        assert!(
            sent.contains(&(p, Message::Header(new_0.clone()))),
            "not passed on to {p:?}: {sent:?}"
        );
    }

    // A viewer not connected to the source: a neighbour that follows the new session connects
    // with a bitfield behind our newest; its header for that number shows the restart.
    let mut v = session_1();
    let fresh = PeerId([5; 20]);
    add_neighbour(&mut v, 30, fresh, Role::Viewer);
    let (_, _, sent) = feed_msg(
        &mut v,
        40,
        fresh,
        &Message::Bitfield {
            base: 0,
            bits: vec![0b111],
        },
    );
    assert!(
        sent.contains(&(fresh, Message::Request { seq: 2, pieces: 0 })),
        "no header probe: {sent:?}"
    );
    let (restarts, _, _) = feed_msg(
        &mut v,
        50,
        fresh,
        &Message::Header(test_header(2, 1_010_400)),
    );
    assert_eq!(restarts, 1);

    // The viewer rejoins (fresh state, new id) and meets a neighbour still on session 1: its
    // old-session header is ignored, the neighbour is shown the new session's header, and its
    // old-session pieces are dropped without cutting it off.
    let mut v = session_1();
    feed_msg(&mut v, 40, a, &Message::Header(new_0.clone()));
    let mut w = v.rejoin(PeerId([6; 20]), 7);
    let stale = PeerId([7; 20]);
    add_neighbour(&mut w, 100, stale, Role::Viewer);
    let (r, cuts, sent) = feed_msg(
        &mut w,
        110,
        stale,
        &Message::Header(test_header(20, 1_004_000)),
    );
    assert_eq!((r, cuts), (0, vec![]));
    assert_eq!(w.stats().newest_seq, None, "an old-session header was kept");
    assert!(
        sent.contains(&(stale, Message::Header(new_0.clone()))),
        "the stale neighbour was not shown the new session: {sent:?}"
    );
    let (_, cuts, _) = feed_msg(
        &mut w,
        120,
        stale,
        &Message::Piece {
            seq: 20,
            index: 0,
            data: vec![20; 100],
        },
    );
    assert_eq!(cuts, vec![]);
    // The new session's headers are taken as usual.
    feed_msg(
        &mut w,
        130,
        stale,
        &Message::Header(test_header(1, 1_010_200)),
    );
    assert_eq!(w.stats().newest_seq, Some(1));
}

#[test]
fn a_viewer_whose_neighbours_have_no_upload_to_spare_says_capacity_is_short() {
    let (mut v, them, hs) = lone_viewer();
    v.handle_input(
        Instant::ZERO,
        Input::Receive {
            peer: them,
            data: &hs,
        },
    );
    // The only neighbour receives no stripe itself: nobody can be our parent.
    let status = Message::Status {
        depths: vec![255; 4],
        free: 0,
        displace_kbps: u32::MAX,
    }
    .encode();
    v.handle_input(
        Instant::ZERO,
        Input::Receive {
            peer: them,
            data: &status,
        },
    );
    let mut short_at = None;
    for ms in (100..=3000).step_by(100) {
        let now = Instant::from_micros(ms * 1000);
        // Keep the neighbour alive (it answers pings; any message counts).
        let pong = Message::Pong { token: 0 }.encode();
        v.handle_input(
            now,
            Input::Receive {
                peer: them,
                data: &pong,
            },
        );
        v.handle_input(now, Input::Timeout);
        while v.poll_output().is_some() {}
        if v.stats().capacity_short && short_at.is_none() {
            short_at = Some(ms);
        }
    }
    let at = short_at.expect("capacity_short never reported");
    assert!((2000..=2300).contains(&at), "reported at {at} ms");
    assert_eq!(v.stats().neighbours, 1);
}

#[test]
fn malformed_bytes_and_protocol_violations_disconnect_cleanly_and_ban() {
    // Garbage after the handshake.
    let (mut v, them, hs) = lone_viewer();
    let t = Instant::from_millis(10);
    v.handle_input(
        t,
        Input::Receive {
            peer: them,
            data: &hs,
        },
    );
    assert!(disconnects(&mut v).is_empty());
    v.handle_input(
        t,
        Input::Receive {
            peer: them,
            data: &[0xff, 0xff, 0xff],
        },
    );
    let d = disconnects(&mut v);
    assert!(
        matches!(d.as_slice(), [(p, DisconnectReason::Malformed(_))] if *p == them),
        "{d:?}"
    );
    // Banned for the session: a new connection from it is refused at once.
    v.handle_input(t, Input::Connected { peer: them });
    assert_eq!(disconnects(&mut v), vec![(them, DisconnectReason::Banned)]);
    assert_eq!(v.stats().neighbours, 0);

    // Anything before the handshake.
    let (mut v, them, _) = lone_viewer();
    v.handle_input(
        t,
        Input::Receive {
            peer: them,
            data: &Message::Have { seq: 1 }.encode(),
        },
    );
    assert!(matches!(
        disconnects(&mut v).as_slice(),
        [(_, DisconnectReason::Protocol(_))]
    ));

    // A piece whose header never came.
    let (mut v, them, hs) = lone_viewer();
    v.handle_input(
        t,
        Input::Receive {
            peer: them,
            data: &hs,
        },
    );
    let piece = Message::Piece {
        seq: 0,
        index: 0,
        data: vec![1; 10],
    }
    .encode();
    v.handle_input(
        t,
        Input::Receive {
            peer: them,
            data: &piece,
        },
    );
    assert!(matches!(
        disconnects(&mut v).as_slice(),
        [(_, DisconnectReason::Protocol(_))]
    ));

    // A header signed by someone else.
    let (mut v, them, hs) = lone_viewer();
    v.handle_input(
        t,
        Input::Receive {
            peer: them,
            data: &hs,
        },
    );
    let meta = SegmentMeta {
        pts_us: 0,
        duration_us: 500_000,
        keyframe: true,
    };
    let forged = StreamKey::from_secret([66; 32]).sign_header(
        swarmcast::core::SegmentHeader::describe(0, 1, meta, 0, &[1, 2, 3]),
    );
    v.handle_input(
        t,
        Input::Receive {
            peer: them,
            data: &Message::Header(forged).encode(),
        },
    );
    assert_eq!(disconnects(&mut v), vec![(them, DisconnectReason::Forged)]);
    assert_eq!(v.stats().forgers_cut, 1);

    // Wrong stream in the handshake.
    let (mut v, them, _) = lone_viewer();
    let hs = Message::Handshake {
        version: swarmcast::core::wire::PROTOCOL_VERSION,
        stream: StreamKey::from_secret([3; 32]).stream_id(),
        peer: them,
        role: swarmcast::core::Role::Viewer,
        upload_kbps: 1,
    }
    .encode();
    v.handle_input(
        t,
        Input::Receive {
            peer: them,
            data: &hs,
        },
    );
    assert!(matches!(
        disconnects(&mut v).as_slice(),
        [(_, DisconnectReason::Protocol(_))]
    ));
}

#[test]
fn random_and_mutated_input_never_panics() {
    let mut rng = Rng(77);
    let key = StreamKey::from_secret([9; 32]);
    let meta = SegmentMeta {
        pts_us: 0,
        duration_us: 500_000,
        keyframe: true,
    };
    let data: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
    let header = key.sign_header(swarmcast::core::SegmentHeader::describe(
        0, 1, meta, 0, &data,
    ));
    let genuine: Vec<Vec<u8>> = vec![
        Message::Header(header).encode(),
        Message::Piece {
            seq: 0,
            index: 1,
            data: data[16320..32640].to_vec(),
        }
        .encode(),
        Message::Bitfield {
            base: 0,
            bits: vec![0xff; 8],
        }
        .encode(),
        Message::Status {
            depths: vec![1, 2, 3, 4],
            free: 3,
            displace_kbps: 100,
        }
        .encode(),
        Message::Subscribe { stripe: 2 }.encode(),
        Message::Request {
            seq: 0,
            pieces: u64::MAX,
        }
        .encode(),
        Message::Init(key.sign_init(1, "video/mp4".into(), vec![1; 100])).encode(),
    ];
    let mut total_cut = 0;
    for round in 0..200u64 {
        let (mut v, them, hs) = lone_viewer();
        let mut now = 0u64;
        v.handle_input(
            Instant::ZERO,
            Input::Receive {
                peer: them,
                data: &hs,
            },
        );
        for _ in 0..50 {
            now += rng.below(50_000);
            let mut msg = genuine[rng.below(genuine.len() as u64) as usize].clone();
            match rng.below(3) {
                0 => {}
                1 => {
                    let i = rng.below(msg.len() as u64) as usize;
                    msg[i] ^= 1 << rng.below(8);
                }
                _ => msg = (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
            }
            v.handle_input(
                Instant::from_micros(now),
                Input::Receive {
                    peer: them,
                    data: &msg,
                },
            );
            if round % 2 == 0 {
                v.handle_input(Instant::from_micros(now), Input::Timeout);
            }
            total_cut += disconnects(&mut v).len();
        }
    }
    assert!(total_cut > 0);
}

/// A swarm shaped like the simulator's defaults (200 ms segments, a keyframe every second,
/// uplinks of 0.5/2/5 × bitrate, viewers joining over 10 s) plays everything with low lag.
/// Per-peer figures: `VIEWERS=100 cargo test --release --test swarm -- --nocapture
/// mixed_uplinks` (100 viewers: lag p50 412 ms, p95 594 ms, nothing skipped).
#[test]
fn mixed_uplinks_play_everything_with_low_lag() {
    let viewers: usize = std::env::var("VIEWERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let class = |i: usize| match i % 10 {
        0 | 1 => 1_000_000u64,
        2..=6 => 4_000_000,
        _ => 10_000_000,
    };
    let mut net = Net::with(
        0xD1A6,
        viewers,
        |i| Config {
            upload_kbps: (class(i) / 1000) as u32,
            window: Duration::from_secs(3),
            ..Config::default()
        },
        class,
        200_000,
        5,
    );
    net.max_latency_us = 150_000;
    let mut joins: Vec<(u64, usize)> = (1..=viewers)
        .map(|i| (200_000 + i as u64 * 10_000_000 / viewers as u64, i))
        .collect();
    let duration = 30_000_000;
    net.run(duration, duration, &mut joins);
    let mut lags = Vec::new();
    for (i, n) in net.peers.iter().enumerate() {
        let st = n.node.stats();
        let nb = n.node.swarm().neighbour_stats();
        let children: u32 = nb.iter().map(|(_, s)| s.child_stripes.count_ones()).sum();
        println!(
            "node {i:3} up {:5} played {:3} skipped {:3} depths {:?} nb {:2} kids {:2} up {:9} dup {:8} pulled {:4} stalls {:3} lag {:?}",
            n.uplink_bps / 1000, n.played.len(), n.skipped.len(), st.stripe_depths, st.neighbours, children,
            st.bytes_up, st.duplicate_bytes, st.pieces_pulled, st.stalls, st.play_lag.map(|d| d.as_millis())
        );
        if let Some(l) = st.play_lag {
            lags.push(l.as_millis());
        }
    }
    lags.sort_unstable();
    let (p50, p95) = (lags[lags.len() / 2], lags[lags.len() * 95 / 100]);
    println!("lag p50 {p50} p95 {p95}");
    // Generous bounds, to catch breakage (the figures are in the doc comment).
    for (i, n) in net.peers.iter().enumerate().skip(1) {
        assert!(
            n.played.len() >= 80,
            "viewer {i} played {} segments",
            n.played.len()
        );
        assert!(
            n.skipped.len() * 50 <= n.played.len(),
            "viewer {i} skipped {} of {}",
            n.skipped.len(),
            n.played.len()
        );
    }
    assert_eq!(lags.len(), viewers, "every viewer reports its lag");
    assert!(p95 < 2_000, "lag p95 {p95} ms");
}

/// What `v` played and skipped after `input` at `t_ms`.
fn plays_after(v: &mut Swarm, t_ms: u64, input: Input<'_>) -> (Vec<u64>, Vec<u64>) {
    v.handle_input(Instant::from_millis(t_ms), input);
    let (mut played, mut skipped) = (Vec::new(), Vec::new());
    while let Some(o) = v.poll_output() {
        match o {
            Output::Play(p) => played.push(p.seq),
            Output::Skip { seq } => skipped.push(seq),
            Output::Disconnect { peer, reason } => panic!("cut {peer:?}: {reason:?}"),
            _ => {}
        }
    }
    (played, skipped)
}

/// A viewer that played one-piece segments 0..=2 from 100 ms on (segment `k`, captured at
/// 1,000,000 + 200 k ms, is due at 100 + 200 k + 1,000 ms on the first-play schedule), knows the
/// header of 3 but none of its data, and holds 4 complete.
fn viewer_missing_segment_3() -> Swarm {
    use swarmcast::core::Role;
    let key = StreamKey::from_secret([9; 32]);
    let mut v = Swarm::viewer(Config::default(), key.stream_id(), PeerId([1; 20]));
    let them = PeerId([2; 20]);
    add_neighbour(&mut v, 10, them, Role::Viewer);
    feed_msg(
        &mut v,
        20,
        them,
        &Message::Init(key.sign_init(0, "video/mp4".into(), vec![1; 100])),
    );
    for seq in 0..=4 {
        let h = test_header(seq, 1_000_000 + seq * 200);
        let mut msgs = vec![Message::Header(h)];
        if seq != 3 {
            msgs.push(Message::Piece {
                seq,
                index: 0,
                data: vec![seq as u8; 100],
            });
        }
        for m in msgs {
            let data = m.encode();
            plays_after(
                &mut v,
                100,
                Input::Receive {
                    peer: them,
                    data: &data,
                },
            );
        }
    }
    v
}

#[test]
fn a_segment_the_players_playhead_reached_is_given_up_after_a_grace_not_on_the_first_schedule() {
    // The player caught up with the live edge: at 500 ms it shows the first frame of segment 3.
    let mut v = viewer_missing_segment_3();
    let pts_3 = (1_000_000 + 3 * 200) * 1000;
    assert_eq!(
        plays_after(&mut v, 500, Input::Playhead { pts_us: pts_3 }),
        (vec![], vec![])
    );
    assert_eq!(plays_after(&mut v, 799, Input::Timeout), (vec![], vec![]));
    assert_eq!(plays_after(&mut v, 800, Input::Timeout), (vec![4], vec![3]));

    // A player behind the schedule changes nothing: 3 goes at 1,700 ms as before.
    let mut v = viewer_missing_segment_3();
    let behind = (1_000_000 + 200) * 1000;
    plays_after(&mut v, 1_000, Input::Playhead { pts_us: behind });
    assert_eq!(plays_after(&mut v, 1_699, Input::Timeout), (vec![], vec![]));
    assert_eq!(
        plays_after(&mut v, 1_700, Input::Timeout),
        (vec![4], vec![3])
    );

    // A report over a second old is ignored (a throttled tab).
    let mut v = viewer_missing_segment_3();
    plays_after(
        &mut v,
        200,
        Input::Playhead {
            pts_us: pts_3 - 100_000,
        },
    );
    assert_eq!(plays_after(&mut v, 1_300, Input::Timeout), (vec![], vec![]));
    assert_eq!(
        plays_after(&mut v, 1_700, Input::Timeout),
        (vec![4], vec![3])
    );
}

/// Viewers allowed two tracker connections each meet the rest through the core's relay (peer
/// exchange, then offers and answers relayed by a common neighbour, as the node does them), and
/// everyone plays. (With one tracker connection each, a viewer whose only offer went to a
/// viewer without room waits for its answer 10 s, and again: the e2e hook's 3 viewers get by,
/// 8 do not always.)
#[test]
fn viewers_limited_to_two_tracker_connections_meet_the_rest_through_the_relay() {
    use swarmcast::client::node::Via;
    let viewers = 8;
    let mut net = Net::build(
        0x5E1A,
        viewers,
        viewers_config,
        |_| 10_000_000,
        500_000,
        1,
        Some(2),
    );
    let mut joins: Vec<(u64, usize)> = (1..=viewers)
        .map(|i| (200_000 + i as u64 * 300_000, i))
        .collect();
    let duration = 30_000_000;
    net.run(duration, duration - 1, &mut joins);
    net.run(duration + 3_000_000, duration - 1, &mut joins);
    let mut relayed = 0;
    for (i, p) in net.peers.iter().enumerate().skip(1) {
        let conns = p.node.conns();
        let via_relay = conns
            .ids()
            .into_iter()
            .filter_map(|id| conns.get(id))
            .filter(|c| c.open && c.via == Via::Relay)
            .count();
        assert!(
            conns.via_tracker() <= 2,
            "viewer {i}: {} via tracker",
            conns.via_tracker()
        );
        relayed += via_relay;
        println!(
            "viewer {i}: neighbours {}, via relay {via_relay}",
            p.node.stats().neighbours
        );
        assert!(
            p.node.stats().neighbours >= 2,
            "viewer {i} found nobody through the relay"
        );
    }
    assert!(relayed >= viewers, "only {relayed} relayed connections");
    let last_seq = *net.published.keys().last().unwrap();
    let (skips, _) = check_playback(&net, &BTreeSet::new(), last_seq - 1);
    assert_eq!(skips, 0, "segments skipped");
}
