//! The WebTorrent tracker WebSocket protocol: parsing what clients send, encoding what we send.
//!
//! The reference is the npm `bittorrent-tracker` server (`lib/server/parse-websocket.js` and
//! `server.js` `_onWebSocketRequest`): JSON text frames, `info_hash` and `peer_id` as 20-character
//! "binary strings" (every char code 0–255, i.e. latin1 bytes), `offer`/`answer` objects passed
//! through untouched. Error texts match the reference server's where it has one, so clients that
//! show `failure reason` to users see familiar messages. PROTOCOL.md ("Signaling (tracker)
//! protocol") is the normative description.
//!
//! Parsing never panics and allocates at most proportionally to the frame, which the server bounds
//! before calling [`parse`]; the fuzz target `fuzz/fuzz_targets/parse.rs` checks the first half of
//! that claim.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde::Deserialize;
use serde_json::value::RawValue;

/// Longest `offer_id` we accept, in chars. The reference client sends 20 (a binary string);
/// anything much longer is abuse of the relay.
pub const MAX_OFFER_ID_CHARS: usize = 64;

/// A 20-byte identifier (`info_hash`, `peer_id`): on the wire a 20-char latin1 "binary string".
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id20(pub [u8; 20]);

impl std::fmt::Debug for Id20 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Display for Id20 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

impl Id20 {
    /// Decodes a binary string: exactly 20 chars, each U+0000..=U+00FF. `None` otherwise.
    pub fn from_binary_str(s: &str) -> Option<Id20> {
        let mut out = [0u8; 20];
        let mut n = 0;
        for c in s.chars() {
            let code = u32::from(c);
            if n == 20 || code > 0xFF {
                return None;
            }
            out[n] = code as u8;
            n += 1;
        }
        (n == 20).then_some(Id20(out))
    }

    /// The binary string this id is on the wire (20 chars, latin1).
    pub fn to_binary_string(&self) -> String {
        self.0.iter().map(|&b| char::from(b)).collect()
    }

    /// Appends this id as a JSON string literal (quotes included), escaped the way
    /// `JSON.stringify` does, so clients compare ids byte for byte.
    pub fn write_json(&self, out: &mut String) {
        // Built on the stack and appended once: ids are on every message we send, and a
        // `push` per char was a visible share of the encode time.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [0u8; 2 + 20 * 6];
        let mut n = 0;
        let mut put = |bytes: &[u8]| {
            buf[n..n + bytes.len()].copy_from_slice(bytes);
            n += bytes.len();
        };
        put(b"\"");
        for &b in &self.0 {
            match b {
                b'"' => put(b"\\\""),
                b'\\' => put(b"\\\\"),
                b'\n' => put(b"\\n"),
                b'\r' => put(b"\\r"),
                b'\t' => put(b"\\t"),
                0x08 => put(b"\\b"),
                0x0c => put(b"\\f"),
                0..=0x1f => put(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 15)],
                ]),
                0x20..=0x7f => put(&[b]),
                // Latin-1 code point U+0080..=U+00FF as UTF-8.
                _ => put(&[0xc0 | (b >> 6), 0x80 | (b & 0x3f)]),
            }
        }
        put(b"\"");
        // Always valid UTF-8 by construction; the check costs little on 122 bytes at most.
        if let Ok(text) = std::str::from_utf8(&buf[..n]) {
            out.push_str(text);
        }
    }
}

fn push_json_char(out: &mut String, c: char) {
    match c {
        '"' => out.push_str("\\\""),
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\u{8}' => out.push_str("\\b"),
        '\u{c}' => out.push_str("\\f"),
        c if (c as u32) < 0x20 => {
            // `\u00XX` without the formatting machinery: 20-byte ids are full of these.
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let b = c as usize;
            out.push_str("\\u00");
            out.push(char::from(HEX[b >> 4]));
            out.push(char::from(HEX[b & 15]));
        }
        c => out.push(c),
    }
}

