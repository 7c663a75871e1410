//! What a tab keeps across its own reloads and Back/Forward: the pages it
//! hosts and the editor's draft, in the tab's `sessionStorage`.
//!
//! Why `sessionStorage`: it belongs to this tab alone and dies with it, so
//! a page is never left on disk after its last tab closes, which an
//! ephemeral page must not be (IndexedDB would outlive the tab and need
//! sweeping). Its cost: Chromium gives an origin's session storage about
//! 10 MiB counted in UTF-16, so pages up to a few MiB survive a reload and
//! larger ones are hosted only while the tab stays open; the tab says so.
//!
//! Keys: `ephemeral.hosted` lists `<hash> <format> <author|visitor>` lines;
//! `ephemeral.page.<hash>` holds each page's text; `ephemeral.draft` and
//! `ephemeral.draft-format` the editor; `ephemeral.copy` the page a tab
//! opened with "Edit a copy" should start from (see [`Store::take_copy`]).

use ephemeral_shared::PageHash;
use web_sys::{Storage, Window};

use crate::page::Format;

const HOSTED: &str = "ephemeral.hosted";
const PAGE: &str = "ephemeral.page.";
const DRAFT: &str = "ephemeral.draft";
const DRAFT_FORMAT: &str = "ephemeral.draft-format";
const COPY: &str = "ephemeral.copy";

/// Pages and drafts larger than this are not even tried: the storage
/// holds about 5 M UTF-16 units per origin, and the attempt alone copies
/// the whole text.
const MAX_KEPT_BYTES: usize = 4 << 20;

/// A page this tab hosts, as kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kept {
    pub hash: PageHash,
    pub format: Format,
    /// This tab wrote it (else it fetched it).
    pub authored: bool,
}

/// The tab's session storage; every operation is best effort, since a
/// browser may refuse storage (private modes, quota) and the tab must work
/// without it.
pub struct Store {
    storage: Option<Storage>,
}

impl Store {
    pub fn new(window: &Window) -> Self {
        Self {
            storage: window.session_storage().ok().flatten(),
        }
    }

    fn get(&self, key: &str) -> Option<String> {
        self.storage.as_ref()?.get_item(key).ok().flatten()
    }

    fn set(&self, key: &str, value: &str) -> bool {
        self.storage
            .as_ref()
            .is_some_and(|s| s.set_item(key, value).is_ok())
    }

    fn remove(&self, key: &str) {
        if let Some(storage) = &self.storage {
            let _ = storage.remove_item(key);
        }
    }

    /// The pages this tab hosted before a reload, with their text.
    pub fn hosted(&self) -> Vec<(Kept, String)> {
        self.list()
            .into_iter()
            .filter_map(|kept| Some((kept, self.get(&page_key(kept.hash))?)))
            .collect()
    }

    fn list(&self) -> Vec<Kept> {
        self.get(HOSTED)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let mut words = line.split(' ');
                let hash = words.next()?.parse().ok()?;
                let format = Format::parse(words.next()?);
                let authored = words.next()? == "author";
                Some(Kept {
                    hash,
                    format,
                    authored,
                })
            })
            .collect()
    }

    fn write_list(&self, list: &[Kept]) {
        let text: Vec<String> = list
            .iter()
            .map(|k| {
                let who = if k.authored { "author" } else { "visitor" };
                format!("{} {} {who}", k.hash, k.format.as_str())
            })
            .collect();
        self.set(HOSTED, &text.join("\n"));
    }

    /// Keeps a hosted page; `false` when it does not fit (or is not text),
    /// and then it survives no reload.
    pub fn keep(&self, kept: Kept, page: &[u8]) -> bool {
        if page.len() > MAX_KEPT_BYTES {
            return false;
        }
        let Ok(text) = std::str::from_utf8(page) else {
            return false;
        };
        if !self.set(&page_key(kept.hash), text) {
            return false;
        }
        let mut list = self.list();
        list.retain(|k| k.hash != kept.hash);
        list.push(kept);
        self.write_list(&list);
        true
    }

    /// Whether `hash` is kept.
    pub fn is_kept(&self, hash: PageHash) -> bool {
        self.list().iter().any(|k| k.hash == hash)
    }

    /// Forgets every hosted page: for a tab that got them by being opened
    /// from another, whose pages are not its own.
    fn forget_hosted(&self) {
        for kept in self.list() {
            self.remove(&page_key(kept.hash));
        }
        self.remove(HOSTED);
    }

    /// The editor's draft and its format.
    pub fn draft(&self) -> (String, Format) {
        let text = self.get(DRAFT).unwrap_or_default();
        let format = Format::parse(&self.get(DRAFT_FORMAT).unwrap_or_default());
        (text, format)
    }

    /// Keeps the draft; a draft too large for the storage is dropped
    /// rather than kept stale.
    pub fn keep_draft(&self, text: &str, format: Format) {
        if text.len() > MAX_KEPT_BYTES || !self.set(DRAFT, text) {
            self.remove(DRAFT);
        }
        self.set(DRAFT_FORMAT, format.as_str());
    }

    /// Marks `hash` as the page a tab about to be opened should copy. A
    /// tab opened with `window.open` starts with a copy of this storage;
    /// the mark is removed here right after (see [`Store::unmark_copy`]).
    pub fn mark_copy(&self, hash: PageHash, format: Format) -> bool {
        self.is_kept(hash) && self.set(COPY, &format!("{hash} {}", format.as_str()))
    }

    pub fn unmark_copy(&self) {
        self.remove(COPY);
    }

    /// In a tab opened by "Edit a copy": the page to start from, which
    /// becomes the draft. Such a tab hosts nothing of its opener's, so
    /// the copied list of hosted pages is dropped either way.
    pub fn take_copy(&self) -> Option<(String, Format)> {
        let mark = self.get(COPY)?;
        self.remove(COPY);
        let (hash, format) = mark.split_once(' ')?;
        let text = hash
            .parse::<PageHash>()
            .ok()
            .and_then(|hash| self.get(&page_key(hash)));
        self.forget_hosted();
        Some((text?, Format::parse(format)))
    }
}

fn page_key(hash: PageHash) -> String {
    format!("{PAGE}{hash}")
}
