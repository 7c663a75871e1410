//! The websocket relay on the registry's side: who may relay to whom,
//! sending a host's page to the visitors that asked it (on this node or
//! another), in parts so that they can show how far it has got,
//! `content_unavailable`, and the seed's coin-flip rule.

use std::sync::atomic::Ordering;

use ephemeral_shared::frame::{Frame, event};
use ephemeral_shared::protocol::{ContentPart, ContentUnavailableFrom, HostRequest, PeerId};
use ephemeral_shared::relay::{parts, parts_in};
use ephemeral_shared::{PageHash, Topic};
use rand::Rng;
use serde_json::json;

use super::{Deliveries, Delivery, Pending, Registry, Request, push, reply_frame};
use crate::cluster::NodeId;
use crate::cluster::wire::Message;
use crate::membership::{Member, Target};
use crate::metrics::Metrics;

/// What the frame around one part adds to the part's bytes, at most, for a
/// join ref of up to 64 characters (clients count theirs up from "1").
const PART_FRAME_BYTES: usize = 256;

/// The most bytes one visitor's queue takes for a relayed page: its JSON,
/// never longer than the host's message that carried it, plus the frames
/// around its parts. A queue smaller than this could close a visitor that
/// reads perfectly well, just for having been sent a large page.
pub fn queued_page_bytes(max_message_bytes: usize, max_page_bytes: usize) -> usize {
    max_message_bytes.saturating_add(parts_in(max_page_bytes).saturating_mul(PART_FRAME_BYTES))
}

/// Queues a relayed page for `visitor` as its parts, all at once and in
/// order: a visitor takes a page from its first part on, each next part
/// right after the last. Counted as relayed once every part is queued.
pub fn send_page(visitor: &Member, hash: PageHash, content: &str, metrics: &Metrics) {
    let topic = Topic::want(hash);
    for part in parts(content) {
        let text = part_frame(visitor.join_ref.clone(), topic, &part);
        // A part that does not fit closes the visitor: the rest would only
        // be dropped.
        if !visitor.conn.deliver(text.into(), metrics) {
            return;
        }
    }
    metrics
        .relayed_bytes
        .fetch_add(content.len() as u64, Ordering::Relaxed);
}

fn part_frame(join_ref: Option<String>, topic: Topic, part: &ContentPart) -> String {
    Frame::with_payload(join_ref, None, topic.to_string(), event::CONTENT, part).encode()
}

impl Registry {
    /// How many visitors `host` may relay the page to.
    pub fn relay_visitors(&self, hash: PageHash, host: PeerId) -> usize {
        self.pages
            .with_page(hash, false, |page| page.routing.relay_visitors(host))
            .unwrap_or(0)
    }

    /// Relays `content` from `host` to the visitors whose request went to
    /// it, each once; how many it was queued for (visitors on other nodes
    /// count as queued once their node is sent the page).
    pub fn relay(&self, hash: PageHash, host: PeerId, content: String) -> usize {
        let visitors: Vec<(PeerId, Target)> = self
            .pages
            .with_page(hash, false, |page| {
                let asked = page.routing.take_relay_visitors(host);
                asked
                    .iter()
                    .filter_map(|visitor| Some((*visitor, page.wanters.get(visitor)?.clone())))
                    .collect()
            })
            .unwrap_or_default();
        let mut remote: Vec<(NodeId, Vec<PeerId>)> = Vec::new();
        let mut local = Vec::new();
        for (visitor, target) in visitors.iter() {
            match target {
                Target::Local(member) => local.push(member),
                Target::Remote(node) => match remote.iter_mut().find(|(n, _)| n == node) {
                    Some((_, peers)) => peers.push(*visitor),
                    None => remote.push((*node, vec![*visitor])),
                },
            }
        }
        if let Some(outbox) = &self.outbox {
            for (node, visitors) in remote {
                let content = Message::Content {
                    page: hash,
                    visitors,
                    content: content.clone(),
                };
                outbox.send(node, content);
            }
        }
        for visitor in local {
            send_page(visitor, hash, &content, &self.metrics);
        }
        visitors.len()
    }

