//! The calling side of the ABI: load a `libprip_abi` built elsewhere (with CUDA, say,
//! or by another PRIP checkout) and refine through it, as C or Python callers do.
//!
//! (Not compiled as a doctest: rustdoc links this crate's examples against a second
//! serde_json build, so `json!` values would not match the library's type.)
//!
//! ```ignore
//! # fn main() -> Result<(), prip_abi::client::LibError> {
//! use prip_abi::client::{LibRefiner, Library};
//! let lib = Library::load("target/release/libprip_abi.so".as_ref())?;
//! let refiner = LibRefiner::open(lib, &serde_json::json!({"model": "default"}))?;
//! let request = prip_core::RefineRequest { seed: Some(7), ..prip_core::RefineRequest::new("a cat") };
//! for result in refiner.refine(&[request], None)? {
//!     println!("{}", result.map(|r| r.refined).unwrap_or_else(|e| e));
//! }
//! # Ok(()) }
//! ```

use std::ffi::{c_char, c_int, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prip_core::refiner::RefineAnswer;
use prip_core::{RefineRequest, Refined};
use serde_json::{json, Value};

use crate::{PripHandle, PRIP_ABI_VERSION_MAJOR};

/// Why the library could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LibError {
    /// The file could not be loaded as a shared library.
    #[error("cannot load refiner library {path}: {source}")]
    Load {
        /// The file.
        path: PathBuf,
        /// The loader's reason.
        source: libloading::Error,
    },
    /// The library lacks an entry point of the ABI.
    #[error("{path} is not a PRIP refiner library: it has no {symbol}")]
    Symbol {
        /// The file.
        path: PathBuf,
        /// The missing function.
        symbol: &'static str,
    },
    /// The library speaks another major version of the ABI.
    #[error(
        "{path} implements PRIP ABI {major}.{minor}, but this prip needs ABI {expected}.x; \
         use a library built from the same PRIP release"
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// The library's major version.
        major: u32,
        /// The library's minor version.
        minor: u32,
        /// The major version this build speaks.
        expected: u32,
    },
    /// A call returned a failure status.
    #[error("{call}: {message}")]
    Call {
        /// The ABI function.
        call: &'static str,
        /// Its status code.
        status: i32,
        /// Its last error.
        message: String,
    },
    /// The library answered with something that is not the ABI's JSON.
    #[error("refiner library answered {call} with unexpected JSON: {reason}")]
    Reply {
        /// The ABI function.
        call: &'static str,
        /// What was wrong.
        reason: String,
    },
}

type OpenFn = unsafe extern "C" fn(*const c_char, *mut PripHandle) -> c_int;
type RefineBatchFn = unsafe extern "C" fn(PripHandle, *const c_char, *mut *mut c_char) -> c_int;
type FreeFn = unsafe extern "C" fn(*mut c_char);
type LastErrorFn = unsafe extern "C" fn() -> *const c_char;
type CloseFn = unsafe extern "C" fn(PripHandle) -> c_int;
type VersionFn = unsafe extern "C" fn() -> u32;

/// A loaded refiner library whose ABI major version matched.
pub struct Library {
    path: PathBuf,
    version: u32,
    open: OpenFn,
    refine_batch: RefineBatchFn,
    free: FreeFn,
    last_error: LastErrorFn,
    close: CloseFn,
    // Declared last so the function pointers above never outlive the mapping.
    _lib: libloading::Library,
}

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Library")
            .field("path", &self.path)
            .field("version", &self.version())
            .finish_non_exhaustive()
    }
}

impl Library {
    /// Loads `path` and checks that it speaks this build's ABI major version before
    /// any other entry point is looked up.
    pub fn load(path: &Path) -> Result<Arc<Self>, LibError> {
        // SAFETY: loading runs the library's initialisers; a PRIP library has none
        // beyond the Rust runtime's, and any other library is refused below before
        // anything else of it is called.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|source| LibError::Load {
            path: path.to_path_buf(),
            source,
        })?;
        let path = path.to_path_buf();
        // SAFETY: each symbol is read with the exact signature plugin-abi/src/lib.rs
        // exports (status enums travel as C ints); the pointers are kept beside `lib`.
        unsafe {
            let version_fn: VersionFn = symbol(&lib, &path, "prip_abi_version")?;
            let version = version_fn();
            let (major, minor) = (version >> 16, version & 0xffff);
            if major != PRIP_ABI_VERSION_MAJOR {
                return Err(LibError::Version {
                    path,
                    major,
                    minor,
                    expected: PRIP_ABI_VERSION_MAJOR,
                });
            }
            Ok(Arc::new(Self {
                version,
                open: symbol(&lib, &path, "prip_open")?,
                refine_batch: symbol(&lib, &path, "prip_refine_batch")?,
                free: symbol(&lib, &path, "prip_string_free")?,
                last_error: symbol(&lib, &path, "prip_last_error")?,
                close: symbol(&lib, &path, "prip_close")?,
                path,
                _lib: lib,
            }))
        }
    }

    /// The library's ABI version as (major, minor).
    pub fn version(&self) -> (u32, u32) {
        (self.version >> 16, self.version & 0xffff)
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check(&self, call: &'static str, status: c_int) -> Result<(), LibError> {
        if status == 0 {
            return Ok(());
        }
        // SAFETY: prip_last_error returns the calling thread's NUL-terminated message,
        // valid until this thread's next call into the library; it is copied at once.
        let message = unsafe { CStr::from_ptr((self.last_error)()) }
            .to_string_lossy()
            .into_owned();
        Err(LibError::Call {
            call,
            status,
            message,
        })
    }
}

