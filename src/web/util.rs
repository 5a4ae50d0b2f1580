//! Small browser helpers: clocks, timers as futures, option lookup, random bytes, logging.

use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

/// The page's `window`; the binding only runs in windows (not workers).
pub(crate) fn window() -> web_sys::Window {
    web_sys::window().expect_throw("swarmcast runs in a browser window")
}

/// Monotonic milliseconds since page load.
pub(crate) fn now_ms() -> f64 {
    window().performance().map(|p| p.now()).unwrap_or(0.0)
}

/// Wall-clock milliseconds since the Unix epoch with `performance.now()` resolution: the
/// broadcaster stamps frames with this clock (COMMON contract), so latency is a difference of it.
pub(crate) fn wall_ms() -> f64 {
    window()
        .performance()
        .map(|p| p.time_origin() + p.now())
        .unwrap_or_else(js_sys::Date::now)
}

/// A future that resolves after `ms` milliseconds. The timer's callback is the promise's own
/// `resolve`, so no Rust closure has to be kept alive.
pub(crate) async fn sleep(ms: i32) {
    let p = js_sys::Promise::new(&mut |resolve, _| {
        let _ = window().set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms);
    });
    let _ = wasm_bindgen_futures::JsFuture::from(p).await;
}

/// `obj[key]`, `undefined` when absent or when `obj` is not an object.
pub(crate) fn get(obj: &JsValue, key: &str) -> JsValue {
    if !obj.is_object() {
        return JsValue::UNDEFINED;
    }
    js_sys::Reflect::get(obj, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
}

/// Sets `obj[key] = value` on a plain object being built.
pub(crate) fn set(obj: &js_sys::Object, key: &str, value: impl Into<JsValue>) {
    let _ = js_sys::Reflect::set(obj, &JsValue::from_str(key), &value.into());
}

/// Whether `window[name]` exists (feature detection: `MediaSource`, `RTCPeerConnection`).
pub(crate) fn has_global(name: &str) -> bool {
    js_sys::Reflect::has(&window(), &JsValue::from_str(name)).unwrap_or(false)
        && !get(&window(), name).is_undefined()
}

/// Bytes from the browser's CSPRNG.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // getrandom's `js` backend uses crypto.getRandomValues, present in every browser we run in.
    let _ = getrandom::getrandom(&mut b);
    b
}

/// `console.warn` with a `swarmcast:` prefix.
pub(crate) fn warn(msg: &str) {
    web_sys::console::warn_1(&JsValue::from_str(&format!("swarmcast: {msg}")));
}

/// `console.debug` with a `swarmcast:` prefix.
pub(crate) fn debug(msg: &str) {
    web_sys::console::debug_1(&JsValue::from_str(&format!("swarmcast: {msg}")));
}

/// The `name` of a thrown DOMException (e.g. `QuotaExceededError`), empty for anything else.
pub(crate) fn error_name(e: &JsValue) -> String {
    e.dyn_ref::<web_sys::DomException>()
        .map(|d| d.name())
        .unwrap_or_default()
}

/// A one-argument JS callback kept alive by whoever owns it; dropping it detaches nothing by
/// itself, so owners clear the handler first.
pub(crate) type Callback = Closure<dyn FnMut(JsValue)>;

/// Wraps `f` as a [`Callback`].
pub(crate) fn callback(f: impl FnMut(JsValue) + 'static) -> Callback {
    Closure::wrap(Box::new(f) as Box<dyn FnMut(JsValue)>)
}

/// The function behind a [`Callback`], for `set_onxxx`.
pub(crate) fn func(c: &Callback) -> Option<&js_sys::Function> {
    Some(c.as_ref().unchecked_ref())
}