    /// `host` cannot relay the page to `visitor`; tells the visitor, if it
    /// asked this host. Whether it had.
    pub fn relay_unavailable(
        &self,
        hash: PageHash,
        host: PeerId,
        visitor: PeerId,
        size: u64,
    ) -> bool {
        let target = self
            .pages
            .with_page(hash, false, |page| {
                if !page.routing.relay_unavailable(host, visitor) {
                    return None;
                }
                page.wanters.get(&visitor).cloned()
            })
            .flatten();
        match target {
            None => false,
            Some(Target::Local(target)) => {
                let payload = ContentUnavailableFrom { from: host, size };
                let text = push(
                    &target,
                    Topic::want(hash),
                    event::CONTENT_UNAVAILABLE,
                    &payload,
                );
                target.conn.deliver(text, &self.metrics);
                true
            }
            Some(Target::Remote(node)) => {
                let message = Message::UnavailableFrom {
                    page: hash,
                    visitor,
                    from: host,
                    size,
                };
                self.deliver(vec![Delivery::Remote(node, message)]);
                true
            }
        }
    }

    /// The seed's rule (`--selection coin-flip`): each host other than the
    /// visitor and those it excludes gets the request with probability
    /// 1/n; the visitor hears how many did, or `no_hosts` when none could.
    ///
    /// A single-process mode only (`--selection coin-flip` is refused with
    /// `--redis`), so every member here is a local socket.
    pub fn coin_flip(&self, hash: PageHash, visitor: Member, request: Request) {
        let peer = request.visitor;
        let picked = self.pages.with_page(hash, false, |page| {
            let mut rng = rand::rng();
            let flip = page
                .routing
                .coin_flip(peer, &request.exclude, &mut || rng.random());
            let hosts: Vec<Member> = flip
                .hosts
                .iter()
                .filter_map(|host| page.hosts.get(host).and_then(Target::local).cloned())
                .collect();
            (hosts, flip.eligible)
        });
        let (hosts, eligible) = picked.unwrap_or_default();
        let mut out = Deliveries::new();
        if eligible == 0 {
            let pending = Pending {
                visitor: peer,
                target: request.target,
                msg_ref: request.msg_ref,
                relay: request.relay,
            };
            self.no_hosts(hash, pending, &mut out);
        } else {
            let ask = HostRequest {
                from: peer,
                relay: request.relay,
            };
            for host in &hosts {
                let text = push(host, Topic::have(hash), event::CONTENT_REQUEST, &ask);
                out.push(Delivery::Local(host.conn.clone(), text));
            }
            self.metrics
                .requests_routed
                .fetch_add(hosts.len() as u64, Ordering::Relaxed);
            let reply = reply_frame(hash, &visitor, request.msg_ref)
                .reply_ok(&json!({ "routed": hosts.len() }));
            out.push(Delivery::Local(visitor.conn.clone(), reply.encode().into()));
        }
        self.deliver(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pages_parts_fit_in_what_its_queue_is_sized_for() {
        // Escaped characters and the widest numbers there are.
        let page = "\"\\\u{1}é😀".repeat(40_000);
        let json = serde_json::to_string(&page).unwrap();
        let topic = Topic::want(PageHash::of(page.as_bytes()));
        let join_ref = Some("9".repeat(64));
        let mut queued = 0;
        for mut part in parts(&page) {
            part.offset = usize::MAX;
            part.size = usize::MAX;
            queued += part_frame(join_ref.clone(), topic, &part).len();
        }
        // The host's message held the page's JSON, and then some.
        assert!(queued > json.len());
        assert!(queued <= queued_page_bytes(json.len(), page.len()));
    }
}
