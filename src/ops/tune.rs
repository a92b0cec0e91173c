//! [`MatmulStrategy::Tuned`]: the 4-bit matmul's kernel, chosen by timing it on the device.
//!
//! The first product of a shape class ([`TuneKey`]) on a device runs every kernel the shape
//! allows ([`dispatch::tune_candidates`]) under CubeCL's autotune: a warm-up call each, then
//! samples in round robin (3 to 10 calls each) until the slower ones are ruled out. That product
//! and every later one of its class run the fastest. Results live as long as the process
//! (CubeCL's file cache is not built in). It is the machinery burn tunes its own matmuls with. The
//! candidates compute the same function and differ only in the order of their f32 sums, so a
//! run's numbers may differ from another's in the last bits where the two chose differently.
//!
//! A kernel the tuning picks over the measured rule ([`dispatch::rule`]) is checked once per
//! shape class against the rule's kernel on the same input: a kernel that runs on a GPU for the
//! first time (the tile kernel and the GEMM are tested on software adapters) must not train a
//! model on wrong numbers. Where the two disagree by more than [`AGREE`] of the largest value,
//! the class keeps the rule's kernel for the rest of the process, and a warning says so.

use std::collections::HashMap;
use std::fmt;
use std::sync::{LazyLock, Mutex};

use burn::backend::ops::FloatTensorOps;
use burn::backend::wgpu::{CubeBackend, CubeTensor};
use burn::cubecl::client::Client;
use burn::cubecl::tune::{LocalTuner, Tunable, TunableSet, local_tuner};
use burn::cubecl::{CubeTuneId, Device};

use super::cube::{Weight, fit, linear};
use super::dispatch::{self, Fit};
use super::layout::{MatmulStrategy, QLayout};

/// A shape class: products in one class share the tuned kernel.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct TuneKey {
    /// `dX = dY W` rather than `Y = X Wᵀ`.
    transposed: bool,
    /// Rows of X (or dY), rounded up to a power of two ([`dispatch::tune_rows`]).
    rows: usize,
    /// Columns of W.
    k: usize,
    /// Rows of W.
    n: usize,
}

impl TuneKey {
    fn new(rows: usize, layout: &QLayout, transposed: bool) -> Self {
        Self {
            transposed,
            rows: dispatch::tune_rows(rows),
            k: layout.in_features,
            n: layout.out_features,
        }
    }
}

impl fmt::Display for TuneKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = if self.transposed { "dY W" } else { "X W^T" };
        write!(f, "{op}, rows <= {}, W {}x{}", self.rows, self.n, self.k)
    }
}

impl burn::cubecl::tune::AutotuneKey for TuneKey {}

/// What every candidate receives: X (or dY) `[rows, inner]`, the weight, its layout, and
/// whether the product is `dY W`.
type Inputs = (CubeTensor, Weight, QLayout, bool);

/// Rows of the input: all of its elements over the last dimension.
fn rows((x, _, layout, transposed): &Inputs) -> usize {
    let inner = if *transposed {
        layout.out_features
    } else {
        layout.in_features
    };
    x.meta.shape().num_elements() / inner.max(1)
}

fn key(inputs: &Inputs) -> TuneKey {
    TuneKey::new(rows(inputs), &inputs.2, inputs.3)
}

static TUNER: LocalTuner<TuneKey, CubeTuneId> = local_tuner!();

/// Every kernel, identified by its strategy. A set serves every shape, so a kernel the shape
/// does not allow (the tile kernel and the GEMM need whole packed words per row of W) declines
/// instead of running as another one.
fn tunables() -> TunableSet<TuneKey, Inputs, CubeTensor, MatmulStrategy> {
    let mut set = TunableSet::new(key, |_: &TuneKey, inputs: &Inputs| inputs.clone());
    for strategy in dispatch::tune_candidates(Fit::SUBGROUP, false) {
        set = set.with(Tunable::identified(
            strategy,
            move |(x, w, layout, transposed): Inputs| {
                let fit = fit(x.client.properties(), &layout);
                if !dispatch::tune_candidates(fit, transposed).contains(&strategy) {
                    return Err(format!(
                        "{strategy} does not run on this product (dY W: {transposed}) of a {}x{} \
                         weight in blocks of {}",
                        layout.out_features, layout.in_features, layout.blocksize
                    ));
                }
                Ok(linear(x, w, &layout, strategy, transposed))
            },
        ));
    }
    set
}

