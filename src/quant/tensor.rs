//! [`QuantizedTensor`]: a 4-bit weight in bitsandbytes layout ([`super::nf4`]) with its block scales.

use super::blockwise::{dequantize_4bit, quantize_4bit};
use super::nf4::packed_len;
use super::{QuantConfig, QuantError, QuantFormat, double, validate_blocksize};

/// Per-block scales of a [`QuantizedTensor`].
#[derive(Clone, Debug, PartialEq)]
pub enum BlockStats {
    /// One f32 absmax per block.
    Plain {
        /// `[num_blocks]`
        absmax: Vec<f32>,
    },
    /// Double-quantized absmax ([`super::double`]).
    Double {
        /// `[num_blocks]` codes into `nested_map`.
        absmax_q: Vec<u8>,
        /// `[ceil(num_blocks / nested_blocksize)]` f32 scales.
        nested_absmax: Vec<f32>,
        /// `[256]` the signed dynamic map.
        nested_map: Vec<f32>,
        /// Mean of the original absmax values, added back after decoding.
        offset: f32,
        /// Codes per nested scale (256).
        nested_blocksize: usize,
    },
}

impl BlockStats {
    /// Bytes these statistics occupy on the device (u8 codes, f32 scales, map and offset).
    pub fn size_bytes(&self) -> usize {
        match self {
            BlockStats::Plain { absmax } => 4 * absmax.len(),
            BlockStats::Double {
                absmax_q,
                nested_absmax,
                nested_map,
                ..
            } => absmax_q.len() + 4 * nested_absmax.len() + 4 * nested_map.len() + 4,
        }
    }

    fn len(&self) -> usize {
        match self {
            BlockStats::Plain { absmax } => absmax.len(),
            BlockStats::Double { absmax_q, .. } => absmax_q.len(),
        }
    }
}

/// A tensor stored as packed 4-bit codes plus per-block scales, exactly as bitsandbytes stores it.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedTensor {
    format: QuantFormat,
    shape: Vec<usize>,
    blocksize: usize,
    packed: Vec<u8>,
    stats: BlockStats,
}

impl QuantizedTensor {
    /// Quantizes row-major `data` of `shape` (bitsandbytes `quantize_4bit`).
    ///
    /// # Shapes
    /// `data: [prod(shape)]`; the result holds `packed: [ceil(n/2)]` and `ceil(n/blocksize)` scales.
    pub fn quantize(data: &[f32], shape: &[usize], cfg: QuantConfig) -> Result<Self, QuantError> {
        cfg.validate()?;
        let numel: usize = shape.iter().product();
        if data.len() != numel {
            return Err(QuantError::Length {
                what: "input data",
                expected: numel,
                got: data.len(),
            });
        }
        if numel == 0 {
            return Err(QuantError::Empty(shape.to_vec()));
        }
        if let Some((index, &value)) = data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(QuantError::NonFinite { index, value });
        }
        let (packed, absmax) = quantize_4bit(data, cfg.blocksize, cfg.format);
        let stats = if cfg.double_quant {
            double::compress(&absmax)
        } else {
            BlockStats::Plain { absmax }
        };
        Ok(QuantizedTensor {
            format: cfg.format,
            shape: shape.to_vec(),
            blocksize: cfg.blocksize,
            packed,
            stats,
        })
    }

    /// Assembles a tensor from stored parts (e.g. a checkpoint), checking every length.
    pub fn from_parts(
        format: QuantFormat,
        shape: Vec<usize>,
        blocksize: usize,
        packed: Vec<u8>,
        stats: BlockStats,
    ) -> Result<Self, QuantError> {
        validate_blocksize(blocksize)?;
        let numel: usize = shape.iter().product();
        if numel == 0 {
            return Err(QuantError::Empty(shape));
        }
        let check = |what, expected, got| {
            if expected == got {
                Ok(())
            } else {
                Err(QuantError::Length {
                    what,
                    expected,
                    got,
                })
            }
        };
        check("packed weight", packed_len(numel), packed.len())?;
        let blocks = numel.div_ceil(blocksize);
        check("absmax", blocks, stats.len())?;
        if let BlockStats::Double {
            nested_absmax,
            nested_map,
            nested_blocksize,
            ..
        } = &stats
        {
            if *nested_blocksize == 0 {
                return Err(QuantError::InvalidBlocksize(0));
            }
            check(
                "nested_absmax",
                blocks.div_ceil(*nested_blocksize),
                nested_absmax.len(),
            )?;
            check("nested_quant_map", 256, nested_map.len())?;
        }
        Ok(QuantizedTensor {
            format,
            shape,
            blocksize,
            packed,
            stats,
        })
    }

    /// Dequantized values, row-major `[prod(shape)]` (bitsandbytes `dequantize_4bit` in f32).
    pub fn dequantize(&self) -> Vec<f32> {
        dequantize_4bit(
            &self.packed,
            &self.block_absmax(),
            self.numel(),
            self.blocksize,
            self.format,
        )
    }

    /// Per-block absmax as f32, decoding double quantization the way bitsandbytes does.
    pub fn block_absmax(&self) -> Vec<f32> {
        match &self.stats {
            BlockStats::Plain { absmax } => absmax.clone(),
            BlockStats::Double {
                absmax_q,
                nested_absmax,
                nested_map,
                offset,
                nested_blocksize,
            } => double::decompress(
                absmax_q,
                nested_absmax,
                nested_map,
                *offset,
                *nested_blocksize,
            ),
        }
    }

    /// NF4 or FP4.
    pub fn format(&self) -> QuantFormat {
        self.format
    }

    /// Logical shape of the original tensor.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of logical elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Elements per absmax block.
    pub fn blocksize(&self) -> usize {
        self.blocksize
    }

    /// Packed codes, `[ceil(numel/2)]` (layout in [`super::nf4`]).
    pub fn packed(&self) -> &[u8] {
        &self.packed
    }

    /// The block scales.
    pub fn stats(&self) -> &BlockStats {
        &self.stats
    }

    /// `ceil(numel / blocksize)`.
    pub fn num_blocks(&self) -> usize {
        self.numel().div_ceil(self.blocksize)
    }

    /// Device bytes: packed codes plus statistics.
    pub fn size_bytes(&self) -> usize {
        self.packed.len() + self.stats.size_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_parts_checks_lengths() {
        let q = QuantizedTensor::quantize(&[0.5; 100], &[10, 10], QuantConfig::default()).unwrap();
        assert_eq!(q.num_blocks(), 2);
        let bad = QuantizedTensor::from_parts(
            q.format(),
            vec![10, 11],
            64,
            q.packed().to_vec(),
            q.stats().clone(),
        );
        assert!(matches!(
            bad,
            Err(QuantError::Length {
                what: "packed weight",
                ..
            })
        ));
        let again = QuantizedTensor::from_parts(
            q.format(),
            vec![10, 10],
            64,
            q.packed().to_vec(),
            q.stats().clone(),
        );
        assert_eq!(again.unwrap(), q);
    }

    #[test]
    fn rejects_nan() {
        let r = QuantizedTensor::quantize(&[1.0, f32::NAN], &[2], QuantConfig::default());
        assert!(matches!(r, Err(QuantError::NonFinite { index: 1, .. })));
    }
}
