//! The one event queue between the browser and the node (matchbox's shape): every browser
//! callback — data channels, peer connections, tracker sockets, timers, the page, the player —
//! pushes a typed [`WebEvent`] and calls [`dispatch`], which feeds the queue to the driver one
//! event at a time. An event that arrives while the driver is busy (a callback fired from
//! inside a call the driver made) waits in the queue for the dispatch already running: none is
//! ever dropped.
//!
//! The queue knows the driver only as a [`Handler`], and the adapters only as a [`Sink`], so
//! neither imports the driver's module.

use crate::client::node::{ConnId, Event};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use web_sys::RtcDataChannel;

/// What the transport and tracker adapters report.
pub(crate) enum PlatformEvent {
    /// An event for the node (transport, tracker socket, offer/answer made).
    Node(Event),
    /// The remote side's data channel of connection `conn` arrived (answerer side).
    DataChannel {
        /// The connection.
        conn: ConnId,
        /// The channel.
        dc: RtcDataChannel,
    },
}

/// What a browser callback reports.
pub(crate) enum WebEvent<D> {
    /// From an adapter.
    Platform(PlatformEvent),
    /// The `setTimeout` armed for the node's `poll_timeout()` fired.
    NodeTimer,
    /// The housekeeping interval: the player, transport backlogs, rates, state.
    Tick,
    /// `pagehide`; `persisted`: the page may come back from the back/forward cache.
    PageHide {
        /// `PageTransitionEvent.persisted`.
        persisted: bool,
    },
    /// The tab came back to the foreground (its timers were throttled while hidden).
    Visible,
    /// Work a player callback hands the driver.
    Call(Box<dyn FnOnce(&mut D)>),
}

/// The driver, as the queue sees it.
pub(crate) trait Handler: Sized + 'static {
    /// One event.
    fn handle(&mut self, ev: WebEvent<Self>);
    /// What to run once the driver's borrow has ended (the page's `onEvent` callbacks, which
    /// may call back into the peer).
    fn after(&mut self) -> Box<dyn FnOnce()>;
}

/// The driver and its queue, shared by every callback (through a `Weak`).
pub(crate) struct Shared<D> {
    /// Events not yet handled.
    pub(crate) queue: RefCell<VecDeque<WebEvent<D>>>,
    /// The driver.
    pub(crate) driver: RefCell<D>,
}

impl<D> Shared<D> {
    /// A driver with an empty queue.
    pub(crate) fn new(driver: D) -> Self {
        Shared {
            queue: RefCell::new(VecDeque::new()),
            driver: RefCell::new(driver),
        }
    }
}

/// Queues `ev` and dispatches.
pub(crate) fn post<D: Handler>(weak: &Weak<Shared<D>>, ev: WebEvent<D>) {
    if let Some(shared) = weak.upgrade() {
        shared.queue.borrow_mut().push_back(ev);
        dispatch(&shared);
    }
}

/// Runs `f` on the driver, now or (when the driver is busy) right after what it is doing.
pub(crate) fn with<D: Handler>(weak: &Weak<Shared<D>>, f: impl FnOnce(&mut D) + 'static) {
    post(weak, WebEvent::Call(Box::new(f)));
}

/// Feeds queued events to the driver until the queue is empty, running the driver's
/// [`Handler::after`] between events, outside its borrow.
pub(crate) fn dispatch<D: Handler>(shared: &Shared<D>) {
    loop {
        let Ok(mut d) = shared.driver.try_borrow_mut() else {
            // The driver is busy further up this stack; that dispatch drains the queue.
            return;
        };
        let Some(ev) = shared.queue.borrow_mut().pop_front() else {
            return;
        };
        d.handle(ev);
        let after = d.after();
        drop(d);
        after();
    }
}

/// How an adapter reports: into the queue of the driver that owns it.
#[derive(Clone)]
pub(crate) struct Sink(Rc<dyn Fn(PlatformEvent)>);

impl Sink {
    /// A sink posting to the driver behind `weak`.
    pub(crate) fn new<D: Handler>(weak: Weak<Shared<D>>) -> Self {
        Sink(Rc::new(move |ev| post(&weak, WebEvent::Platform(ev))))
    }

    /// Reports an event for the node.
    pub(crate) fn node(&self, ev: Event) {
        (self.0)(PlatformEvent::Node(ev));
    }

    /// Reports a data channel the remote side opened on `conn`.
    pub(crate) fn data_channel(&self, conn: ConnId, dc: RtcDataChannel) {
        (self.0)(PlatformEvent::DataChannel { conn, dc });
    }
}
