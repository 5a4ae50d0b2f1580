//! The broadcaster's key in the page: drawn from the browser's secure random source, kept by the
//! page (localStorage) as the URL-safe base64 text of its 32-byte secret seed, so a reload keeps
//! the same stream id and the key can be exported to another machine and imported back.

use crate::core::StreamKey as CoreStreamKey;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use wasm_bindgen::prelude::*;

/// A stream's secret key. Whoever holds it can publish the stream; the stream id (its public key)
/// is what viewers and links carry.
#[wasm_bindgen(js_name = StreamKey)]
pub struct WebStreamKey {
    key: CoreStreamKey,
}

#[wasm_bindgen(js_class = StreamKey)]
impl WebStreamKey {
    /// A new key from `crypto.getRandomValues` (via getrandom): never from `Math.random`, since
    /// a guessable secret would let anyone publish as the stream.
    pub fn generate() -> Result<WebStreamKey, JsError> {
        let mut secret = [0u8; 32];
        getrandom::getrandom(&mut secret)
            .map_err(|e| JsError::new(&format!("no secure random source: {e}")))?;
        Ok(WebStreamKey {
            key: CoreStreamKey::from_secret(secret),
        })
    }

    /// The key whose secret is `secret`, as exported by [`WebStreamKey::secret`]. Surrounding
    /// whitespace (from copy and paste) is ignored; anything else that is not 32 bytes of URL-safe
    /// base64 is an error.
    #[wasm_bindgen(js_name = fromSecret)]
    pub fn from_secret(secret: &str) -> Result<WebStreamKey, JsError> {
        Ok(WebStreamKey {
            key: CoreStreamKey::from_secret(decode_secret(secret).map_err(JsError::from)?),
        })
    }

    /// The secret seed as URL-safe base64 without padding (43 characters), for storage and export.
    pub fn secret(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.key.secret())
    }

    /// The stream id viewers use (`watch.html?stream=ID`, `data-swarmcast="ID"`).
    #[wasm_bindgen(js_name = streamId)]
    pub fn stream_id(&self) -> String {
        self.key.stream_id().to_string()
    }
}

/// Why a text is not an exported secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// Not URL-safe base64 without padding.
    #[error("stream secret is not URL-safe base64")]
    NotBase64,
    /// Decodes to the wrong number of bytes.
    #[error("stream secret has {got} bytes, expected 32")]
    WrongLength {
        /// Bytes decoded.
        got: usize,
    },
}

fn decode_secret(text: &str) -> Result<[u8; 32], SecretError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(text.trim())
        .map_err(|_| SecretError::NotBase64)?;
    bytes
        .as_slice()
        .try_into()
        .map_err(|_| SecretError::WrongLength { got: bytes.len() })
}
