//! Channel topics: `have:<hash>` for hosts of a page, `want:<hash>` for its
//! visitors, and Phoenix's own `phoenix` topic for heartbeats.

use std::fmt;
use std::str::FromStr;

use crate::hash::{HashError, PageHash};

/// The topic Phoenix clients send heartbeats on.
pub const PHOENIX_TOPIC: &str = "phoenix";

/// Which side of a page a topic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Members hold the page and serve it.
    Have,
    /// Members are waiting to get the page.
    Want,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Have => "have",
            Role::Want => "want",
        }
    }

    /// The role signals from this side are delivered to.
    pub fn opposite(self) -> Role {
        match self {
            Role::Have => Role::Want,
            Role::Want => Role::Have,
        }
    }
}

/// A page topic: `have:<hash>` or `want:<hash>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic {
    pub role: Role,
    pub hash: PageHash,
}

/// Why a string is not a page topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topics are \"have:<hash>\" or \"want:<hash>\"")]
    UnknownPrefix,
    #[error("bad page hash in topic: {0}")]
    Hash(#[from] HashError),
}

impl Topic {
    pub fn have(hash: PageHash) -> Self {
        Self {
            role: Role::Have,
            hash,
        }
    }

    pub fn want(hash: PageHash) -> Self {
        Self {
            role: Role::Want,
            hash,
        }
    }

    /// The other side of the same page.
    pub fn opposite(self) -> Self {
        Self {
            role: self.role.opposite(),
            hash: self.hash,
        }
    }
}

impl FromStr for Topic {
    type Err = TopicError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (role, hash) = if let Some(rest) = s.strip_prefix("have:") {
            (Role::Have, rest)
        } else if let Some(rest) = s.strip_prefix("want:") {
            (Role::Want, rest)
        } else {
            return Err(TopicError::UnknownPrefix);
        };
        Ok(Self {
            role,
            hash: hash.parse()?,
        })
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.role.as_str(), self.hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_both_roles() {
        let hash = PageHash::of(b"x");
        for topic in [Topic::have(hash), Topic::want(hash)] {
            assert_eq!(topic.to_string().parse::<Topic>(), Ok(topic));
        }
        assert_eq!(Topic::have(hash).opposite(), Topic::want(hash));
    }

    #[test]
    fn rejects_other_topics_with_a_reason() {
        assert_eq!(
            "room:lobby".parse::<Topic>(),
            Err(TopicError::UnknownPrefix)
        );
        assert_eq!(
            "have:".parse::<Topic>(),
            Err(TopicError::Hash(HashError::Length(0)))
        );
        assert_eq!("HAVE:abc".parse::<Topic>(), Err(TopicError::UnknownPrefix));
    }
}
