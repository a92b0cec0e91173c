//! GGUF parsing, block decoding, LLaMA name/permutation handling and malformed-input errors.
//!
//! Decoders are checked three ways: blocks encoded by hand from the format definition, a known
//! answer from llama.cpp's own Python port of `ggml-quants.c` (gguf-py `gguf.quants.dequantize`,
//! hashes pinned below), and the real default model (SmolLM2-135M-Instruct Q4_1 GGUF, fetched
//! through `default_model_path()`; skipped with a visible line only when pip is absent).

use crate::common;

use half::f16;
use wgtune::io::IoError;
use wgtune::io::gguf::blocks::{GgmlType, dequantize};
use wgtune::io::gguf::write::{GgufTensorData, to_bytes};
use wgtune::io::gguf::{
    GgufFile, GgufValue, GgufValueType, gguf_to_hf_name, permute_qk, unpermute_qk,
};

// ---------------------------------------------------------------------------------------------
// helpers

/// FNV-1a 64 over the little-endian bytes of `v`: an exact fingerprint of decoded values.
fn fnv(v: &[f32]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in v.iter().flat_map(|x| x.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// xorshift64 bytes; the generator used to make the pinned known answers.
fn rand_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 56) as u8
        })
        .collect()
}

fn h16(v: f32) -> [u8; 2] {
    f16::from_f32(v).to_bits().to_le_bytes()
}

fn kv(k: &str, v: GgufValue) -> (String, GgufValue) {
    (k.to_string(), v)
}

/// A small valid llama-shaped file: 2 heads (1 kv head) of dim 4, hidden 8.
fn small_llama() -> (Vec<(String, GgufValue)>, Vec<GgufTensorData>) {
    let meta = vec![
        kv("general.architecture", GgufValue::String("llama".into())),
        kv("llama.block_count", GgufValue::U32(1)),
        kv("llama.context_length", GgufValue::U32(64)),
        kv("llama.embedding_length", GgufValue::U32(8)),
        kv("llama.feed_forward_length", GgufValue::U32(16)),
        kv("llama.attention.head_count", GgufValue::U32(2)),
        kv("llama.attention.head_count_kv", GgufValue::U32(1)),
        kv(
            "llama.attention.layer_norm_rms_epsilon",
            GgufValue::F32(1e-5),
        ),
        kv("llama.rope.freq_base", GgufValue::F32(10000.0)),
        kv(
            "llama.rope.scaling.type",
            GgufValue::String("linear".into()),
        ),
        kv("llama.rope.scaling.factor", GgufValue::F32(2.0)),
        kv("tokenizer.ggml.model", GgufValue::String("llama".into())),
        kv(
            "tokenizer.ggml.tokens",
            GgufValue::Array(
                GgufValueType::String,
                ["<unk>", "<s>", "</s>", "a"]
                    .iter()
                    .map(|t| GgufValue::String(t.to_string()))
                    .collect(),
            ),
        ),
        kv(
            "tokenizer.ggml.scores",
            GgufValue::Array(
                GgufValueType::F32,
                (0..4).map(|i| GgufValue::F32(-(i as f32))).collect(),
            ),
        ),
        kv("tokenizer.ggml.bos_token_id", GgufValue::U32(1)),
        kv("tokenizer.ggml.eos_token_id", GgufValue::U32(2)),
    ];
    let q: Vec<f32> = (0..64).map(|i| i as f32).collect();
    let k: Vec<f32> = (0..32).map(|i| 100.0 + i as f32).collect();
    let tensors = vec![
        GgufTensorData::f32("token_embd.weight", vec![4, 8], &[0.5; 32]),
        GgufTensorData::f32(
            "blk.0.attn_q.weight",
            vec![8, 8],
            &permute_qk(&q, 8, 8, 2).unwrap(),
        ),
        GgufTensorData::f32(
            "blk.0.attn_k.weight",
            vec![4, 8],
            &permute_qk(&k, 4, 8, 1).unwrap(),
        ),
        GgufTensorData::f32("output_norm.weight", vec![8], &[1.0; 8]),
    ];
    (meta, tensors)
}

fn parse(bytes: Vec<u8>) -> Result<GgufFile, IoError> {
    GgufFile::from_bytes("bad.gguf", bytes)
}

fn err_of(bytes: Vec<u8>) -> String {
    let e = parse(bytes)
        .expect_err("malformed input parsed")
        .to_string();
    assert!(
        e.starts_with("bad.gguf: "),
        "error does not name the file: {e}"
    );
    e
}