/// Largest difference, relative to the largest magnitude of the rule's output, at which a tuned
/// kernel agrees with the rule's. Both sum the same f32 products in different orders, which moves
/// a value by about sqrt(K) ulps (1e-5 of it at K = 11008); a kernel that reads a wrong weight,
/// row or nibble moves values by their own size.
pub const AGREE: f32 = 1e-3;

/// What the check found for each shape class checked on a device.
static VERDICTS: LazyLock<Mutex<HashMap<(CubeTuneId, TuneKey), Verdict>>> =
    LazyLock::new(Default::default);

/// The check's verdict for `key` on `id`: `None` while it is not checked yet.
fn verdict(id: &CubeTuneId, key: &TuneKey) -> Option<Verdict> {
    let verdicts = VERDICTS.lock().expect("verdicts lock");
    verdicts.get(&(id.clone(), key.clone())).copied()
}

/// The measured rule's kernel for `rows` rows of `layout`'s product on `client`'s adapter.
fn rule(client: &Client, rows: usize, layout: &QLayout, transposed: bool) -> MatmulStrategy {
    let props = client.properties();
    dispatch::rule(
        rows,
        transposed,
        dispatch::adapter_class(&props.identity),
        fit(props, layout),
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// The tuned kernel is the rule's, or agreed with it.
    Tuned,
    /// The tuned kernel disagreed: the rule's kernel serves the class.
    Rule,
}

/// `X Wᵀ` (or `dY W`) by the fastest kernel for its shape class, timing the candidates the
/// first time the class is met on `x`'s device.
pub(super) fn tuned_linear(
    x: CubeTensor,
    w: Weight,
    layout: &QLayout,
    transposed: bool,
) -> CubeTensor {
    let client = x.client.clone();
    let id = CubeTuneId::new(&client, &x.device);
    let set = TUNER.init(&id, tunables);
    let inputs = (x, w, *layout, transposed);
    let rows = rows(&inputs);
    let key = TuneKey::new(rows, layout, transposed);
    match verdict(&id, &key) {
        Some(Verdict::Tuned) => TUNER.execute(&id, &client, set, inputs),
        Some(Verdict::Rule) => {
            let rule = rule(&client, rows, layout, transposed);
            linear(inputs.0, inputs.1, layout, rule, transposed)
        }
        None => {
            let rule = rule(&client, rows, layout, transposed);
            let (x, w) = (inputs.0.clone(), inputs.1.clone());
            let out = TUNER.execute(&id, &client, set.clone(), inputs);
            // Unsettled where timings resolve later (not natively): checked on a later call.
            let Some(chosen) = TUNER.fastest_identity(&id, &set, &key) else {
                return out;
            };
            let adapter = &client.properties().identity.name;
            let (verdict, out) =
                check(out, chosen, rule, || linear(x, w, layout, rule, transposed));
            if verdict == Verdict::Rule {
                eprintln!(
                    "wgtune: on {adapter}, the {chosen} kernel's product ({key}) differs from the \
                     {rule} kernel's by more than {AGREE:e} of its largest value; this shape \
                     class keeps the {rule} kernel"
                );
            }
            VERDICTS
                .lock()
                .expect("verdicts lock")
                .insert((id, key), verdict);
            out
        }
    }
}

/// The tuned kernel's output `out` checked against the rule's (`reference`, run only where the
/// two kernels differ): the verdict, and the output to use.
fn check(
    out: CubeTensor,
    chosen: MatmulStrategy,
    rule: MatmulStrategy,
    reference: impl FnOnce() -> CubeTensor,
) -> (Verdict, CubeTensor) {
    if chosen == rule {
        return (Verdict::Tuned, out);
    }
    let reference = reference();
    if disagreement(&out, &reference) <= AGREE {
        (Verdict::Tuned, out)
    } else {
        (Verdict::Rule, reference)
    }
}

/// `max |out - reference| / max |reference|` on the device, read back as three numbers (with
/// `sum |out - reference|`, which a NaN reaches where a GPU's max may pass over it); infinite
/// where any of them is not finite.
fn disagreement(out: &CubeTensor, reference: &CubeTensor) -> f32 {
    let one = |t: CubeTensor| CubeBackend::float_reshape(t, burn::tensor::Shape::from(vec![1]));
    let diff = CubeBackend::float_abs(CubeBackend::float_sub(out.clone(), reference.clone()));
    let stats = CubeBackend::float_cat(
        vec![
            one(CubeBackend::float_max(diff.clone())),
            one(CubeBackend::float_sum(diff)),
            one(CubeBackend::float_max(CubeBackend::float_abs(
                reference.clone(),
            ))),
        ],
        0,
    );
    let data = burn::cubecl::future::block_on(CubeBackend::float_into_data(stats));
    let values: Vec<f32> = data
        .ok()
        .and_then(|d| d.try_to_vec::<f32>().ok())
        .unwrap_or_default();
    match values[..] {
        [max, sum, largest] if [max, sum, largest].iter().all(|v| v.is_finite()) => {
            max / largest.max(f32::MIN_POSITIVE)
        }
        _ => f32::INFINITY,
    }
}

/// The kernel [`MatmulStrategy::Tuned`] runs on `device` for `rows` rows of `layout`'s product,
/// once a product of that class has run there tuned (the rule's kernel where the tuned one
/// disagreed with it); `None` before.
pub fn tuned_choice(
    device: &Device,
    rows: usize,
    layout: &QLayout,
    transposed: bool,
) -> Option<MatmulStrategy> {
    let client = device.client();
    let id = CubeTuneId::new(&client, device);
    let set = TUNER.init(&id, tunables);
    let key = TuneKey::new(rows, layout, transposed);
    if verdict(&id, &key) == Some(Verdict::Rule) {
        return Some(rule(&client, rows, layout, transposed));
    }
    TUNER.fastest_identity(&id, &set, &key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::DispatchDevice;
    use burn::tensor::{DeviceKind, TensorData};

    fn tensor(values: &[f32]) -> CubeTensor {
        let device = burn::tensor::Device::wgpu(DeviceKind::DefaultDevice).inner();
        let DispatchDevice::Cube(cube) = device.as_dispatch() else {
            unreachable!("a wgpu device is a CubeCL device")
        };
        CubeBackend::float_from_data(TensorData::new(values.to_vec(), [values.len()]), cube)
    }

    #[test]
    fn disagreement_is_relative_to_the_largest_value_and_refuses_nan() {
        let reference = tensor(&[1.0, 2.0, -4.0]);
        assert_eq!(disagreement(&tensor(&[1.0, 2.0, -4.0]), &reference), 0.0);
        // A few ulps of summation order agree; a wrong value does not.
        let close = disagreement(&tensor(&[1.0, 2.0, -4.002]), &reference);
        assert!((close - 5e-4).abs() < 1e-5 && close <= AGREE, "{close}");
        let wrong = disagreement(&tensor(&[1.0, 2.0, -3.0]), &reference);
        assert!((wrong - 0.25).abs() < 1e-6 && wrong > AGREE, "{wrong}");
        let nan = disagreement(&tensor(&[1.0, f32::NAN, -4.0]), &reference);
        assert_eq!(nan, f32::INFINITY);
        assert_eq!(disagreement(&tensor(&[0.0; 3]), &tensor(&[0.0; 3])), 0.0);
    }

    fn host(t: CubeTensor) -> Vec<f32> {
        let data = burn::cubecl::future::block_on(CubeBackend::float_into_data(t));
        data.expect("read back").try_to_vec::<f32>().expect("f32")
    }

    #[test]
    fn a_tuned_kernel_that_disagrees_with_the_rule_gives_way_to_it() {
        use MatmulStrategy::{DequantMatmul, FusedGemm, FusedGroup};
        let gemm = FusedGemm(crate::ops::GemmTile::T64);
        let reference = || tensor(&[1.0, 2.0, -4.0]);
        // The rule's own kernel is not run twice.
        let (verdict, out) = check(tensor(&[9.0]), FusedGroup, FusedGroup, || {
            unreachable!("the rule's kernel was chosen")
        });
        assert_eq!((verdict, host(out)), (Verdict::Tuned, vec![9.0]));
        let (verdict, out) = check(tensor(&[1.0, 2.0, -4.001]), gemm, DequantMatmul, reference);
        assert_eq!(
            (verdict, host(out)),
            (Verdict::Tuned, vec![1.0, 2.0, -4.001])
        );
        let (verdict, out) = check(tensor(&[1.0, 2.5, -4.0]), gemm, DequantMatmul, reference);
        assert_eq!((verdict, host(out)), (Verdict::Rule, vec![1.0, 2.0, -4.0]));
    }
}
