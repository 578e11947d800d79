//! Deterministic parameter initialisation.
//!
//! candle's own initialisers draw from an unseeded generator, so an untrained head would
//! differ on every run. [`SeededInit`] is a var-builder backend that draws each tensor
//! from a generator seeded by (seed, tensor name): the same checkpoint, whatever order
//! modules are built in.

use std::hash::{Hash, Hasher};

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::{var_builder::SimpleBackend, Init, VarBuilder};
use rand::{Rng, SeedableRng};

/// A var-builder backend that initialises every requested tensor from its hint.
#[derive(Debug, Clone, Copy)]
pub struct SeededInit {
    seed: u64,
}

impl SeededInit {
    /// A backend drawing from `seed`.
    pub fn new(seed: u64) -> Self {
        Self { seed }
    }

    /// A var builder over this backend.
    pub fn var_builder(self, dtype: DType, dev: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self), dtype, dev.clone())
    }

    /// The values of one tensor, as f32.
    pub fn values(&self, name: &str, shape: &Shape, init: Init) -> Vec<f32> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        name.hash(&mut h);
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.seed ^ h.finish());
        let n = shape.elem_count();
        let uniform =
            |rng: &mut rand::rngs::StdRng, lo: f64, up: f64| lo + (up - lo) * rng.random::<f64>();
        match init {
            Init::Const(c) => vec![c as f32; n],
            Init::Uniform { lo, up } => (0..n).map(|_| uniform(&mut rng, lo, up) as f32).collect(),
            Init::Randn { mean, stdev } => (0..n)
                .map(|_| {
                    // Box-Muller: no extra distribution crate for one formula.
                    let u1 = uniform(&mut rng, f64::EPSILON, 1.0);
                    let u2 = rng.random::<f64>();
                    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                    (mean + stdev * z) as f32
                })
                .collect(),
            Init::Kaiming { .. } => {
                let fan_in: usize = shape.dims().iter().skip(1).product::<usize>().max(1);
                let bound = (6.0 / fan_in as f64).sqrt();
                (0..n)
                    .map(|_| uniform(&mut rng, -bound, bound) as f32)
                    .collect()
            }
        }
    }
}

impl SimpleBackend for SeededInit {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        Tensor::from_vec(self.values(name, &s, h), s, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        candle_core::bail!("SeededInit needs a shape to create {name}")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_values_other_seed_other_values() {
        let s: Shape = (3, 4).into();
        let init = Init::Randn {
            mean: 0.0,
            stdev: 1.0,
        };
        let a = SeededInit::new(1).values("x", &s, init);
        assert_eq!(a, SeededInit::new(1).values("x", &s, init));
        assert_ne!(a, SeededInit::new(2).values("x", &s, init));
        assert_ne!(a, SeededInit::new(1).values("y", &s, init));
        let mean = a.iter().sum::<f32>() / 12.0;
        assert!(mean.abs() < 1.5, "mean {mean}");
    }
}
