//! Deterministic parameter initialisation.
//!
//! candle's own initialisers draw from an unseeded generator, so an untrained head would
//! differ on every run. [`SeededInit`] is a var-builder backend that draws each tensor
//! from a generator seeded by (seed, tensor name): the same checkpoint, whatever order
//! modules are built in.
//!
//! The generator's seed mixes the name in with [`name_hash`], FNV-1a 64: a hash defined
//! by its specification, unlike std's `DefaultHasher`, whose algorithm may change with
//! any toolchain (and with it every untrained head and a resumed run's new parameters).

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
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.seed ^ name_hash(name));
        let n = shape.elem_count();
        let uniform =
            |rng: &mut rand::rngs::StdRng, lo: f64, up: f64| lo + (up - lo) * rng.random::<f64>();
        match init {
            Init::Const(c) => vec![c as f32; n],
            Init::Uniform { lo, up } => (0..n).map(|_| uniform(&mut rng, lo, up) as f32).collect(),
            Init::Randn { mean, stdev } => (0..n)
                .map(|_| (mean + stdev * gaussian(&mut rng)) as f32)
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

/// FNV-1a 64 of the UTF-8 bytes of `name` (offset basis `0xcbf29ce484222325`, prime
/// `0x100000001b3`): the part of a tensor's seed that comes from its name.
pub fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// One draw from the standard normal distribution N(0, 1), by the Box-Muller transform
/// of two uniform draws (no distribution crate for one formula).
pub fn gaussian<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::EPSILON);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
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

    #[test]
    fn name_hash_is_fnv1a_64() {
        // The published FNV-1a 64 test vectors.
        assert_eq!(name_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(name_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(name_hash("foobar"), 0x8594_4171_f739_67e8);
    }

    /// Untrained heads and a resumed run's new parameters depend on these exact values: a
    /// change of hash or generator must fail here, not surface as a different model.
    #[test]
    fn seeded_values_are_pinned() {
        let s: Shape = (4,).into();
        let uniform = SeededInit::new(7).values(
            "pivot_former.queries",
            &s,
            Init::Uniform { lo: -1.0, up: 1.0 },
        );
        assert_eq!(uniform, PINNED_UNIFORM);
        let normal = SeededInit::new(7).values(
            "pivot_former.queries",
            &s,
            Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        );
        // ln and cos come from the platform's libm: allow for a last-bit difference.
        for (got, want) in normal.iter().zip(PINNED_NORMAL) {
            assert!((got - want).abs() < 1e-6, "{normal:?} vs {PINNED_NORMAL:?}");
        }
    }

    const PINNED_UNIFORM: [f32; 4] = [-0.8757266, 0.73879683, 0.113840945, 0.89635056];
    const PINNED_NORMAL: [f32; 4] = [1.6071721, 1.0251167, -0.6939022, -0.25214732];

    #[test]
    fn gaussian_has_unit_variance() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let xs: Vec<f64> = (0..20_000).map(|_| gaussian(&mut rng)).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "variance {var}");
    }
}
