//! The websocket handshake (RFC 6455, section 4.2), answered here rather
//! than by axum's extractor so that a connection gets back the accepted TCP
//! stream itself. axum hands over a boxed stream behind hyper's upgrade
//! wrapper and its own socket type: a few hundred bytes more for every idle
//! connection, the cost the server pays most often.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tungstenite::protocol::{Role, WebSocketConfig};

use crate::connection::socket::WebSocket;
use crate::http::Io;

/// A handshake that checked out, to be answered with 101.
pub struct Handshake {
    accept: HeaderValue,
    on_upgrade: OnUpgrade,
}

/// Why a request is not a websocket handshake, for the client.
#[derive(Debug)]
pub struct Refusal {
    status: StatusCode,
    why: &'static str,
}

fn refuse(status: StatusCode, why: &'static str) -> Refusal {
    Refusal { status, why }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.status, self.why).into_response()
    }
}

/// Checks that `request` opens a websocket (its method is the router's
/// business).
pub fn check(request: &mut Request) -> Result<Handshake, Refusal> {
    let headers = request.headers();
    if !header_has_token(headers, header::CONNECTION, "upgrade") {
        return Err(refuse(
            StatusCode::UPGRADE_REQUIRED,
            "this is a websocket endpoint: send Connection: upgrade\n",
        ));
    }
    if !header_is(headers, header::UPGRADE, "websocket") {
        return Err(refuse(
            StatusCode::UPGRADE_REQUIRED,
            "this is a websocket endpoint: send Upgrade: websocket\n",
        ));
    }
    if !header_is(headers, header::SEC_WEBSOCKET_VERSION, "13") {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Version must be 13\n",
        ));
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    if !valid_key(key) {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Key must be 16 bytes in base64\n",
        ));
    }
    let accept = tungstenite::handshake::derive_accept_key(key);
    let accept = HeaderValue::try_from(accept).map_err(|_| {
        refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot answer the handshake\n",
        )
    })?;
    let on_upgrade = request
        .extensions_mut()
        .remove::<OnUpgrade>()
        .ok_or_else(|| {
            refuse(
                StatusCode::UPGRADE_REQUIRED,
                "this connection cannot be upgraded\n",
            )
        })?;
    Ok(Handshake { accept, on_upgrade })
}

impl Handshake {
    /// Answers 101 and, once the HTTP connection has handed the socket
    /// over, starts `serve` on it in a task of its own.
    pub fn accept<F, Fut>(self, config: WebSocketConfig, serve: F) -> Response
    where
        F: FnOnce(WebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Handshake { accept, on_upgrade } = self;
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(error) => {
                    tracing::debug!(%error, "websocket upgrade failed");
                    return;
                }
            };
            let parts = match upgraded.downcast::<Io>() {
                Ok(parts) => parts,
                Err(_) => {
                    tracing::error!("upgraded connection is not the server's own stream");
                    return;
                }
            };
            let io = TokioIo::into_inner(parts.io);
            // Bytes the client sent right behind its handshake.
            let ws = if parts.read_buf.is_empty() {
                WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await
            } else {
                let early = parts.read_buf.to_vec();
                WebSocketStream::from_partially_read(io, early, Role::Server, Some(config)).await
            };
            // A task of its own, not this one: this task's state (the
            // upgrade's, the handshake's) would otherwise stay next to
            // the connection's for its whole life.
            tokio::spawn(serve(ws));
        });
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        response
    }
}

/// A `Sec-WebSocket-Key` as RFC 6455 (section 4.1) requires: 16 bytes in
/// base64, which is 22 characters and `==`.
fn valid_key(key: &[u8]) -> bool {
    let is_base64 = |c: &u8| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/';
    // The 22nd character carries only 2 bits of the 16th byte; its low 4
    // bits must be zero.
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22].iter().all(is_base64)
        && matches!(key[21], b'A' | b'Q' | b'g' | b'w')
}

fn header_is(headers: &HeaderMap, name: HeaderName, value: &str) -> bool {
    headers
        .get(name)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(value.as_bytes()))
}

/// Whether a comma-separated header lists `token` (`Connection: keep-alive,
/// Upgrade` is an upgrade).
fn header_has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|part| part.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_keys_must_be_sixteen_bytes_of_base64() {
        assert!(valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!valid_key(b""));
        assert!(!valid_key(b"not a key"));
        assert!(!valid_key(b"dGhlIHNhbXBsZSBub25jZR=="), "stray low bits");
        assert!(!valid_key(b"dGhlIHNhbXBsZSBub25jZQ="));
        assert!(!valid_key(b"dGhlIHNhbXBsZSBub25j!Q=="));
    }

    #[test]
    fn connection_headers_are_lists_of_tokens() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(header_has_token(&headers, header::CONNECTION, "upgrade"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgraded"));
        assert!(!header_has_token(&headers, header::CONNECTION, "upgrade"));
    }
}
