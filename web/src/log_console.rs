//! `log` records to the browser console: cubecl reports WGSL compile errors through
//! `log::error!` on the web, and a silent failure there is the hardest kind to find.

use log::{Level, LevelFilter, Log, Metadata, Record};

struct Console;

impl Log for Console {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= Level::Warn
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format!("[{}] {}", record.target(), record.args());
        #[cfg(target_arch = "wasm32")]
        {
            let v = wasm_bindgen::JsValue::from_str(&line);
            match record.level() {
                Level::Error => web_sys::console::error_1(&v),
                _ => web_sys::console::warn_1(&v),
            }
        }
        #[cfg(not(target_arch = "wasm32"))]
        eprintln!("{line}");
    }

    fn flush(&self) {}
}

/// Installs the console logger (once; later calls do nothing).
pub fn init() {
    if log::set_logger(&Console).is_ok() {
        log::set_max_level(LevelFilter::Warn);
    }
}