// ---------------------------------------------------------------------------------------------
// decoders on blocks encoded by hand from the format definition

#[test]
fn q8_0_by_hand() {
    let mut b = h16(0.5).to_vec();
    b.extend((0..32).map(|j| (j as i8 - 16) as u8));
    let y = dequantize(GgmlType::Q8_0, &b, 32).unwrap();
    let want: Vec<f32> = (0..32).map(|j| (j as f32 - 16.0) * 0.5).collect();
    assert_eq!(y, want);
}

#[test]
fn q4_0_and_q4_1_by_hand() {
    // element j -> code (3j + 1) % 16; j < 16 in low nibbles, j >= 16 in high nibbles.
    let code = |j: usize| ((3 * j + 1) % 16) as u8;
    let qs: Vec<u8> = (0..16).map(|j| code(j) | (code(j + 16) << 4)).collect();
    let mut b0 = h16(0.25).to_vec();
    b0.extend(&qs);
    let y0 = dequantize(GgmlType::Q4_0, &b0, 32).unwrap();
    let mut b1 = [h16(0.125), h16(-1.5)].concat();
    b1.extend(&qs);
    let y1 = dequantize(GgmlType::Q4_1, &b1, 32).unwrap();
    for j in 0..32 {
        assert_eq!(y0[j], (code(j) as f32 - 8.0) * 0.25, "Q4_0 elem {j}");
        assert_eq!(y1[j], code(j) as f32 * 0.125 - 1.5, "Q4_1 elem {j}");
    }
}

#[test]
fn q4_k_by_hand() {
    // Sub-block s (32 elems) has 6-bit scale sc[s] and min mn[s]; element e has 4-bit code q(e).
    let sc: [u8; 8] = [1, 63, 17, 32, 5, 48, 33, 60];
    let mn: [u8; 8] = [0, 7, 63, 20, 49, 16, 2, 31];
    let q = |e: usize| ((e * 7 + e / 32) % 16) as u8;
    let mut scales = [0u8; 12];
    scales[..4].copy_from_slice(&sc[..4]);
    scales[4..8].copy_from_slice(&mn[..4]);
    for j in 4..8 {
        scales[j + 4] = (sc[j] & 0xF) | ((mn[j] & 0xF) << 4);
        scales[j - 4] |= (sc[j] >> 4) << 6;
        scales[j] |= (mn[j] >> 4) << 6;
    }
    let mut qs = [0u8; 128];
    for e in 0..256 {
        let (g, s, l) = (e / 64, e / 32, e % 32);
        qs[32 * g + l] |= if s.is_multiple_of(2) { q(e) } else { q(e) << 4 };
    }
    let (d, dmin) = (0.0625f32, 0.5f32);
    let b = [&h16(d)[..], &h16(dmin), &scales, &qs].concat();
    let y = dequantize(GgmlType::Q4_K, &b, 256).unwrap();
    for (e, &got) in y.iter().enumerate() {
        let s = e / 32;
        let want = d * sc[s] as f32 * q(e) as f32 - dmin * mn[s] as f32;
        assert_eq!(got, want, "Q4_K elem {e}");
    }
}

#[test]
fn q6_k_by_hand() {
    // 16 groups of 16 with int8 scale sc[e/16]; element e has 6-bit code q(e), value q-32.
    let sc: [i8; 16] = [
        1, -2, 3, -4, 127, -128, 7, 8, 9, -10, 11, 12, -13, 14, 15, -16,
    ];
    let q = |e: usize| ((e * 5 + e / 64) % 64) as u8;
    let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
    for e in 0..256 {
        let (half, r) = (e / 128, e % 128);
        let (k, l) = (r / 32, r % 32);
        let lo = q(e) & 0xF;
        let at = 64 * half + l + 32 * (k & 1);
        ql[at] |= if k < 2 { lo } else { lo << 4 };
        qh[32 * half + l] |= (q(e) >> 4) << (2 * k);
    }
    let d = 0.03125f32;
    let scales: Vec<u8> = sc.iter().map(|&s| s as u8).collect();
    let b = [&ql[..], &qh, &scales, &h16(d)].concat();
    let y = dequantize(GgmlType::Q6_K, &b, 256).unwrap();
    for (e, &got) in y.iter().enumerate() {
        let want = d * sc[e / 16] as f32 * (q(e) as f32 - 32.0);
        assert_eq!(got, want, "Q6_K elem {e}");
    }
}

