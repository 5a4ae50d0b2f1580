//! The in-memory platform the swarm scenarios run on: every peer is a real
//! [`swarmcast::client::node::Node`] (the product's connection table, tracker schedule and
//! relay rules), and this harness only plays its platform — a fake tracker that forwards offers
//! and answers, fake SDP that names the connection it belongs to, per-link latency and per-peer
//! uplink serialisation — on a virtual clock that steps to the next event or timeout
//! (quinn-proto's `Pair`, scaled up). Everything is seeded: a failing seed reproduces exactly.

#![allow(dead_code)] // each test file uses part of the harness

use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use swarmcast::client::binstr;
use swarmcast::client::node::{Action, CloseReason, ConnId, Event, Node, NodeConfig, NodeRole};
use swarmcast::client::tracker::{AnnounceEvent, TrackerMessage, TrackerRequest};
use swarmcast::core::{Config, DisconnectReason, Instant, PeerId, SegmentMeta, StreamKey};

/// The stream's bitrate.
pub const BITRATE_BPS: u64 = 2_000_000;

/// One-way latency between any peer and the tracker.
const TRACKER_LATENCY_US: u64 = 10_000;

/// SplitMix64, for the harness's own choices.
pub struct Rng(pub u64);
impl Rng {
    /// The next value.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

enum Ev {
    /// An event for peer `.0`'s node.
    Node(usize, Event),
    /// A message reaches `to` on its connection `conn` (if that still exists).
    Deliver {
        to: usize,
        conn: ConnId,
        data: Bytes,
    },
    /// `bytes` left `from`'s uplink on its connection `conn`.
    Drained {
        from: usize,
        conn: ConnId,
        bytes: usize,
    },
}

/// One peer: its node and what the harness saw it do.
pub struct Peer {
    /// The product's node.
    pub node: Node,
    /// Uplink, bit/s.
    pub uplink_bps: u64,
    free_at: u64,
    backlog: BTreeMap<ConnId, usize>,
    /// Segments played, in order of play.
    pub played: Vec<u64>,
    /// Segments skipped.
    pub skipped: Vec<u64>,
    /// Plays whose bytes were not the published ones.
    pub bad_plays: u64,
    /// Init segments received.
    pub inits: u32,
    /// Neighbours its core cut off: (peer index, why).
    pub cut: Vec<(usize, DisconnectReason)>,
    /// Flips a byte of every piece it sends (a forger).
    pub corrupt: bool,
    /// Started (its node runs).
    pub joined: bool,
}

/// The network.
pub struct Net {
    /// Virtual time, µs.
    pub now: u64,
    /// Peer 0 is the source.
    pub peers: Vec<Peer>,
    events: BTreeMap<(u64, u64), Ev>,
    ev_seq: u64,
    /// Which (peer, conn) is the other end of each (peer, conn), both ways.
    links: BTreeMap<(usize, ConnId), (usize, ConnId)>,
    latency: BTreeMap<(usize, usize), u64>,
    rng: Rng,
    /// Segment bytes by sequence number.
    pub published: BTreeMap<u64, Vec<u8>>,
    /// Receivers of corrupted pieces from each corrupt peer: (forger, victim).
    pub victims: BTreeSet<(usize, usize)>,
    next_publish: u64,
    timeouts_at_now: u32,
    segment_us: u64,
    keyframe_every: u64,
    /// Largest one-way latency between two peers, µs.
    pub max_latency_us: u64,
    /// The tracker's swarm: peer id → peer, in announce order.
    tracker: Vec<(PeerId, usize)>,
}

/// Fake SDP: the peer and connection it belongs to.
fn sdp(peer: usize, conn: ConnId) -> String {
    format!("v=0 harness {peer} {}", conn.0)
}

fn parse_sdp(sdp: &str) -> Option<(usize, ConnId)> {
    let mut it = sdp.strip_prefix("v=0 harness ")?.split(' ');
    Some((it.next()?.parse().ok()?, ConnId(it.next()?.parse().ok()?)))
}

impl Net {
    /// `viewers` viewers of a 500 ms-segment stream, 10 Mbit/s uplinks.
    pub fn new(seed: u64, viewers: usize, viewer_config: impl Fn(usize) -> Config) -> Net {
        Net::with(seed, viewers, viewer_config, |_| 10_000_000, 500_000, 1)
    }

