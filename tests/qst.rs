//! Quantized Side Tuning's side network (`wgtune::peft::qst`) on the tiny LLaMA
//! (`../shared/fixtures/tiny-llama/model-f32`, NF4-quantized on load; hidden 128, 4 heads / 2 KV
//! heads, so reduction 4 and rank 8: a side network 32 wide with head_dim 8).
//!
//! * gradients of every side-network parameter against a reference written here from the raw
//!   parameter tensors with plain 2-D burn ops (per sequence, per head), 1e-4 of each norm;
//! * central finite differences of the loss for a few scalars;
//! * no graph and no gradient reach the LLM, and what backward keeps does not grow with the
//!   LLM's depth beyond the side network's own activations (wgpu memory pool, 2 vs 4 layers,
//!   against LoRA);
//! * save -> load round trip, and the errors of a bad directory;
//! * wgpu (llvmpipe in CI) against the CPU backend;
//! * the streaming/cached forward against the plain one, and AdamW steps lowering the loss.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;

use burn::module::{Module, Param};
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};
use common::{cpu, rand_vec, values, wgpu};
use safetensors::SafeTensors;
use wgtune::model::{Llama, LlamaConfig, causal_lm_loss_sum, load_from_tensors, load_hf_dir};
use wgtune::peft::qst::{
    self, QstCache, QstConfig, QstError, SideNetwork, head, llm_states, loss_and_grads,
};
use wgtune::peft::{LoraConfig, attach};
use wgtune::quant::QuantConfig;
use wgtune::train::{AdamW, AdamWConfig};

/// Tests that use the wgpu device take turns: memory is measured device-wide.
static WGPU: Mutex<()> = Mutex::new(());

const CFG: QstConfig = QstConfig { r: 8, reduction: 4 };

fn model_dir() -> PathBuf {
    common::tiny_llama("model-f32")
}

fn load(device: &Device) -> Llama {
    load_hf_dir(&model_dir(), Some(QuantConfig::default()), device).expect("load tiny llama")
}

/// The tiny model with `n` layers: layer `i` is the fixture's layer `i % 2`.
fn load_layers(n: usize, device: &Device) -> Llama {
    let dir = model_dir();
    let mut config = LlamaConfig::from_file(&dir.join("config.json")).expect("config");
    config.num_hidden_layers = n;
    let bytes = std::fs::read(dir.join("model.safetensors")).expect("read weights");
    let st = SafeTensors::deserialize(&bytes).expect("parse weights");
    let get = |name: &str| {
        let src = match name.strip_prefix("model.layers.") {
            Some(rest) => {
                let (i, tail) = rest.split_once('.').expect("layer index");
                let i: usize = i.parse().expect("number");
                format!("model.layers.{}.{tail}", i % 2)
            }
            None => name.to_string(),
        };
        let v = st
            .tensor(&src)
            .unwrap_or_else(|_| panic!("fixture has {src}"));
        let vals = v
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        Ok((vals, v.shape().to_vec()))
    };
    load_from_tensors(&config, &dir, get, Some(QuantConfig::default()), device).expect("build")
}

struct Batch {
    shape: [usize; 2],
    ids: Vec<i64>,
    labels: Vec<i64>,
}

/// The fixture's batch (`reference.safetensors`: input_ids, labels with -100).
fn batch() -> Batch {
    let bytes = std::fs::read(common::tiny_llama("reference.safetensors")).expect("read reference");
    let st = SafeTensors::deserialize(&bytes).expect("parse reference");
    let ints = |name: &str| -> (Vec<usize>, Vec<i64>) {
        let v = st.tensor(name).expect("tensor");
        let vals = v
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        (v.shape().to_vec(), vals)
    };
    let (shape, ids) = ints("input_ids");
    let (_, labels) = ints("labels");
    Batch {
        shape: [shape[0], shape[1]],
        ids,
        labels,
    }
}

impl Batch {
    fn ids(&self, device: &Device) -> Tensor<2, Int> {
        Tensor::from_data(TensorData::new(self.ids.clone(), self.shape), device)
    }
    fn labels(&self, device: &Device) -> Tensor<2, Int> {
        Tensor::from_data(TensorData::new(self.labels.clone(), self.shape), device)
    }
    /// Targets: labels after the first position that are not -100.
    fn targets(&self) -> f64 {
        self.labels
            .chunks(self.shape[1])
            .map(|row| row.iter().skip(1).filter(|&&y| y != -100).count())
            .sum::<usize>() as f64
    }
}

