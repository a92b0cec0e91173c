//! [`QLinear`]: a frozen, bias-free linear projection with an optional LoRA adapter.
//!
//! `y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ` with `W: [out, in]` frozen (4-bit through [`ops::qmatmul`], or f32),
//! `A: [r, in]`, `B: [out, r]` trainable and `s = α/r` (rsLoRA: `α/√r`), as in PEFT's
//! `lora.Linear` (<https://github.com/huggingface/peft/blob/main/src/peft/tuners/lora/layer.py>).
//!
//! The frozen weight is never a burn parameter: it is `#[module(skip)]`, so optimizers, gradients
//! and module visitors only ever see the adapter. Moving the module with `to_device`/`fork` does
//! not move it either; load the model on its final device.

use burn::module::{Module, Param};
use burn::tensor::Tensor;

use crate::ops::{self, QWeight};

/// The frozen weight `W: [out, in]` of a [`QLinear`].
// Both variants are device-tensor handles (one vs four); a model holds seven per layer, so the
// size difference costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum FrozenWeight {
    /// Packed 4-bit (NF4/FP4) weight; products through [`ops::qmatmul`].
    Quantized(QWeight),
    /// Plain f32 weight (`--quant none`), stored transposed as a contiguous `Wᵀ: [in, out]` so
    /// `x·Wᵀ` is a plain matmul (a transposed view made burn-ndarray's matmul ~5x slower); a tensor
    /// that never requires a gradient. Build it with [`FrozenWeight::float`].
    Float(Tensor<2>),
}

impl FrozenWeight {
    /// A float weight from row-major `W: [out, in]` values.
    pub fn float(values: &[f32], [out, inp]: [usize; 2], device: &burn::tensor::Device) -> Self {
        FrozenWeight::Float(Tensor::from_data(
            burn::tensor::TensorData::new(transpose(values, out, inp), [inp, out]),
            device,
        ))
    }

    /// `[out_features, in_features]`.
    pub fn dims(&self) -> [usize; 2] {
        match self {
            FrozenWeight::Quantized(w) => [w.layout().out_features, w.layout().in_features],
            FrozenWeight::Float(wt) => {
                let [inp, out] = wt.dims();
                [out, inp]
            }
        }
    }
}

/// Row-major `[rows, cols]` values -> row-major `[cols, rows]`.
pub fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; values.len()];
    for (r, row) in values.chunks(cols.max(1)).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            out[c * rows + r] = v;
        }
    }
    out
}

/// A LoRA adapter: `s·(x·Aᵀ)·Bᵀ`.
#[derive(Module, Debug)]
pub struct LoraAdapter {
    /// `[r, in]`, PEFT's `lora_A.weight`.
    pub a: Param<Tensor<2>>,
    /// `[out, r]`, PEFT's `lora_B.weight`.
    pub b: Param<Tensor<2>>,
    /// `α/r` (or `α/√r` for rsLoRA).
    #[module(skip)]
    pub scale: f32,
    /// Dropout probability on the adapter's input (PEFT's `lora_dropout`).
    #[module(skip)]
    pub dropout: f32,
    /// Whether dropout is applied (training) or not (evaluation); off by default.
    #[module(skip)]
    pub dropout_active: bool,
}

impl LoraAdapter {
    /// `s·(drop(x)·Aᵀ)·Bᵀ`. Dropout keeps each input element with probability `1 - p` and scales
    /// it by `1/(1 - p)`, as `torch.nn.Dropout`; its mask comes from the device's generator, so
    /// seeding the device before a forward makes it reproducible.
    ///
    /// # Shapes
    /// `x: [.., in]` -> `[.., out]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let x = if self.dropout_active && self.dropout > 0.0 {
            let keep = 1.0 - f64::from(self.dropout);
            let mask = Tensor::<D>::random(
                x.shape(),
                burn::tensor::Distribution::Bernoulli(keep),
                &x.device(),
            );
            x * mask.div_scalar(keep as f32)
        } else {
            x
        };
        ops::lora(x, self.a.val(), self.b.val(), self.scale)
    }
}