/// Appends `s` as a JSON string literal: runs that need no escaping are copied whole.
pub fn write_json_str(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        if b < 0x20 || b == b'"' || b == b'\\' {
            // `i` is at an ASCII byte, so both slices end on char boundaries.
            out.push_str(&s[start..i]);
            push_json_char(out, char::from(b));
            start = i + 1;
        }
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// The `event` of an announce. Absent, `"update"` and `"empty"` are all [`Event::Update`];
/// `"paused"` is treated as an update, as the reference server does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The peer joins the swarm.
    Started,
    /// The peer leaves the swarm.
    Stopped,
    /// The peer has everything (becomes a seeder).
    Completed,
    /// A periodic re-announce (or `paused`).
    Update,
}

/// One offer of an announce, to be forwarded to one other peer. Borrowed from the frame (the
/// server handles a message before reading the next), so a 5-offer announce costs no copies of
/// its SDPs until they are encoded for their receivers.
#[derive(Debug)]
pub struct Offer<'a> {
    /// The offerer's id for this offer; the answer carries it back.
    pub offer_id: Cow<'a, str>,
    /// The SDP offer object (`{type, sdp}`), forwarded verbatim.
    pub offer: Cow<'a, RawValue>,
}

/// An answer to an offer, routed to `to_peer_id`.
#[derive(Debug)]
pub struct Answer<'a> {
    /// The peer that made the offer.
    pub to_peer_id: Id20,
    /// The offer being answered.
    pub offer_id: Cow<'a, str>,
    /// The SDP answer object, forwarded verbatim.
    pub answer: Cow<'a, RawValue>,
}

/// A parsed `action: "announce"` message.
#[derive(Debug)]
pub struct Announce<'a> {
    /// The swarm.
    pub info_hash: Id20,
    /// The announcing peer.
    pub peer_id: Id20,
    /// What happened.
    pub event: Event,
    /// `left == 0`: the peer is a seeder (counts as `complete`).
    pub seeder: bool,
    /// Offers to forward, one per distinct random other peer.
    pub offers: Vec<Offer<'a>>,
    /// If present, the message is an answer and is only routed (no reply, no swarm update).
    pub answer: Option<Answer<'a>>,
}

impl Announce<'_> {
    /// The same announce, owning its strings (for callers that keep it past the frame).
    pub fn into_owned(self) -> Announce<'static> {
        let own_raw = |r: Cow<'_, RawValue>| Cow::Owned(r.into_owned());
        Announce {
            info_hash: self.info_hash,
            peer_id: self.peer_id,
            event: self.event,
            seeder: self.seeder,
            offers: self
                .offers
                .into_iter()
                .map(|o| Offer {
                    offer_id: Cow::Owned(o.offer_id.into_owned()),
                    offer: own_raw(o.offer),
                })
                .collect(),
            answer: self.answer.map(|a| Answer {
                to_peer_id: a.to_peer_id,
                offer_id: Cow::Owned(a.offer_id.into_owned()),
                answer: own_raw(a.answer),
            }),
        }
    }
}

/// A parsed `action: "scrape"` message.
#[derive(Debug)]
pub struct Scrape {
    /// The swarms asked about; empty means "all" (the server caps how many it returns).
    pub info_hashes: Vec<Id20>,
}

/// Any message a client may send.
#[derive(Debug)]
pub enum Request<'a> {
    /// `action: "announce"`.
    Announce(Announce<'a>),
    /// `action: "scrape"`.
    Scrape(Scrape),
}

