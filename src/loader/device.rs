//! `device = auto | cpu | cuda[:N] | metal`: which candle device a model runs on. CUDA and Metal
//! exist only in builds with the `cuda` / `metal` features; `auto` takes CUDA, then Metal, then
//! the CPU, among what is compiled in and present, and says why.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;
use serde::Serialize;

use crate::error::LoadError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
    Metal,
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceChoice::Metal => f.write_str("metal"),
        }
    }
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            "metal" => Ok(DeviceChoice::Metal),
            _ => match s.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(n)) => Ok(DeviceChoice::Cuda(n)),
                _ => Err(format!("unknown device `{s}`: use auto, cpu, cuda, cuda:N or metal")),
            },
        }
    }
}

/// The device a model was placed on, and why.
#[derive(Debug, Clone, Serialize)]
pub struct ChosenDevice {
    /// `cpu`, `cuda:N` or `metal`.
    pub name: String,
    pub reason: String,
    /// Whether bf16 weights can be multiplied there.
    pub bf16: bool,
    #[serde(skip)]
    pub device: Device,
}

const CUDA_COMPILED: bool = cfg!(feature = "cuda");
const METAL_COMPILED: bool = cfg!(feature = "metal");

/// A GPU backend `auto` may take, in the order it prefers them.
struct Gpu {
    compiled: bool,
    label: &'static str,
    name: &'static str,
    open: fn() -> candle_core::Result<Device>,
    /// The reason logged when `auto` takes it.
    reason: &'static str,
}

const GPUS: [Gpu; 2] = [
    Gpu {
        compiled: CUDA_COMPILED,
        label: "CUDA",
        name: "cuda:0",
        open: || Device::new_cuda(0),
        reason: "auto: CUDA is compiled in and device 0 answers",
    },
    Gpu {
        compiled: METAL_COMPILED,
        label: "Metal",
        name: "metal",
        open: || Device::new_metal(0),
        reason: "auto: Metal is compiled in and a GPU answers",
    },
];

fn cpu(reason: String) -> ChosenDevice {
    ChosenDevice { name: "cpu".into(), reason, bf16: true, device: Device::Cpu }
}

fn not_compiled(device: &str, feature: &str) -> LoadError {
    LoadError::Device {
        device: device.into(),
        reason: format!("this build has no {device} support (the `{feature}` cargo feature is off)"),
        help: format!(
            "rebuild with it: `cargo install --path . --features {feature}` (needs the {} toolkit), or use device = \"cpu\"",
            if feature == "cuda" { "CUDA" } else { "Xcode/Metal" }
        ),
    }
}

/// Resolves `choice` to a device that exists here, or says why it cannot.
pub fn resolve(choice: DeviceChoice) -> Result<ChosenDevice, LoadError> {
    match choice {
        DeviceChoice::Cpu => Ok(cpu("asked for".into())),
        DeviceChoice::Cuda(_) if !CUDA_COMPILED => Err(not_compiled("cuda", "cuda")),
        DeviceChoice::Metal if !METAL_COMPILED => Err(not_compiled("metal", "metal")),
        DeviceChoice::Cuda(n) => match Device::new_cuda(n) {
            Ok(device) => {
                Ok(ChosenDevice { name: format!("cuda:{n}"), reason: "asked for".into(), bf16: true, device })
            }
            Err(e) => Err(LoadError::Device {
                device: format!("cuda:{n}"),
                reason: e.to_string(),
                help: "check `nvidia-smi` and the device index, or use device = \"cpu\"".into(),
            }),
        },
        DeviceChoice::Metal => match Device::new_metal(0) {
            Ok(device) => {
                Ok(ChosenDevice { name: "metal".into(), reason: "asked for".into(), bf16: true, device })
            }
            Err(e) => Err(LoadError::Device {
                device: "metal".into(),
                reason: e.to_string(),
                help: "use device = \"cpu\"".into(),
            }),
        },
        DeviceChoice::Auto => {
            let mut tried = Vec::new();
            for gpu in GPUS {
                if !gpu.compiled {
                    tried.push(format!("{} not compiled in", gpu.label));
                    continue;
                }
                match (gpu.open)() {
                    Ok(device) => {
                        let (name, reason) = (gpu.name.into(), gpu.reason.into());
                        return Ok(ChosenDevice { name, reason, bf16: true, device });
                    }
                    Err(e) => tried.push(format!("{}: {e}", gpu.label)),
                }
            }
            Ok(cpu(format!("auto: no GPU ({})", tried.join("; "))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_print() {
        for text in ["auto", "cpu", "cuda:1", "metal"] {
            assert_eq!(text.parse::<DeviceChoice>().unwrap().to_string(), text);
        }
        assert_eq!("cuda".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cuda(0));
        assert!("tpu".parse::<DeviceChoice>().unwrap_err().contains("use auto, cpu"));
    }

    #[test]
    fn auto_picks_the_cpu_in_a_build_without_gpu_features() {
        if CUDA_COMPILED || METAL_COMPILED {
            return;
        }
        let chosen = resolve(DeviceChoice::Auto).unwrap();
        assert_eq!(chosen.name, "cpu");
        assert_eq!(chosen.reason, "auto: no GPU (CUDA not compiled in; Metal not compiled in)");
        let refused = resolve(DeviceChoice::Cuda(0)).unwrap_err();
        assert!(refused.to_string().contains("the `cuda` cargo feature is off"), "{refused}");
    }
}
