//! Host-side 4-bit quantization, bit-exact with bitsandbytes (`quantize_4bit` / `dequantize_4bit`,
//! NF4 and FP4, optional double quantization of the block scales).
//!
//! * [`nf4`]: the storage layout (blocks, nibble order, scales): read this first.
//! * [`codebook`]: the 16-level tables, the signed dynamic 8-bit map and the nearest-code rules.
//! * [`blockwise`]: per-block absmax and 4-bit coding.
//! * [`double`]: 8-bit compression of the absmax values.
//! * [`tensor`]: [`QuantizedTensor`], the public type tying these together.

pub mod blockwise;
pub mod codebook;
pub mod double;
pub mod host;
pub mod nf4;
pub mod tensor;

pub use codebook::{
    FP4, NF4, dynamic_map_signed, nearest_dynamic, nearest_fp4, nearest_nf4, quantize_dynamic_cpu,
};
pub use tensor::{BlockStats, QuantizedTensor};

use std::str::FromStr;

/// Errors from quantizing or assembling a [`QuantizedTensor`].
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum QuantError {
    /// `--quant` / `quant_type` was neither `nf4` nor `fp4`.
    #[error("unknown 4-bit format {0:?} (expected \"nf4\" or \"fp4\")")]
    UnknownFormat(String),
    /// Block size not a power of two in 32..=4096.
    #[error("blocksize {0} is not a power of two between 32 and 4096")]
    InvalidBlocksize(usize),
    /// A tensor with no elements.
    #[error("cannot quantize an empty tensor (shape {0:?})")]
    Empty(Vec<usize>),
    /// A NaN or infinite input value.
    #[error("value {value} at flat index {index} is not finite")]
    NonFinite {
        /// Flat (row-major) index of the value.
        index: usize,
        /// The value itself.
        value: f32,
    },
    /// A buffer whose length does not match the shape and block size.
    #[error("{what} has {got} elements, expected {expected}")]
    Length {
        /// Which buffer.
        what: &'static str,
        /// Length implied by the shape / block size.
        expected: usize,
        /// Actual length.
        got: usize,
    },
}

/// Alias following the crate's `module::Error` convention.
pub type Error = QuantError;

/// The 4-bit data type: NormalFloat4 or FP4 (e2m1), bitsandbytes' `quant_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantFormat {
    /// NormalFloat4 (QLoRA), table [`NF4`].
    Nf4,
    /// 4-bit float, table [`FP4`].
    Fp4,
}

impl QuantFormat {
    /// The 16 dequantization levels, indexed by 4-bit code.
    pub fn codebook(self) -> &'static [f32; 16] {
        match self {
            QuantFormat::Nf4 => &NF4,
            QuantFormat::Fp4 => &FP4,
        }
    }

    /// bitsandbytes' name: `"nf4"` or `"fp4"`.
    pub fn name(self) -> &'static str {
        match self {
            QuantFormat::Nf4 => "nf4",
            QuantFormat::Fp4 => "fp4",
        }
    }
}

impl std::fmt::Display for QuantFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for QuantFormat {
    type Err = QuantError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "nf4" => Ok(QuantFormat::Nf4),
            "fp4" => Ok(QuantFormat::Fp4),
            other => Err(QuantError::UnknownFormat(other.to_string())),
        }
    }
}

/// How to quantize: format, block size and whether to double-quantize the block scales.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuantConfig {
    /// NF4 or FP4.
    pub format: QuantFormat,
    /// Elements per absmax block (power of two, 32..=4096).
    pub blocksize: usize,
    /// Compress the absmax values to 8 bits ([`double`]).
    pub double_quant: bool,
}

impl Default for QuantConfig {
    /// QLoRA's defaults: NF4, blocksize 64, double quantization.
    fn default() -> Self {
        QuantConfig {
            format: QuantFormat::Nf4,
            blocksize: 64,
            double_quant: true,
        }
    }
}

impl QuantConfig {
    /// Checks the block size (the sizes bitsandbytes' 4-bit kernels accept: 32, 64, ..., 4096).
    pub fn validate(&self) -> Result<(), QuantError> {
        validate_blocksize(self.blocksize)
    }
}

/// `Ok` when `blocksize` is a power of two in 32..=4096.
pub fn validate_blocksize(blocksize: usize) -> Result<(), QuantError> {
    if blocksize.is_power_of_two() && (32..=4096).contains(&blocksize) {
        Ok(())
    } else {
        Err(QuantError::InvalidBlocksize(blocksize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_validate() {
        assert_eq!("fp4".parse::<QuantFormat>(), Ok(QuantFormat::Fp4));
        assert!("int4".parse::<QuantFormat>().is_err());
        assert!(QuantConfig::default().validate().is_ok());
        for bad in [0, 16, 48, 8192] {
            let cfg = QuantConfig {
                blocksize: bad,
                ..QuantConfig::default()
            };
            assert_eq!(cfg.validate(), Err(QuantError::InvalidBlocksize(bad)));
        }
    }
}
