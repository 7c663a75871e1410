//! Large JS strings into Rust quickly. wasm-bindgen's own conversion
//! copies a string into wasm memory one character at a time in JS while it
//! is ASCII, some 400 ms for a 16 MiB page; the browser's `TextEncoder`
//! does the same in native code in a few milliseconds.

use js_sys::Uint8Array;
use wasm_bindgen::prelude::*;

#[wasm_bindgen]
extern "C" {
    type TextEncoder;

    #[wasm_bindgen(constructor)]
    fn new() -> TextEncoder;

    /// Takes the JS string as it is: no conversion on the way in.
    #[wasm_bindgen(method)]
    fn encode(this: &TextEncoder, text: &JsValue) -> Uint8Array;
}

/// `text`, a JS string, as UTF-8 (lone surrogates become U+FFFD, as
/// everywhere else a string crosses into Rust).
pub fn string(text: &JsValue) -> String {
    let bytes = TextEncoder::new().encode(text).to_vec();
    String::from_utf8(bytes)
        .unwrap_or_else(|error| String::from_utf8_lossy(error.as_bytes()).into_owned())
}
