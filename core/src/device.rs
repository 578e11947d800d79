//! Device selection: `auto`, `cpu` or `cuda:N`.

use std::str::FromStr;

use candle_core::Device;

use crate::{Error, Result};

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
            Self::Auto => Ok(cuda(0).unwrap_or(Device::Cpu)),
            Self::Cuda(n) => cuda(n),
        }
    }
}

#[cfg(feature = "cuda")]
fn cuda(n: usize) -> Result<Device> {
    // candle 0.11.1 links cudarc with `dynamic-linking`, so a CUDA build starts only where
    // libcuda is installed, and cudarc's load-time probe (`is_culib_present`) does not
    // exist. What can still go wrong (no device, an ordinal out of range, a driver too
    // old) is an error from cuInit/cuDeviceGet; a panic inside cudarc is caught here too,
    // so `auto` falls back to the CPU and `cuda:N` is a one-line error, never a crash.
    let opened = std::panic::catch_unwind(|| Device::new_cuda(n)).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the CUDA driver panicked".into());
        Err(candle_core::Error::Msg(why))
    });
    opened.map_err(|e| {
        Error::Device(format!(
            "cuda:{n}: {}",
            crate::error::one_line(&e.to_string())
        ))
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda(n: usize) -> Result<Device> {
    Err(Error::Device(format!(
        "cuda:{n} requested but this build has no CUDA support (rebuild with --features cuda)"
    )))
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
    fn auto_always_opens_something() {
        assert!(DeviceSpec::Auto.open().is_ok());
        assert!(DeviceSpec::Cpu.open().unwrap().is_cpu());
    }
}