    /// Per-viewer config and uplink, segment length, keyframe period.
    pub fn with(
        seed: u64,
        viewers: usize,
        viewer_config: impl Fn(usize) -> Config,
        uplink: impl Fn(usize) -> u64,
        segment_us: u64,
        keyframe_every: u64,
    ) -> Net {
        Net::build(
            seed,
            viewers,
            viewer_config,
            uplink,
            segment_us,
            keyframe_every,
            None,
        )
    }

    /// The general form; `tracker_limit`: each viewer's node sets up at most this many
    /// connections through the tracker (the rest must come through the core's relay).
    pub fn build(
        seed: u64,
        viewers: usize,
        viewer_config: impl Fn(usize) -> Config,
        uplink: impl Fn(usize) -> u64,
        segment_us: u64,
        keyframe_every: u64,
        tracker_limit: Option<usize>,
    ) -> Net {
        let mut rng = Rng(seed);
        let key = StreamKey::from_secret([7; 32]);
        let mut peers = Vec::new();
        for i in 0..=viewers {
            let mut id = [0u8; 20];
            id[..8].copy_from_slice(&rng.next().to_le_bytes());
            id[19] = i as u8;
            let (role, cfg) = if i == 0 {
                let cfg = Config {
                    seed: seed ^ 1,
                    ..Config::default()
                };
                let key = StreamKey::from_secret(key.secret());
                (NodeRole::Source { key }, cfg)
            } else {
                let mut cfg = viewer_config(i);
                cfg.seed = seed.wrapping_mul(31).wrapping_add(i as u64);
                let stream = key.stream_id();
                (NodeRole::Viewer { stream }, cfg)
            };
            let mut config = NodeConfig::new(role, vec!["ws://tracker".into()], PeerId(id), cfg);
            if i > 0 {
                config.tracker_conn_limit = tracker_limit;
            }
            peers.push(Peer {
                node: Node::new(config, seed ^ (i as u64).wrapping_mul(0x5851_f42d)),
                uplink_bps: if i == 0 { 20_000_000 } else { uplink(i) },
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
            peers,
            events: BTreeMap::new(),
            ev_seq: 0,
            links: BTreeMap::new(),
            latency: BTreeMap::new(),
            rng,
            published: BTreeMap::new(),
            victims: BTreeSet::new(),
            next_publish: 0,
            timeouts_at_now: 0,
            segment_us,
            keyframe_every,
            max_latency_us: 60_000,
            tracker: Vec::new(),
        };
        net.peers[0]
            .node
            .publish_init(
                Instant::ZERO,
                "video/mp4; codecs=\"avc1.42001f\"",
                vec![1; 900],
            )
            .unwrap();
        net.input(0, Event::Timeout);
        net
    }

    fn schedule(&mut self, at: u64, ev: Ev) {
        self.ev_seq += 1;
        self.events.insert((at, self.ev_seq), ev);
    }

    fn tell(&mut self, delay: u64, i: usize, ev: Event) {
        self.schedule(self.now + delay, Ev::Node(i, ev));
    }

    fn latency(&mut self, a: usize, b: usize) -> u64 {
        let key = (a.min(b), a.max(b));
        if let Some(l) = self.latency.get(&key) {
            return *l;
        }
        let l = 5_000 + self.rng.below(self.max_latency_us - 5_000);
        self.latency.insert(key, l);
        l
    }

    /// The peer at the other end of `i`'s connection `conn`.
    pub fn remote(&self, i: usize, conn: ConnId) -> Option<usize> {
        self.links.get(&(i, conn)).map(|r| r.0)
    }

    /// Feeds one event to peer `i` now and carries out what its node wants.
    pub fn input(&mut self, i: usize, ev: Event) {
        let now = Instant::from_micros(self.now);
        self.peers[i].node.handle(now, ev);
        self.drain(i);
    }

    /// Carries out peer `i`'s actions; reports transport backlogs back to it.
    fn drain(&mut self, i: usize) {
        loop {
            let mut touched = BTreeSet::new();
            while let Some(action) = self.peers[i].node.poll_action() {
                self.act(i, action, &mut touched);
            }
            if touched.is_empty() {
                return;
            }
            let now = Instant::from_micros(self.now);
            for conn in touched {
                let bytes = self.peers[i].backlog.get(&conn).copied().unwrap_or(0);
                self.peers[i]
                    .node
                    .handle(now, Event::ChannelBuffered { conn, bytes });
            }
        }
    }

    fn act(&mut self, i: usize, action: Action, touched: &mut BTreeSet<ConnId>) {
        if std::env::var("TRACE_NODE")
            .ok()
            .and_then(|v| v.parse().ok())
            == Some(i)
        {
            match &action {
                Action::Send { .. } | Action::Play(_) | Action::Skip { .. } => {}
                a => println!("{} node {i}: {a:?}", self.now),
            }
        }
        match action {
            Action::TrackerConnect { tracker, .. } => {
                self.tell(2 * TRACKER_LATENCY_US, i, Event::TrackerOpen { tracker })
            }
            Action::TrackerSend { tracker, request } => self.tracker(i, tracker, request),
            Action::TrackerClose { .. } => {}
            Action::CreateOffer { conn } => {
                let sdp = sdp(i, conn);
                self.tell(0, i, Event::OfferCreated { conn, sdp });
            }
            Action::AcceptOffer { conn, sdp: offer } => match parse_sdp(&offer) {
                Some(remote) => {
                    self.links.insert((i, conn), remote);
                    let sdp = sdp(i, conn);
                    self.tell(0, i, Event::AnswerCreated { conn, sdp });
                }
                None => self.tell(0, i, Event::ConnectFailed { conn }),
            },
            Action::ApplyAnswer { conn, sdp: answer } => {
                let Some(remote) = parse_sdp(&answer) else {
                    return self.tell(0, i, Event::ConnectFailed { conn });
                };
                if self.links.get(&remote) != Some(&(i, conn)) {
                    // The answerer gave up on it meanwhile.
                    return self.tell(0, i, Event::ConnectFailed { conn });
                }
                self.links.insert((i, conn), remote);
                // ICE + DTLS + SCTP: a few round trips.
                let l = self.latency(i, remote.0);
                self.tell(3 * l, i, Event::ChannelOpen { conn });
                self.tell(3 * l, remote.0, Event::ChannelOpen { conn: remote.1 });
            }
            Action::Send { conn, data } => {
                let Some(&(j, rc)) = self.links.get(&(i, conn)) else {
                    return;
                };
                let mut data = data.to_vec();
                if self.peers[i].corrupt && data.first() == Some(&4) {
                    // Flip the payload's last byte: a forged piece on the wire.
                    let last = data.len() - 1;
                    data[last] ^= 0x5a;
                    self.victims.insert((i, j));
                }
                let p = &mut self.peers[i];
                let start = p.free_at.max(self.now);
                let finish = start + data.len() as u64 * 8 * 1_000_000 / p.uplink_bps;
                p.free_at = finish;
                *p.backlog.entry(conn).or_insert(0) += data.len();
                let bytes = data.len();
                let l = self.latency(i, j);
                self.schedule(
                    finish + l,
                    Ev::Deliver {
                        to: j,
                        conn: rc,
                        data: Bytes::from(data),
                    },
                );
                self.schedule(
                    finish,
                    Ev::Drained {
                        from: i,
                        conn,
                        bytes,
                    },
                );
                touched.insert(conn);
            }
            Action::Close { conn, reason } => {
                self.peers[i].backlog.remove(&conn);
                if let Some((j, rc)) = self.links.remove(&(i, conn)) {
                    if let CloseReason::Core(r) = reason {
                        self.peers[i].cut.push((j, r));
                    }
                    if self.links.remove(&(j, rc)).is_some() {
                        let l = self.latency(i, j);
                        self.tell(l, j, Event::ChannelClosed { conn: rc });
                    }
                }
            }
            Action::Init(_) => self.peers[i].inits += 1,
            Action::Play(seg) => {
                let p = &mut self.peers[i];
                if self.published.get(&seg.seq) != Some(&seg.data) {
                    p.bad_plays += 1;
                }
                p.played.push(seg.seq);
                if std::env::var("TRACE").is_ok() {
                    println!("{} node {i} play {}", self.now, seg.seq);
                }
            }
            Action::Skip { seq } => {
                if std::env::var("TRACE").is_ok() {
                    println!("{} node {i} skip {seq}", self.now);
                }
                self.peers[i].skipped.push(seq)
            }
            Action::Rejoined { reason, .. } => {
                panic!("node {i} rejoined ({reason:?}) though the source never restarted")
            }
        }
    }

    /// The fake tracker: each offer goes to a random other peer of the swarm.
    fn tracker(&mut self, i: usize, tracker: usize, request: TrackerRequest) {
        let hop = 2 * TRACKER_LATENCY_US;
        match request {
            TrackerRequest::Announce(a) => {
                if a.event == AnnounceEvent::Stopped {
                    self.tracker.retain(|(_, n)| *n != i);
                    return;
                }
                if !self.tracker.iter().any(|(_, n)| *n == i) {
                    self.tracker.push((a.peer_id, i));
                }
                let others: Vec<usize> = self
                    .tracker
                    .iter()
                    .map(|(_, n)| *n)
                    .filter(|n| *n != i)
                    .collect();
                let mut chosen: Vec<usize> = Vec::new();
                while chosen.len() < a.offers.len().min(others.len()) {
                    let q = others[self.rng.below(others.len() as u64) as usize];
                    if !chosen.contains(&q) {
                        chosen.push(q);
                    }
                }
                for (q, o) in chosen.into_iter().zip(a.offers) {
                    let message = TrackerMessage::Offer {
                        peer: a.peer_id,
                        offer_id: binstr::encode(&o.offer_id),
                        sdp: o.sdp,
                    };
                    self.tell(hop, q, Event::TrackerMessage { tracker, message });
                }
                let message = TrackerMessage::Response {
                    interval: Some(120),
                    complete: Some(1),
                    incomplete: Some(self.tracker.len() as u64 - 1),
                    warning: None,
                };
                self.tell(hop, i, Event::TrackerMessage { tracker, message });
            }
            TrackerRequest::Answer {
                peer_id,
                to,
                offer_id,
                sdp,
                ..
            } => {
                if let Some(&(_, j)) = self.tracker.iter().find(|(p, _)| *p == to) {
                    let message = TrackerMessage::Answer {
                        peer: peer_id,
                        offer_id,
                        sdp,
                    };
                    self.tell(hop, j, Event::TrackerMessage { tracker, message });
                }
            }
        }
    }

    fn publish(&mut self) {
        let seq = self.published.len() as u64;
        let len = (BITRATE_BPS * self.segment_us / 8_000_000) as usize;
        let mut r = Rng(seq.wrapping_mul(0x1234_5678_9abc));
        let data: Vec<u8> = (0..len).map(|_| r.next() as u8).collect();
        self.published.insert(seq, data.clone());
        let meta = SegmentMeta {
            pts_us: self.now,
            duration_us: self.segment_us as u32,
            keyframe: seq % self.keyframe_every == 0,
        };
        let now = Instant::from_micros(self.now);
        let got = self.peers[0].node.publish_segment(now, meta, data).unwrap();
        assert_eq!(got, seq);
        self.drain(0);
    }

    /// Runs until `until` µs, publishing a segment every `segment_us` while `publish_until`;
    /// `joins` (time, peer), sorted, start those peers' nodes.
    pub fn run(&mut self, until: u64, publish_until: u64, joins: &mut Vec<(u64, usize)>) {
        loop {
            let next_event = self.events.keys().next().map(|k| k.0);
            let next_timeout = self
                .peers
                .iter()
                .filter(|p| p.joined)
                .filter_map(|p| p.node.poll_timeout())
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
                self.next_publish += self.segment_us;
                self.publish();
                continue;
            }
            if next_join == Some(t) {
                let (_, i) = joins.remove(0);
                self.peers[i].joined = true;
                self.input(i, Event::Timeout);
                continue;
            }
            if next_event == Some(t) {
                let Some((_, ev)) = self.events.pop_first() else {
                    continue;
                };
                match ev {
                    Ev::Node(i, e) => {
                        if self.peers[i].joined {
                            self.input(i, e);
                        }
                    }
                    Ev::Deliver { to, conn, data } => {
                        if self.links.contains_key(&(to, conn)) {
                            self.input(to, Event::ChannelMessage { conn, data });
                        }
                    }
                    Ev::Drained { from, conn, bytes } => {
                        let Some(b) = self.peers[from].backlog.get_mut(&conn) else {
                            continue;
                        };
                        *b = b.saturating_sub(bytes);
                        let bytes = *b;
                        if self.links.contains_key(&(from, conn)) {
                            self.input(from, Event::ChannelBuffered { conn, bytes });
                        }
                    }
                }
                continue;
            }
            for i in 0..self.peers.len() {
                if self.peers[i].joined
                    && self.peers[i]
                        .node
                        .poll_timeout()
                        .is_some_and(|w| w.as_micros() <= t)
                {
                    self.input(i, Event::Timeout);
                }
            }
        }
    }
}
