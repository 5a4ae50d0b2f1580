//! WebSocket adapter for the node's trackers: opens, sends on and closes tracker sockets when
//! the node says, and reports what the sockets do as node events. The WebTorrent protocol, the
//! announce schedule and the backoff are the node's ([`crate::client::node`],
//! [`crate::client::tracker`]).

use super::queue::Sink;
use super::util::{callback, func, Callback};
use crate::client::node::Event;
use wasm_bindgen::JsCast;
use web_sys::{MessageEvent, WebSocket};

/// One open (or opening) tracker socket and the callbacks it holds.
struct Socket {
    ws: WebSocket,
    closures: Vec<Callback>,
}

/// The tracker sockets of one peer, by the node's tracker index.
pub(crate) struct Sockets {
    sink: Sink,
    sockets: Vec<Option<Socket>>,
    /// Callbacks of closed sockets, freed at the next tick (never while one may be running).
    graveyard: Vec<Callback>,
}

impl Sockets {
    /// No sockets yet.
    pub(crate) fn new(sink: Sink) -> Self {
        Sockets {
            sink,
            sockets: Vec::new(),
            graveyard: Vec::new(),
        }
    }

    /// Opens tracker `tracker`'s socket to `url` (replacing any older one).
    pub(crate) fn connect(&mut self, tracker: usize, url: &str) {
        self.close(tracker);
        let ws = match WebSocket::new(url) {
            Ok(ws) => ws,
            Err(_) => return self.sink.node(Event::TrackerBadUrl { tracker }),
        };
        let w = self.sink.clone();
        let on_open = callback(move |_| w.node(Event::TrackerOpen { tracker }));
        let w = self.sink.clone();
        let on_message = callback(move |ev: wasm_bindgen::JsValue| {
            let text = ev
                .dyn_into::<MessageEvent>()
                .ok()
                .and_then(|e| e.data().as_string());
            if let Some(text) = text {
                w.node(Event::TrackerText { tracker, text });
            }
        });
        let w = self.sink.clone();
        let on_close = callback(move |_| w.node(Event::TrackerClosed { tracker }));
        ws.set_onopen(func(&on_open));
        ws.set_onmessage(func(&on_message));
        ws.set_onclose(func(&on_close));
        ws.set_onerror(func(&on_close));
        if self.sockets.len() <= tracker {
            self.sockets.resize_with(tracker + 1, || None);
        }
        self.sockets[tracker] = Some(Socket {
            ws,
            closures: vec![on_open, on_message, on_close],
        });
    }

    /// Sends a text frame; a socket that fails reports itself closed.
    pub(crate) fn send(&mut self, tracker: usize, text: &str) {
        let Some(Some(s)) = self.sockets.get(tracker) else {
            return;
        };
        if s.ws.send_with_str(text).is_err() {
            self.close(tracker);
            self.sink.node(Event::TrackerClosed { tracker });
        }
    }

    /// Closes tracker `tracker`'s socket; nothing more is reported from it.
    pub(crate) fn close(&mut self, tracker: usize) {
        let Some(mut s) = self.sockets.get_mut(tracker).and_then(Option::take) else {
            return;
        };
        s.ws.set_onopen(None);
        s.ws.set_onmessage(None);
        s.ws.set_onclose(None);
        s.ws.set_onerror(None);
        let _ = s.ws.close();
        self.graveyard.append(&mut s.closures);
    }

    /// Frees dead callbacks.
    pub(crate) fn tick(&mut self) {
        self.graveyard.clear();
    }

    /// Closes every socket.
    pub(crate) fn close_all(&mut self) {
        for i in 0..self.sockets.len() {
            self.close(i);
        }
    }
}
