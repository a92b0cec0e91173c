//! transformers' causal-LM loss (`ForCausalLMLoss`): the token at `i` predicts the label at
//! `i + 1`, and the loss is the mean cross-entropy over labels that are not [`IGNORE_INDEX`]:
//!
//! `L = -(1/N) Σ_{b, i < s-1, y ≠ -100} log softmax(logits[b, i])[y]`, `y = labels[b, i + 1]`.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};

/// Labels with this value do not count (PyTorch's `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

/// Mean next-token cross-entropy (NaN when every label is ignored, as in PyTorch).
///
/// # Shapes
/// `logits: [b, s, v]`, `labels: [b, s]` with `s >= 2` -> `[1]`.
pub fn causal_lm_loss(logits: Tensor<3>, labels: Tensor<2, Int>) -> Tensor<1> {
    let (sum, count) = causal_lm_loss_sum(logits, labels);
    sum / count
}

/// The summed next-token cross-entropy and the number of target tokens it sums over, for losses
/// whose mean runs over more than one batch (gradient accumulation: divide every micro-batch's
/// sum by the whole step's count).
///
/// # Shapes
/// `logits: [b, s, v]`, `labels: [b, s]` with `s >= 2` -> `([1], [1])`.
pub fn causal_lm_loss_sum(logits: Tensor<3>, labels: Tensor<2, Int>) -> (Tensor<1>, Tensor<1>) {
    let [_, s, _] = logits.dims();
    let logits = logits.narrow(1, 0, s - 1); // [b, s-1, v]
    let labels = labels.narrow(1, 1, s - 1); // [b, s-1]
    let ignored = labels.clone().equal_elem(IGNORE_INDEX); // [b, s-1]
    let targets = labels.mask_fill(ignored.clone(), 0).unsqueeze_dim::<3>(2); // [b, s-1, 1]
    let log_p = log_softmax(logits, 2)
        .gather(2, targets) // [b, s-1, 1]
        .squeeze_dim::<2>(2); // [b, s-1]
    let keep = ignored.bool_not().float(); // [b, s-1]
    let count = keep.clone().sum(); // [1]
    ((log_p * keep).sum().neg(), count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn shifted_and_masked() {
        #[allow(deprecated)]
        let device = Device::ndarray();
        // b = 1, s = 3, v = 2.
        let logits = Tensor::<3>::from_data(
            TensorData::new(vec![0.0f32, 1.0, 2.0, 0.0, 5.0, 5.0], [1, 3, 2]),
            &device,
        );
        let labels =
            Tensor::<2, Int>::from_data(TensorData::new(vec![7i64, 1, -100], [1, 3]), &device);
        let loss = causal_lm_loss(logits, labels).into_scalar::<f32>();
        // Only position 0 counts, target 1: -log softmax([0, 1])[1].
        let want = (1.0f32 + (-1.0f32).exp()).ln();
        assert!((loss - want).abs() < 1e-6, "{loss} vs {want}");
    }
}