#[test]
fn f16_bf16_f32() {
    let vals = [1.5f32, -0.0, 65504.0, 2.0f32.powi(-24)];
    let b: Vec<u8> = vals.iter().flat_map(|&v| h16(v)).collect();
    assert_eq!(dequantize(GgmlType::F16, &b, 4).unwrap(), vals);
    let b: Vec<u8> = vals
        .iter()
        .flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes())
        .collect();
    let bf: Vec<f32> = vals
        .iter()
        .map(|v| f32::from_bits(v.to_bits() & 0xFFFF_0000))
        .collect();
    assert_eq!(dequantize(GgmlType::BF16, &b, 4).unwrap(), bf);
    let b: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(dequantize(GgmlType::F32, &b, 4).unwrap(), vals);
}

/// Known answers from llama.cpp's gguf-py (`gguf.quants.dequantize`, a numpy port of
/// `dequantize_row_*` with the same operation order): 8 blocks of xorshift bytes (seed =
/// ggml type id + 1) with every f16 scale field set to `0x1C00 + 37·block + 5·field`
/// (F16/BF16: each value's bits masked with `0xBFFF` to stay finite), hashed with [`fnv`].
#[test]
fn decoders_match_gguf_py_known_answers() {
    // (type, bytes per block, offsets of f16 fields in a block, FNV-1a of the decoded values)
    let cases: [(GgmlType, usize, &[usize], u64); 7] = [
        (GgmlType::Q8_0, 34, &[0], 0x5822_0fb7_ef01_295b),
        (GgmlType::Q4_0, 18, &[0], 0xf865_3a13_bf28_1bf6),
        (GgmlType::Q4_1, 20, &[0, 2], 0x33b2_0cb9_f1f8_d05e),
        (GgmlType::Q4_K, 144, &[0, 2], 0x5d40_4c3b_6410_8818),
        (GgmlType::Q6_K, 210, &[208], 0x7ed4_d2f8_7873_0675),
        (GgmlType::F16, 2, &[], 0x4d35_0600_cce5_84b7),
        (GgmlType::BF16, 2, &[], 0x84ab_eabb_b722_938e),
    ];
    for (ty, block_bytes, fields, hash) in cases {
        let mut raw = rand_bytes(u64::from(ty.0) + 1, 8 * block_bytes);
        for b in 0..8 {
            let at = b * block_bytes;
            if fields.is_empty() {
                let v = u16::from_le_bytes([raw[at], raw[at + 1]]) & 0xBFFF;
                raw[at..at + 2].copy_from_slice(&v.to_le_bytes());
            }
            for (k, &o) in fields.iter().enumerate() {
                let v = 0x1C00 + 37 * b as u16 + 5 * k as u16;
                raw[at + o..at + o + 2].copy_from_slice(&v.to_le_bytes());
            }
        }
        let n = 8 * ty.block_len().unwrap();
        let y = dequantize(ty, &raw, n).unwrap();
        assert_eq!(
            fnv(&y),
            hash,
            "{ty}: decoded values differ from llama.cpp's (first: {:?})",
            &y[..4]
        );
    }
}

// ---------------------------------------------------------------------------------------------
// LLaMA handling on a synthetic file

#[test]
fn unpermute_undoes_convert_script_permute() {
    // llama.cpp: w.reshape(n_h, 2, hd/2, in).swapaxes(1, 2).reshape(out, in)
    let (n_h, hd, cols) = (3, 8, 5);
    let w: Vec<f32> = (0..n_h * hd * cols).map(|i| i as f32).collect();
    let mut numpy_permuted = Vec::new();
    for h in 0..n_h {
        for j in 0..hd / 2 {
            for c in 0..2 {
                let row = h * hd + c * hd / 2 + j;
                numpy_permuted.extend_from_slice(&w[row * cols..(row + 1) * cols]);
            }
        }
    }
    assert_eq!(permute_qk(&w, n_h * hd, cols, n_h).unwrap(), numpy_permuted);
    assert_eq!(
        unpermute_qk(&numpy_permuted, n_h * hd, cols, n_h).unwrap(),
        w
    );
}