fn side_init(model: &Llama, device: &Device) -> SideNetwork {
    SideNetwork::init(&model.config, &CFG, 42, device).expect("init side network")
}

/// Every parameter moved off its (partly constant) init by `0.1·U(-1, 1)`, so a gain or gate
/// applied to the wrong channel shows.
fn perturbed(side: &SideNetwork, device: &Device) -> SideNetwork {
    let mut side = side.clone();
    for (k, (_, p)) in side.params_mut().into_iter().enumerate() {
        let t = p.val();
        let dims = t.dims();
        let noise = rand_vec(dims[0] * dims[1], 1000 + k as u64);
        let v: Vec<f32> = values(t)
            .iter()
            .zip(noise)
            .map(|(a, n)| a + 0.1 * n)
            .collect();
        *p = Param::from_tensor(Tensor::from_data(TensorData::new(v, dims), device));
    }
    side
}

fn norm(v: &[f32]) -> f64 {
    v.iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt()
}

fn rel_norm_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let d: Vec<f32> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    norm(&d) / norm(b).max(f64::MIN_POSITIVE)
}

// ---------------------------------------------------------------------------------------------
// The reference: the side network's function from raw tensors, one sequence at a time, 2-D ops.
// ---------------------------------------------------------------------------------------------

struct Reference<'a> {
    p: &'a HashMap<String, Tensor<2>>,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    eps: f64,
    /// `[s, d]` RoPE tables for the side head_dim.
    cos: Tensor<2>,
    sin: Tensor<2>,
    /// `[s, s]` additive causal mask.
    mask: Tensor<2>,
}

fn sigmoid2(x: Tensor<2>) -> Tensor<2> {
    x.neg().exp().add_scalar(1.0).recip()
}

impl Reference<'_> {
    fn w(&self, name: &str) -> Tensor<2> {
        self.p
            .get(name)
            .unwrap_or_else(|| panic!("no parameter {name}"))
            .clone()
    }

    fn rms(&self, x: Tensor<2>, gain: &str) -> Tensor<2> {
        let ms = x.clone().powf_scalar(2.0).mean_dim(1);
        x.div(ms.add_scalar(self.eps).sqrt()).mul(self.w(gain))
    }

    fn down(&self, h: Tensor<2>, i: usize) -> Tensor<2> {
        let p = format!("downsample.{i}");
        let a = h.matmul(self.w(&format!("{p}.adapter_A.weight")));
        let a = a.clone().mul(sigmoid2(a)); // silu
        let y = a.matmul(self.w(&format!("{p}.adapter_B.weight")));
        let n = y.dims()[1] as f64;
        let mean = y.clone().sum_dim(1).div_scalar(n);
        let c = y.sub(mean);
        let var = c.clone().powf_scalar(2.0).sum_dim(1).div_scalar(n);
        c.div(var.add_scalar(1e-5).sqrt())
            .mul(self.w(&format!("{p}.post_layer_norm.weight")))
            .add(self.w(&format!("{p}.post_layer_norm.bias")))
    }

    fn rope(&self, x: Tensor<2>) -> Tensor<2> {
        let half = self.head_dim / 2;
        let x1 = x.clone().narrow(1, 0, half);
        let x2 = x.clone().narrow(1, half, half);
        x.mul(self.cos.clone()) + Tensor::cat(vec![x2.neg(), x1], 1).mul(self.sin.clone())
    }

    fn attention(&self, x: Tensor<2>, i: usize) -> Tensor<2> {
        let p = format!("qst_layers.{i}.self_attn");
        let q = x.clone().matmul(self.w(&format!("{p}.q_proj.weight")));
        let k = x.clone().matmul(self.w(&format!("{p}.k_proj.weight")));
        let v = x.matmul(self.w(&format!("{p}.v_proj.weight")));
        let d = self.head_dim;
        let group = self.heads / self.kv_heads;
        let outs = (0..self.heads)
            .map(|j| {
                let g = j / group;
                let qj = self.rope(q.clone().narrow(1, j * d, d));
                let kj = self.rope(k.clone().narrow(1, g * d, d));
                let vj = v.clone().narrow(1, g * d, d);
                let scores = qj
                    .matmul(kj.transpose())
                    .div_scalar((d as f64).sqrt())
                    .add(self.mask.clone());
                softmax(scores, 1).matmul(vj)
            })
            .collect();
        Tensor::cat(outs, 1).matmul(self.w(&format!("{p}.o_proj.weight")))
    }

    fn layer(&self, x: Tensor<2>, i: usize) -> Tensor<2> {
        let p = format!("qst_layers.{i}");
        let x = x.clone() + self.attention(self.rms(x, &format!("{p}.input_layernorm.weight")), i);
        let n = self.rms(x.clone(), &format!("{p}.post_attention_layernorm.weight"));
        let g = n
            .clone()
            .matmul(self.w(&format!("{p}.mlp.gate_proj.weight")));
        let u = n.matmul(self.w(&format!("{p}.mlp.up_proj.weight")));
        let act = g.clone().mul(sigmoid2(g)).mul(u);
        x + act.matmul(self.w(&format!("{p}.mlp.down_proj.weight")))
    }

    /// `x` for one sequence: `hidden[i]: [s, H]`, `normed: [s, H]` -> `[s, H]`.
    fn forward(&self, hidden: &[Tensor<2>], normed: Tensor<2>) -> Tensor<2> {
        let mut s = self.down(hidden[0].clone(), 0);
        for i in 0..self.layers {
            let z = sigmoid2(self.w(&format!("z.{i}")));
            let mixed = self
                .down(hidden[i + 1].clone(), i + 1)
                .mul(z.clone().neg().add_scalar(1.0))
                + s.mul(z);
            s = self.layer(mixed, i);
        }
        let u = self
            .rms(s, "norm_qst.weight")
            .matmul(self.w("upsample.weight"))
            .add(self.w("upsample.bias"));
        let g = sigmoid2(self.w("lm_head_z"));
        u.mul(g.clone().neg().add_scalar(1.0)) + normed.mul(g)
    }
}

