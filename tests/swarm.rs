//! In-process swarm scenarios: a source and dozens of viewers over an in-memory network with
//! per-link latency and per-peer uplink serialisation, driven by a virtual clock that steps to
//! the next event or timeout (quinn-proto's `Pair`, scaled up). Everything is seeded: a failing
//! seed reproduces exactly.

use std::collections::{BTreeMap, BTreeSet};
use swarmcast::core::{
    Config, DisconnectReason, Input, Instant, Output, PeerId, SegmentMeta, StreamKey, Swarm,
};

const SEGMENT_US: u64 = 500_000;
const BITRATE_BPS: u64 = 2_000_000;

/// SplitMix64, for the harness's own choices.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

enum Event {
    Deliver {
        from: usize,
        to: usize,
        data: Vec<u8>,
    },
    Connected {
        a: usize,
        b: usize,
    },
    Disconnected {
        at: usize,
        peer: usize,
    },
    Drained {
        from: usize,
        to: usize,
        bytes: usize,
    },
}

struct Node {
    swarm: Swarm,
    id: PeerId,
    uplink_bps: u64,
    free_at: u64,
    backlog: BTreeMap<usize, usize>,
    played: Vec<u64>,
    skipped: Vec<u64>,
    bad_plays: u64,
    inits: u32,
    cut: Vec<(usize, DisconnectReason)>,
    corrupt: bool,
    joined: bool,
}

struct Net {
    now: u64,
    nodes: Vec<Node>,
    by_id: BTreeMap<PeerId, usize>,
    events: BTreeMap<(u64, u64), Event>,
    ev_seq: u64,
    links: BTreeSet<(usize, usize)>,
    latency: BTreeMap<(usize, usize), u64>,
    rng: Rng,
    published: BTreeMap<u64, Vec<u8>>,
    /// Receivers of corrupted pieces from each corrupt node.
    victims: BTreeSet<(usize, usize)>,
    next_publish: u64,
    timeouts_at_now: u32,
}

impl Net {
    fn new(seed: u64, viewers: usize, viewer_config: impl Fn(usize) -> Config) -> Net {
        let mut rng = Rng(seed);
        let key = StreamKey::from_secret([7; 32]);
        let mut nodes = Vec::new();
        let mut by_id = BTreeMap::new();
        for i in 0..=viewers {
            let mut id = [0u8; 20];
            id[..8].copy_from_slice(&rng.next().to_le_bytes());
            id[19] = i as u8;
            let id = PeerId(id);
            let swarm = if i == 0 {
                let cfg = Config {
                    seed: seed ^ 1,
                    ..Config::default()
                };
                Swarm::source(cfg, StreamKey::from_secret(key.secret()), id)
            } else {
                let mut cfg = viewer_config(i);
                cfg.seed = seed.wrapping_mul(31).wrapping_add(i as u64);
                Swarm::viewer(cfg, key.stream_id(), id)
            };
            by_id.insert(id, i);
            nodes.push(Node {
                swarm,
                id,
                uplink_bps: if i == 0 { 20_000_000 } else { 10_000_000 },
                free_at: 0,
                backlog: BTreeMap::new(),
                played: Vec::new(),
                skipped: Vec::new(),
                bad_plays: 0,
                inits: 0,
                cut: Vec::new(),
                corrupt: false,
                joined: i == 0,
            });
        }
        let mut net = Net {
            now: 0,
            nodes,
            by_id,
            events: BTreeMap::new(),
            ev_seq: 0,
            links: BTreeSet::new(),
            latency: BTreeMap::new(),
            rng,
            published: BTreeMap::new(),
            victims: BTreeSet::new(),
            next_publish: 0,
            timeouts_at_now: 0,
        };
        net.nodes[0]
            .swarm
            .publish_init(
                Instant::ZERO,
                "video/mp4; codecs=\"avc1.42001f\"",
                vec![1; 900],
            )
            .unwrap();
        net.drain(0);
        net
    }

    fn schedule(&mut self, at: u64, ev: Event) {
        self.ev_seq += 1;
        self.events.insert((at, self.ev_seq), ev);
    }

    fn latency(&mut self, a: usize, b: usize) -> u64 {
        let key = (a.min(b), a.max(b));
        if let Some(l) = self.latency.get(&key) {
            return *l;
        }
        let l = 10_000 + self.rng.below(50_000);
        self.latency.insert(key, l);
        l
    }

