//! The events of a socket that go past its own session: a visitor's
//! `content_request`, a host's relayed `content` and `content_unavailable`,
//! and `signal` — each checked here, then handed to the registry, or in a
//! cluster to the page's home or the target's node.

use ephemeral_shared::frame::Frame;
use ephemeral_shared::protocol::{
    Content, ContentRequest, ContentUnavailable, MAX_EXCLUDE, Reason, SignalTo,
};
use ephemeral_shared::selection::Selection;
use ephemeral_shared::{Role, Topic};
use serde_json::json;

use super::{Refusal, Session};
use crate::membership::{Member, Target};
use crate::registry::Request;

impl Session {
    pub(super) fn content_request(
        &mut self,
        frame: &Frame,
        topic: Topic,
    ) -> Result<Vec<Frame>, Refusal> {
        let request: ContentRequest = frame
            .payload_as()
            .map_err(|e| (Reason::BadPayload, e.to_string()))?;
        if request.exclude.len() > MAX_EXCLUDE {
            let detail = format!(
                "exclude lists at most {MAX_EXCLUDE} peers; got {}",
                request.exclude.len()
            );
            return Err((Reason::BadPayload, detail));
        }
        let member = Member {
            conn: self.conn.clone(),
            join_ref: frame.join_ref.clone(),
        };
        let request = Request {
            visitor: self.peer(),
            target: Target::Local(member.clone()),
            msg_ref: frame.msg_ref.clone(),
            relay: request.relay,
            exclude: request.exclude.into_iter().collect(),
        };
        // The registry queues the reply on this socket (now, or when a host
        // has a free slot), ahead of anything the host will send.
        let registry = &self.state.registry;
        match (&self.state.cluster, self.state.config.selection) {
            (Some(cluster), _) => cluster.request(topic.hash, request),
            (None, Selection::Uniform) => registry.request(topic.hash, request),
            (None, Selection::CoinFlip) => registry.coin_flip(topic.hash, member, request),
        }
        Ok(Vec::new())
    }

    /// Relayed content goes only to visitors whose request went to this
    /// host, once per request: a host cannot make the server multiply its
    /// bytes over every visitor of the page.
    pub(super) fn content(&mut self, frame: &Frame, topic: Topic) -> Result<Vec<Frame>, Refusal> {
        let Content { content } = frame
            .payload_as()
            .map_err(|e| (Reason::BadPayload, e.to_string()))?;
        let max = self.state.config.max_page_bytes;
        if content.len() > max {
            let detail = format!("page is {} bytes, the limit is {max}", content.len());
            return Err((Reason::PageTooLarge, detail));
        }
        if let Some(cluster) = self.state.cluster.clone()
            && !cluster.homes(topic.hash)
        {
            return self.content_to_home(&cluster, frame, topic, content);
        }
        let registry = &self.state.registry;
        let asked = registry.relay_visitors(topic.hash, self.peer());
        if asked == 0 {
            let detail = "no visitor's request for the page went to this host".to_string();
            return Err((Reason::NotRequested, detail));
        }
        if !topic.hash.matches(content.as_bytes()) {
            let detail = "content does not hash to the topic's SHA-256".to_string();
            return Err((Reason::HashMismatch, detail));
        }
        let page_bytes = content.len() as u64;
        if !self
            .conn
            .address
            .admit_relay(page_bytes.saturating_mul(asked as u64))
        {
            let detail = format!(
                "your address is over {} relayed bytes per second",
                self.state.config.relay_bytes_per_second_per_address
            );
            return Err((Reason::RelayQuota, detail));
        }
        let delivered = registry.relay(topic.hash, self.peer(), content);
        Ok(vec![frame.reply_ok(&json!({ "delivered": delivered }))])
    }

    /// `content` for a page homed on another node: checked here, then
    /// sent to the home, which knows who asked this host; the reply comes
    /// back from there. Only one copy is paid for before it goes.
    fn content_to_home(
        &self,
        cluster: &crate::cluster::Cluster,
        frame: &Frame,
        topic: Topic,
        content: String,
    ) -> Result<Vec<Frame>, Refusal> {
        if !topic.hash.matches(content.as_bytes()) {
            let detail = "content does not hash to the topic's SHA-256".to_string();
            return Err((Reason::HashMismatch, detail));
        }
        if !self.conn.address.admit_relay(content.len() as u64) {
            let detail = format!(
                "your address is over {} relayed bytes per second",
                self.state.config.relay_bytes_per_second_per_address
            );
            return Err((Reason::RelayQuota, detail));
        }
        cluster.relay(topic.hash, self.peer(), frame.msg_ref.clone(), content);
        Ok(Vec::new())
    }

    /// A host that cannot relay the page (too large for the relay) says so;
    /// the visitor that asked hears it at once instead of timing out.
    pub(super) fn content_unavailable(
        &mut self,
        frame: &Frame,
        topic: Topic,
    ) -> Result<Vec<Frame>, Refusal> {
        let ContentUnavailable { to, size } = frame
            .payload_as()
            .map_err(|e| (Reason::BadPayload, e.to_string()))?;
        if let Some(cluster) = &self.state.cluster
            && !cluster.homes(topic.hash)
        {
            let msg_ref = frame.msg_ref.clone();
            cluster.relay_unavailable(topic.hash, self.peer(), to, size, msg_ref);
            return Ok(Vec::new());
        }
        if !self
            .state
            .registry
            .relay_unavailable(topic.hash, self.peer(), to, size)
        {
            let detail = format!("peer {to} did not ask this host for the page");
            return Err((Reason::NotRequested, detail));
        }
        Ok(vec![frame.reply_ok(&json!({}))])
    }

    pub(super) fn signal(&mut self, frame: &Frame, topic: Topic) -> Result<Vec<Frame>, Refusal> {
        let SignalTo { to, body } = frame
            .payload_as()
            .map_err(|e| (Reason::BadPayload, e.to_string()))?;
        if let Some(cluster) = &self.state.cluster {
            cluster.signal(topic, self.peer(), frame.msg_ref.clone(), to, body)?;
            return Ok(Vec::new());
        }
        let other_side = topic.opposite();
        let registry = &self.state.registry;
        let Some(target) = registry.member(other_side, to) else {
            let detail = format!("peer {to} is not on {other_side}");
            return Err((Reason::UnknownPeer, detail));
        };
        if topic.role == Role::Want {
            // The visitor answers its host: its upload slot is in use.
            registry.progress(topic.hash, self.peer(), to);
        }
        target.deliver_signal(other_side, self.peer(), body, &self.state.metrics);
        // No ok reply (Phoenix's `:noreply`): a negotiation is a dozen
        // signals each way, the receiver's answer is the acknowledgement,
        // and an ok per signal would double what the server writes. Errors
        // are still replied.
        Ok(Vec::new())
    }
}