/// Why a frame was rejected. The `Display` text is what goes into `failure reason`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// Not JSON, not an object, or a field of the wrong JSON type.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// `action` missing or unknown (reference server's text).
    #[error("invalid action in WS request: {0}")]
    Action(String),
    /// `info_hash` is not a 20-char binary string.
    #[error("invalid info_hash")]
    InfoHash,
    /// `peer_id` is not a 20-char binary string.
    #[error("invalid peer_id")]
    PeerId,
    /// An answer without a valid `to_peer_id` (reference server's text).
    #[error("invalid `to_peer_id` (required with `answer`)")]
    ToPeerId,
    /// An offer or answer without a string `offer_id` of sane length.
    #[error("invalid offer_id")]
    OfferId,
    /// `offers` entries must carry an object `offer`.
    #[error("invalid offer")]
    Offer,
    /// `answer` must be an object.
    #[error("invalid answer")]
    Answer,
    /// `event` is not one of started/stopped/completed/update/paused/empty.
    #[error("invalid event")]
    Event,
}

impl ParseError {
    /// Short label for the `reason` of the rejected-messages metric.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            ParseError::Json(_) => "malformed_json",
            ParseError::Action(_) => "bad_action",
            ParseError::InfoHash => "bad_info_hash",
            ParseError::PeerId => "bad_peer_id",
            ParseError::ToPeerId => "bad_to_peer_id",
            ParseError::OfferId => "bad_offer_id",
            ParseError::Offer => "bad_offer",
            ParseError::Answer => "bad_answer",
            ParseError::Event => "bad_event",
        }
    }
}

/// One JSON field value as the reference server sees it (`typeof x === 'string'`, JS
/// truthiness, `Number(left)`), read in the parse's single pass: strings are borrowed from the
/// frame unless they hold escapes, arrays keep only their string elements (a scrape's
/// `info_hash` list), objects are skipped. Hand-written rather than a `#[serde(untagged)]` enum:
/// serde buffers an untagged field into an owned copy before trying each variant, and those
/// copies were a tenth of the server's CPU under aquatic_ws_load_test.
enum Js<'a> {
    Null,
    Bool(bool),
    Num(f64),
    Str(Cow<'a, str>),
    /// An array: `Some` for each string element, `None` for any other.
    List(Vec<Option<Cow<'a, str>>>),
    Object,
}

impl<'a> Js<'a> {
    fn str<'b>(x: &'b Option<Js<'a>>) -> Option<&'b str> {
        match x {
            Some(Js::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// JS truthiness (`if (params.answer)`, `if (!params.event)`).
    fn truthy(&self) -> bool {
        match self {
            Js::Null => false,
            Js::Bool(b) => *b,
            Js::Num(f) => *f != 0.0 && !f.is_nan(),
            Js::Str(s) => !s.is_empty(),
            Js::List(_) | Js::Object => true,
        }
    }
}

/// A string, or `None` for any other JSON value (skipped): the elements of [`Js::List`].
struct MaybeStr<'a>(Option<Cow<'a, str>>);

macro_rules! other_scalars {
    ($value:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
}

fn skip_seq<'de, A: serde::de::SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
    Ok(())
}

fn skip_map<'de, A: serde::de::MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map
        .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
        .is_some()
    {}
    Ok(())
}

impl<'de: 'a, 'a> Deserialize<'de> for MaybeStr<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Js::deserialize(d).map(|v| {
            MaybeStr(match v {
                Js::Str(s) => Some(s),
                _ => None,
            })
        })
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Js<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Js<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Js::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Js::Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
                Ok(Js::Str(Cow::Owned(s)))
            }
            fn visit_bool<E>(self, b: bool) -> Result<Self::Value, E> {
                Ok(Js::Bool(b))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Self::Value, E> {
                Ok(Js::Num(n as f64))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Self::Value, E> {
                Ok(Js::Num(n as f64))
            }
            fn visit_f64<E>(self, n: f64) -> Result<Self::Value, E> {
                Ok(Js::Num(n))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Js::Null)
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(Js::Null)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                // Bounded by the frame size: every element is at least one byte of input.
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(16));
                while let Some(MaybeStr(s)) = seq.next_element::<MaybeStr<'a>>()? {
                    v.push(s);
                }
                Ok(Js::List(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                skip_map(map).map(|()| Js::Object)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct WireOffer<'a> {
    #[serde(borrow, default)]
    offer_id: Option<Js<'a>>,
    #[serde(borrow, default)]
    offer: Option<&'a RawValue>,
}

/// One entry of `offers`: an object is read as an offer, anything else marks the list bad
/// (`invalid offer`) without failing the JSON parse.
enum MaybeOffer<'a> {
    Object(WireOffer<'a>),
    Bad,
}

impl<'de: 'a, 'a> Deserialize<'de> for MaybeOffer<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = MaybeOffer<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an offer")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                WireOffer::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(MaybeOffer::Object)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<Self::Value, A::Error> {
                skip_seq(seq).map(|()| MaybeOffer::Bad)
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(MaybeOffer::Bad)
            }
            other_scalars!(MaybeOffer::Bad);
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// The `offers` field, read in the same pass as the rest of the message: an array is a list
/// of offers; like the reference server, anything else means no offers.
struct OfferList<'a>(Option<Vec<MaybeOffer<'a>>>);