/// RoPE tables `[s, d]` (θ^(-2i/d), halves repeated) and the additive causal mask `[s, s]`.
fn tables(s: usize, d: usize, theta: f64, device: &Device) -> (Tensor<2>, Tensor<2>, Tensor<2>) {
    let mut cos = vec![0f32; s * d];
    let mut sin = vec![0f32; s * d];
    for p in 0..s {
        for i in 0..d / 2 {
            let f = 1.0 / theta.powf(2.0 * i as f64 / d as f64);
            let phi = p as f64 * f;
            for j in [i, i + d / 2] {
                cos[p * d + j] = phi.cos() as f32;
                sin[p * d + j] = phi.sin() as f32;
            }
        }
    }
    let mask: Vec<f32> = (0..s * s)
        .map(|k| if k % s > k / s { -1e30 } else { 0.0 })
        .collect();
    let t = |v: Vec<f32>, shape: [usize; 2]| Tensor::from_data(TensorData::new(v, shape), device);
    (t(cos, [s, d]), t(sin, [s, d]), t(mask, [s, s]))
}

/// Reference summed cross-entropy over the batch, from host copies of the LLM states and the
/// side network's parameters (leaves on `device`, returned for their gradients).
fn reference_loss(
    model: &Llama,
    side: &SideNetwork,
    b: &Batch,
    device: &Device,
) -> (Tensor<1>, HashMap<String, Tensor<2>>) {
    let params: HashMap<String, Tensor<2>> = side
        .named_params()
        .into_iter()
        .map(|(n, t)| {
            let dims = t.dims();
            let leaf = Tensor::from_data(TensorData::new(values(t), dims), device).require_grad();
            (n, leaf)
        })
        .collect();
    let (hidden, normed) = llm_states(model, b.ids(device));
    let [bs, s] = b.shape;
    let hd = model.config.hidden_size;
    let host = |t: Tensor<3>| values(t);
    let hidden: Vec<Vec<f32>> = hidden.into_iter().map(host).collect();
    let normed = host(normed);
    let theta = model.config.rope_theta();
    let head_dim = hd / CFG.reduction / model.config.num_attention_heads;
    let (cos, sin, mask) = tables(s, head_dim, theta, device);
    let r = Reference {
        p: &params,
        layers: model.layers.len(),
        heads: model.config.num_attention_heads,
        kv_heads: model.config.num_kv_heads(),
        head_dim,
        eps: model.config.rms_norm_eps,
        cos,
        sin,
        mask,
    };
    let head_t = Tensor::<2>::from_data(
        TensorData::new(values(model.lm_head_t.clone()), model.lm_head_t.dims()),
        device,
    );
    let vocab = head_t.dims()[1];
    let row = |v: &[f32], k: usize| {
        Tensor::<2>::from_data(
            TensorData::new(v[k * s * hd..(k + 1) * s * hd].to_vec(), [s, hd]),
            device,
        )
    };
    let mut total: Option<Tensor<1>> = None;
    for k in 0..bs {
        let hs: Vec<Tensor<2>> = hidden.iter().map(|h| row(h, k)).collect();
        let x = r.forward(&hs, row(&normed, k));
        let logp = log_softmax(x.matmul(head_t.clone()), 1); // [s, v]
        let mut onehot = vec![0f32; s * vocab];
        for i in 0..s - 1 {
            let y = b.labels[k * s + i + 1];
            if y != -100 {
                onehot[i * vocab + y as usize] = 1.0;
            }
        }
        let onehot = Tensor::<2>::from_data(TensorData::new(onehot, [s, vocab]), device);
        let ce = logp.mul(onehot).sum().neg();
        total = Some(match total {
            Some(t) => t + ce,
            None => ce,
        });
    }
    (total.expect("a sequence"), params)
}