    /// Tracker emulation: a joining viewer connects to some random earlier joiners.
    fn join(&mut self, i: usize, degree: usize) {
        self.nodes[i].joined = true;
        let mut cands: Vec<usize> = (0..self.nodes.len())
            .filter(|&j| j != i && self.nodes[j].joined)
            .collect();
        for _ in 0..degree.min(cands.len()) {
            let j = cands.swap_remove(self.rng.below(cands.len() as u64) as usize);
            self.connect(i, j);
        }
    }

    fn connect(&mut self, a: usize, b: usize) {
        let key = (a.min(b), a.max(b));
        if a == b || self.links.contains(&key) {
            return;
        }
        self.links.insert(key);
        let l = self.latency(a, b);
        // ICE + DTLS + SCTP: a few round trips.
        self.schedule(self.now + 3 * l, Event::Connected { a, b });
    }

    fn input(&mut self, i: usize, input: Input<'_>) {
        let now = Instant::from_micros(self.now);
        self.nodes[i].swarm.handle_input(now, input);
        self.drain(i);
    }

    /// Carries out node `i`'s outputs; reports transport backlogs back to it.
    fn drain(&mut self, i: usize) {
        loop {
            let mut touched = BTreeSet::new();
            while let Some(out) = self.nodes[i].swarm.poll_output() {
                match out {
                    Output::Transmit { peer, mut data } => {
                        let j = self.by_id[&peer];
                        if !self.links.contains(&(i.min(j), i.max(j))) {
                            continue;
                        }
                        if self.nodes[i].corrupt && data.first() == Some(&4) {
                            // Flip the payload's last byte: a forged piece on the wire.
                            let last = data.len() - 1;
                            data[last] ^= 0x5a;
                            self.victims.insert((i, j));
                        }
                        let node = &mut self.nodes[i];
                        let start = node.free_at.max(self.now);
                        let finish = start + data.len() as u64 * 8 * 1_000_000 / node.uplink_bps;
                        node.free_at = finish;
                        *node.backlog.entry(j).or_insert(0) += data.len();
                        let bytes = data.len();
                        let l = self.latency(i, j);
                        self.schedule(
                            finish + l,
                            Event::Deliver {
                                from: i,
                                to: j,
                                data,
                            },
                        );
                        self.schedule(
                            finish,
                            Event::Drained {
                                from: i,
                                to: j,
                                bytes,
                            },
                        );
                        touched.insert(j);
                    }
                    Output::Disconnect { peer, reason } => {
                        let j = self.by_id[&peer];
                        self.nodes[i].cut.push((j, reason));
                        if self.links.remove(&(i.min(j), i.max(j))) {
                            let l = self.latency(i, j);
                            self.schedule(self.now + l, Event::Disconnected { at: j, peer: i });
                        }
                    }
                    Output::Play(seg) => {
                        let node = &mut self.nodes[i];
                        if self.published.get(&seg.seq) != Some(&seg.data) {
                            node.bad_plays += 1;
                        }
                        node.played.push(seg.seq);
                        if std::env::var("TRACE").is_ok() {
                            println!("{} node {i} play {}", self.now, seg.seq);
                        }
                    }
                    Output::Skip { seq } => {
                        if std::env::var("TRACE").is_ok() {
                            println!("{} node {i} skip {seq}", self.now);
                        }
                        self.nodes[i].skipped.push(seq)
                    }
                    Output::Init(_) => self.nodes[i].inits += 1,
                    Output::Connect { peer } => {
                        let j = self.by_id[&peer];
                        if self.nodes[j].joined {
                            self.connect(i, j);
                        }
                    }
                    Output::Signal { .. } => {}
                }
            }
            if touched.is_empty() {
                return;
            }
            for j in touched {
                let bytes = self.nodes[i].backlog.get(&j).copied().unwrap_or(0);
                let peer = self.nodes[j].id;
                let now = Instant::from_micros(self.now);
                self.nodes[i]
                    .swarm
                    .handle_input(now, Input::Buffered { peer, bytes });
            }
        }
    }

    fn publish(&mut self) {
        let seq = self.published.len() as u64;
        let len = (BITRATE_BPS * SEGMENT_US / 8_000_000) as usize;
        let mut r = Rng(seq.wrapping_mul(0x1234_5678_9abc));
        let data: Vec<u8> = (0..len).map(|_| r.next() as u8).collect();
        self.published.insert(seq, data.clone());
        let meta = SegmentMeta {
            pts_us: self.now,
            duration_us: SEGMENT_US as u32,
            keyframe: true,
        };
        let now = Instant::from_micros(self.now);
        let got = self.nodes[0]
            .swarm
            .publish_segment(now, meta, data)
            .unwrap();
        assert_eq!(got, seq);
        self.drain(0);
    }

