//! Where the policy, the reference policy and the optimizer state live.
//!
//! The default build is CPU-only and starts on any machine. CUDA needs the
//! `cuda` feature (candle's CUDA backend, see `docs/cuda.md`); asking for it
//! in a build without the feature, or on a machine whose driver reports no
//! such device, is an immediate, typed error rather than a panic later.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

/// Why a device cannot be named or used.
///
/// ```
/// use g2po::train::{DeviceError, DeviceSpec};
/// assert!(matches!("tpu".parse::<DeviceSpec>(), Err(DeviceError::Unknown(_))));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// The name is none of `cpu`, `cuda`, `cuda:N`.
    #[error("unknown device {0:?} (expected cpu, cuda or cuda:N)")]
    Unknown(String),
    /// The device exists by name but this build or machine cannot use it.
    #[error("device unavailable: {0}")]
    Unavailable(String),
}

/// A device by name: `cpu`, `cuda` (device 0) or `cuda:N`.
///
/// ```
/// use g2po::train::DeviceSpec;
/// assert_eq!("cuda:1".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(1));
/// assert_eq!(DeviceSpec::Cuda(0).to_string(), "cuda:0");
/// assert!("tpu".parse::<DeviceSpec>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    /// The host CPU.
    #[default]
    Cpu,
    /// A CUDA device by ordinal.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, DeviceError> {
        let bad = || DeviceError::Unknown(s.to_owned());
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s.strip_prefix("cuda:").and_then(|n| n.parse().ok()).map(Self::Cuda).ok_or_else(bad),
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = DeviceError;
    fn try_from(s: String) -> Result<Self, DeviceError> {
        s.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Opens the device, or says why it cannot be used.
    ///
    /// ```
    /// use g2po::train::DeviceSpec;
    /// assert!(DeviceSpec::Cpu.open().unwrap().is_cpu());
    /// // In a build without the `cuda` feature (or without a GPU): a clear error.
    /// # #[cfg(not(feature = "cuda"))]
    /// assert!(DeviceSpec::Cuda(0).open().unwrap_err().to_string().contains("cuda"));
    /// ```
    pub fn open(&self) -> Result<Device, DeviceError> {
        match *self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(ordinal) => open_cuda(ordinal),
        }
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize) -> Result<Device, DeviceError> {
    Device::new_cuda(ordinal).map_err(|e| {
        // candle appends a backtrace to the message; the first line says it all.
        let reason = e.to_string().lines().next().unwrap_or_default().to_owned();
        DeviceError::Unavailable(format!("CUDA device {ordinal} is not usable on this machine: {reason}"))
    })
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(ordinal: usize) -> Result<Device, DeviceError> {
    Err(DeviceError::Unavailable(format!(
        "--device cuda:{ordinal} needs a g2po built with the `cuda` feature \
         (eval \"$(scripts/cuda-toolchain.sh)\" && cargo build --release --features cuda); \
         this build is CPU-only"
    )))
}