#[test]
fn llm_states_are_the_llm_and_are_detached() {
    let device = cpu().autodiff();
    let mut model = load(&device);
    let b = batch();
    let (hidden, normed) = llm_states(&model, b.ids(&device));
    assert_eq!(hidden.len(), model.layers.len() + 1);
    let logits = model.forward(b.ids(&device), None);
    let last = hidden.last().expect("h_L").clone();
    assert_eq!(
        values(model.head(last.clone())),
        values(logits.clone()),
        "h_L is the last layer's output"
    );
    assert_eq!(values(model.norm.forward(last)), values(normed.clone()));
    for h in hidden.iter().chain([&normed]) {
        assert!(!h.is_tracked() && !h.is_require_grad());
    }
    // Even with LoRA adapters attached (tracked parameters), the LLM records nothing and gets
    // no gradient from the side network's loss.
    attach(
        &mut model,
        &LoraConfig {
            r: 4,
            ..LoraConfig::default()
        },
        3,
    );
    let side = side_init(&model, &device);
    let (hidden, normed) = llm_states(&model, b.ids(&device));
    assert!(hidden.iter().chain([&normed]).all(|h| !h.is_tracked()));
    let (_, _, mask) = model.positions(b.shape[1]);
    let x = side.forward(&hidden, normed.clone(), mask.as_ref());
    let (sum, _) = causal_lm_loss_sum(head(&model, x), b.labels(&device));
    let grads = sum.backward();
    for h in hidden.iter().chain([&normed]) {
        assert!(h.grad(&grads).is_none(), "a gradient reached an LLM state");
    }
    for (name, ad) in wgtune::peft::adapters(&model) {
        assert!(ad.a.val().grad(&grads).is_none(), "{name} got a gradient");
        assert!(ad.b.val().grad(&grads).is_none(), "{name} got a gradient");
    }
    for (name, p) in side.named_params() {
        assert!(p.grad(&grads).is_some(), "{name} got no gradient");
    }
}

/// The value of a `[1]` loss sum.
fn scalar(t: Tensor<1>) -> f64 {
    f64::from(t.into_scalar::<f32>())
}

/// Loss and gradients of the side network, with one graph or checkpointed per side layer.
type LossAndGrads =
    fn(&Llama, &SideNetwork, Tensor<2, Int>, Tensor<2, Int>, f64) -> (Tensor<1>, Vec<Tensor<2>>);

#[test]
fn gradients_match_an_independent_reference() {
    let device = cpu().autodiff();
    let model = load(&device);
    let b = batch();
    let side = perturbed(&side_init(&model, &device), &device);
    let denom = b.targets();
    let (ref_sum, leaves) = reference_loss(&model, &side, &b, &device);
    let ref_grads = ref_sum.clone().div_scalar(denom as f32).backward();
    let ref_sum = f64::from(values(ref_sum)[0]);
    let cases: [(&str, LossAndGrads); 2] = [
        ("one graph", loss_and_grads),
        (
            "checkpointed per side layer",
            qst::loss_and_grads_checkpointed,
        ),
    ];
    for (what, run) in cases {
        let (loss_sum, grads) = run(&model, &side, b.ids(&device), b.labels(&device), denom);
        let loss_sum = f64::from(loss_sum.into_scalar::<f32>());
        println!("{what}: loss sum {loss_sum} vs reference {ref_sum} ({denom} targets)");
        assert!((loss_sum - ref_sum).abs() <= 1e-5 * ref_sum.abs());
        let names = side.named_params();
        assert_eq!(names.len(), grads.len());
        let mut worst = (0f64, String::new());
        for ((name, p), g) in names.iter().zip(grads) {
            assert_eq!(g.dims(), p.dims(), "{name}");
            let want = leaves[name].grad(&ref_grads).expect("reference gradient");
            let (got, want) = (values(g), values(want));
            assert!(norm(&want) > 0.0, "{name}: zero reference gradient");
            let err = rel_norm_err(&got, &want);
            if err > worst.0 {
                worst = (err, name.clone());
            }
            assert!(
                err < 1e-4,
                "{what}: {name}: relative gradient error {err:.3e}"
            );
        }
        println!(
            "{what}: {} parameters, worst relative gradient error {:.3e} ({})",
            names.len(),
            worst.0,
            worst.1
        );
    }
}