#[test]
fn llama_config_names_and_unpermute() {
    let (meta, tensors) = small_llama();
    let f = parse(to_bytes(3, &meta, &tensors, 32)).unwrap();
    let cfg = f.llama_config().unwrap();
    assert_eq!(
        (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads
        ),
        (8, 2, 1)
    );
    assert_eq!(
        (cfg.head_dim, cfg.vocab_size, cfg.intermediate_size),
        (4, 4, 16)
    );
    assert!(cfg.tie_word_embeddings);
    assert_eq!(cfg.rms_norm_eps, f64::from(1e-5f32));
    let rs = cfg.rope_scaling.as_ref().unwrap();
    assert_eq!((rs.rope_type.as_str(), rs.factor), ("linear", 2.0));
    let json = cfg.to_hf_config_json();
    assert_eq!(json["rope_scaling"]["rope_type"], "linear");
    assert_eq!(json["num_key_value_heads"], 1);
    let (dims, q) = f
        .hf_tensor_f32("model.layers.0.self_attn.q_proj.weight")
        .unwrap();
    assert_eq!(dims, vec![8, 8]);
    assert_eq!(q, (0..64).map(|i| i as f32).collect::<Vec<_>>());
    let (_, k) = f
        .hf_tensor_f32("model.layers.0.self_attn.k_proj.weight")
        .unwrap();
    assert_eq!(k, (0..32).map(|i| 100.0 + i as f32).collect::<Vec<_>>());
    assert!(matches!(
        f.hf_tensor_f32("lm_head.weight"),
        Err(IoError::MissingTensor { .. })
    ));
    let names: Vec<String> = f.hf_tensor_names().into_iter().map(|(h, _)| h).collect();
    assert_eq!(names[0], "model.embed_tokens.weight");
    let tok = f.tokenizer().unwrap();
    assert_eq!(tok.tokens.len(), 4);
    assert_eq!(tok.scores.as_deref(), Some(&[0.0, -1.0, -2.0, -3.0][..]));
    assert_eq!((tok.bos_token_id, tok.eos_token_id), (Some(1), Some(2)));
    assert_eq!(tok.chat_template, None);
}

#[test]
fn version_2_and_other_alignments_parse() {
    let (mut meta, tensors) = small_llama();
    meta.push(kv("general.alignment", GgufValue::U32(64)));
    let f = parse(to_bytes(2, &meta, &tensors, 64)).unwrap();
    assert_eq!((f.version(), f.alignment()), (2, 64));
    assert_eq!(f.data_start() % 64, 0);
    assert_eq!(f.tensor_f32("output_norm.weight").unwrap(), vec![1.0; 8]);
}

