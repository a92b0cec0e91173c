//! Which device runs the model: `--device auto|wgpu|cpu` -> a burn [`Device`].
//!
//! * `auto`: a discrete GPU through wgpu, else an integrated one, else burn's CPU backend with the
//!   reference path (DESIGN.md §4: on a GPU-less box the CPU backend beats a software rasterizer
//!   such as Mesa's llvmpipe, which `auto` therefore never picks).
//! * `wgpu`: wgpu's default adapter, whatever it is (llvmpipe on a machine without a GPU;
//!   `CUBECL_WGPU_DEFAULT_DEVICE` overrides the choice).
//! * `cpu`: burn's CPU backend (burn-flex) with the reference path.
//!
//! [`adapters`] lists what wgpu sees on this machine (for `wgtune info`).

use std::future::Future;
use std::pin::pin;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};

use burn::backend::wgpu::wgpu;
use burn::tensor::{Device, DeviceKind};

/// Errors from choosing a device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `--device` value that is not `auto`, `wgpu` or `cpu`.
    #[error("unknown device {0:?} (auto, wgpu, cpu)")]
    Unknown(String),
}

/// What `--device` asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    /// A real GPU through wgpu if there is one, else the CPU backend.
    #[default]
    Auto,
    /// wgpu's default adapter (a software one if that is all there is).
    Wgpu,
    /// burn's CPU backend with the reference path.
    Cpu,
}

impl FromStr for DeviceChoice {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "wgpu" => Ok(DeviceChoice::Wgpu),
            "cpu" => Ok(DeviceChoice::Cpu),
            other => Err(Error::Unknown(other.to_string())),
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeviceChoice::Auto => "auto",
            DeviceChoice::Wgpu => "wgpu",
            DeviceChoice::Cpu => "cpu",
        })
    }
}

/// A chosen device and a one-line description of it (for logs).
#[derive(Clone, Debug)]
pub struct Selected {
    /// The burn device.
    pub device: Device,
    /// E.g. `wgpu: NVIDIA GeForce RTX 4090 (DiscreteGpu, Vulkan)` or `cpu (burn flex)`.
    pub description: String,
}

/// The device `choice` resolves to on this machine. A build without the `native` feature has no
/// CPU backend: there `cpu` (and `auto` without a GPU) means the default wgpu adapter.
pub fn select(choice: DeviceChoice) -> Selected {
    match choice {
        DeviceChoice::Cpu => cpu(),
        DeviceChoice::Wgpu => {
            let description = match default_adapter() {
                Some(a) => format!("wgpu: {}", a.summary()),
                None => "wgpu (default adapter)".to_string(),
            };
            Selected {
                device: Device::wgpu(DeviceKind::DefaultDevice),
                description,
            }
        }
        DeviceChoice::Auto => {
            let found = adapters();
            for (ty, kind) in [
                (wgpu::DeviceType::DiscreteGpu, DeviceKind::DiscreteGpu(0)),
                (
                    wgpu::DeviceType::IntegratedGpu,
                    DeviceKind::IntegratedGpu(0),
                ),
            ] {
                if let Some(a) = found.iter().find(|a| a.device_type == ty) {
                    return Selected {
                        device: Device::wgpu(kind),
                        description: format!("wgpu: {}", a.summary()),
                    };
                }
            }
            cpu()
        }
    }
}

/// burn's CPU backend; in a build without it (the browser's: `native` off), the default wgpu
/// adapter.
fn cpu() -> Selected {
    #[cfg(feature = "native")]
    {
        Selected {
            device: cpu_backend(),
            description: "cpu (burn flex, reference path)".to_string(),
        }
    }
    #[cfg(not(feature = "native"))]
    select(DeviceChoice::Wgpu)
}

/// burn's CPU backend, the one device the reference path runs on (for `--device cpu`, and as the
/// oracle in tests): burn-flex, gemm-crate matmuls and SIMD elementwise kernels on every core.
/// It replaced the deprecated burn-ndarray: NF4 training 1.5-1.8x faster at 0.72x the peak RSS
/// on SmolLM2 (bench_train, 2 cores).
#[cfg(feature = "native")]
pub fn cpu_backend() -> Device {
    Device::flex()
}