impl<'de: 'a, 'a> Deserialize<'de> for OfferList<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = OfferList<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("anything")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                // Bounded by the frame size: every element is at least one byte of input.
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(16));
                while let Some(o) = seq.next_element::<MaybeOffer<'a>>()? {
                    v.push(o);
                }
                Ok(OfferList(Some(v)))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                skip_map(map).map(|()| OfferList(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(OfferList(None))
            }
            other_scalars!(OfferList(None));
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// The union of all fields we read; everything else (`uploaded`, `downloaded`, `numwant`,
/// `trackerid`, ...) is ignored like the reference server ignores it.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow, default)]
    action: Option<Js<'a>>,
    #[serde(borrow, default)]
    info_hash: Option<Js<'a>>,
    #[serde(borrow, default)]
    peer_id: Option<Js<'a>>,
    #[serde(borrow, default)]
    to_peer_id: Option<Js<'a>>,
    #[serde(borrow, default)]
    offer_id: Option<Js<'a>>,
    #[serde(borrow, default)]
    event: Option<Js<'a>>,
    #[serde(borrow, default)]
    left: Option<Js<'a>>,
    #[serde(borrow, default)]
    answer: Option<&'a RawValue>,
    /// The reference ignores a non-array `offers`.
    #[serde(borrow, default)]
    offers: Option<OfferList<'a>>,
}

fn is_object(v: &RawValue) -> bool {
    v.get().trim_start().starts_with('{')
}

fn offer_id<'a>(s: Option<Js<'a>>) -> Result<Cow<'a, str>, ParseError> {
    match s {
        Some(Js::Str(s)) if !s.is_empty() && s.chars().count() <= MAX_OFFER_ID_CHARS => Ok(s),
        _ => Err(ParseError::OfferId),
    }
}

/// `Number(left) === 0` in the reference server: numbers and numeric strings.
fn is_zero_left(v: &Js<'_>) -> bool {
    match v {
        Js::Num(n) => *n == 0.0,
        Js::Str(s) => s.trim().parse::<f64>() == Ok(0.0),
        _ => false,
    }
}

/// Parses one frame's payload (text or binary: the reference server `JSON.parse`s both).
pub fn parse(frame: &[u8]) -> Result<Request<'_>, ParseError> {
    match std::str::from_utf8(frame) {
        Ok(text) => parse_str(text),
        // What serde_json says about the bytes (invalid UTF-8 or worse).
        Err(_) => match serde_json::from_slice::<serde::de::IgnoredAny>(frame) {
            Ok(_) => Err(ParseError::Json("invalid UTF-8".into())),
            Err(e) => Err(ParseError::Json(e.to_string())),
        },
    }
}