/// Reads one entry point of the ABI.
///
/// # Safety
/// `T` is the exact function type the library exports under `name`.
unsafe fn symbol<T: Copy>(
    lib: &libloading::Library,
    path: &Path,
    name: &'static str,
) -> Result<T, LibError> {
    let c_name = format!("{name}\0");
    // SAFETY: forwarded caller contract on `T`.
    unsafe { lib.get::<T>(c_name.as_bytes()) }
        .map(|s| *s)
        .map_err(|_| LibError::Symbol {
            path: path.to_path_buf(),
            symbol: name,
        })
}

/// An open refiner inside a [`Library`]; closed when dropped.
#[derive(Debug)]
pub struct LibRefiner {
    lib: Arc<Library>,
    handle: PripHandle,
}

impl LibRefiner {
    /// Opens a refiner with the JSON config of `prip_open` (`model`, `system`,
    /// `device`, `fetch`, `home`, `generation`).
    pub fn open(lib: Arc<Library>, config: &Value) -> Result<Self, LibError> {
        let config = c_json(config);
        let mut handle: PripHandle = 0;
        // SAFETY: a NUL-terminated string and a writable handle slot, as prip_open takes.
        let status = unsafe { (lib.open)(config.as_ptr(), &mut handle) };
        lib.check("prip_open", status)?;
        Ok(Self { lib, handle })
    }

    /// Refines `requests` as one batch, with `generation` (any subset of the
    /// checkpoint's [generation] table) over the defaults the refiner was opened with.
    /// One result per request: a failed request is its one-line error, the others
    /// still succeed.
    pub fn refine(
        &self,
        requests: &[RefineRequest],
        generation: Option<&Value>,
    ) -> Result<Vec<Result<Refined, String>>, LibError> {
        let mut batch = json!({ "requests": requests });
        if let Some(g) = generation {
            batch["generation"] = g.clone();
        }
        let answer = self.call_batch(&batch)?;
        let reply = |reason: String| LibError::Reply {
            call: "prip_refine_batch",
            reason,
        };
        let results: Vec<RefineAnswer> = answer
            .get("results")
            .cloned()
            .and_then(|r| serde_json::from_value(r).ok())
            .filter(|r: &Vec<RefineAnswer>| r.len() == requests.len())
            .ok_or_else(|| reply(format!("{answer:.200}")))?;
        Ok(results.into_iter().map(Into::into).collect())
    }

    fn call_batch(&self, batch: &Value) -> Result<Value, LibError> {
        let input = c_json(batch);
        let mut out: *mut c_char = std::ptr::null_mut();
        // SAFETY: NUL-terminated input and a writable out slot; on success `out` is a
        // string of the library's, copied and then freed with the library's own free.
        let text = unsafe {
            let status = (self.lib.refine_batch)(self.handle, input.as_ptr(), &mut out);
            self.lib.check("prip_refine_batch", status)?;
            let text = CStr::from_ptr(out).to_string_lossy().into_owned();
            (self.lib.free)(out);
            text
        };
        serde_json::from_str(&text).map_err(|e| LibError::Reply {
            call: "prip_refine_batch",
            reason: e.to_string(),
        })
    }
}

impl Drop for LibRefiner {
    fn drop(&mut self) {
        // SAFETY: a handle this value opened and closes once. Closing fails only for a
        // handle already gone, which leaves nothing to clean up.
        unsafe { (self.lib.close)(self.handle) };
    }
}

fn c_json(v: &Value) -> CString {
    // serde_json escapes U+0000, so the text has no interior NUL.
    CString::new(v.to_string()).expect("JSON text has no NUL")
}
