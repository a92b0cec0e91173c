//! transformers' causal-LM loss (`ForCausalLMLoss`): the token at `i` predicts the label at
//! `i + 1`, and the loss is the mean cross-entropy over labels that are not [`IGNORE_INDEX`]:
//!
//! `L = -(1/N) Σ_{b, i < s-1, y ≠ -100} log softmax(logits[b, i])[y]`, `y = labels[b, i + 1]`.
//!
//! Training computes it through [`head_loss_and_grad`], a chunk of positions at a time, so that
//! the `[b, s, vocab]` logits (the largest activation of a small model with a large vocabulary)
//! never exist whole.

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
    let [b, s, v] = logits.dims();
    let logits = logits.narrow(1, 0, s - 1).reshape([b * (s - 1), v]);
    let targets = labels.narrow(1, 1, s - 1).reshape([b * (s - 1)]);
    token_loss_sum(logits, targets)
}

/// The summed cross-entropy of each row of `logits` against its target, skipping
/// [`IGNORE_INDEX`], and the number of targets counted.
///
/// # Shapes
/// `logits: [r, v]`, `targets: [r]` -> `([1], [1])`.
pub fn token_loss_sum(logits: Tensor<2>, targets: Tensor<1, Int>) -> (Tensor<1>, Tensor<1>) {
    let ignored = targets.clone().equal_elem(IGNORE_INDEX); // [r]
    let index = targets.mask_fill(ignored.clone(), 0).unsqueeze_dim::<2>(1); // [r, 1]
    let log_p = log_softmax(logits, 1).gather(1, index).squeeze_dim::<1>(1); // [r]
    let keep = ignored.bool_not().float(); // [r]
    let count = keep.clone().sum(); // [1]
    ((log_p * keep).sum().neg(), count)
}

/// Each position's next-token target: `labels` shifted left by one, the last position ignored.
///
/// # Shapes
/// `labels: [b, s]` -> `[b, s]`.
pub fn next_token_targets(labels: Tensor<2, Int>) -> Tensor<2, Int> {
    let [b, s] = labels.dims();
    let device = labels.device();
    let last = Tensor::<2, Int>::full([b, 1], IGNORE_INDEX, &device);
    if s < 2 {
        return last;
    }
    Tensor::cat(vec![labels.narrow(1, 1, s - 1), last], 1)
}

/// Bytes of one chunk's logits in [`head_loss_and_grad`]; its log-softmax and gradient are
/// two more buffers of this size. At SmolLM2's 49k vocabulary that is 170 rows a chunk, where
/// a whole step at batch 4 x 512 would hold 3 x 403 MB (and pass WebGPU's 128 MiB binding
/// limit in one buffer).
pub const HEAD_CHUNK_BYTES: usize = 32 << 20;

/// Rows of logits per chunk of [`head_loss_and_grad`] for a vocabulary of `vocab`.
pub fn head_chunk_rows(vocab: usize) -> usize {
    (HEAD_CHUNK_BYTES / (4 * vocab.max(1))).max(1)
}

/// The summed next-token cross-entropy of `head(x)` and the gradient of `sum / denom` with
/// respect to `x`, computed a chunk of [`head_chunk_rows`] positions at a time so that one
/// chunk's logits exist at once instead of the whole `[b, s, vocab]`.
///
/// `head` maps `[1, r, H]` to `[1, r, vocab]` position by position (a final norm and the LM
/// head), so chunks of the flattened positions give exactly the whole loss. Each chunk's graph
/// starts at its slice of `x` (detached here), and its backward runs before the next chunk. The
/// caller continues the backward pass from `x` with the returned gradient, e.g. through
/// `(x * grad).sum().backward()`.
///
/// # Shapes
/// `x: [b, s, H]`, `labels: [b, s]` (`-100` ignored) -> (`[1]` summed loss, `[b, s, H]`
/// gradient), both without a graph.
pub fn head_loss_and_grad(
    x: Tensor<3>,
    labels: Tensor<2, Int>,
    denom: f64,
    vocab: usize,
    head: impl Fn(Tensor<3>) -> Tensor<3>,
) -> (Tensor<1>, Tensor<3>) {
    head_loss_and_grad_in(x, labels, denom, vocab, head_chunk_rows(vocab), head)
}

/// The summed next-token cross-entropy of `head(x)` and its target count, a chunk of
/// [`head_chunk_rows`] positions at a time and without a graph: [`head_loss_and_grad`] for
/// evaluation.
///
/// # Shapes
/// `x: [b, s, H]`, `labels: [b, s]` (`-100` ignored) -> `([1], [1])`.
pub fn head_loss_sum(
    x: Tensor<3>,
    labels: Tensor<2, Int>,
    vocab: usize,
    head: impl Fn(Tensor<3>) -> Tensor<3>,
) -> (Tensor<1>, Tensor<1>) {
    head_chunks(x, labels, head_chunk_rows(vocab))
        .map(|(xc, targets)| {
            let len = targets.dims()[0];
            token_loss_sum(head(xc.unsqueeze::<3>()).reshape([len, vocab]), targets)
        })
        .reduce(|(a, c), (sum, count)| (a + sum, c + count))
        .expect("at least one position")
}

