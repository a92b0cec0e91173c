//! A pretrained model ready to run: weights on a device, tokenizer, chat template.
//!
//! One entry, [`Pretrained::load`], for every format a user already has: a GGUF file (config,
//! tokenizer and chat template from its metadata), a Hugging Face directory (float weights
//! quantized on load, or a bitsandbytes 4-bit checkpoint used as stored), with `tokenizer.json`
//! and the `chat_template` of `tokenizer_config.json` when present.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
#[cfg(feature = "native")]
use std::time::Duration;

use burn::tensor::Device;
#[cfg(feature = "native")]
use indicatif::{ProgressBar, ProgressStyle};

use crate::data::template::{self, ChatTemplate};
use crate::data::tokenizer::{self, Tokenizer};
use crate::io::gguf::GgufFile;
use crate::io::{Checkpoint, SafetensorsFile};
use crate::model::load::Builder;
use crate::model::{self, Llama, LlamaConfig, LoadError};
use crate::quant::QuantConfig;

/// Errors from loading a pretrained model.
#[derive(Debug, thiserror::Error)]
pub enum PretrainedError {
    /// The weights or config.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The tokenizer.
    #[error(transparent)]
    Tokenizer(#[from] tokenizer::Error),
    /// The chat template.
    #[error(transparent)]
    Template(#[from] template::Error),
    /// A path that is neither a GGUF file nor a model directory.
    #[error("{0}: not a model (expected a .gguf file or a directory with config.json)")]
    UnknownFormat(PathBuf),
    /// A file a model set needs is not among the files given.
    #[error(
        "{}no {name} among the files (give a .gguf file, or config.json with the \
         *.safetensors weights and tokenizer.json)",
        prefix(.dir)
    )]
    MissingFile {
        /// The set of files.
        dir: PathBuf,
        /// The file missing.
        name: String,
    },
    /// The operation needs a tokenizer and the model has none.
    #[error("{0}: the model has no tokenizer (tokenizer.json or GGUF vocabulary)")]
    NoTokenizer(PathBuf),
}

/// `"dir: "`, or nothing for an unnamed set of files.
fn prefix(dir: &Path) -> String {
    if dir.as_os_str().is_empty() {
        String::new()
    } else {
        format!("{}: ", dir.display())
    }
}

/// The format of a model path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFormat {
    /// A GGUF v3 file.
    Gguf,
    /// A Hugging Face model directory (`config.json` + safetensors).
    HfDir,
}

impl ModelFormat {
    /// Detects the format of `path` from what is on disk.
    pub fn detect(path: &Path) -> Result<Self, PretrainedError> {
        if path.is_dir() {
            return Ok(ModelFormat::HfDir);
        }
        // A file shorter than the magic is simply not a model, not an I/O failure.
        let mut magic = Vec::with_capacity(4);
        std::fs::File::open(path)
            .and_then(|f| std::io::Read::read_to_end(&mut std::io::Read::take(f, 4), &mut magic))
            .map_err(|e| LoadError::Io(crate::io::os_err(path)(e)))?;
        if magic == b"GGUF" {
            Ok(ModelFormat::Gguf)
        } else {
            Err(PretrainedError::UnknownFormat(path.to_path_buf()))
        }
    }
}

/// A model on a device with what is needed to talk to it.
pub struct Pretrained {
    /// The network.
    pub model: Llama,
    /// Its configuration.
    pub config: LlamaConfig,
    /// Its tokenizer, when the files carry one.
    pub tokenizer: Option<Tokenizer>,
    /// Its own chat template, else the ChatML preset.
    pub template: ChatTemplate,
    /// Where it was loaded from.
    pub path: PathBuf,
    /// The format it was read in.
    pub format: ModelFormat,
}

impl Pretrained {
    /// Loads the model at `path` onto `device`, quantizing every linear projection with `quant`
    /// (`None` keeps float weights; a bitsandbytes checkpoint keeps its stored 4-bit weights).
    pub fn load(
        path: &Path,
        quant: Option<QuantConfig>,
        device: &Device,
    ) -> Result<Self, PretrainedError> {
        match ModelFormat::detect(path)? {
            ModelFormat::Gguf => Self::load_gguf(path, quant, device),
            ModelFormat::HfDir => Self::load_hf_dir(path, quant, device),
        }
    }

    fn load_gguf(
        path: &Path,
        quant: Option<QuantConfig>,
        device: &Device,
    ) -> Result<Self, PretrainedError> {
        Loading::gguf(GgufFile::open(path).map_err(LoadError::Io)?, quant, device)?
            .run_with_bar(path)
    }

