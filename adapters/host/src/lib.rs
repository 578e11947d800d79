//! prip-adapters: the WASM adapter host and the `prip serve` reverse proxy.
//!
//! Protocol adapters are WebAssembly components of the contract in `adapters/wit`
//! ([`sandbox`]); the built-in ones are compiled from prip-protocols at build time
//! ([`builtin`]).

pub mod builtin;
pub mod sandbox;
