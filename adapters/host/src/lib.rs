//! WASM adapter host and the prip serve reverse proxy