/// `side` with element `idx` of parameter `name` set to `v`.
fn with_value(side: &SideNetwork, name: &str, idx: usize, v: f32, device: &Device) -> SideNetwork {
    let mut side = side.clone();
    let (_, p) = side
        .params_mut()
        .into_iter()
        .find(|(n, _)| n == name)
        .expect("parameter");
    let t = p.val();
    let dims = t.dims();
    let mut vals = values(t);
    vals[idx] = v;
    *p = Param::from_tensor(Tensor::from_data(TensorData::new(vals, dims), device));
    side
}

#[test]
fn finite_differences_agree() {
    let device = cpu().autodiff();
    let model = load(&device);
    let b = batch();
    let side = perturbed(&side_init(&model, &device), &device);
    let denom = b.targets();
    let (_, grads) = loss_and_grads(&model, &side, b.ids(&device), b.labels(&device), denom);
    let loss = |s: &SideNetwork| {
        scalar(loss_and_grads(&model, s, b.ids(&device), b.labels(&device), denom).0) / denom
    };
    let params = side.named_params();
    let picks = [
        "downsample.0.adapter_A.weight",
        "downsample.2.post_layer_norm.weight",
        "z.1",
        "qst_layers.0.self_attn.k_proj.weight",
        "qst_layers.1.mlp.down_proj.weight",
        "norm_qst.weight",
        "upsample.bias",
        "lm_head_z",
    ];
    for name in picks {
        let k = params.iter().position(|(n, _)| n == name).expect("name");
        let g = values(grads[k].clone());
        // The element with the largest gradient: a derivative well above float noise.
        let (idx, &want) = g
            .iter()
            .enumerate()
            .max_by(|x, y| x.1.abs().total_cmp(&y.1.abs()))
            .expect("non-empty");
        let x0 = values(params[k].1.clone())[idx];
        // Central differences at steps 2h and h (h = 0.04), combined (Richardson) to cancel the
        // O(h²) truncation term; each loss is an f32 forward (rounding ~4e-7 of a loss near 6,
        // hence the large step), the differences are taken in f64.
        let central = |h: f32| {
            let up = loss(&with_value(&side, name, idx, x0 + h, &device));
            let down = loss(&with_value(&side, name, idx, x0 - h, &device));
            (up - down) / (f64::from(x0 + h) - f64::from(x0 - h))
        };
        let (d2, d1) = (central(8e-2), central(4e-2));
        let fd = (4.0 * d1 - d2) / 3.0;
        let err = (fd - f64::from(want)).abs() / f64::from(want).abs();
        println!(
            "{name}[{idx}]: autodiff {want:.6e}, central differences {d2:.6e} (2h) {d1:.6e} (h) \
             -> {fd:.6e}, rel {err:.2e}"
        );
        assert!(err < 1e-2, "{name}[{idx}]: {want} vs {fd}");
    }
}

