import { defineConfig } from 'vite';

export default defineConfig({
  // Only for `vite dev`: pre-bundling would move the wasm-bindgen glue away from the .wasm its
  // `new URL('swarmcast_bg.wasm', import.meta.url)` points at. `vite build` needs nothing.
  optimizeDeps: { exclude: ['swarmcast'] },
});
