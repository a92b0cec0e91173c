//! A 4-bit weight on the device, as the kernels and the reference read it.

use std::sync::Arc;

use burn::tensor::{DType, Device, Int, Tensor, TensorCreationOptions, TensorData};

use super::layout::QLayout;
use crate::quant::{BlockStats, QuantFormat, QuantizedTensor};

/// Which implementation serves the operations of a weight on its device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpsPath {
    /// The WGSL kernels (wgpu runtime).
    Kernel,
    /// Plain burn tensor ops (CPU backends, CUDA, anything else).
    Reference,
}

impl OpsPath {
    /// The path the operations take on `device`: the kernels on wgpu, the reference elsewhere.
    pub fn for_device(device: &Device) -> Self {
        if super::kernel_device(device).is_some() {
            OpsPath::Kernel
        } else {
            OpsPath::Reference
        }
    }
}

/// Length of `tables`: 16 codebook values, the 256-entry nested map, the offset.
pub const TABLES_LEN: usize = 16 + 256 + 1;

/// A frozen 4-bit `[out_features, in_features]` weight uploaded to a device.
///
/// Four tensors hold it (layout in `shaders/common_4bit.wgsl`): `packed` u32 words of nibbles,
/// `absmax_q` u32 words of u8 absmax codes (double quant; one zero word otherwise), `scales`
/// (f32 absmax, or nested absmax with double quant) and `tables` (codebook, nested map, offset).
/// Int tensors carry the u32 bit patterns as i32.
#[derive(Clone, Debug)]
pub struct QWeight {
    pub(crate) layout: QLayout,
    pub(crate) format: QuantFormat,
    pub(crate) packed: Tensor<1, Int>,
    pub(crate) absmax_q: Tensor<1, Int>,
    pub(crate) scales: Tensor<1>,
    pub(crate) tables: Tensor<1>,
    pub(crate) path: OpsPath,
    /// The packed weight on the host, kept for the reference path: it dequantizes natively
    /// (one pass over the nibbles, straight into the transposed layout its matmul wants)
    /// instead of through a dozen elementwise tensor ops.
    pub(crate) host: Option<Arc<QuantizedTensor>>,
}

fn words_le(bytes: &[u8]) -> Vec<i32> {
    bytes
        .chunks(4)
        .map(|c| {
            let mut w = [0u8; 4];
            w[..c.len()].copy_from_slice(c);
            i32::from_le_bytes(w)
        })
        .collect()
}

fn int_tensor(words: Vec<i32>, device: &Device) -> Tensor<1, Int> {
    let n = words.len();
    Tensor::from_data(
        TensorData::new(words, [n]),
        TensorCreationOptions::new(device.clone()).with_dtype(DType::I32),
    )
}

fn float_tensor(values: Vec<f32>, device: &Device) -> Tensor<1> {
    let n = values.len();
    Tensor::from_data(
        TensorData::new(values, [n]),
        TensorCreationOptions::new(device.clone()).with_dtype(DType::F32),
    )
}

impl QWeight {
    /// Upload a 2-D quantized tensor to `device`.
    ///
    /// # Panics
    /// If `q` is not 2-D (quantized linear weights always are; loaders check shapes first).
    pub fn upload(q: &QuantizedTensor, device: &Device) -> Self {
        let shape = q.shape();
        assert_eq!(
            shape.len(),
            2,
            "a linear weight is 2-D, got shape {shape:?}"
        );
        let mut tables = vec![0f32; TABLES_LEN];
        tables[..16].copy_from_slice(q.format().codebook());
        let (absmax_q, scales, double_quant, nested_blocksize) = match q.stats() {
            BlockStats::Plain { absmax } => (vec![0i32], absmax.clone(), false, 256),
            BlockStats::Double {
                absmax_q,
                nested_absmax,
                nested_map,
                offset,
                nested_blocksize,
            } => {
                tables[16..272].copy_from_slice(nested_map);
                tables[272] = *offset;
                (
                    words_le(absmax_q),
                    nested_absmax.clone(),
                    true,
                    *nested_blocksize,
                )
            }
        };
        let layout = QLayout {
            out_features: shape[0],
            in_features: shape[1],
            blocksize: q.blocksize(),
            double_quant,
            nested_blocksize,
        };
        Self {
            layout,
            format: q.format(),
            packed: int_tensor(words_le(q.packed()), device),
            absmax_q: int_tensor(absmax_q, device),
            scales: float_tensor(scales, device),
            tables: float_tensor(tables, device),
            path: OpsPath::for_device(device),
            host: (OpsPath::for_device(device) == OpsPath::Reference).then(|| Arc::new(q.clone())),
        }
    }

    /// Shape and blocking.
    pub fn layout(&self) -> &QLayout {
        &self.layout
    }

    /// NF4 or FP4.
    pub fn format(&self) -> QuantFormat {
        self.format
    }

    /// Which implementation serves this weight.
    pub fn path(&self) -> OpsPath {
        self.path
    }

    /// The same weight served by the reference implementation, even on wgpu (for tests and
    /// benchmarks that compare the two on one device).
    pub fn with_path(mut self, path: OpsPath) -> Self {
        self.path = path;
        self
    }

    /// Bytes the weight occupies on the device.
    pub fn size_bytes(&self) -> usize {
        4 * (self.packed.dims()[0]
            + self.absmax_q.dims()[0]
            + self.scales.dims()[0]
            + self.tables.dims()[0])
    }

    /// The device the weight lives on.
    pub fn device(&self) -> Device {
        self.packed.device()
    }
}
