//! The trainable parameters of a run: named candle `Var`s created on first request,
//! initialised from saved weights when the name is known, otherwise deterministically
//! from (seed, name) so a run and its resumption start from the same values.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::{var_builder::SimpleBackend, Init, VarBuilder};
use prip_core::init::SeededInit;

use crate::{Result, TrainError};

/// Named trainable variables, shared by the var builders that created them.
#[derive(Debug, Clone)]
pub struct ParamStore {
    vars: Arc<Mutex<BTreeMap<String, Var>>>,
    initial: Arc<HashMap<String, Tensor>>,
    seed: SeededInit,
}

impl ParamStore {
    /// An empty store whose new parameters come from `initial` when it holds the name,
    /// else from the seeded initialiser.
    pub fn new(seed: u64, initial: HashMap<String, Tensor>) -> Self {
        Self {
            vars: Arc::default(),
            initial: Arc::new(initial),
            seed: SeededInit::new(seed),
        }
    }

    /// A var builder that creates (or returns) parameters of this store.
    pub fn var_builder(&self, dev: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), DType::F32, dev.clone())
    }

    /// Creates (or returns) one parameter directly.
    pub fn get(
        &self,
        name: &str,
        shape: impl Into<Shape>,
        init: Init,
        dev: &Device,
    ) -> Result<Var> {
        let shape = shape.into();
        let t = SimpleBackend::get(self, shape, name, init, DType::F32, dev)?;
        let vars = self.lock();
        vars.get(name)
            .cloned()
            .ok_or_else(|| TrainError::Config(format!("parameter {name} vanished after {t:?}")))
    }

    /// All parameters by name, in name order.
    pub fn vars(&self) -> Vec<(String, Var)> {
        self.lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Copies of the current values of the parameters whose names start with `prefix`.
    /// Copies, not views: an optimiser step writes into a `Var`'s storage in place, so a
    /// detached view would follow the training (a PPO reference would drift with the
    /// policy it is meant to anchor).
    pub fn snapshot(&self, prefix: &str) -> Result<HashMap<String, Tensor>> {
        self.lock()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?)))
            .collect()
    }

    /// Overwrites parameters from a saved map (resume). Every parameter must be present.
    pub fn restore(&self, saved: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
        for (name, var) in self.lock().iter() {
            let t = saved.get(name).ok_or_else(|| {
                TrainError::Config(format!("{} lacks parameter {name}", path.display()))
            })?;
            var.set(&t.to_dtype(DType::F32)?)?;
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Var>> {
        // A panic while holding the lock cannot leave the map half-updated (inserts are
        // single calls), so a poisoned lock is still usable.
        self.vars.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl SimpleBackend for ParamStore {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut vars = self.lock();
        if let Some(v) = vars.get(name) {
            if v.shape() != &s {
                candle_core::bail!("{name} requested as {s:?}, exists as {:?}", v.shape());
            }
            return v.as_tensor().to_dtype(dtype);
        }
        let value = match self.initial.get(name) {
            Some(t) if t.shape() == &s => t.to_dtype(DType::F32)?.to_device(dev)?,
            Some(t) => candle_core::bail!(
                "saved {name} has shape {:?}, the model needs {s:?}",
                t.shape()
            ),
            None => Tensor::from_vec(self.seed.values(name, &s, h), s, dev)?,
        };
        let var = Var::from_tensor(&value)?;
        let t = var.as_tensor().to_dtype(dtype)?;
        vars.insert(name.to_string(), var);
        Ok(t)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        match self.lock().get(name) {
            Some(v) => v.as_tensor().to_dtype(dtype),
            None => candle_core::bail!("parameter {name} needs a shape to be created"),
        }
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}
