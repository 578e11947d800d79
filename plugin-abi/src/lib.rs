//! Stable C ABI over prip-core
