// The stream key: kept in localStorage (so a reload keeps the stream id) unless `key=new`;
// `keyslot=NAME` keeps it under another name. The key itself is Rust (`StreamKey`).

import { log, notice, params } from './ui.mjs';

const keySlot = `swarmcast.broadcaster.secret${params.get('keyslot') ? '.' + params.get('keyslot') : ''}`;
export const ephemeralKey = params.get('key') === 'new';

function storageGet(k) { try { return localStorage.getItem(k); } catch { return null; } }
function storageSet(k, v) { try { localStorage.setItem(k, v); return true; } catch { return false; } }

export function loadKey(wasm) {
  if (!ephemeralKey) {
    const saved = storageGet(keySlot);
    if (saved) {
      try { return wasm.StreamKey.fromSecret(saved); } catch (e) { log(`stored key unusable (${e.message}); making a new one`, 'error'); }
    }
  }
  const key = wasm.StreamKey.generate();
  if (!ephemeralKey && !storageSet(keySlot, key.secret())) {
    notice('This browser does not let the page store the key: a reload will make a new stream id. Export the key to keep it.');
  }
  return key;
}

/** Keeps `key` as this page's key (nothing is stored for a `key=new` page). */
export function saveKey(key) {
  if (!ephemeralKey) storageSet(keySlot, key.secret());
}
