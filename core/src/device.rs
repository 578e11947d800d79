//! Device selection: `auto`, `cpu` or `cuda:N`.

use std::str::FromStr;

use candle_core::Device;

use crate::{Error, Result};

/// Pins candle's CPU thread count in the environment (`RAYON_NUM_THREADS`, to the count
/// candle picks itself: one thread per physical core) unless the user set it.
///
/// Why: candle 0.11.1's `utils::get_num_threads`, called by its CPU matmul and other ops
/// on every call, re-reads /proc/cpuinfo each time that variable is unset (num_cpus'
/// physical-core count is not cached): 13% of a decode's samples on this 2-core machine,
/// and batch-1 decode at 75 instead of 135 tokens/s (`cargo bench -p prip-core --bench
/// refine`). Call it at start-up, before other threads read the environment: the `prip`
/// binary does so first thing, the C ABI at `prip_open`.
pub fn pin_cpu_threads() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = candle_core::utils::get_num_threads();
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}

/// Where the models run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// The first CUDA GPU when built with CUDA and one is present, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA GPU number N.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| {
                    Error::Device(format!(
                        "unknown device {other:?} (use auto, cpu or cuda:N)"
                    ))
                }),
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Opens the device. Never panics: a missing driver is an error (or, for `auto`, the CPU).
    pub fn open(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Auto => Ok(cuda(0).unwrap_or_else(|e| {
                // A CUDA build without a usable GPU says why, once per open; a CPU build
                // has nothing to report.
                if cfg!(feature = "cuda") {
                    tracing::warn!("{e}; using the CPU");
                }
                Device::Cpu
            })),
            Self::Cuda(n) => cuda(n),
        }
    }
}

/// Runs a cudarc/candle call that may panic (inside the driver bindings) as an error.
#[cfg(feature = "cuda")]
fn no_panic<T>(f: impl FnOnce() -> candle_core::Result<T>) -> candle_core::Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the CUDA driver panicked".into());
        Err(candle_core::Error::Msg(why))
    })
}