    /// The model of an opened GGUF file (read from disk or held in memory); `progress(bytes)`
    /// is called with the stored size of each piece's tensors once read.
    pub fn from_gguf(
        gguf: GgufFile,
        quant: Option<QuantConfig>,
        device: &Device,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Self, PretrainedError> {
        Loading::gguf(gguf, quant, device)?.run(progress)
    }

    fn load_hf_dir(
        dir: &Path,
        quant: Option<QuantConfig>,
        device: &Device,
    ) -> Result<Self, PretrainedError> {
        let config = LlamaConfig::from_file(&dir.join(model::load::CONFIG_FILE))?;
        let ckpt = Checkpoint::open(dir).map_err(LoadError::Io)?;
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer = if tokenizer_path.exists() {
            Some(Tokenizer::from_file(&tokenizer_path)?)
        } else {
            None
        };
        let chat_template = match std::fs::read(dir.join(TOKENIZER_CONFIG)) {
            Ok(bytes) => chat_template_of(&dir.join(TOKENIZER_CONFIG), &bytes)?,
            Err(_) => None,
        };
        Loading::hf(dir, config, ckpt, tokenizer, chat_template, quant, device)?.run_with_bar(dir)
    }

    /// The tokenizer, or an error naming the model when it has none.
    pub fn tokenizer(&self) -> Result<&Tokenizer, PretrainedError> {
        self.tokenizer
            .as_ref()
            .ok_or_else(|| PretrainedError::NoTokenizer(self.path.clone()))
    }
}

/// A model being put on a device a piece at a time (embeddings, head, each decoder layer, final
/// norm; see [`model::load::Builder`]): tokenizer and chat template are already read, the
/// weights follow one [`Loading::step`] at a time. A browser tab yields to its event loop
/// between steps and shows [`Loading::bytes`]; native loaders call [`Loading::run`].
pub struct Loading {
    builder: Builder<'static>,
    total_bytes: u64,
    config: LlamaConfig,
    tokenizer: Option<Tokenizer>,
    template: ChatTemplate,
    path: PathBuf,
    format: ModelFormat,
}

impl Loading {
    /// Starts loading an opened GGUF file: config, tokenizer and chat template from its
    /// metadata.
    fn gguf(
        gguf: GgufFile,
        quant: Option<QuantConfig>,
        device: &Device,
    ) -> Result<Self, PretrainedError> {
        let path = gguf.path().to_path_buf();
        let hf_config = gguf.llama_config().map_err(LoadError::Io)?;
        let config = LlamaConfig::from_json(&hf_config.to_hf_config_json().to_string(), &path)?;
        let tokenizer = Tokenizer::from_gguf_file(&gguf)?;
        let template = match gguf.chat_template().map_err(LoadError::Io)? {
            Some(source) => ChatTemplate::named(
                source,
                &format!("{} (tokenizer.chat_template)", path.display()),
            )?,
            None => ChatTemplate::preset("chatml")?,
        };
        let template = with_tokens(template, &tokenizer);
        let total_bytes = gguf.tensors().iter().map(|t| t.n_bytes()).sum();
        Ok(Self {
            builder: Builder::from_gguf(&config, gguf, quant, device)?,
            total_bytes,
            config,
            tokenizer: Some(tokenizer),
            template,
            path,
            format: ModelFormat::Gguf,
        })
    }

    /// Starts loading a Hugging Face file set, however its files were read.
    fn hf(
        dir: &Path,
        config: LlamaConfig,
        ckpt: Checkpoint,
        tokenizer: Option<Tokenizer>,
        chat_template: Option<ChatTemplate>,
        quant: Option<QuantConfig>,
        device: &Device,
    ) -> Result<Self, PretrainedError> {
        let template = match chat_template {
            Some(template) => template,
            None => ChatTemplate::preset("chatml")?,
        };
        let template = match &tokenizer {
            Some(t) => with_tokens(template, t),
            None => template,
        };
        let total_bytes = ckpt.data_bytes();
        Ok(Self {
            builder: Builder::from_checkpoint(&config, ckpt, dir, quant, device)?,
            total_bytes,
            config,
            tokenizer,
            template,
            path: dir.to_path_buf(),
            format: ModelFormat::HfDir,
        })
    }

    /// Reads, quantizes and uploads the next piece; `Ok(true)` once the weights are complete.
    pub fn step(&mut self) -> Result<bool, PretrainedError> {
        Ok(self.builder.step()?)
    }

    /// `(read, total)` stored bytes of the weights (`read` can stop short of `total`: file
    /// headers and tensors the model does not use are never read).
    pub fn bytes(&self) -> (u64, u64) {
        (self.builder.bytes_read(), self.total_bytes)
    }

    /// `(built, total)` pieces.
    pub fn pieces(&self) -> (usize, usize) {
        (self.builder.pieces_done(), self.builder.pieces())
    }