#[test]
fn streaming_and_cached_forward_match() {
    let device = cpu();
    let model = load(&device);
    let b = batch();
    let side = perturbed(&side_init(&model, &device), &device);
    let [bs, s] = b.shape;
    let (hidden, normed) = llm_states(&model, b.ids(&device));
    let (_, _, mask) = model.positions(s);
    let plain = values(head(&model, side.forward(&hidden, normed, mask.as_ref())));
    let streamed = values(qst::logits(&model, &side, b.ids(&device), None));
    assert_eq!(plain, streamed);
    // Token by token through the caches: 5 tokens, then 1 at a time.
    let mut cache: QstCache = model.new_cache();
    let ids = b.ids(&device);
    let vocab = model.config.vocab_size;
    let mut got = values(qst::logits(
        &model,
        &side,
        ids.clone().narrow(1, 0, 5),
        Some(&mut cache),
    ));
    for t in 5..s {
        let step = qst::logits(&model, &side, ids.clone().narrow(1, t, 1), Some(&mut cache));
        let step = values(step);
        // Interleave per sequence: got is [b, t, v]; append position t of each row.
        let mut next = Vec::with_capacity(bs * (t + 1) * vocab);
        for k in 0..bs {
            next.extend_from_slice(&got[k * t * vocab..(k + 1) * t * vocab]);
            next.extend_from_slice(&step[k * vocab..(k + 1) * vocab]);
        }
        got = next;
    }
    assert_eq!(cache.offset(), s);
    let err = common::rel_err(&got, &plain);
    println!("cached vs full logits: relative error {err:.3e}");
    assert!(err < 1e-5);
}

#[test]
fn save_load_round_trip_and_errors() {
    let device = cpu();
    let model = load(&device);
    let b = batch();
    let side = perturbed(&side_init(&model, &device), &device);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("qst");
    side.save(&dir).expect("save");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [qst::CONFIG_FILE, qst::WEIGHTS_FILE],
        "no temporary left"
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(qst::CONFIG_FILE)).expect("read"))
            .expect("json");
    assert_eq!(cfg["method"], "qst");
    assert_eq!(cfg["r"], 8);
    assert_eq!(cfg["reduction"], 4);
    assert_eq!(cfg["hidden_size"], 128);
    assert_eq!(cfg["num_layers"], 2);

    let back = SideNetwork::load(&dir, &model.config, &device).expect("load");
    assert_eq!(back.config, CFG);
    for ((n, a), (m, c)) in side.named_params().into_iter().zip(back.named_params()) {
        assert_eq!(n, m);
        assert_eq!(values(a), values(c), "{n}");
    }
    let before = values(qst::logits(&model, &side, b.ids(&device), None));
    let after = values(qst::logits(&model, &back, b.ids(&device), None));
    assert_eq!(before, after, "identical outputs after a round trip");

    // A missing directory: the error names the config file.
    let err = SideNetwork::load(&tmp.path().join("nothing"), &model.config, &device)
        .expect_err("missing");
    assert!(err.to_string().contains(qst::CONFIG_FILE), "{err}");
    // Config present, weights missing.
    let half = tmp.path().join("half");
    std::fs::create_dir_all(&half).expect("mkdir");
    std::fs::copy(dir.join(qst::CONFIG_FILE), half.join(qst::CONFIG_FILE)).expect("copy");
    let err = SideNetwork::load(&half, &model.config, &device).expect_err("no weights");
    assert!(err.to_string().contains(qst::WEIGHTS_FILE), "{err}");
    // A config for another model.
    let deeper = load_layers(4, &device);
    let err = SideNetwork::load(&dir, &deeper.config, &device).expect_err("other model");
    let msg = err.to_string();
    assert!(
        msg.contains(qst::CONFIG_FILE) && msg.contains("num_layers"),
        "{msg}"
    );
    assert!(matches!(err, QstError::File { .. }));
    // Wrong shapes: a config that claims rank 4 over rank-8 weights.
    let wrong = tmp.path().join("wrong");
    side.save(&wrong).expect("save");
    let text = std::fs::read_to_string(wrong.join(qst::CONFIG_FILE)).expect("read");
    std::fs::write(
        wrong.join(qst::CONFIG_FILE),
        text.replace("\"r\": 8", "\"r\": 4"),
    )
    .expect("write");
    let err = SideNetwork::load(&wrong, &model.config, &device).expect_err("shapes");
    let msg = err.to_string();
    assert!(
        msg.contains(qst::WEIGHTS_FILE) && msg.contains("adapter_A") && msg.contains("shape"),
        "{msg}"
    );
    // Not a QST config.
    std::fs::write(
        wrong.join(qst::CONFIG_FILE),
        r#"{"peft_type": "LORA", "r": 8}"#,
    )
    .expect("write");
    let err = SideNetwork::load(&wrong, &model.config, &device).expect_err("not qst");
    assert!(err.to_string().contains("not a QST side network"), "{err}");
    // An extra tensor.
    let extra = tmp.path().join("extra");
    side.save(&extra).expect("save");
    let bytes = std::fs::read(extra.join(qst::WEIGHTS_FILE)).expect("read");
    let st = SafeTensors::deserialize(&bytes).expect("parse");
    let mut tensors: BTreeMap<String, wgtune::io::OwnedTensor> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, wgtune::io::OwnedTensor::from_view(&v)))
        .collect();
    tensors.insert(
        "z.7".to_string(),
        wgtune::io::OwnedTensor::f32(vec![1, 32], &[0.0; 32]),
    );
    wgtune::io::write_safetensors(&tensors, &extra.join(qst::WEIGHTS_FILE)).expect("write");
    let err = SideNetwork::load(&extra, &model.config, &device).expect_err("extra");
    assert!(err.to_string().contains("z.7"), "{err}");
}

