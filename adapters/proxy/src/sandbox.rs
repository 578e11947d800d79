//! The wasmtime host for protocol adapters.
//!
//! Each adapter is compiled once when loaded; every call gets a fresh `Store` with a
//! fuel budget, an epoch deadline and a memory cap, and the store is dropped after the
//! call whatever happened, so a trap or a runaway guest leaves nothing behind. Failures
//! come back as a [`CallError`] with a [`FailureKind`] the proxy counts by.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prip_protocols as native;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, ResourceLimiter, Store, Trap};

mod bindings {
    wasmtime::component::bindgen!({ path: "../wit", world: "adapter" });
}

use bindings::prip::adapter::types as wit;
use bindings::AdapterPre;

/// How often the epoch advances; deadlines are counted in these ticks.
const TICK: Duration = Duration::from_millis(5);

/// What one adapter call may use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Wasm fuel (about one unit per instruction).
    pub fuel: u64,
    /// Wall-clock time.
    pub deadline: Duration,
    /// Linear memory, bytes.
    pub memory_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        // A 16 MB ComfyUI workflow takes well under a tenth of each.
        Self {
            fuel: 20_000_000_000,
            deadline: Duration::from_secs(5),
            memory_bytes: 512 << 20,
        }
    }
}

/// Why an adapter call failed; the label of the failure counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureKind {
    /// The guest trapped (a panic, an out-of-bounds access, ...).
    Trap,
    /// The guest ran out of fuel.
    Fuel,
    /// The guest ran past its deadline.
    Deadline,
    /// The guest tried to grow memory past the cap.
    Memory,
    /// The adapter returned an error: it does not understand the request.
    Refused,
    /// The adapter returned something malformed.
    Garbage,
}

impl FailureKind {
    /// Lower-case label.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Trap => "adapter_trap",
            FailureKind::Fuel => "adapter_fuel",
            FailureKind::Deadline => "adapter_deadline",
            FailureKind::Memory => "adapter_memory",
            FailureKind::Refused => "adapter_refused",
            FailureKind::Garbage => "adapter_garbage",
        }
    }
}

/// A failed adapter call.
#[derive(Debug, Clone, thiserror::Error)]
#[error("adapter {adapter}: {}: {message}", kind.as_str())]
pub struct CallError {
    /// The adapter's name.
    pub adapter: String,
    /// What went wrong.
    pub kind: FailureKind,
    /// One line.
    pub message: String,
}

/// An adapter that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("adapter {origin}: {source}")]
    Io {
        /// Where it came from.
        origin: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not a component of the adapter world, or its `describe` failed.
    #[error("adapter {origin}: {message}")]
    Invalid {
        /// Where it came from.
        origin: String,
        /// Why, one line.
        message: String,
    },
    /// Two adapters with one name.
    #[error("adapter {origin}: the name {name:?} is taken by {other}")]
    Duplicate {
        /// Where it came from.
        origin: String,
        /// The name.
        name: String,
        /// The adapter loaded first.
        other: String,
    },
}

/// A loaded adapter.
pub struct Loaded {
    /// What it said about itself.
    pub info: native::Info,
    /// "builtin" or the file it was loaded from.
    pub origin: String,
    pre: AdapterPre<CallState>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("info", &self.info)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// The adapters and the engine that runs them. Cheap to share behind an `Arc`; calls
/// take `&self` and may run on many threads at once.
pub struct AdapterHost {
    engine: Engine,
    limits: Limits,
    adapters: Vec<Loaded>,
    stop_ticker: Arc<AtomicBool>,
}

impl std::fmt::Debug for AdapterHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdapterHost")
            .field("limits", &self.limits)
            .field("adapters", &self.adapters)
            .finish_non_exhaustive()
    }
}