    /// Builds what is left; the model.
    pub fn finish(self) -> Result<Pretrained, PretrainedError> {
        self.complete(Builder::finish)
    }

    /// Every step, calling `progress(bytes)` with the stored bytes each one read; the model.
    pub fn run(self, progress: &mut dyn FnMut(u64)) -> Result<Pretrained, PretrainedError> {
        self.complete(|builder| builder.run(progress))
    }

    /// [`Loading::run`] with a progress bar on stderr naming `path` (none without `native`).
    fn run_with_bar(self, path: &Path) -> Result<Pretrained, PretrainedError> {
        let bar = load_bar(path, self.total_bytes);
        let out = self.run(&mut |n| bar.inc(n));
        bar.finish_and_clear();
        out
    }

    /// The model `build` makes of the builder, with what was read before the weights.
    fn complete(
        self,
        build: impl FnOnce(Builder<'static>) -> Result<Llama, LoadError>,
    ) -> Result<Pretrained, PretrainedError> {
        Ok(Pretrained {
            model: build(self.builder)?,
            config: self.config,
            tokenizer: self.tokenizer,
            template: self.template,
            path: self.path,
            format: self.format,
        })
    }
}

/// A model's files held in memory, opened: headers and config parsed, no weights loaded yet, so
/// a caller can check the config (say, against a browser device's buffer limits) before
/// [`ModelFiles::load`] puts anything on the device.
pub struct ModelFiles {
    label: PathBuf,
    config: LlamaConfig,
    kind: FilesKind,
}

enum FilesKind {
    Gguf(GgufFile),
    Hf {
        ckpt: Checkpoint,
        // Boxed: a tokenizer and a compiled template are large, and the GGUF variant carries
        // its own.
        tokenizer: Option<Box<Tokenizer>>,
        chat_template: Option<Box<ChatTemplate>>,
    },
}

impl ModelFiles {
    /// Opens files by name: a GGUF file (recognised by its magic, whatever its name), or a
    /// Hugging Face set: `config.json`, one or more `*.safetensors` shards, and optionally
    /// `tokenizer.json` and `tokenizer_config.json`. This is how a browser tab reads the files a
    /// user picked. `label` names the set in errors (each file as `label/name`; an empty label
    /// names files by their own names).
    pub fn open(
        label: &Path,
        mut files: BTreeMap<String, Vec<u8>>,
    ) -> Result<Self, PretrainedError> {
        let gguf_name = files
            .iter()
            .find(|(_, bytes)| bytes.starts_with(b"GGUF"))
            .map(|(name, _)| name.clone());
        if let Some(name) = gguf_name {
            let bytes = files.remove(&name).unwrap_or_default();
            let path = label.join(&name);
            let gguf = GgufFile::from_bytes(&path, bytes).map_err(LoadError::Io)?;
            let hf_config = gguf.llama_config().map_err(LoadError::Io)?;
            let config = LlamaConfig::from_json(&hf_config.to_hf_config_json().to_string(), &path)?;
            return Ok(Self {
                label: label.to_path_buf(),
                config,
                kind: FilesKind::Gguf(gguf),
            });
        }
        let Some(config_bytes) = files.remove(model::load::CONFIG_FILE) else {
            return Err(PretrainedError::MissingFile {
                dir: label.to_path_buf(),
                name: model::load::CONFIG_FILE.to_string(),
            });
        };
        let config = LlamaConfig::from_json(
            &String::from_utf8_lossy(&config_bytes),
            &label.join(model::load::CONFIG_FILE),
        )?;
        let tokenizer_config = files.remove(TOKENIZER_CONFIG);
        let tokenizer = match files.remove("tokenizer.json") {
            Some(json) => Some(Tokenizer::from_bytes(
                &label.join("tokenizer.json"),
                &json,
                tokenizer_config.as_deref(),
            )?),
            None => None,
        };
        let chat_template = match &tokenizer_config {
            Some(bytes) => chat_template_of(&label.join(TOKENIZER_CONFIG), bytes)?,
            None => None,
        };
        let shards = files
            .into_iter()
            .filter(|(name, _)| name.ends_with(".safetensors"))
            .map(|(name, bytes)| SafetensorsFile::from_bytes(&label.join(name), bytes))
            .collect::<Result<Vec<_>, _>>()
            .map_err(LoadError::Io)?;
        if shards.is_empty() {
            return Err(PretrainedError::MissingFile {
                dir: label.to_path_buf(),
                name: "*.safetensors".to_string(),
            });
        }
        let ckpt = Checkpoint::from_files(shards).map_err(LoadError::Io)?;
        Ok(Self {
            label: label.to_path_buf(),
            config,
            kind: FilesKind::Hf {
                ckpt,
                tokenizer: tokenizer.map(Box::new),
                chat_template: chat_template.map(Box::new),
            },
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// GGUF or a Hugging Face set.
    pub fn format(&self) -> ModelFormat {
        match self.kind {
            FilesKind::Gguf(_) => ModelFormat::Gguf,
            FilesKind::Hf { .. } => ModelFormat::HfDir,
        }
    }

    /// Starts putting the model on `device` as [`Pretrained::load`] does, a piece per
    /// [`Loading::step`].
    pub fn start(
        self,
        quant: Option<QuantConfig>,
        device: &Device,
    ) -> Result<Loading, PretrainedError> {
        match self.kind {
            FilesKind::Gguf(gguf) => Loading::gguf(gguf, quant, device),
            FilesKind::Hf {
                ckpt,
                tokenizer,
                chat_template,
            } => Loading::hf(
                &self.label,
                self.config,
                ckpt,
                tokenizer.map(|t| *t),
                chat_template.map(|t| *t),
                quant,
                device,
            ),
        }
    }

    /// Puts the model on `device` as [`Pretrained::load`] does; `progress(bytes)` is called as
    /// tensors are read.
    pub fn load(
        self,
        quant: Option<QuantConfig>,
        device: &Device,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Pretrained, PretrainedError> {
        self.start(quant, device)?.run(progress)
    }
}

/// The config of the model at `path` (GGUF metadata or `config.json`), without loading weights.
pub fn read_config(path: &Path) -> Result<LlamaConfig, PretrainedError> {
    match ModelFormat::detect(path)? {
        ModelFormat::Gguf => {
            let gguf = GgufFile::open(path).map_err(LoadError::Io)?;
            let hf_config = gguf.llama_config().map_err(LoadError::Io)?;
            Ok(LlamaConfig::from_json(
                &hf_config.to_hf_config_json().to_string(),
                path,
            )?)
        }
        ModelFormat::HfDir => Ok(LlamaConfig::from_file(
            &path.join(model::load::CONFIG_FILE),
        )?),
    }
}

/// The template with the tokenizer's bos/eos strings filled in.
fn with_tokens(template: ChatTemplate, tokenizer: &Tokenizer) -> ChatTemplate {
    template.with_special_tokens(tokenizer.bos_token(), tokenizer.eos_token())
}

/// The file next to `tokenizer.json` that holds the special tokens and the chat template.
const TOKENIZER_CONFIG: &str = "tokenizer_config.json";

/// `chat_template` of a `tokenizer_config.json` (`path` names it in errors).
fn chat_template_of(path: &Path, bytes: &[u8]) -> Result<Option<ChatTemplate>, PretrainedError> {
    let json: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| LoadError::Config {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let source = json.get("chat_template").and_then(|t| t.as_str());
    Ok(source
        .map(|s| ChatTemplate::named(s, &path.display().to_string()))
        .transpose()?)
}

/// A progress bar on stderr with bytes/s, or a spinner when the size is unknown (`total == 0`).
#[cfg(feature = "native")]
fn load_bar(path: &Path, total: u64) -> ProgressBar {
    let bar = if total > 0 {
        let bar = ProgressBar::new(total);
        if let Ok(style) = ProgressStyle::with_template(
            "loading {msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style);
        }
        bar
    } else {
        let bar = ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    };
    bar.set_message(
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    bar
}

/// Without the `native` feature (the browser build) loads report no progress here: the page
/// shows its own.
#[cfg(not(feature = "native"))]
fn load_bar(_path: &Path, _total: u64) -> NoBar {
    NoBar
}

#[cfg(not(feature = "native"))]
struct NoBar;

#[cfg(not(feature = "native"))]
impl NoBar {
    fn inc(&self, _n: u64) {}
    fn finish_and_clear(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty or short file is "not a model", not an I/O error about filling a buffer.
    #[test]
    fn short_and_foreign_files_are_not_models() {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in [
            ("empty.gguf", &b""[..]),
            ("short.gguf", &b"GGU"[..]),
            ("text.gguf", &b"hello world"[..]),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            let err = ModelFormat::detect(&path).unwrap_err().to_string();
            assert!(
                err.contains(name) && err.contains("not a model"),
                "{name}: {err}"
            );
        }
        let gguf = dir.path().join("magic.gguf");
        std::fs::write(&gguf, b"GGUF").unwrap();
        assert_eq!(ModelFormat::detect(&gguf).unwrap(), ModelFormat::Gguf);
        let missing = dir.path().join("missing.gguf");
        let err = ModelFormat::detect(&missing).unwrap_err().to_string();
        assert!(err.contains("missing.gguf"), "{err}");
    }
}