/// [`parse`] for a text frame, whose UTF-8 the WebSocket layer has already checked: parsing
/// from `&str` saves serde_json validating every string (SDPs are most of the bytes) again.
pub fn parse_str(frame: &str) -> Result<Request<'_>, ParseError> {
    // serde would read a struct from an array too; JSON that is not an object has no `action`,
    // which is what the reference server reports.
    if frame.bytes().find(|b| !b.is_ascii_whitespace()) != Some(b'{') {
        return match serde_json::from_str::<serde::de::IgnoredAny>(frame) {
            Ok(_) => Err(ParseError::Action("undefined".into())),
            Err(e) => Err(ParseError::Json(e.to_string())),
        };
    }
    let wire: Wire<'_> =
        serde_json::from_str(frame).map_err(|e| ParseError::Json(e.to_string()))?;
    match &wire.action {
        Some(Js::Str(a)) if a == "announce" => parse_announce(wire).map(Request::Announce),
        Some(Js::Str(a)) if a == "scrape" => parse_scrape(wire).map(Request::Scrape),
        Some(Js::Str(other)) => Err(ParseError::Action(other.chars().take(32).collect())),
        Some(_) => Err(ParseError::Action("[not a string]".into())),
        None => Err(ParseError::Action("undefined".into())),
    }
}

fn parse_announce(wire: Wire<'_>) -> Result<Announce<'_>, ParseError> {
    let info_hash = match &wire.info_hash {
        Some(Js::Str(s)) => Id20::from_binary_str(s).ok_or(ParseError::InfoHash)?,
        _ => return Err(ParseError::InfoHash),
    };
    let peer_id = Js::str(&wire.peer_id)
        .and_then(Id20::from_binary_str)
        .ok_or(ParseError::PeerId)?;
    let answer = match wire.answer {
        // JS truthiness: `answer: null`, `false`, `0`, `""` are no answer.
        Some(raw) if !matches!(raw.get().trim(), "null" | "false" | "0" | "\"\"") => {
            let to_peer_id = Js::str(&wire.to_peer_id)
                .and_then(Id20::from_binary_str)
                .ok_or(ParseError::ToPeerId)?;
            if !is_object(raw) {
                return Err(ParseError::Answer);
            }
            Some(Answer {
                to_peer_id,
                offer_id: offer_id(wire.offer_id)?,
                answer: Cow::Borrowed(raw),
            })
        }
        _ => None,
    };
    let event = match &wire.event {
        None => Event::Update,
        Some(v) if !v.truthy() => Event::Update,
        Some(Js::Str(s)) => match s.as_ref() {
            "update" | "empty" | "paused" => Event::Update,
            "started" => Event::Started,
            "stopped" => Event::Stopped,
            "completed" => Event::Completed,
            _ => return Err(ParseError::Event),
        },
        Some(_) => return Err(ParseError::Event),
    };
    let mut offers = Vec::new();
    if answer.is_none() {
        // Like the reference, anything but an array means no offers.
        if let Some(OfferList(Some(list))) = wire.offers {
            offers.reserve_exact(list.len());
            for item in list {
                let MaybeOffer::Object(o) = item else {
                    return Err(ParseError::Offer);
                };
                let offer = o.offer.filter(|r| is_object(r)).ok_or(ParseError::Offer)?;
                offers.push(Offer {
                    offer_id: offer_id(o.offer_id)?,
                    offer: Cow::Borrowed(offer),
                });
            }
        }
    }
    Ok(Announce {
        info_hash,
        peer_id,
        event,
        seeder: wire.left.as_ref().is_some_and(is_zero_left),
        offers,
        answer,
    })
}

fn parse_scrape(wire: Wire<'_>) -> Result<Scrape, ParseError> {
    let info_hashes = match wire.info_hash {
        // The reference treats a non-string, non-array info_hash like an absent one ("all").
        None | Some(Js::Null | Js::Bool(_) | Js::Num(_) | Js::Object) => Vec::new(),
        Some(Js::Str(s)) => vec![Id20::from_binary_str(&s).ok_or(ParseError::InfoHash)?],
        Some(Js::List(v)) => v
            .iter()
            .map(|s| {
                s.as_deref()
                    .and_then(Id20::from_binary_str)
                    .ok_or(ParseError::InfoHash)
            })
            .collect::<Result<_, _>>()?,
    };
    Ok(Scrape { info_hashes })
}

/// `{"failure reason": ...}`: the reply to a frame that could not be parsed.
pub fn encode_failure(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len() + 24);
    out.push_str("{\"failure reason\":");
    write_json_str(&mut out, reason);
    out.push('}');
    out
}