/// A bias-free linear layer over a frozen weight, plus an optional adapter.
#[derive(Module, Debug)]
pub struct QLinear {
    /// The frozen `[out, in]` weight (not a parameter).
    #[module(skip)]
    pub weight: FrozenWeight,
    /// The trainable adapter, if one is attached.
    pub adapter: Option<LoraAdapter>,
}

impl QLinear {
    /// A layer over `weight` with no adapter.
    pub fn new(weight: FrozenWeight) -> Self {
        QLinear {
            weight,
            adapter: None,
        }
    }

    /// `in_features`.
    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }

    /// `out_features`.
    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }

    /// `y = x·Wᵀ (+ s·(x·Aᵀ)·Bᵀ)`.
    ///
    /// # Shapes
    /// `x: [.., in]` -> `[.., out]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match &self.adapter {
            None => self.forward_frozen(x),
            Some(ad) => self.forward_frozen(x.clone()) + ad.forward(x),
        }
    }

    /// `x·Wᵀ` alone (the adapter ignored).
    ///
    /// # Shapes
    /// `x: [.., in]` -> `[.., out]`.
    pub fn forward_frozen<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match &self.weight {
            FrozenWeight::Quantized(w) => ops::qmatmul(x, w),
            FrozenWeight::Float(wt) => ops::reference::matmul_last(x, wt.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{QuantConfig, QuantizedTensor};
    use burn::tensor::{Device, TensorData};

    fn cpu() -> Device {
        crate::device::cpu_backend()
    }

    fn vals(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    fn t2(v: Vec<f32>, shape: [usize; 2], device: &Device) -> Tensor<2> {
        Tensor::from_data(TensorData::new(v, shape), device)
    }

    #[test]
    fn float_and_quantized_agree_with_dequantized_matmul() {
        let device = cpu();
        let (out, inp) = (24, 64);
        let w = vals(out * inp, 3);
        let q = QuantizedTensor::quantize(&w, &[out, inp], QuantConfig::default()).expect("q");
        let deq = q.dequantize();
        let x = Tensor::<3>::from_data(TensorData::new(vals(2 * 3 * inp, 5), [2, 3, inp]), &device);
        let lq = QLinear::new(FrozenWeight::Quantized(QWeight::upload(&q, &device)));
        let lf = QLinear::new(FrozenWeight::float(&deq, [out, inp], &device));
        let (a, b) = (lq.forward(x.clone()), lf.forward(x));
        assert_eq!(a.dims(), [2, 3, out]);
        let diff = (a - b).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-4, "diff {diff}");
    }

    #[test]
    fn only_the_adapter_is_a_parameter_and_gets_gradients() {
        let device = cpu().autodiff();
        let (out, inp, r) = (8, 64, 2);
        let q = QuantizedTensor::quantize(&vals(out * inp, 1), &[out, inp], QuantConfig::default())
            .expect("q");
        let mut layer = QLinear::new(FrozenWeight::Quantized(QWeight::upload(&q, &device)));
        assert_eq!(layer.num_params(), 0);
        layer.adapter = Some(LoraAdapter {
            a: Param::from_tensor(t2(vals(r * inp, 2), [r, inp], &device)),
            b: Param::from_tensor(t2(vals(out * r, 4), [out, r], &device)),
            scale: 2.0,
            dropout: 0.0,
            dropout_active: false,
        });
        assert_eq!(layer.num_params(), r * (inp + out));
        let x = t2(vals(3 * inp, 9), [3, inp], &device);
        let grads = layer.forward(x).sum().backward();
        let ad = layer.adapter.as_ref().expect("adapter");
        assert!(ad.a.val().grad(&grads).is_some());
        assert!(ad.b.val().grad(&grads).is_some());
    }
}
