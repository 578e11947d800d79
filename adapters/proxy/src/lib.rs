//! prip-proxy: the WASM adapter host and the `prip serve` reverse proxy.
//!
//! Protocol adapters are WebAssembly components of the contract in `adapters/wit`
//! ([`sandbox`]); the built-in ones are compiled from prip-protocols at build time
//! ([`builtin`]). [`proxy`] puts them in front of an image server, with the model work
//! on its own thread ([`refine`]) and counters for Prometheus ([`metrics`]).

pub mod builtin;
pub mod metrics;
pub mod proxy;
pub mod refine;
pub mod sandbox;
