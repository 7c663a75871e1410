//! Server addresses and page links as people write and paste them, turned
//! into what a peer connects to. A server is one address however it is
//! written: `http://host:4000`, `ws://host:4000/ws/websocket?vsn=2.0.0` and
//! `host:4000` name the same server, whose web client serves
//! `http://host:4000/<hash>` and whose websocket is
//! `ws://host:4000/ws/websocket?vsn=2.0.0` (`https`/`wss` alike).
//!
//! A page link is `http(s)://host[:port]/<hash>`; its hash is exactly what
//! [`PageHash`] parses (64 lowercase hex digits), because the browser
//! client accepts no other, and a link it would refuse is no link.

use std::fmt;
use std::str::FromStr;

use crate::hash::{HashError, PageHash};

/// The server's websocket, below its web root, in Phoenix's V2 dialect.
const WEBSOCKET_PATH: &str = "/ws/websocket";
const WEBSOCKET_QUERY: &str = "?vsn=2.0.0";

/// A signaling server: where its web client is served and its websocket
/// answers. Equal when they reach the same place (`http://h` is
/// `http://h:80`).
#[derive(Debug, Clone)]
pub struct Server {
    secure: bool,
    /// Lowercase; an IPv6 address keeps its brackets.
    host: String,
    /// As written: a link we print keeps the port the person gave, or none.
    port: Option<u16>,
}

/// Why a string is not a server address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerError {
    #[error("the server address is empty")]
    Empty,
    #[error("{0}:// is not a scheme the server speaks: use http://, https://, ws:// or wss://")]
    Scheme(String),
    #[error("no host name or IP address")]
    NoHost,
    #[error("{0:?} is not a host name or IP address")]
    Host(String),
    #[error("an IPv6 address goes in brackets, as in http://[::1]:4000")]
    BareIpv6,
    #[error("{0:?} is not a port: a port is a number from 1 to 65535")]
    Port(String),
    #[error(
        "a server address ends after host:port (or {WEBSOCKET_PATH}), \
         and this goes on with {0:?}"
    )]
    Path(String),
}

/// A page as given on a command line: a link, which names its server, or
/// the bare hash, which leaves the server to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageLink {
    pub server: Option<Server>,
    pub hash: PageHash,
}

/// Why a string is neither a page link nor a page hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("no page given")]
    Empty,
    #[error("a page link starts with http:// or https://, not {0}://")]
    Scheme(String),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("the link ends at its server, with no /<hash> after it")]
    NoHash,
    #[error("{0:?} is not a page's path: a page link ends in a single /<hash>")]
    Path(String),
    #[error(transparent)]
    Hash(#[from] HashError),
}

impl Server {
    /// The websocket a peer connects to.
    pub fn websocket_url(&self) -> String {
        let scheme = if self.secure { "wss" } else { "ws" };
        format!(
            "{scheme}://{}{WEBSOCKET_PATH}{WEBSOCKET_QUERY}",
            self.authority()
        )
    }

    /// The page's link on this server's web client.
    pub fn page_link(&self, hash: PageHash) -> String {
        format!("{self}/{hash}")
    }

    /// The port connected to, written or implied by the scheme.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(if self.secure { 443 } else { 80 })
    }

    fn authority(&self) -> String {
        match self.port {
            Some(port) => format!("{}:{port}", self.host),
            None => self.host.clone(),
        }
    }

    /// `host[:port]` of a server reached over TLS or not.
    fn from_authority(secure: bool, authority: &str) -> Result<Self, ServerError> {
        let (host, port) = split_port(authority)?;
        let port = port.map(parse_port).transpose()?;
        Ok(Self {
            secure,
            host: check_host(host)?,
            port,
        })
    }
}

impl PartialEq for Server {
    fn eq(&self, other: &Self) -> bool {
        self.secure == other.secure && self.host == other.host && self.port() == other.port()
    }
}

impl Eq for Server {}

/// `http(s)://host[:port]`: the form people share.
impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.secure { "https" } else { "http" };
        write!(f, "{scheme}://{}", self.authority())
    }
}