/// One wgpu adapter and what matters about it for wgtune's kernels.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    /// The part's name, e.g. `llvmpipe (LLVM 19.1.7, 256 bits)`.
    pub name: String,
    /// Graphics API: `Vulkan`, `Metal`, `Dx12`, `Gl`, ...
    pub backend: String,
    /// Discrete, integrated, virtual, CPU or other.
    pub device_type: wgpu::DeviceType,
    /// Driver name and version.
    pub driver: String,
    /// `maxStorageBufferBindingSize` in bytes.
    pub max_storage_buffer_binding_size: u64,
    /// `maxBufferSize` in bytes.
    pub max_buffer_size: u64,
    /// `maxComputeInvocationsPerWorkgroup`.
    pub max_workgroup_invocations: u32,
    /// `maxComputeWorkgroupStorageSize` in bytes.
    pub max_workgroup_storage: u32,
    /// Whether `shader-f16` is available.
    pub shader_f16: bool,
    /// Whether subgroup operations are available.
    pub subgroups: bool,
}

impl AdapterSummary {
    /// `name (type, backend)`.
    pub fn summary(&self) -> String {
        format!("{} ({:?}, {})", self.name, self.device_type, self.backend)
    }
}

/// Every adapter wgpu finds on this machine, over all graphics APIs (enumerated once per
/// process: creating and dropping Vulkan instances from several threads is not safe).
pub fn adapters() -> Vec<AdapterSummary> {
    enumerated().to_vec()
}

fn enumerated() -> &'static [AdapterSummary] {
    static ADAPTERS: OnceLock<Vec<AdapterSummary>> = OnceLock::new();
    ADAPTERS.get_or_init(enumerate)
}

/// Whether wgpu reports subgroup operations for the adapter named `name`. CubeCL's device
/// enables every feature its adapter has, but records subgroups only for GPUs, so the 4-bit
/// kernels ask here before they launch a kernel that needs them on a software adapter.
pub fn has_subgroups(name: &str) -> bool {
    enumerated().iter().any(|a| a.name == name && a.subgroups)
}

/// The adapter wgpu's default device most likely lands on: the first non-CPU adapter, else
/// the first one.
fn default_adapter() -> Option<AdapterSummary> {
    let all = adapters();
    all.iter()
        .find(|a| a.device_type != wgpu::DeviceType::Cpu)
        .or(all.first())
        .cloned()
}

/// Adapters of the primary APIs (Vulkan, Metal, DX12, WebGPU); OpenGL only when those have
/// none (probing GL needs a display server and complains on stderr without one).
fn enumerate() -> Vec<AdapterSummary> {
    let found = enumerate_on(wgpu::Backends::PRIMARY);
    if found.is_empty() {
        enumerate_on(wgpu::Backends::GL)
    } else {
        found
    }
}

fn enumerate_on(backends: wgpu::Backends) -> Vec<AdapterSummary> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    block_on(instance.enumerate_adapters(backends))
        .iter()
        .map(|adapter| {
            let info = adapter.get_info();
            let limits = adapter.limits();
            let features = adapter.features();
            AdapterSummary {
                name: info.name,
                backend: format!("{:?}", info.backend),
                device_type: info.device_type,
                driver: format!("{} {}", info.driver, info.driver_info)
                    .trim()
                    .to_string(),
                max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
                max_buffer_size: limits.max_buffer_size,
                max_workgroup_invocations: limits.max_compute_invocations_per_workgroup,
                max_workgroup_storage: limits.max_compute_workgroup_storage_size,
                shader_f16: features.contains(wgpu::Features::SHADER_F16),
                subgroups: features.contains(wgpu::Features::SUBGROUP),
            }
        })
        .collect()
}

/// Runs a future to completion on this thread (wgpu's native enumeration resolves at once; this
/// parks between polls in case it does not).
fn block_on<F: Future>(future: F) -> F::Output {
    struct ThreadWaker(std::thread::Thread);
    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(out) => return out,
            Poll::Pending => std::thread::park(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_choices() {
        for s in ["auto", "wgpu", "cpu"] {
            assert_eq!(s.parse::<DeviceChoice>().unwrap().to_string(), s);
        }
        assert!("cuda0".parse::<DeviceChoice>().is_err());
    }

    #[test]
    fn auto_never_picks_a_software_adapter() {
        let software_only = adapters()
            .iter()
            .all(|a| a.device_type == wgpu::DeviceType::Cpu);
        let selected = select(DeviceChoice::Auto);
        if software_only {
            assert!(selected.description.starts_with("cpu"), "{selected:?}");
        }
    }
}
