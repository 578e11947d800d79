//! Model definitions, one file per architecture; config structs mirror config.json.

pub mod bert;
pub mod llama;
pub mod pivot;
pub mod quantized;
pub mod t5;
