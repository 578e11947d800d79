//! prip-trainer: the PRIP training stages on candle.
//!
//! The paper's disentangled warm-up (the Preference Encoder regresses the pivot of the
//! best-scored image, Eq. 6; the Prompt Decoder learns to write system prompts from
//! pivots, Eq. 7) and per-system adaptation (one LoRA of the decoder per generation
//! backend), and the third stage, PPO on the encoder with an image-preference reward
//! (Section 3.4). Model definitions and the checkpoint format live in prip-core; this crate
//! adds data, pivot targets, losses, optimisation, resumable checkpoints and evaluation.

pub mod config;
pub mod data;
pub mod diffusiondb;
pub mod distributed;
pub mod error;
pub mod eval;
pub mod eval_images;
pub mod image;
pub mod net;
pub mod objective;
pub mod optim;
pub mod params;
pub mod plot;
pub mod ppo;
pub mod preference;
pub mod recipe;
pub mod render;
pub mod reward;
pub mod run;
pub mod score;
pub mod stage;
pub mod tally;
pub mod targets;

pub use error::{Result, TrainError};