#[test]
fn adamw_steps_lower_the_loss() {
    let device = cpu().autodiff();
    let model = load(&device);
    let b = batch();
    let mut side = side_init(&model, &device);
    let denom = b.targets();
    let init: Vec<Tensor<2>> = side
        .named_params()
        .into_iter()
        .map(|(_, t)| t.inner())
        .collect();
    let mut opt = AdamW::new(AdamWConfig::default(), &init);
    let mut losses = Vec::new();
    for _ in 0..8 {
        let (sum, grads) = loss_and_grads(&model, &side, b.ids(&device), b.labels(&device), denom);
        losses.push(scalar(sum) / denom);
        let now: Vec<Tensor<2>> = side
            .named_params()
            .into_iter()
            .map(|(_, t)| t.inner())
            .collect();
        let new = opt.step(now, &grads, 1e-2);
        for ((_, p), v) in side.params_mut().into_iter().zip(new) {
            *p = Param::from_tensor(v.autodiff());
        }
    }
    println!("losses {losses:?}; {} trainable scalars", side.num_params());
    assert!(losses[7] < losses[0] - 0.1, "{losses:?}");
}

// ---------------------------------------------------------------------------------------------
// wgpu
// ---------------------------------------------------------------------------------------------

fn in_use(device: &Device) -> u64 {
    device.sync().expect("sync");
    device
        .memory_pool_usage()
        .expect("wgpu reports memory")
        .bytes_in_use
}

/// Bytes the LoRA model's forward leaves allocated for its backward (graph alive, before
/// `backward`).
fn lora_retained(model: &Llama, b: &Batch, device: &Device) -> u64 {
    let (ids, labels) = (b.ids(device), b.labels(device));
    let before = in_use(device);
    let (sum, _) = causal_lm_loss_sum(model.forward(ids, None), labels);
    let after = in_use(device);
    let grads = sum.backward();
    let (_, ad) = &wgtune::peft::adapters(model)[0];
    assert!(ad.a.val().grad(&grads).is_some());
    after.saturating_sub(before)
}

/// Bytes a QST step leaves allocated for its backward: the LLM states plus the side network's
/// graph. With `host_states`, the side network reads fresh copies uploaded from the host
/// instead of running the LLM: what the side network alone retains.
fn qst_retained(
    model: &Llama,
    side: &SideNetwork,
    b: &Batch,
    device: &Device,
    host_states: Option<&(Vec<Vec<f32>>, Vec<f32>)>,
) -> u64 {
    let (ids, labels) = (b.ids(device), b.labels(device));
    let [bs, s] = b.shape;
    let hd = model.config.hidden_size;
    let before = in_use(device);
    let (hidden, normed) = match host_states {
        None => llm_states(model, ids),
        Some((hs, n)) => {
            drop(ids); // as `llm_states` consumes it
            let up = |v: &Vec<f32>| {
                Tensor::<3>::from_data(TensorData::new(v.clone(), [bs, s, hd]), device)
            };
            (hs.iter().map(up).collect(), up(n))
        }
    };
    let (_, _, mask) = model.positions(s);
    let x = side.forward(&hidden, normed, mask.as_ref());
    let (sum, _) = causal_lm_loss_sum(head(model, x), labels);
    let after = in_use(device);
    let grads = sum.backward();
    assert!(side.named_params()[0].1.grad(&grads).is_some());
    after.saturating_sub(before)
}

/// A 32-token batch of two sequences (long enough that activations dominate).
fn long_batch(vocab: usize) -> Batch {
    let s = 32;
    let ids: Vec<i64> = rand_vec(2 * s, 5)
        .iter()
        .map(|v| ((v + 1.0) * 0.5 * vocab as f32) as i64 % vocab as i64)
        .collect();
    Batch {
        shape: [2, s],
        labels: ids.clone(),
        ids,
    }
}

