//! prip-core: the PRIP refiner (Zhan et al., ACL 2024) on candle.
//!
//! A user prompt goes through the Preference Encoder (a text backbone plus a pivot
//! former) to an image pivot, which the Prompt Decoder (a llama LM fed the pivot as prefix
//! embeddings) expands into keyword-rich system language. The user's own text is kept
//! byte-for-byte; only free text is shown to the models ([`syntax`]).

pub mod checkpoint;
pub mod decoder;
pub mod device;
pub mod encoder;
pub mod error;
pub mod files;
pub mod gguf_tokenizer;
pub mod init;
pub mod lora;
pub mod models;
pub mod nn;
pub mod packaged;
pub mod refiner;
pub mod sampling;
pub mod store;
pub mod syntax;

pub use error::{Error, Result};
pub use refiner::{Outcome, Refine, RefineRequest, Refined, Refiner, RefinerOptions};
pub use syntax::Dialect;