/// `{"action":"announce","failure reason":...,"info_hash":...}`: the reply to a well-formed
/// announce the server refuses (swarm full, too many offers, rate limited, ...).
pub fn encode_announce_failure(reason: &str, info_hash: &Id20) -> String {
    let mut out = String::with_capacity(reason.len() + 80);
    out.push_str("{\"action\":\"announce\",\"failure reason\":");
    write_json_str(&mut out, reason);
    out.push_str(",\"info_hash\":");
    info_hash.write_json(&mut out);
    out.push('}');
    out
}

/// The announce reply: `{"action":"announce","interval":..,"info_hash":..,"complete":..,"incomplete":..}`.
pub fn encode_announce_reply(
    info_hash: &Id20,
    interval_secs: u64,
    complete: usize,
    incomplete: usize,
) -> String {
    let mut out = String::with_capacity(128);
    let _ = write!(
        out,
        "{{\"action\":\"announce\",\"interval\":{interval_secs},\"info_hash\":"
    );
    info_hash.write_json(&mut out);
    let _ = write!(
        out,
        ",\"complete\":{complete},\"incomplete\":{incomplete}}}"
    );
    out
}

/// A forwarded offer: `{"action":"announce","offer":..,"offer_id":..,"peer_id":<offerer>,"info_hash":..}`.
pub fn encode_offer(offer: &Offer, from: &Id20, info_hash: &Id20) -> String {
    encode_relayed("offer", offer.offer.get(), &offer.offer_id, from, info_hash)
}

/// A routed answer: `{"action":"announce","answer":..,"offer_id":..,"peer_id":<answerer>,"info_hash":..}`.
pub fn encode_answer(answer: &Answer, from: &Id20, info_hash: &Id20) -> String {
    encode_relayed(
        "answer",
        answer.answer.get(),
        &answer.offer_id,
        from,
        info_hash,
    )
}

/// Offers and answers travel in the same envelope; only the key of the SDP differs.
fn encode_relayed(
    key: &str,
    sdp_json: &str,
    offer_id: &str,
    from: &Id20,
    info_hash: &Id20,
) -> String {
    let mut out = String::with_capacity(sdp_json.len() + offer_id.len() + 160);
    out.push_str("{\"action\":\"announce\",\"");
    out.push_str(key);
    out.push_str("\":");
    out.push_str(sdp_json);
    out.push_str(",\"offer_id\":");
    write_json_str(&mut out, offer_id);
    out.push_str(",\"peer_id\":");
    from.write_json(&mut out);
    out.push_str(",\"info_hash\":");
    info_hash.write_json(&mut out);
    out.push('}');
    out
}

/// Per-swarm numbers of a scrape reply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScrapeStats {
    /// Seeders.
    pub complete: usize,
    /// Leechers.
    pub incomplete: usize,
    /// Completed events seen (a lower bound, like the reference server's).
    pub downloaded: u64,
}

