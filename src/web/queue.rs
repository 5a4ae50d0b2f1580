//! The one event queue between the browser and the node (matchbox's shape): every browser
//! callback — data channels, peer connections, tracker sockets, timers, the page, the player —
//! pushes a typed [`WebEvent`] and calls [`dispatch`], which feeds the queue to the [`Driver`]
//! one event at a time. An event that arrives while the driver is busy (a callback fired from
//! inside a call the driver made) waits in the queue for the dispatch already running: none is
//! ever dropped.

use super::peer::Driver;
use crate::client::node::Event;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Weak;

/// What a browser callback reports.
pub(crate) enum WebEvent {
    /// An event for the node (transport, tracker socket, offer/answer made).
    Node(Event),
    /// The `setTimeout` armed for the node's `poll_timeout()` fired.
    NodeTimer,
    /// The 250 ms housekeeping interval: the player, transport backlogs, rates, state.
    Tick,
    /// `pagehide`; `persisted`: the page may come back from the back/forward cache.
    PageHide {
        /// `PageTransitionEvent.persisted`.
        persisted: bool,
    },
    /// The tab came back to the foreground (its timers were throttled while hidden).
    Visible,
    /// Work a player callback hands the driver.
    Call(Box<dyn FnOnce(&mut Driver)>),
}

/// The driver and its queue, shared by every callback (through a `Weak`).
pub(crate) struct Shared {
    /// Events not yet handled.
    pub(crate) queue: RefCell<VecDeque<WebEvent>>,
    /// The driver.
    pub(crate) driver: RefCell<Driver>,
}

/// What callbacks hold: they never keep the peer alive.
pub(crate) type WeakDriver = Weak<Shared>;

/// Queues `ev` and dispatches.
pub(crate) fn post(weak: &WeakDriver, ev: WebEvent) {
    if let Some(shared) = weak.upgrade() {
        shared.queue.borrow_mut().push_back(ev);
        dispatch(&shared);
    }
}

/// Runs `f` on the driver, now or (when the driver is busy) right after what it is doing.
pub(crate) fn with(weak: &WeakDriver, f: impl FnOnce(&mut Driver) + 'static) {
    post(weak, WebEvent::Call(Box::new(f)));
}

/// Feeds queued events to the driver until the queue is empty; page callbacks (`onEvent`) fire
/// between events, outside the driver's borrow, so they may call back into `SwarmPeer`.
pub(crate) fn dispatch(shared: &Shared) {
    loop {
        let Ok(mut d) = shared.driver.try_borrow_mut() else {
            // The driver is busy further up this stack; that dispatch drains the queue.
            return;
        };
        let Some(ev) = shared.queue.borrow_mut().pop_front() else {
            return;
        };
        d.on_event(ev);
        let (cb, events) = d.take_page_events();
        drop(d);
        super::peer::fire(cb, events);
    }
}