/// [`head_loss_and_grad`] with `chunk` rows a chunk.
fn head_loss_and_grad_in(
    x: Tensor<3>,
    labels: Tensor<2, Int>,
    denom: f64,
    vocab: usize,
    chunk: usize,
    head: impl Fn(Tensor<3>) -> Tensor<3>,
) -> (Tensor<1>, Tensor<3>) {
    let [b, s, hidden] = x.dims();
    let mut sum: Option<Tensor<1>> = None;
    let mut grads = Vec::new();
    for (xc, targets) in head_chunks(x.detach(), labels, chunk) {
        let len = targets.dims()[0];
        let xc = xc.require_grad(); // [len, H]
        let logits = head(xc.clone().unsqueeze::<3>()).reshape([len, vocab]);
        let (part, _) = token_loss_sum(logits, targets);
        let g = part.clone().div_scalar(denom as f32).backward();
        grads.push(xc.grad(&g).expect("a head chunk's input has a gradient"));
        let part = part.inner();
        sum = Some(match sum {
            Some(acc) => acc + part,
            None => part,
        });
    }
    let sum = sum.expect("at least one position");
    (sum, Tensor::cat(grads, 0).reshape([b, s, hidden]))
}

/// `x`'s positions, flattened over the batch, in slices of `chunk` (at least 1), each with its
/// next-token targets ([`next_token_targets`]).
///
/// # Shapes
/// `x: [b, s, H]`, `labels: [b, s]` -> `([len, H], [len])` per chunk, `len <= chunk`.
fn head_chunks(
    x: Tensor<3>,
    labels: Tensor<2, Int>,
    chunk: usize,
) -> impl Iterator<Item = (Tensor<2>, Tensor<1, Int>)> {
    let [b, s, hidden] = x.dims();
    let rows = b * s;
    let x = x.reshape([rows, hidden]);
    let targets = next_token_targets(labels).reshape([rows]);
    let chunk = chunk.max(1);
    (0..rows).step_by(chunk).map(move |r0| {
        let len = chunk.min(rows - r0);
        (
            x.clone().narrow(0, r0, len),
            targets.clone().narrow(0, r0, len),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    /// The chunked head gives the loss and input gradient of one graph over the whole head,
    /// for chunks that split sequences and batch rows unevenly.
    #[test]
    fn chunked_head_matches_one_graph() {
        let device = crate::device::cpu_backend().autodiff();
        let (b, s, h, v) = (2, 5, 3, 7);
        let wave = |n: usize, f: f32| (0..n).map(|i| ((i as f32) * f).sin()).collect::<Vec<_>>();
        let x = Tensor::<3>::from_data(TensorData::new(wave(b * s * h, 0.7), [b, s, h]), &device);
        let w = Tensor::<2>::from_data(TensorData::new(wave(h * v, 1.3), [h, v]), &device);
        let labels = Tensor::<2, Int>::from_data(
            TensorData::new(vec![3i64, 1, -100, 6, 0, 2, 5, -100, 4, 1], [b, s]),
            &device,
        );
        let head = |x: Tensor<3>| {
            let [n, r, _] = x.dims();
            x.reshape([n * r, h]).matmul(w.clone()).reshape([n, r, v])
        };
        let denom = 4.0;
        let leaf = x.clone().require_grad();
        let (want_sum, _) = causal_lm_loss_sum(head(leaf.clone()), labels.clone());
        let g = want_sum.clone().div_scalar(denom as f32).backward();
        let want_grad = leaf
            .grad(&g)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let want_sum = want_sum.into_scalar::<f32>();
        for chunk in [1, 3, 4, 10, 64] {
            let (sum, grad) =
                head_loss_and_grad_in(x.clone(), labels.clone(), denom, v, chunk, head);
            let sum = sum.into_scalar::<f32>();
            assert!(
                (sum - want_sum).abs() < 1e-5,
                "chunk {chunk}: {sum} vs {want_sum}"
            );
            let grad = grad.into_data().try_to_vec::<f32>().unwrap();
            for (a, e) in grad.iter().zip(&want_grad) {
                assert!((a - e).abs() < 1e-6, "chunk {chunk}: gradient {a} vs {e}");
            }
        }
    }

    #[test]
    fn next_token_targets_shift_and_ignore_the_last() {
        let device = crate::device::cpu_backend();
        let labels = Tensor::<2, Int>::from_data(
            TensorData::new(vec![1i64, 2, 3, 4, 5, 6], [2, 3]),
            &device,
        );
        let t = next_token_targets(labels)
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .unwrap();
        assert_eq!(t, [2, 3, IGNORE_INDEX, 5, 6, IGNORE_INDEX]);
    }

    #[test]
    fn shifted_and_masked() {
        let device = crate::device::cpu_backend();
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