/// `http(s)://` or `ws(s)://host[:port]`, optionally followed by the
/// websocket's path and query; no scheme means `http://`.
impl FromStr for Server {
    type Err = ServerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = without_query(s.trim());
        if s.is_empty() {
            return Err(ServerError::Empty);
        }
        let (secure, rest) = match s.split_once("://") {
            Some((scheme, rest)) => (scheme_is_secure(scheme, true)?, rest),
            None => (false, s),
        };
        let (authority, path) = split_path(rest);
        let path = path.strip_suffix('/').unwrap_or(path);
        if !path.is_empty() && path != WEBSOCKET_PATH {
            return Err(ServerError::Path(path.to_string()));
        }
        Self::from_authority(secure, authority)
    }
}

/// A link (`http(s)://host[:port]/<hash>`, the scheme optional), or a bare
/// `<hash>` or `/<hash>`. Surrounding whitespace, a trailing slash, and a
/// query or fragment (the browser's settings) are ignored.
impl FromStr for PageLink {
    type Err = PageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = without_query(s.trim());
        let s = s.strip_suffix('/').unwrap_or(s);
        if s.is_empty() {
            return Err(PageError::Empty);
        }
        let (server, path) = match s.split_once("://") {
            Some((scheme, rest)) => {
                let secure = scheme_is_secure(scheme, false)
                    .map_err(|_| PageError::Scheme(scheme.to_string()))?;
                let (authority, path) = split_path(rest);
                (Some(Server::from_authority(secure, authority)?), path)
            }
            None if s.starts_with('/') || !s.contains('/') => (None, s),
            None => {
                let (authority, path) = split_path(s);
                (Some(Server::from_authority(false, authority)?), path)
            }
        };
        let hash = path.strip_prefix('/').unwrap_or(path);
        if hash.is_empty() {
            return Err(match server {
                Some(_) => PageError::NoHash,
                None => PageError::Empty,
            });
        }
        if hash.contains('/') {
            return Err(PageError::Path(path.to_string()));
        }
        Ok(Self {
            server,
            hash: hash.parse()?,
        })
    }
}

/// Whether `scheme` means TLS; `ws`/`wss` only where `websocket` allows.
fn scheme_is_secure(scheme: &str, websocket: bool) -> Result<bool, ServerError> {
    match scheme.to_ascii_lowercase().as_str() {
        "http" => Ok(false),
        "https" => Ok(true),
        "ws" if websocket => Ok(false),
        "wss" if websocket => Ok(true),
        _ => Err(ServerError::Scheme(scheme.to_string())),
    }
}

/// Drops `?query` and `#fragment`: they never choose the server or page.
fn without_query(s: &str) -> &str {
    s.find(['?', '#']).map_or(s, |end| &s[..end])
}

/// `host:port/path` → (`host:port`, `/path`).
fn split_path(s: &str) -> (&str, &str) {
    s.find('/').map_or((s, ""), |start| s.split_at(start))
}

/// `host:port` → (`host`, `port`); an IPv6 address must be bracketed, as
/// its own colons would otherwise be read as the port's.
fn split_port(authority: &str) -> Result<(&str, Option<&str>), ServerError> {
    if authority.starts_with('[') {
        let end = authority.find(']').ok_or(ServerError::BareIpv6)?;
        let (host, rest) = authority.split_at(end + 1);
        return match rest {
            "" => Ok((host, None)),
            _ => match rest.strip_prefix(':') {
                Some(port) => Ok((host, Some(port))),
                None => Err(ServerError::Host(authority.to_string())),
            },
        };
    }
    match authority.matches(':').count() {
        0 => Ok((authority, None)),
        1 => Ok(authority
            .split_once(':')
            .map(|(host, port)| (host, Some(port)))
            .unwrap_or((authority, None))),
        _ => Err(ServerError::BareIpv6),
    }
}

fn parse_port(port: &str) -> Result<u16, ServerError> {
    // `u16::from_str` alone would take `+80`.
    let digits = port.bytes().all(|b| b.is_ascii_digit());
    port.parse::<u16>()
        .ok()
        .filter(|number| digits && *number != 0)
        .ok_or_else(|| ServerError::Port(port.to_string()))
}

