//! The adapters built from this workspace (see build.rs), embedded in the binary.

/// `(name, component bytes)`, in the order `--adapter auto` tries them.
pub const COMPONENTS: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/builtin.rs"));
