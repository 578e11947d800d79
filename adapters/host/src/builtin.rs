//! The adapters built from this workspace (see build.rs), embedded in the binary.

/// `(name, component bytes)`, in the order `--adapter auto` tries them.
pub const COMPONENTS: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/builtin.rs"));

/// The misbehaving test adapter (`prip_protocols::cases::Faulty`) as a component file,
/// for tests that load adapters from a directory. Not embedded.
#[doc(hidden)]
pub const FAULTY_COMPONENT: &str = concat!(env!("OUT_DIR"), "/faulty.wasm");
