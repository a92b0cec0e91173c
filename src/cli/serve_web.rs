//! `wgtune serve-web [--port N] [--dir web] [--model PATH | --no-model]`
//!
//! Serves the browser demo (`web/`: the page and the wasm package `web/build.sh` writes to
//! `web/pkg/`) on 127.0.0.1, and a default model next to it: `GET /model/files.json` lists the
//! model's files (`{"name", "files": [{"name", "size"}]}`) and `GET /model/<file>` serves one. The
//! model is `--model` (a GGUF file or a model directory), else the default SmolLM2-135M-Instruct
//! GGUF (fetched once into the cache, as `wgtune train` does).
//!
//! A small blocking HTTP/1.1 server: GET and HEAD only, one thread per connection, paths
//! confined to the served folder, `Content-Type` by extension (`application/wasm` for the
//! module, which `WebAssembly.instantiateStreaming` requires).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};

use crate::io::model_cache::default_model_path;

/// Arguments of `wgtune serve-web`.
#[derive(Clone, Debug, clap::Args)]
pub struct ServeWebArgs {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// The page's folder (holding index.html and pkg/).
    #[arg(long, default_value = "web")]
    pub dir: PathBuf,
    /// The default model offered on the page: a .gguf file or a model directory (default:
    /// SmolLM2-135M-Instruct).
    #[arg(long, conflicts_with = "no_model")]
    pub model: Option<PathBuf>,
    /// Offer no default model (the page then only loads picked files).
    #[arg(long)]
    pub no_model: bool,
}

/// The files of the default model, by the name the page asks for.
struct ModelFiles {
    name: String,
    files: Vec<(String, PathBuf, u64)>,
}

impl ModelFiles {
    fn of(path: &Path) -> Result<Self> {
        let meta =
            std::fs::metadata(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let file_name = |p: &Path| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let mut files = Vec::new();
        if meta.is_dir() {
            let entries = std::fs::read_dir(path)
                .with_context(|| format!("{}: cannot list", path.display()))?;
            for entry in entries.flatten() {
                let name = file_name(&entry.path());
                let wanted = name == "config.json"
                    || name == "tokenizer.json"
                    || name == "tokenizer_config.json"
                    || name.ends_with(".safetensors");
                if wanted && let Ok(m) = entry.metadata() {
                    files.push((name, entry.path(), m.len()));
                }
            }
            files.sort();
            if !files.iter().any(|(n, _, _)| n == "config.json") {
                bail!("{}: no config.json in this model directory", path.display());
            }
        } else {
            files.push((file_name(path), path.to_path_buf(), meta.len()));
        }
        Ok(ModelFiles {
            name: file_name(path),
            files,
        })
    }

    fn listing(&self) -> String {
        let files: Vec<_> = self
            .files
            .iter()
            .map(|(name, _, size)| serde_json::json!({"name": name, "size": size}))
            .collect();
        serde_json::json!({"name": self.name, "files": files}).to_string()
    }
}

/// Runs `wgtune serve-web` until interrupted.
pub fn run(args: ServeWebArgs) -> Result<()> {
    let dir = args.dir.clone();
    if !dir.join("index.html").is_file() {
        bail!(
            "{}: no index.html here; run from the repository root or pass --dir",
            dir.display()
        );
    }
    if !dir.join("pkg").join("wgtune_web_bg.wasm").is_file() {
        bail!(
            "{}: the wasm package is missing; build it with `bash web/build.sh` (or start the \
             demo with `bash web/serve.sh`, which builds it when needed)",
            dir.join("pkg").display()
        );
    }
    let model = if args.no_model {
        None
    } else {
        let path = match args.model {
            Some(p) => p,
            None => default_model_path()?,
        };
        Some(ModelFiles::of(&path)?)
    };
    let listener = TcpListener::bind(("127.0.0.1", args.port))
        .with_context(|| format!("cannot listen on 127.0.0.1:{}", args.port))?;
    let addr = listener.local_addr()?;
    match &model {
        Some(m) => eprintln!("default model: {} ({} files)", m.name, m.files.len()),
        None => eprintln!("no default model"),
    }
    // The one line a script waits for.
    println!("serving {} on http://{addr}/", dir.display());
    std::io::stdout().flush()?;
    let site = Arc::new((dir, model));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let site = site.clone();
        std::thread::spawn(move || {
            let _ = handle(stream, &site.0, site.1.as_ref());
        });
    }
    Ok(())
}

/// Answers one request.
fn handle(mut stream: TcpStream, dir: &Path, model: Option<&ModelFiles>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // Skip the headers.
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let mut parts = request.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    if method != "GET" && method != "HEAD" {
        return respond(&mut stream, 405, "text/plain", b"only GET and HEAD\n", true);
    }
    let head_only = method == "HEAD";
    let path = percent_decode(target.split(['?', '#']).next().unwrap_or("/"));
    if let Some(rest) = path.strip_prefix("/model/") {
        let Some(model) = model else {
            return respond(
                &mut stream,
                404,
                "text/plain",
                b"no default model\n",
                head_only,
            );
        };
        if rest == "files.json" {
            let body = model.listing();
            return respond(
                &mut stream,
                200,
                "application/json",
                body.as_bytes(),
                head_only,
            );
        }
        return match model.files.iter().find(|(name, _, _)| name == rest) {
            Some((_, file, _)) => send_file(&mut stream, file, head_only),
            None => respond(
                &mut stream,
                404,
                "text/plain",
                b"not a model file\n",
                head_only,
            ),
        };
    }
    let rel = if path.ends_with('/') {
        format!("{path}index.html")
    } else {
        path
    };
    let rel = Path::new(rel.trim_start_matches('/'));
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return respond(&mut stream, 403, "text/plain", b"forbidden\n", head_only);
    }
    let file = dir.join(rel);
    if file.is_file() {
        send_file(&mut stream, &file, head_only)
    } else {
        respond(&mut stream, 404, "text/plain", b"not found\n", head_only)
    }
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "wasm" => "application/wasm",
        "png" => "image/png",
        "svg" => "image/svg+xml",
        "txt" | "md" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn send_file(stream: &mut TcpStream, path: &Path, head_only: bool) -> std::io::Result<()> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {len}\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n",
        content_type(path)
    )?;
    if !head_only {
        std::io::copy(&mut (&mut file).take(len), stream)?;
    }
    stream.flush()
}

fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        403 => "Forbidden",
        404 => "Not Found",
        _ => "Method Not Allowed",
    };
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if !head_only {
        stream.write_all(body)?;
    }
    stream.flush()
}

/// `%XX` escapes decoded (invalid ones kept as they are).
fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) => hex(h).zip(hex(l)).map(|(h, l)| h * 16 + l),
            _ => None,
        };
        match escaped {
            Some(v) => {
                out.push(v);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_escapes() {
        assert_eq!(percent_decode("/model/a%20b.gguf"), "/model/a b.gguf");
        assert_eq!(percent_decode("/x%2"), "/x%2");
        assert_eq!(percent_decode("/%2e%2e/etc"), "/../etc");
        assert_eq!(percent_decode("/é%"), "/é%");
    }
}