/// What a step leaves allocated on the device for its backward, measured as the wgpu memory
/// pool's `bytes_in_use` after the forward (graph alive, loss computed) minus before it, on the
/// tiny model with 2 and with 4 layers (the fixture's layers repeated), 2 × 32 tokens:
/// * LoRA (r 8 on all seven projections) keeps every LLM layer's activations;
/// * QST keeps the LLM states `h₀..h_L` and the side network's graph, and exactly as many bytes
///   as the same side network fed with copies of those states uploaded from the host — i.e.
///   nothing of the LLM's forward is held for backward, at either depth. QST still grows with
///   depth, by its own side layers (one per LLM layer, by design), much less than LoRA.
#[test]
fn backward_memory_does_not_grow_with_the_llm() {
    let _guard = WGPU.lock().unwrap_or_else(|e| e.into_inner());
    let device = wgpu().autodiff();
    let mut rows = Vec::new();
    for layers in [2usize, 4] {
        let mut model = load_layers(layers, &device);
        let b = long_batch(model.config.vocab_size);
        let side = side_init(&model, &device);
        let (hs, n) = llm_states(&model, b.ids(&device));
        let host = (hs.into_iter().map(values).collect::<Vec<_>>(), values(n));
        // Warm up (kernel compilation, autotune buffers), then measure.
        qst_retained(&model, &side, &b, &device, None);
        let qst = qst_retained(&model, &side, &b, &device, None);
        qst_retained(&model, &side, &b, &device, Some(&host));
        let side_only = qst_retained(&model, &side, &b, &device, Some(&host));
        attach(
            &mut model,
            &LoraConfig {
                r: 8,
                ..LoraConfig::default()
            },
            1,
        );
        lora_retained(&model, &b, &device);
        let lora = lora_retained(&model, &b, &device);
        println!(
            "{layers} layers: LoRA retains {lora} bytes for backward; QST {qst} (side network \
             alone on host-uploaded states: {side_only})"
        );
        rows.push((layers, lora, qst, side_only));
    }
    for &(layers, _, qst, side_only) in &rows {
        // Nothing of the LLM is held for backward: QST retains what the side network alone
        // retains when its inputs never touched the LLM.
        assert_eq!(
            qst,
            side_only,
            "{layers} layers: the LLM's forward left {} bytes for backward",
            qst as i64 - side_only as i64
        );
    }
    let (_, lora2, qst2, _) = rows[0];
    let (_, lora4, qst4, _) = rows[1];
    let (d_lora, d_qst) = (lora4 - lora2, qst4 - qst2);
    println!("2 more LLM layers: LoRA +{d_lora} bytes, QST +{d_qst} bytes (2 more side layers)");
    // QST grows only by its own side layers (one per LLM layer, `H/rf` wide, the same head
    // count and sequence length, so its attention scores are as large as the LLM's), LoRA by
    // every LLM layer's activations.
    assert!(
        2 * d_lora > 3 * d_qst,
        "LoRA's backward should grow much faster with depth (+{d_lora}) than QST's (+{d_qst})"
    );
}

#[test]
fn wgpu_matches_cpu() {
    let _guard = WGPU.lock().unwrap_or_else(|e| e.into_inner());
    let b = batch();
    let denom = b.targets();
    let run = |device: Device| {
        let model = load(&device);
        let side = perturbed(&side_init(&model, &device), &device);
        let (sum, grads) = loss_and_grads(&model, &side, b.ids(&device), b.labels(&device), denom);
        (
            scalar(sum) / denom,
            grads.into_iter().map(values).collect::<Vec<_>>(),
        )
    };
    let (cpu_loss, cpu_grads) = run(cpu().autodiff());
    let gpu = wgpu().autodiff();
    println!("wgpu device: {gpu:?}");
    let (gpu_loss, gpu_grads) = run(gpu);
    let rel = (gpu_loss - cpu_loss).abs() / cpu_loss.abs();
    let worst = cpu_grads
        .iter()
        .zip(&gpu_grads)
        .map(|(c, g)| rel_norm_err(g, c))
        .fold(0f64, f64::max);
    println!("loss wgpu {gpu_loss} vs cpu {cpu_loss} (rel {rel:.2e}); worst gradient {worst:.2e}");
    assert!(rel < 1e-4, "loss {gpu_loss} vs {cpu_loss}");
    assert!(
        worst < 1e-3,
        "gradients differ by {worst:.2e} of their norm"
    );
}