/// A DNS name or IPv4 address, or a bracketed IPv6 address; lowercased,
/// since host names are case-insensitive and equality compares them.
fn check_host(host: &str) -> Result<String, ServerError> {
    if host.is_empty() {
        return Err(ServerError::NoHost);
    }
    let valid = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(ipv6) => {
            ipv6.contains(':')
                && ipv6
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        }
        None => host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')),
    };
    if !valid {
        return Err(ServerError::Host(host.to_string()));
    }
    Ok(host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(s: &str) -> Server {
        s.parse()
            .unwrap_or_else(|e| panic!("{s:?} is a server: {e}"))
    }

    fn link(s: &str) -> PageLink {
        s.parse().unwrap_or_else(|e| panic!("{s:?} is a page: {e}"))
    }

    fn hash() -> PageHash {
        PageHash::of(b"a page")
    }

    #[test]
    fn every_way_of_writing_a_server_reaches_its_websocket() {
        let ws = "ws://127.0.0.1:4000/ws/websocket?vsn=2.0.0";
        for written in [
            "http://127.0.0.1:4000",
            "http://127.0.0.1:4000/",
            "HTTP://127.0.0.1:4000",
            "127.0.0.1:4000",
            " ws://127.0.0.1:4000 \n",
            "ws://127.0.0.1:4000/ws/websocket",
            "ws://127.0.0.1:4000/ws/websocket/",
            ws,
        ] {
            let server = server(written);
            assert_eq!(server.websocket_url(), ws, "{written:?}");
            assert_eq!(server.to_string(), "http://127.0.0.1:4000", "{written:?}");
        }
    }

    #[test]
    fn tls_is_https_and_wss_alike() {
        for written in ["https://pages.example", "wss://Pages.Example/ws/websocket"] {
            let server = server(written);
            assert_eq!(
                server.websocket_url(),
                "wss://pages.example/ws/websocket?vsn=2.0.0"
            );
            assert_eq!(
                server.page_link(hash()),
                format!("https://pages.example/{}", hash())
            );
            assert_eq!(server.port(), 443);
        }
    }

    #[test]
    fn the_printed_link_keeps_the_written_port() {
        assert_eq!(
            server("ws://localhost:45911/ws/websocket?vsn=2.0.0").page_link(hash()),
            format!("http://localhost:45911/{}", hash())
        );
        assert_eq!(server("localhost").to_string(), "http://localhost");
        assert_eq!(server("localhost").port(), 80);
    }

    #[test]
    fn ipv6_addresses_are_bracketed() {
        let server = server("http://[::1]:4000");
        assert_eq!(
            server.websocket_url(),
            "ws://[::1]:4000/ws/websocket?vsn=2.0.0"
        );
        assert_eq!(server.port(), 4000);
        assert_eq!(
            "[::1]".parse::<Server>().map(|s| s.port()),
            Ok(80),
            "no port: the scheme's"
        );
        assert_eq!("::1".parse::<Server>(), Err(ServerError::BareIpv6));
        assert_eq!(
            "http://::1:4000".parse::<Server>(),
            Err(ServerError::BareIpv6)
        );
        assert_eq!(
            "http://[::1:4000".parse::<Server>(),
            Err(ServerError::BareIpv6)
        );
        assert!(matches!(
            "http://[::1]4000".parse::<Server>(),
            Err(ServerError::Host(_))
        ));
        assert!(matches!(
            "http://[example]".parse::<Server>(),
            Err(ServerError::Host(_))
        ));
    }

    #[test]
    fn servers_are_equal_when_they_reach_the_same_place() {
        assert_eq!(server("http://h"), server("ws://H:80/ws/websocket"));
        assert_eq!(server("https://h:443"), server("wss://h"));
        assert_ne!(server("http://h"), server("https://h"));
        assert_ne!(server("http://h:4000"), server("http://h:4001"));
        assert_ne!(
            server("http://localhost:4000"),
            server("http://127.0.0.1:4000")
        );
    }

    #[test]
    fn bad_servers_say_what_is_wrong() {
        let cases = [
            ("", ServerError::Empty),
            ("   ", ServerError::Empty),
            ("ftp://h", ServerError::Scheme("ftp".into())),
            ("://h", ServerError::Scheme(String::new())),
            ("http://", ServerError::NoHost),
            ("http://:4000", ServerError::NoHost),
            ("http://h:", ServerError::Port(String::new())),
            ("http://h:0", ServerError::Port("0".into())),
            ("http://h:65536", ServerError::Port("65536".into())),
            ("http://h:+80", ServerError::Port("+80".into())),
            ("http://h:http", ServerError::Port("http".into())),
            ("http://user@h", ServerError::Host("user@h".into())),
            ("http://h h", ServerError::Host("h h".into())),
            ("http://h/x", ServerError::Path("/x".into())),
            ("http://h/ws", ServerError::Path("/ws".into())),
        ];
        for (written, error) in cases {
            assert_eq!(written.parse::<Server>(), Err(error), "{written:?}");
        }
        let page = format!("http://h:4000/{}", hash());
        assert_eq!(
            page.parse::<Server>(),
            Err(ServerError::Path(format!("/{}", hash()))),
            "a page link is not a server"
        );
    }

    #[test]
    fn links_name_their_server_and_page() {
        let expected = PageLink {
            server: Some(server("http://127.0.0.1:4000")),
            hash: hash(),
        };
        for written in [
            format!("http://127.0.0.1:4000/{}", hash()),
            format!("http://127.0.0.1:4000/{}/", hash()),
            format!("  http://127.0.0.1:4000/{}\n", hash()),
            format!("http://127.0.0.1:4000/{}?rtc=off", hash()),
            format!("http://127.0.0.1:4000/{}#top", hash()),
            format!("127.0.0.1:4000/{}", hash()),
        ] {
            assert_eq!(link(&written), expected, "{written:?}");
        }
        let tls = link(&format!("https://[::1]:8443/{}", hash()));
        assert_eq!(
            tls.server.map(|s| s.websocket_url()),
            Some("wss://[::1]:8443/ws/websocket?vsn=2.0.0".to_string())
        );
    }

    #[test]
    fn a_bare_hash_leaves_the_server_open() {
        for written in [
            hash().to_string(),
            format!("/{}", hash()),
            format!("{}/", hash()),
            format!(" {}\n", hash()),
        ] {
            assert_eq!(
                link(&written),
                PageLink {
                    server: None,
                    hash: hash()
                },
                "{written:?}"
            );
        }
    }

    #[test]
    fn bad_links_say_what_is_wrong() {
        let h = hash();
        let upper = h.to_string().to_uppercase();
        let cases = [
            (String::new(), PageError::Empty),
            ("/".to_string(), PageError::Empty),
            ("http://127.0.0.1:4000".into(), PageError::NoHash),
            ("http://127.0.0.1:4000/".into(), PageError::NoHash),
            (format!("ws://h/{h}"), PageError::Scheme("ws".into())),
            (format!("ftp://h/{h}"), PageError::Scheme("ftp".into())),
            (
                format!("http://h:99999/{h}"),
                PageError::Server(ServerError::Port("99999".into())),
            ),
            (
                format!("http://::1/{h}"),
                PageError::Server(ServerError::BareIpv6),
            ),
            (
                format!("http://h/p/{h}"),
                PageError::Path(format!("/p/{h}")),
            ),
            (
                "http://h/ws/websocket".into(),
                PageError::Path("/ws/websocket".into()),
            ),
            ("not-a-page".into(), PageError::Hash(HashError::Length(10))),
            ("http://h/abc".into(), PageError::Hash(HashError::Length(3))),
            (
                format!("http://h/{upper}"),
                PageError::Hash(HashError::NotLowercaseHex(
                    upper.chars().find(char::is_ascii_uppercase).unwrap_or('?'),
                )),
            ),
        ];
        for (written, error) in cases {
            assert_eq!(written.parse::<PageLink>(), Err(error), "{written:?}");
        }
    }

    #[test]
    fn a_printed_link_reads_back() {
        for written in ["http://localhost:4000", "wss://x.example", "[::1]:9"] {
            let server = server(written);
            let printed = server.page_link(hash());
            assert_eq!(
                link(&printed),
                PageLink {
                    server: Some(server),
                    hash: hash()
                }
            );
        }
    }
}
