//! `wgtune serve-web`: the built binary serving a page folder and a default model over real
//! HTTP on 127.0.0.1 (the browser test in web/e2e drives the real page through it too).

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Kills the server when the test ends, passed or not.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the server and returns it with its address (`127.0.0.1:port`).
fn serve(dir: &Path, model: &Path) -> (Server, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wgtune"))
        .args(["serve-web", "--port", "0", "--dir"])
        .arg(dir)
        .arg("--model")
        .arg(model)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .expect("a serving line")
        .trim()
        .trim_end_matches('/')
        .to_string();
    (Server(child), addr)
}

/// Status, headers and body of a raw request line for `target`.
fn get(addr: &str, method: &str, target: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "{method} {target} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head[9..12].parse().unwrap();
    (status, head, raw[split + 4..].to_vec())
}

#[test]
fn serves_the_page_and_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let site = tmp.path().join("web");
    std::fs::create_dir_all(site.join("pkg")).unwrap();
    std::fs::write(site.join("index.html"), "<!doctype html><p>hi</p>").unwrap();
    std::fs::write(site.join("pkg/wgtune_web_bg.wasm"), b"\0asm\x01\0\0\0").unwrap();
    std::fs::write(tmp.path().join("secret.txt"), "no").unwrap();
    let (_server, addr) = serve(&site, &common::tiny_llama("model-f32"));

    let (status, head, body) = get(&addr, "GET", "/");
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("Content-Type: text/html"), "{head}");
    assert_eq!(body, b"<!doctype html><p>hi</p>");

    let (status, head, body) = get(&addr, "GET", "/pkg/wgtune_web_bg.wasm");
    assert_eq!(status, 200);
    assert!(head.contains("Content-Type: application/wasm"), "{head}");
    assert_eq!(body, b"\0asm\x01\0\0\0");

    let (status, _, body) = get(&addr, "GET", "/model/files.json");
    assert_eq!(status, 200);
    let listing: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(listing["name"], "model-f32");
    let names: Vec<&str> = listing["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["config.json", "model.safetensors"]);

    let weights = std::fs::read(common::tiny_llama("model-f32/model.safetensors")).unwrap();
    let (status, _, body) = get(&addr, "GET", "/model/model.safetensors");
    assert_eq!(status, 200);
    assert_eq!(body, weights);
    let (status, head, body) = get(&addr, "HEAD", "/model/model.safetensors");
    assert_eq!(status, 200);
    assert!(
        head.contains(&format!("Content-Length: {}", weights.len())),
        "{head}"
    );
    assert!(body.is_empty());

    // Nothing outside the folder or the model's files.
    assert_eq!(get(&addr, "GET", "/../secret.txt").0, 403);
    assert_eq!(get(&addr, "GET", "/%2e%2e/secret.txt").0, 403);
    assert_eq!(get(&addr, "GET", "/model/generation_config.json").0, 404);
    assert_eq!(get(&addr, "GET", "/nope.js").0, 404);
    assert_eq!(get(&addr, "POST", "/").0, 405);
}

#[test]
fn refuses_a_folder_without_the_wasm_package() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("index.html"), "x").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wgtune"))
        .args(["serve-web", "--port", "0", "--no-model", "--dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("the wasm package is missing"), "{err}");
    assert!(err.contains("web/build.sh"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
