//! Page addresses: the SHA-256 of a page's UTF-8 bytes, written as 64
//! lowercase hex digits.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// A page's address: the SHA-256 of its bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PageHash([u8; 32]);

/// Why a string is not a page hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    #[error("a page hash has 64 hex digits, this has {0} characters")]
    Length(usize),
    #[error("a page hash is lowercase hex (0-9, a-f), found {0:?}")]
    NotLowercaseHex(char),
}

impl PageHash {
    /// Hashes a page's bytes. A client holding the page should hold a
    /// [`Page`](crate::page::Page) instead, which carries its hash.
    pub fn of(bytes: &[u8]) -> Self {
        let mut hasher = Hasher::default();
        hasher.update(bytes);
        hasher.finish()
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Whether `bytes` are the page this hash names.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        Self::of(bytes) == *self
    }
}

/// SHA-256 fed piece by piece: the one place page bytes are hashed, so
/// that the tests can count how many bytes a path hashes
/// ([`bytes_hashed`]).
#[derive(Clone, Default)]
pub(crate) struct Hasher(Sha256);

impl Hasher {
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        #[cfg(test)]
        HASHED.with(|hashed| hashed.set(hashed.get() + bytes.len()));
        self.0.update(bytes);
    }

    pub(crate) fn finish(self) -> PageHash {
        PageHash(self.0.finalize().into())
    }
}

#[cfg(test)]
thread_local! {
    static HASHED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Bytes hashed so far on this thread (each test runs on its own).
#[cfg(test)]
pub(crate) fn bytes_hashed() -> usize {
    HASHED.with(std::cell::Cell::get)
}

impl FromStr for PageHash {
    type Err = HashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 64 {
            return Err(HashError::Length(s.chars().count()));
        }
        let mut out = [0u8; 32];
        let digits = s.as_bytes();
        for (i, byte) in out.iter_mut().enumerate() {
            let hi = hex_value(digits[2 * i])?;
            let lo = hex_value(digits[2 * i + 1])?;
            *byte = (hi << 4) | lo;
        }
        Ok(Self(out))
    }
}

fn hex_value(digit: u8) -> Result<u8, HashError> {
    match digit {
        b'0'..=b'9' => Ok(digit - b'0'),
        b'a'..=b'f' => Ok(digit - b'a' + 10),
        other => Err(HashError::NotLowercaseHex(char::from(other))),
    }
}

/// Writes `bytes` as lowercase hex into `f`.
pub(crate) fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        let pair = [
            DIGITS[usize::from(byte >> 4)],
            DIGITS[usize::from(byte & 0xf)],
        ];
        // The pair is ASCII by construction.
        f.write_str(std::str::from_utf8(&pair).map_err(|_| fmt::Error)?)?;
    }
    Ok(())
}

impl fmt::Display for PageHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for PageHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PageHash({self})")
    }
}

impl Serialize for PageHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PageHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_utf8_bytes_like_sha256sum() {
        // `printf 'hello' | sha256sum`
        assert_eq!(
            PageHash::of(b"hello").to_string(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        // `printf '👋🏽 é' | sha256sum`: emoji, skin tone, combining acute.
        assert_eq!(
            PageHash::of("👋🏽 e\u{301}".as_bytes()).to_string(),
            "0ef06c0a74b73e6e4c216605bf7ba2596ad5911b126d71a3a61a35ec96615417"
        );
    }

    #[test]
    fn parses_its_own_display() {
        let hash = PageHash::of(b"page");
        assert_eq!(hash.to_string().parse::<PageHash>(), Ok(hash));
    }

    #[test]
    fn rejects_wrong_length_and_uppercase() {
        assert_eq!("abc".parse::<PageHash>(), Err(HashError::Length(3)));
        let upper = PageHash::of(b"x").to_string().to_uppercase();
        assert!(matches!(
            upper.parse::<PageHash>(),
            Err(HashError::NotLowercaseHex(_))
        ));
        let mut bad = PageHash::of(b"x").to_string();
        bad.replace_range(10..11, "g");
        assert_eq!(
            bad.parse::<PageHash>(),
            Err(HashError::NotLowercaseHex('g'))
        );
    }

    #[test]
    fn multibyte_input_of_64_bytes_is_an_error_not_a_panic() {
        let s = "é".repeat(32);
        assert_eq!(s.len(), 64);
        assert!(s.parse::<PageHash>().is_err());
    }
}