    /// Runs until `until` µs, publishing a segment every `SEGMENT_US` while `publish_until`.
    fn run(&mut self, until: u64, publish_until: u64, joins: &mut Vec<(u64, usize)>) {
        loop {
            let next_event = self.events.keys().next().map(|k| k.0);
            let next_timeout = self
                .nodes
                .iter()
                .filter(|n| n.joined)
                .filter_map(|n| n.swarm.poll_timeout())
                .map(|t| t.as_micros())
                .min();
            let next_join = joins.first().map(|j| j.0);
            let next_pub = (self.next_publish < publish_until).then_some(self.next_publish);
            let t = [next_event, next_timeout, next_join, next_pub]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(u64::MAX);
            if t > until {
                self.now = until;
                return;
            }
            if t == self.now {
                self.timeouts_at_now += 1;
                assert!(self.timeouts_at_now < 100_000, "busy loop at {t}µs");
            } else {
                self.timeouts_at_now = 0;
            }
            self.now = t.max(self.now);
            if next_pub == Some(t) {
                self.next_publish += SEGMENT_US;
                self.publish();
                continue;
            }
            if next_join == Some(t) {
                let (_, i) = joins.remove(0);
                self.join(i, 4);
                continue;
            }
            if next_event == Some(t) {
                let (_, ev) = self.events.pop_first().unwrap();
                match ev {
                    Event::Deliver { from, to, data } => {
                        if self.links.contains(&(from.min(to), from.max(to))) {
                            let peer = self.nodes[from].id;
                            self.input(to, Input::Receive { peer, data: &data });
                        }
                    }
                    Event::Connected { a, b } => {
                        if self.links.contains(&(a.min(b), a.max(b))) {
                            let (ia, ib) = (self.nodes[a].id, self.nodes[b].id);
                            self.input(a, Input::Connected { peer: ib });
                            self.input(b, Input::Connected { peer: ia });
                        }
                    }
                    Event::Disconnected { at, peer } => {
                        let peer = self.nodes[peer].id;
                        self.input(at, Input::Disconnected { peer });
                    }
                    Event::Drained { from, to, bytes } => {
                        let b = self.nodes[from].backlog.entry(to).or_insert(0);
                        *b = b.saturating_sub(bytes);
                        let bytes = *b;
                        let peer = self.nodes[to].id;
                        self.input(from, Input::Buffered { peer, bytes });
                    }
                }
                continue;
            }
            for i in 0..self.nodes.len() {
                if self.nodes[i].joined
                    && self.nodes[i]
                        .swarm
                        .poll_timeout()
                        .is_some_and(|w| w.as_micros() <= t)
                {
                    self.input(i, Input::Timeout);
                }
            }
        }
    }
}

fn viewers_config(_: usize) -> Config {
    Config::default()
}

/// Checks every viewer played a consecutive run of segments from its start to near the end,
/// with only verified bytes. Returns (total skips, worst start seq).
fn check_playback(net: &Net, skip: &BTreeSet<usize>, last_seq: u64) -> (usize, u64) {
    let mut skips = 0;
    let mut worst_start = 0;
    for (i, n) in net.nodes.iter().enumerate().skip(1) {
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
    for (i, n) in net.nodes.iter().enumerate() {
        let st = n.swarm.stats();
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

    // The source's cap: 3 × bitrate over the run, plus the bucket's burst (a quarter second).
    let src = net.nodes[0].swarm.stats().clone();
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
    let (from_src, from_peers): (u64, u64) = net.nodes[1..]
        .iter()
        .map(|n| {
            (
                n.swarm.stats().bytes_from_source,
                n.swarm.stats().bytes_from_peers,
            )
        })
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    let lags: Vec<f64> = net.nodes[1..]
        .iter()
        .filter_map(|n| n.swarm.stats().play_lag)
        .map(|d| d.as_secs_f64())
        .collect();
    println!(
        "peers carried {:.1}% of viewer traffic; play lag mean {:.2}s max {:.2}s",
        100.0 * from_peers as f64 / (from_src + from_peers) as f64,
        lags.iter().sum::<f64>() / lags.len() as f64,
        lags.iter().cloned().fold(0.0, f64::max)
    );
}
