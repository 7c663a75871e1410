//! The web client's files (`static/`), embedded into release binaries so
//! one binary serves everything; debug builds read them from disk, so a
//! rebuilt client shows up without recompiling the server.

use axum::body::Body;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ephemeral_shared::PageHash;
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "../static/"]
struct Static;

/// No inline script, no foreign origin: a page's text can never run as
/// code in our origin, even if a rendering bug let HTML through. Inline
/// styles are allowed because a page rendered in its sandboxed frame
/// (`srcdoc`, which inherits this policy on top of its own) brings its
/// styles inline; the app itself writes none, and with images, fonts and
/// connections held to our origin a style cannot send anything anywhere
/// (docs/pages.md).
const CSP: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; \
    style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self' ws: wss:; \
    object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'";

const NOT_BUILT: &str = "<!doctype html><meta charset=utf-8><title>Ephemeral</title>\
    <h1>The web client was not built</h1>\
    <p>This server runs, but the browser client is missing from <code>static/pkg/</code>. \
    Build it with <code>cargo xtask build</code> (or start everything with \
    <code>cargo xtask run</code>).</p>";

/// `GET /`: the app.
pub async fn index() -> Response {
    app_page()
}

/// `GET /<path>`: a page address gets the app, anything else a file. A
/// path that is neither, and could be a mistyped address (one segment, no
/// file extension: `/foo`, a short or uppercase hash), gets the app with
/// 404, which shows a page saying what an address looks like; other
/// missing files get a plain 404.
pub async fn file(Path(path): Path<String>) -> Response {
    if path.parse::<PageHash>().is_ok() {
        return app_page();
    }
    match Static::get(&path) {
        Some(file) => respond(&path, file.data.into_owned()),
        None if !path.contains(['/', '.']) => {
            let mut response = app_page();
            *response.status_mut() = StatusCode::NOT_FOUND;
            response
        }
        None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}

fn app_page() -> Response {
    let built = Static::get("pkg/web_client_bg.wasm").is_some();
    match Static::get("index.html") {
        Some(file) if built => respond("index.html", file.data.into_owned()),
        _ => {
            let mut response = respond("index.html", NOT_BUILT.as_bytes().to_vec());
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            response
        }
    }
}

fn respond(path: &str, body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(path)),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}
