//! PRIP trainer: warm-up, per-system adaptation, PPO, evaluation
