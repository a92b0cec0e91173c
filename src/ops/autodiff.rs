//! The hand-written backward of [`QuantBackend`] under `Autodiff<B, C>`.
//!
//! The frozen 4-bit weight is no parent of the graph: the backward of `qmatmul` keeps the
//! *packed* weight tensors (refcounted handles, never a dequantized copy) and computes only the
//! input gradient `dX = dY * dequant(W)`. `lora_matmul` is an ordinary product whose backward
//! is again two `lora_matmul` calls.

use burn::backend::{
    Autodiff, AutodiffBackend,
    autodiff::{
        NodeId,
        checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
        grads::Gradients,
        ops::{Backward, Ops, OpsKind, binary, unary},
    },
    tensor::{FloatTensor, IntTensor},
};

use super::backend::QuantBackend;
use super::layout::{MatmulStrategy, QLayout};

/// What the backward of `qmatmul` / `qmatmul_t` keeps: the packed weight, its statistics and
/// layout, and whether the forward was the transposed product.
type PackedState<B> = (
    IntTensor<B>,
    IntTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    QLayout,
    bool,
);

/// Backward of the products with the frozen weight. Both are linear in their input with the
/// same W, so each one's gradient is the other: d(X W^T) -> dY W, d(dY W) -> dX W^T.
#[derive(Debug)]
struct PackedLinearBackward;

impl<B: QuantBackend> Backward<B, 1> for PackedLinearBackward {
    type State = PackedState<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (packed, absmax_q, scales, tables, layout, transposed) = ops.state;
        let strategy = MatmulStrategy::Auto;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            if transposed {
                B::qmatmul(grad, packed, absmax_q, scales, tables, layout, strategy)
            } else {
                B::qmatmul_t(grad, packed, absmax_q, scales, tables, layout, strategy)
            }
        });
    }
}

/// Records `X W^T` (or `dY W` when `transposed`) with the packed weight as backward state.
fn packed_linear<B: QuantBackend, C: CheckpointStrategy>(
    input: FloatTensor<Autodiff<B, C>>,
    state: PackedState<B>,
    strategy: MatmulStrategy,
) -> FloatTensor<Autodiff<B, C>> {
    let forward =
        |input, (packed, absmax_q, scales, tables, layout, transposed): PackedState<B>| {
            if transposed {
                B::qmatmul_t(input, packed, absmax_q, scales, tables, layout, strategy)
            } else {
                B::qmatmul(input, packed, absmax_q, scales, tables, layout, strategy)
            }
        };
    match PackedLinearBackward
        .prepare::<C>([input.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let out = forward(input.into_primitive(), state.clone());
            prep.finish(state, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(input.into_primitive(), state)),
    }
}

#[derive(Debug)]
struct LoraMatmulBackward;

impl<B: QuantBackend> Backward<B, 2> for LoraMatmulBackward {
    type State = (Option<NodeId>, Option<NodeId>, bool, bool, f32);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let (lhs, rhs, tl, tr, alpha) = ops.state;
        let lhs: Option<FloatTensor<B>> = lhs.map(|id| checkpointer.retrieve_node_output(id));
        let rhs: Option<FloatTensor<B>> = rhs.map(|id| checkpointer.retrieve_node_output(id));
        // C = alpha op(L) op(R):  d op(L) = alpha dC op(R)^T,  d op(R) = alpha op(L)^T dC,
        // transposed back where op is a transpose.
        binary::<B, _, _>(
            ops.parents,
            ops.node,
            grads,
            |grad| {
                let rhs = rhs.expect("rhs kept for the lhs gradient");
                if tl {
                    B::lora_matmul(rhs, grad, tr, true, alpha)
                } else {
                    B::lora_matmul(grad, rhs, false, !tr, alpha)
                }
            },
            |grad| {
                let lhs = lhs.expect("lhs kept for the rhs gradient");
                if tr {
                    B::lora_matmul(grad, lhs, true, tl, alpha)
                } else {
                    B::lora_matmul(lhs, grad, !tl, false, alpha)
                }
            },
        );
    }
}

impl<B: QuantBackend, C: CheckpointStrategy> QuantBackend for Autodiff<B, C> {
    fn qmatmul(
        x: FloatTensor<Self>,
        packed: IntTensor<Self>,
        absmax_q: IntTensor<Self>,
        scales: FloatTensor<Self>,
        tables: FloatTensor<Self>,
        layout: QLayout,
        strategy: MatmulStrategy,
    ) -> FloatTensor<Self> {
        let state = (
            packed,
            absmax_q,
            scales.into_primitive(),
            tables.into_primitive(),
            layout,
            false,
        );
        packed_linear::<B, C>(x, state, strategy)
    }

    fn qmatmul_t(
        dy: FloatTensor<Self>,
        packed: IntTensor<Self>,
        absmax_q: IntTensor<Self>,
        scales: FloatTensor<Self>,
        tables: FloatTensor<Self>,
        layout: QLayout,
        strategy: MatmulStrategy,
    ) -> FloatTensor<Self> {
        let state = (
            packed,
            absmax_q,
            scales.into_primitive(),
            tables.into_primitive(),
            layout,
            true,
        );
        packed_linear::<B, C>(dy, state, strategy)
    }

    fn dequantize_4bit(
        packed: IntTensor<Self>,
        absmax_q: IntTensor<Self>,
        scales: FloatTensor<Self>,
        tables: FloatTensor<Self>,
        layout: QLayout,
    ) -> FloatTensor<Self> {
        // A frozen weight: the result is a constant of the graph.
        <Self as AutodiffBackend>::from_inner(B::dequantize_4bit(
            packed,
            absmax_q,
            scales.into_primitive(),
            tables.into_primitive(),
            layout,
        ))
    }

    fn lora_matmul(
        lhs: FloatTensor<Self>,
        rhs: FloatTensor<Self>,
        trans_lhs: bool,
        trans_rhs: bool,
        alpha: f32,
    ) -> FloatTensor<Self> {
        let lhs_tracked = lhs.is_tracked();
        let rhs_tracked = rhs.is_tracked();
        match LoraMatmulBackward
            .prepare::<C>([lhs.node(), rhs.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let lhs_state = rhs_tracked.then(|| prep.checkpoint(&lhs));
                let rhs_state = lhs_tracked.then(|| prep.checkpoint(&rhs));
                let out = B::lora_matmul(
                    lhs.into_primitive(),
                    rhs.into_primitive(),
                    trans_lhs,
                    trans_rhs,
                    alpha,
                );
                prep.finish((lhs_state, rhs_state, trans_lhs, trans_rhs, alpha), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::lora_matmul(
                lhs.into_primitive(),
                rhs.into_primitive(),
                trans_lhs,
                trans_rhs,
                alpha,
            )),
        }
    }
}