#[cfg(feature = "cuda")]
fn cuda(n: usize) -> Result<Device> {
    // candle 0.11.1 links cudarc with `dynamic-linking`, so a CUDA build starts only where
    // libcuda is installed, and cudarc's load-time probe (`is_culib_present`) does not
    // exist. What can still go wrong (no device, an ordinal out of range, a driver too
    // old) is an error from cuInit/cuDeviceGet; a panic inside cudarc is caught here too,
    // so `auto` falls back to the CPU and `cuda:N` is a one-line error, never a crash.
    no_panic(|| Device::new_cuda(n)).map_err(|e| {
        let count = cuda_device_count().ok();
        Error::Device(describe_cuda_failure(n, &e.to_string(), count))
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda(n: usize) -> Result<Device> {
    Err(Error::Device(format!(
        "cuda:{n} requested but this build has no CUDA support (rebuild with --features cuda)"
    )))
}

/// How many CUDA GPUs the driver reports. An error (one line) without a driver, and in a
/// build without the `cuda` feature.
pub fn cuda_device_count() -> Result<usize> {
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda_backend::cudarc::driver::CudaContext;
        no_panic(|| {
            CudaContext::device_count().map_err(|e| candle_core::Error::Msg(format!("{e:?}")))
        })
        .map(|n| n.max(0) as usize)
        .map_err(|e| Error::Device(describe_cuda_failure(0, &e.to_string(), None)))
    }
    #[cfg(not(feature = "cuda"))]
    Err(Error::Device(
        "this build has no CUDA support (rebuild with --features cuda)".into(),
    ))
}

/// The one-line message for a GPU that could not be opened, from the driver's error text
/// (cudarc prints `DriverError(CUDA_ERROR_..., "...")`) and, when known, how many GPUs
/// the driver sees.
pub fn describe_cuda_failure(n: usize, text: &str, count: Option<usize>) -> String {
    let has = |code: &str| text.contains(code);
    if has("CUDA_ERROR_INVALID_DEVICE") || count.is_some_and(|c| c > 0 && n >= c) {
        return match count {
            Some(0) | None => format!("cuda:{n}: no such GPU on this machine"),
            Some(1) => format!("cuda:{n}: no such GPU; this machine has one (cuda:0)"),
            Some(c) => format!(
                "cuda:{n}: no such GPU; this machine has {c} (cuda:0 to cuda:{})",
                c - 1
            ),
        };
    }
    if has("CUDA_ERROR_NO_DEVICE") {
        return format!("cuda:{n}: the NVIDIA driver found no GPU on this machine");
    }
    if has("CUDA_ERROR_INSUFFICIENT_DRIVER")
        || has("CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE")
        || has("CUDA_ERROR_UNSUPPORTED_PTX_VERSION")
        || has("CUDA_ERROR_SYSTEM_DRIVER_MISMATCH")
    {
        return format!(
            "cuda:{n}: the NVIDIA driver is too old for the CUDA version this build targets; \
             update the driver, or rebuild for an older CUDA (CUDARC_CUDA_VERSION and an nvcc \
             the driver supports; `nvidia-smi` shows the newest it supports)"
        );
    }
    if has("CUDA_ERROR_STUB_LIBRARY")
        || has("CUDA_ERROR_NOT_INITIALIZED")
        || has("libcuda")
        || has("CUDA_ERROR_NOT_FOUND")
    {
        return format!(
            "cuda:{n}: no NVIDIA driver found (libcuda is missing or is the toolkit's stub)"
        );
    }
    if crate::error::is_out_of_memory(text) {
        return format!(
            "cuda:{n}: out of device memory while opening the GPU (`nvidia-smi` shows who holds it)"
        );
    }
    format!("cuda:{n}: {}", crate::error::one_line(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for s in ["auto", "cpu", "cuda:1"] {
            assert_eq!(s.parse::<DeviceSpec>().unwrap().to_string(), s);
        }
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert!("gpu".parse::<DeviceSpec>().is_err());
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
    }

    #[test]
    fn cuda_failures_read_as_one_line() {
        let e = |text: &str, count| describe_cuda_failure(3, text, count);
        assert_eq!(
            e(
                "DriverError(CUDA_ERROR_INVALID_DEVICE, \"invalid device ordinal\")",
                Some(1)
            ),
            "cuda:3: no such GPU; this machine has one (cuda:0)"
        );
        assert_eq!(
            e("whatever", Some(2)),
            "cuda:3: no such GPU; this machine has 2 (cuda:0 to cuda:1)"
        );
        assert!(e(
            "DriverError(CUDA_ERROR_NO_DEVICE, \"no CUDA-capable device\")",
            None
        )
        .contains("found no GPU"));
        assert!(
            e("DriverError(CUDA_ERROR_INSUFFICIENT_DRIVER, \"...\")", None)
                .contains("driver is too old")
        );
        assert!(
            e("DriverError(CUDA_ERROR_STUB_LIBRARY, \"...\")", None).contains("no NVIDIA driver")
        );
        assert!(e(
            "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")",
            None
        )
        .contains("out of device memory"));
        assert_eq!(e("odd\nthing", None), "cuda:3: odd thing");
        for text in ["", "CUDA_ERROR_UNSUPPORTED_PTX_VERSION", "a\nb\nc"] {
            assert!(!e(text, None).contains('\n'));
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_build_without_cuda_says_so() {
        let e = DeviceSpec::Cuda(0).open().unwrap_err().to_string();
        assert!(
            e.contains("no CUDA support") && e.contains("--features cuda"),
            "{e}"
        );
        assert!(cuda_device_count().is_err());
        assert!(DeviceSpec::Auto.open().unwrap().is_cpu());
    }

    #[test]
    fn auto_always_opens_something() {
        assert!(DeviceSpec::Auto.open().is_ok());
        assert!(DeviceSpec::Cpu.open().unwrap().is_cpu());
    }
}