#[test]
fn wrong_architecture_and_missing_keys_are_named() {
    let (mut meta, tensors) = small_llama();
    meta[0].1 = GgufValue::String("gpt2".into());
    let e = parse(to_bytes(3, &meta, &tensors, 32))
        .unwrap()
        .llama_config()
        .unwrap_err();
    assert!(
        e.to_string().contains("unsupported architecture \"gpt2\""),
        "{e}"
    );
    let (mut meta, tensors) = small_llama();
    meta.retain(|(k, _)| k != "llama.block_count");
    let e = parse(to_bytes(3, &meta, &tensors, 32))
        .unwrap()
        .llama_config()
        .unwrap_err();
    assert!(
        e.to_string().contains("llama.block_count") && e.to_string().contains("missing"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// malformed input

#[test]
fn malformed_headers_are_errors() {
    let (meta, tensors) = small_llama();
    let good = to_bytes(3, &meta, &tensors, 32);

    let mut b = good.clone();
    b[0] = b'X';
    assert!(err_of(b).contains("bad magic"));

    let mut b = good.clone();
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    assert!(err_of(b).contains("unsupported GGUF version 1"));

    // first key's type (after magic, version, counts, key length and 20-byte key)
    let type_at = 24 + 8 + "general.architecture".len();
    let mut b = good.clone();
    b[type_at..type_at + 4].copy_from_slice(&13u32.to_le_bytes());
    let e = err_of(b);
    assert!(
        e.contains("general.architecture") && e.contains("unknown value type 13"),
        "{e}"
    );

    let mut b = good.clone();
    b[32] = 0xFF; // first byte of the first key: not UTF-8
    assert!(err_of(b).contains("not valid UTF-8"));

    let mut b = good.clone();
    b[32 + "general.architecture".len() + 4 + 8] = 0xC3; // string value "llama" -> bad UTF-8
    let e = err_of(b);
    assert!(
        e.contains("general.architecture") && e.contains("UTF-8"),
        "{e}"
    );

    assert!(err_of(good[..good.len() - 40].to_vec()).contains("ends past the end of the file"));
    assert!(err_of(Vec::new()).contains("truncated"));
}

#[test]
fn bad_tensor_infos_are_errors() {
    let (meta, mut tensors) = small_llama();
    tensors[1].ggml_type = GgmlType(4); // removed from ggml (Q4_2)
    let e = err_of(to_bytes(3, &meta, &tensors, 32));
    assert!(
        e.contains("blk.0.attn_q.weight") && e.contains("id 4"),
        "{e}"
    );

    // A known ggml type without a decoder parses, and decoding it names the tensor.
    let (meta, mut tensors) = small_llama();
    tensors.push(GgufTensorData {
        name: "blk.0.ffn_up.weight".into(),
        dims: vec![1, 256],
        ggml_type: GgmlType(13), // Q5_K
        data: vec![0; 176],
    });
    let f = parse(to_bytes(3, &meta, &tensors, 32)).unwrap();
    let e = f.tensor_f32("blk.0.ffn_up.weight").unwrap_err().to_string();
    assert!(
        e.contains("blk.0.ffn_up.weight") && e.contains("Q5_K"),
        "{e}"
    );
    assert!(matches!(
        f.tensor_f32("nope"),
        Err(IoError::MissingTensor { .. })
    ));

    // A block type whose row is not a whole number of blocks.
    let (meta, mut tensors) = small_llama();
    tensors[3] = GgufTensorData {
        name: "output_norm.weight".into(),
        dims: vec![8],
        ggml_type: GgmlType::Q8_0,
        data: vec![0; 34],
    };
    assert!(err_of(to_bytes(3, &meta, &tensors, 32)).contains("not a multiple"));

    // Offset pushed past the end of the data: find the last tensor's offset field and bump it.
    let (meta, tensors) = small_llama();
    let good = to_bytes(3, &meta, &tensors, 32);
    let f = parse(good.clone()).unwrap();
    let last = f.tensors().last().unwrap().offset;
    let at = (0..f.data_start() as usize - 8)
        .rev()
        .find(|&i| good[i..i + 8] == last.to_le_bytes())
        .unwrap();
    let mut b = good.clone();
    b[at..at + 8].copy_from_slice(&(last + 4096).to_le_bytes());
    let e = err_of(b);
    assert!(
        e.contains("output_norm.weight") && e.contains("ends past the end"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// the real default model

#[test]
fn smollm2_metadata_and_config() {
    let Some(path) = common::default_model("") else {
        return;
    };
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.architecture().unwrap(), "llama");
    assert_eq!(f.tensors().len(), 272);
    let cfg = f.llama_config().unwrap();
    assert_eq!(cfg.num_hidden_layers, 30);
    assert_eq!(cfg.hidden_size, 576);
    assert_eq!(cfg.intermediate_size, 1536);
    assert_eq!(
        (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim
        ),
        (9, 3, 64)
    );
    assert_eq!(cfg.vocab_size, 49152);
    assert_eq!(cfg.max_position_embeddings, 8192);
    assert_eq!(cfg.rope_theta, 100000.0);
    assert_eq!(cfg.rms_norm_eps, f64::from(1e-5f32));
    assert_eq!(cfg.rope_scaling, None);
    assert!(cfg.tie_word_embeddings);
    assert_eq!((cfg.bos_token_id, cfg.eos_token_id), (Some(1), Some(2)));
    let tok = f.tokenizer().unwrap();
    assert_eq!(tok.model, "gpt2");
    assert_eq!(tok.pre.as_deref(), Some("smollm"));
    assert_eq!(tok.tokens.len(), 49152);
    assert_eq!(
        &tok.tokens[..3],
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    );
    assert_eq!(tok.merges.len(), 48900);
    assert_eq!(tok.merges[0], "Ġ t");
    assert_eq!(tok.add_bos_token, Some(false));
    assert!(tok.chat_template.unwrap().contains("<|im_start|>"));
    let hf = f.hf_tensor_names();
    assert_eq!(hf.len(), 272, "every tensor has an HF name");
    assert!(
        hf.iter()
            .all(|(h, g)| gguf_to_hf_name(g).as_ref() == Some(h))
    );
}

/// Every tensor decodes to its element count; five are pinned to gguf-py's dequantization
/// (and, for Q/K, transformers' `_reverse_permute_weights` of it), i.e. the exact float
/// weights the SmolLM2 fixture's logits were computed from.
#[test]
fn smollm2_every_tensor_decodes() {
    let Some(path) = common::default_model("") else {
        return;
    };
    let f = GgufFile::open(&path).unwrap();
    for t in f.tensors() {
        let v = f.tensor_f32(&t.name).unwrap();
        assert_eq!(v.len(), t.numel(), "{}", t.name);
        assert!(v.iter().all(|x| x.is_finite()), "{}", t.name);
    }
    let pinned: [(&str, u64); 4] = [
        ("token_embd.weight", 0x0c07_1e00_1805_fcd6),
        ("blk.0.attn_k.weight", 0x3255_da90_83ac_8ab6),
        ("blk.29.ffn_down.weight", 0x0256_b756_d935_3eba),
        ("output_norm.weight", 0xea81_4bed_6299_e304),
    ];
    for (name, hash) in pinned {
        assert_eq!(fnv(&f.tensor_f32(name).unwrap()), hash, "{name}");
    }
    let (dims, q) = f
        .hf_tensor_f32("model.layers.0.self_attn.q_proj.weight")
        .unwrap();
    assert_eq!(dims, vec![576, 576]);
    assert_eq!(fnv(&q), 0x02d3_11b9_e9fe_f434);
    let (dims, k) = f
        .hf_tensor_f32("model.layers.0.self_attn.k_proj.weight")
        .unwrap();
    assert_eq!(dims, vec![192, 576]);
    assert_eq!(fnv(&k), 0xb4fb_ce04_947b_99da);
}

/// Truncating the real file anywhere before the end of its last tensor, or flipping header
/// bytes, gives an error (or, for a harmless flip, a file) and never a panic.
#[test]
fn smollm2_truncated_and_corrupted() {
    let Some(path) = common::default_model("") else {
        return;
    };
    let bytes = std::fs::read(&path).unwrap();
    let full = GgufFile::from_bytes(&path, bytes.clone()).unwrap();
    let data_end = full
        .tensors()
        .iter()
        .map(|t| full.data_start() + t.offset + t.n_bytes())
        .max()
        .unwrap() as usize;
    let header_end = full.data_start() as usize;
    // Truncations: every byte of the fixed header and first key, ~60 points through the
    // metadata and tensor infos, 12 through the tensor data.
    let mut cuts: Vec<usize> = (0..48).collect();
    cuts.extend((48..header_end).step_by(header_end / 61));
    cuts.extend((header_end..data_end).step_by((data_end - header_end) / 12));
    cuts.extend([header_end - 1, data_end - 1]);
    each_parallel(&cuts, |&cut| {
        let e = GgufFile::from_bytes("cut.gguf", bytes[..cut].to_vec())
            .expect_err(&format!("file cut at {cut} of {data_end} parsed"));
        assert!(e.to_string().starts_with("cut.gguf: "), "{e}");
    });
    // Header flips on the real header (each parse ends in a clean error, or at the missing
    // data): every byte of the fixed header and first key, a sample of the rest.
    let mut flips: Vec<usize> = (0..48).collect();
    flips.extend((48..header_end).step_by(header_end / 40));
    let header = &bytes[..header_end];
    each_parallel(&flips, |&at| {
        let mut b = header.to_vec();
        b[at] ^= 0xA5;
        let r = GgufFile::from_bytes("flip.gguf", b);
        if at < 8 {
            assert!(r.is_err(), "flipped magic/version byte {at} parsed");
        }
    });
    // Every byte of a header with the same keys, types and tensor infos but arrays cut to 4
    // elements (the real vocabulary makes each parse ~30 ms), flipped in turn.
    let meta: Vec<(String, GgufValue)> = full
        .metadata()
        .iter()
        .map(|(k, v)| match v {
            GgufValue::Array(t, items) => (
                k.clone(),
                GgufValue::Array(*t, items[..items.len().min(4)].to_vec()),
            ),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    let tensors: Vec<GgufTensorData> = full
        .tensors()
        .iter()
        .map(|t| GgufTensorData {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ggml_type: t.ggml_type,
            data: Vec::new(),
        })
        .collect();
    let small = to_bytes(3, &meta, &tensors, full.alignment());
    let all: Vec<usize> = (0..small.len()).collect();
    each_parallel(&all, |&at| {
        let mut b = small.clone();
        b[at] ^= 0xA5;
        let r = GgufFile::from_bytes("flip.gguf", b);
        assert!(
            r.is_err() || at >= 8,
            "flipped magic/version byte {at} parsed"
        );
    });
}

/// Runs `f` on every item, spread over the available cores.
fn each_parallel<T: Sync>(items: &[T], f: impl Fn(&T) + Sync) {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = items.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for part in items.chunks(chunk) {
            let f = &f;
            s.spawn(move || part.iter().for_each(f));
        }
    });
}