impl Drop for AdapterHost {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

/// Per-call store data: the memory cap and whether the guest hit it.
struct CallState {
    memory_bytes: usize,
    memory_refused: bool,
}

impl ResourceLimiter for CallState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = desired <= self.memory_bytes;
        self.memory_refused |= !ok;
        Ok(ok)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

impl AdapterHost {
    /// An empty host.
    pub fn new(limits: Limits) -> Result<Self, LoadError> {
        let mut config = Config::new();
        config.consume_fuel(true).epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|e| LoadError::Invalid {
            origin: "engine".into(),
            message: one_line(&e),
        })?;
        let stop_ticker = Arc::new(AtomicBool::new(false));
        let (ticker_engine, stop) = (engine.clone(), stop_ticker.clone());
        std::thread::Builder::new()
            .name("prip-adapter-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    ticker_engine.increment_epoch();
                }
            })
            .map_err(|source| LoadError::Io {
                origin: "epoch thread".into(),
                source,
            })?;
        Ok(Self {
            engine,
            limits,
            adapters: Vec::new(),
            stop_ticker,
        })
    }

    /// A host with the built-in adapters (a1111, comfyui, diffusers, openai-images).
    pub fn with_builtin(limits: Limits) -> Result<Self, LoadError> {
        let mut host = Self::new(limits)?;
        for (name, bytes) in crate::builtin::COMPONENTS {
            host.load_bytes(&format!("builtin:{name}"), bytes)?;
        }
        Ok(host)
    }

    /// The limits every call runs under.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Loaded adapters, in load order (the order `auto` tries them).
    pub fn adapters(&self) -> &[Loaded] {
        &self.adapters
    }

    /// The index of the adapter called `name`.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.adapters.iter().position(|a| a.info.name == name)
    }

    /// Compiles a component, checks it implements the adapter world and asks its name.
    /// Returns the new adapter's index.
    pub fn load_bytes(&mut self, origin: &str, bytes: &[u8]) -> Result<usize, LoadError> {
        let invalid = |message: String| LoadError::Invalid {
            origin: origin.to_string(),
            message,
        };
        let component = Component::new(&self.engine, bytes).map_err(|e| invalid(one_line(&e)))?;
        let linker = Linker::<CallState>::new(&self.engine);
        let pre = linker
            .instantiate_pre(&component)
            .and_then(AdapterPre::new)
            .map_err(|e| invalid(format!("not an adapter component: {}", one_line(&e))))?;
        let info = self
            .run(&pre, origin, |a, s| a.call_describe(s))
            .map_err(|e| invalid(e.message))?;
        let info = native_info(info);
        if info.name.is_empty() || info.routes.is_empty() {
            return Err(invalid("describe() gave no name or no routes".into()));
        }
        if let Some(other) = self.adapters.iter().find(|a| a.info.name == info.name) {
            return Err(LoadError::Duplicate {
                origin: origin.to_string(),
                name: info.name,
                other: other.origin.clone(),
            });
        }
        self.adapters.push(Loaded {
            info,
            origin: origin.to_string(),
            pre,
        });
        Ok(self.adapters.len() - 1)
    }

    /// Loads one `.wasm` file.
    pub fn load_file(&mut self, path: &Path) -> Result<usize, LoadError> {
        let origin = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| LoadError::Io {
            origin: origin.clone(),
            source,
        })?;
        self.load_bytes(&origin, &bytes)
    }

    /// Loads every `*.wasm` in `dir`, in name order. A bad file is reported and
    /// skipped; the others still load.
    pub fn load_dir(&mut self, dir: &Path) -> Result<Vec<LoadError>, LoadError> {
        let entries = std::fs::read_dir(dir).map_err(|source| LoadError::Io {
            origin: dir.display().to_string(),
            source,
        })?;
        let mut files: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
            .collect();
        files.sort();
        Ok(files
            .iter()
            .filter_map(|f| self.load_file(f).err())
            .collect())
    }

    /// `extract` of adapter `idx`: the slots, the request's seed and whether a PRIP
    /// layer already refined it. Slot ids must be unique and non-empty.
    pub fn extract(
        &self,
        idx: usize,
        req: &native::Request,
    ) -> Result<native::Extraction, CallError> {
        let a = &self.adapters[idx];
        let req = wit_request(req);
        let found = self
            .run(&a.pre, &a.info.name, |x, s| x.call_extract(s, &req))?
            .map_err(|m| refused(&a.info.name, m))?;
        let mut ids = std::collections::BTreeSet::new();
        if let Some(bad) = found
            .slots
            .iter()
            .find(|s| s.id.is_empty() || !ids.insert(s.id.as_str()))
        {
            return Err(CallError {
                adapter: a.info.name.clone(),
                kind: FailureKind::Garbage,
                message: format!("slot id {:?} is empty or repeated", bad.id),
            });
        }
        Ok(native::Extraction {
            slots: found.slots.into_iter().map(native_slot).collect(),
            seed: found.seed,
            refined: found.refined,
        })
    }

    /// `apply` of adapter `idx`. A JSON body must stay JSON.
    pub fn apply(
        &self,
        idx: usize,
        req: &native::Request,
        replacements: &[native::Replacement],
    ) -> Result<Vec<u8>, CallError> {
        let a = &self.adapters[idx];
        let wreq = wit_request(req);
        let reps = wit_replacements(replacements);
        let body = self
            .run(&a.pre, &a.info.name, |x, s| x.call_apply(s, &wreq, &reps))?
            .map_err(|m| refused(&a.info.name, m))?;
        if is_json(&req.body) && !is_json(&body) {
            return Err(CallError {
                adapter: a.info.name.clone(),
                kind: FailureKind::Garbage,
                message: "apply() turned a JSON body into something else".into(),
            });
        }
        Ok(body)
    }

    /// `annotate` of adapter `idx`.
    pub fn annotate(
        &self,
        idx: usize,
        req: &native::Request,
        replacements: &[native::Replacement],
        resp: &native::Response,
    ) -> Result<Option<Vec<u8>>, CallError> {
        let a = &self.adapters[idx];
        let wreq = wit_request(req);
        let reps = wit_replacements(replacements);
        let wresp = wit::Response {
            status: resp.status,
            headers: resp.headers.clone(),
            body: resp.body.clone(),
        };
        self.run(&a.pre, &a.info.name, |x, s| {
            x.call_annotate(s, &wreq, &reps, &wresp)
        })?
        .map_err(|m| refused(&a.info.name, m))
    }

    /// One call in a fresh store under the limits.
    fn run<R>(
        &self,
        pre: &AdapterPre<CallState>,
        name: &str,
        call: impl FnOnce(&bindings::Adapter, &mut Store<CallState>) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        let mut store = Store::new(
            &self.engine,
            CallState {
                memory_bytes: self.limits.memory_bytes,
                memory_refused: false,
            },
        );
        store.limiter(|s| s);
        let fail = |kind, message| CallError {
            adapter: name.to_string(),
            kind,
            message,
        };
        store
            .set_fuel(self.limits.fuel)
            .map_err(|e| fail(FailureKind::Trap, one_line(&e)))?;
        let ticks = (self.limits.deadline.as_micros() / TICK.as_micros()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        let result = pre
            .instantiate(&mut store)
            .and_then(|adapter| call(&adapter, &mut store));
        result.map_err(|e| {
            let kind = match e.downcast_ref::<Trap>() {
                Some(Trap::OutOfFuel) => FailureKind::Fuel,
                Some(Trap::Interrupt) => FailureKind::Deadline,
                _ if store.data().memory_refused => FailureKind::Memory,
                _ => FailureKind::Trap,
            };
            fail(kind, one_line(&e))
        })
    }
}