/// `{"action":"scrape","files":{<info_hash>:{complete,incomplete,downloaded}},"flags":{"min_request_interval":..}}`.
pub fn encode_scrape(files: &[(Id20, ScrapeStats)], interval_secs: u64) -> String {
    let mut out = String::with_capacity(64 + files.len() * 80);
    out.push_str("{\"action\":\"scrape\",\"files\":{");
    for (i, (ih, s)) in files.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        ih.write_json(&mut out);
        let _ = write!(
            out,
            ":{{\"complete\":{},\"incomplete\":{},\"downloaded\":{}}}",
            s.complete, s.incomplete, s.downloaded
        );
    }
    let _ = write!(
        out,
        "}},\"flags\":{{\"min_request_interval\":{interval_secs}}}}}"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bin(b: u8) -> String {
        Id20([b; 20]).to_binary_string()
    }

    #[test]
    fn announce_with_offers_parses() {
        let msg = serde_json::json!({
            "action": "announce", "info_hash": bin(0xff), "peer_id": bin(1), "numwant": 2,
            "event": "started", "left": 0, "uploaded": 0,
            "offers": [{"offer": {"type": "offer", "sdp": "v=0"}, "offer_id": bin(7)}]
        });
        let text = msg.to_string();
        let Request::Announce(a) = parse(text.as_bytes()).unwrap() else {
            panic!("not an announce")
        };
        assert_eq!(a.info_hash, Id20([0xff; 20]));
        assert_eq!(a.event, Event::Started);
        assert!(a.seeder);
        assert_eq!(a.offers.len(), 1);
        assert_eq!(a.offers[0].offer_id, bin(7));
    }

    #[test]
    fn bad_ids_get_reference_texts() {
        let long = "x".repeat(21);
        for (msg, want) in [
            (r#"{"action":"announce"}"#, ParseError::InfoHash),
            (
                &*format!(r#"{{"action":"announce","info_hash":"{long}"}}"#),
                ParseError::InfoHash,
            ),
            (
                r#"{"action":"announce","info_hash":"aaaaaaaaaaaaaaaaaaaa","peer_id":"ĀĀĀĀĀĀĀĀĀĀĀĀĀĀĀĀĀĀĀĀ"}"#,
                ParseError::PeerId,
            ),
            (
                r#"{"action":"announce","info_hash":"aaaaaaaaaaaaaaaaaaaa","peer_id":"aaaaaaaaaaaaaaaaaaaa","answer":{}}"#,
                ParseError::ToPeerId,
            ),
            (
                r#"{"action":"announce","info_hash":"aaaaaaaaaaaaaaaaaaaa","peer_id":"aaaaaaaaaaaaaaaaaaaa","event":"x"}"#,
                ParseError::Event,
            ),
        ] {
            assert_eq!(parse(msg.as_bytes()).unwrap_err(), want, "{msg}");
        }
        assert_eq!(
            parse(br#"{"action":"bogus"}"#).unwrap_err().to_string(),
            "invalid action in WS request: bogus"
        );
        assert_eq!(
            parse(b"[1,2]").unwrap_err(),
            ParseError::Action("undefined".into())
        );
        assert!(matches!(parse(b"{\"action\":"), Err(ParseError::Json(_))));
        assert!(matches!(parse(b"\xff\xfe"), Err(ParseError::Json(_))));
    }

    /// Fields of any JSON type read as the reference server reads them (`typeof`, truthiness,
    /// `Number(left)`), escaped strings included: the hand-written field reader, not serde's
    /// untagged enums, decides these now.
    #[test]
    fn field_types_follow_the_reference() {
        let ids = r#""info_hash":"a\u0001aaaaaaaaaaaaaaaaaa","peer_id":"bbbbbbbbbbbbbbbbbbbb""#;
        let announce = |extra: &str| {
            let text = format!(r#"{{"action":"announce",{ids}{extra}}}"#);
            match parse(text.as_bytes()) {
                Ok(Request::Announce(a)) => Ok((a.event, a.seeder, a.info_hash.0[1])),
                Ok(other) => panic!("{other:?}"),
                Err(e) => Err(e),
            }
        };
        let update = Ok((Event::Update, false, 1));
        assert_eq!(announce(""), update);
        for falsy in ["null", "0", "false", r#""""#] {
            assert_eq!(announce(&format!(r#","event":{falsy}"#)), update, "{falsy}");
        }
        for bad in ["5", "true", "[]", "{}", r#""bogus""#] {
            assert_eq!(
                announce(&format!(r#","event":{bad}"#)),
                Err(ParseError::Event),
                "{bad}"
            );
        }
        assert_eq!(
            announce(r#","event":"complete\u0064""#),
            Ok((Event::Completed, false, 1))
        );
        for zero in ["0", "0.0", r#"" 0 ""#, r#""0e3""#] {
            assert_eq!(
                announce(&format!(r#","left":{zero}"#)),
                Ok((Event::Update, true, 1)),
                "{zero}"
            );
        }
        for not_zero in ["1", "null", "[]", r#""""#, r#""x""#] {
            assert_eq!(
                announce(&format!(r#","left":{not_zero}"#)),
                update,
                "{not_zero}"
            );
        }
        for bad_id in ["5", "[]", "{}", "null"] {
            let text = format!(
                r#"{{"action":"announce","info_hash":"aaaaaaaaaaaaaaaaaaaa","peer_id":{bad_id}}}"#
            );
            assert_eq!(
                parse(text.as_bytes()).unwrap_err(),
                ParseError::PeerId,
                "{bad_id}"
            );
        }
        assert_eq!(
            parse(br#"{"action":["announce"]}"#).unwrap_err(),
            ParseError::Action("[not a string]".into())
        );
        // A scrape list with anything but 20-char strings is refused; a non-list is "all".
        let scrape =
            |ih: &str| match parse(format!(r#"{{"action":"scrape","info_hash":{ih}}}"#).as_bytes())
            {
                Ok(Request::Scrape(s)) => Ok(s.info_hashes.len()),
                Ok(other) => panic!("{other:?}"),
                Err(e) => Err(e),
            };
        assert_eq!(
            scrape(r#"["aaaaaaaaaaaaaaaaaaaa","b\u0062bbbbbbbbbbbbbbbbbb"]"#),
            Ok(2)
        );
        assert_eq!(
            scrape(r#"["aaaaaaaaaaaaaaaaaaaa",7]"#),
            Err(ParseError::InfoHash)
        );
        assert_eq!(scrape("{}"), Ok(0));
        assert_eq!(scrape("7"), Ok(0));
    }

    /// The hand-written encoders escape exactly as serde_json (and `JSON.stringify`) do.
    #[test]
    fn encoders_match_serde_json() {
        for start in (0..=255u8).step_by(20) {
            let id = Id20(std::array::from_fn(|i| start.wrapping_add(i as u8)));
            let mut ours = String::new();
            id.write_json(&mut ours);
            assert_eq!(ours, serde_json::to_string(&id.to_binary_string()).unwrap());
        }
        for s in [
            "",
            "plain",
            "a\"b\\c\n\u{1}\u{1f} é ✓ \u{7f}",
            "\r\n\t\u{8}\u{c}end",
        ] {
            let mut ours = String::new();
            write_json_str(&mut ours, s);
            assert_eq!(ours, serde_json::to_string(s).unwrap());
        }
    }

    #[test]
    fn ids_round_trip_through_json() {
        let id = Id20(std::array::from_fn(|i| (i * 13) as u8));
        let mut s = String::new();
        id.write_json(&mut s);
        let back: String = serde_json::from_str(&s).unwrap();
        assert_eq!(Id20::from_binary_str(&back), Some(id));
    }

    #[test]
    fn scrape_forms() {
        let Request::Scrape(s) = parse(br#"{"action":"scrape"}"#).unwrap() else {
            panic!()
        };
        assert!(s.info_hashes.is_empty());
        let one = serde_json::json!({"action":"scrape","info_hash": bin(3)}).to_string();
        let Request::Scrape(s) = parse(one.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(s.info_hashes, vec![Id20([3; 20])]);
        let many = serde_json::json!({"action":"scrape","info_hash": [bin(3), bin(4)]}).to_string();
        let Request::Scrape(s) = parse(many.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(s.info_hashes.len(), 2);
    }
}