fn refused(adapter: &str, message: String) -> CallError {
    CallError {
        adapter: adapter.to_string(),
        kind: FailureKind::Refused,
        message: message
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(300)
            .collect(),
    }
}

fn is_json(body: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
}

/// A wasmtime error as one line: its chain of messages without the wasm backtrace that
/// a trap carries as a context (one frame per line, the trap's own message run onto the
/// last frame's line by `{e:#}`).
fn one_line(e: &wasmtime::Error) -> String {
    let backtrace = e
        .downcast_ref::<wasmtime::WasmBacktrace>()
        .map(ToString::to_string);
    let chain: Vec<String> = e
        .chain()
        .map(ToString::to_string)
        .filter(|m| Some(m) != backtrace.as_ref())
        .collect();
    prip_core::error::one_line(&chain.join(": "))
}

fn wit_request(r: &native::Request) -> wit::Request {
    wit::Request {
        method: r.method.clone(),
        path: r.path.clone(),
        query: r.query.clone(),
        headers: r.headers.clone(),
        body: r.body.clone(),
    }
}

fn wit_replacements(r: &[native::Replacement]) -> Vec<wit::Replacement> {
    r.iter()
        .map(|r| wit::Replacement {
            id: r.id.clone(),
            original: r.original.clone(),
            text: r.text.clone(),
        })
        .collect()
}

fn native_info(i: wit::Info) -> native::Info {
    native::Info {
        name: i.name,
        version: i.version,
        routes: i
            .routes
            .into_iter()
            .map(|r| native::Route {
                method: r.method,
                path: r.path,
            })
            .collect(),
        annotates: i.annotates,
        dialect: match i.dialect {
            wit::Dialect::A1111 => native::Dialect::A1111,
            wit::Dialect::Comfyui => native::Dialect::ComfyUi,
            wit::Dialect::Plain => native::Dialect::Plain,
        },
    }
}

fn native_slot(s: wit::Slot) -> native::Slot {
    native::Slot {
        id: s.id,
        text: s.text,
        polarity: match s.polarity {
            wit::Polarity::Positive => native::Polarity::Positive,
            wit::Polarity::Negative => native::Polarity::Negative,
            wit::Polarity::Unknown => native::Polarity::Unknown,
        },
        role: s.role,
        encoder: s.encoder,
    }
}
