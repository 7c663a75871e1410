//! What a tab keeps across its own reloads and Back/Forward: the pages it
//! hosts and the editor's draft.
//!
//! Where: in the tab's `sessionStorage` when they fit, since it belongs to
//! this tab alone and the browser drops it with the tab; Chromium gives it
//! about 10 MiB per origin counted in UTF-16, so up to 4 MiB each. Larger
//! ones, up to the 16 MiB a page can be, go to IndexedDB under the tab's
//! id ([`Disk`]), which a sweep empties once the tab is gone. Where the
//! browser has no Web Locks (plain http to an address other than
//! localhost), nothing goes to disk and larger pages survive no reload.
//!
//! Who: `ephemeral.tab` holds the tab's id. A tab opened with
//! `window.open` ("Edit a copy") or duplicated starts with a copy of its
//! opener's `sessionStorage`, id included. `ephemeral.live` is set while a
//! document runs and removed on `pagehide`, so a copy finds it set and the
//! id's lock held, where a reload finds it gone (and a reload after a
//! crash finds it set but the lock free): a copy takes an id of its own
//! and none of the pages, which are not its own.
//!
//! Keys: `ephemeral.hosted` lists `<hash> <format> <author|visitor>`
//! lines, with ` disk` for a page kept on disk; `ephemeral.page.<hash>`
//! holds the text of each page kept here; `ephemeral.draft` and
//! `ephemeral.draft-format` the editor, with `ephemeral.draft-on-disk` set
//! when the draft is on disk instead; `ephemeral.copy` the page a tab
//! opened with "Edit a copy" should start from (see [`Store::mark_copy`]).

use std::cell::RefCell;
use std::rc::Rc;

use ephemeral_shared::PageHash;
use ephemeral_shared::page::Page;
use js_sys::Uint8Array;
use wasm_bindgen::JsValue;
use web_sys::{Storage, Window};

use crate::Listeners;
use crate::disk::Disk;
use crate::page::Format;
use crate::timer::next_task;

const TAB: &str = "ephemeral.tab";
const LIVE: &str = "ephemeral.live";
const HOSTED: &str = "ephemeral.hosted";
const PAGE: &str = "ephemeral.page.";
const DRAFT: &str = "ephemeral.draft";
const DRAFT_FORMAT: &str = "ephemeral.draft-format";
const DRAFT_ON_DISK: &str = "ephemeral.draft-on-disk";
const COPY: &str = "ephemeral.copy";
/// The draft's name on disk; pages go by their hash.
const DRAFT_NAME: &str = "draft";

/// Larger pages and drafts go to disk without trying `sessionStorage`:
/// it holds about 5 M UTF-16 units per origin, and the attempt alone
/// copies the whole text.
const SESSION_MAX_BYTES: usize = 4 << 20;
/// Nothing larger is kept anywhere: the largest page this client shares
/// or accepts.
const MAX_KEPT_BYTES: usize = 16 << 20;

/// A page this tab hosts, as kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kept {
    pub hash: PageHash,
    pub format: Format,
    /// This tab wrote it (else it fetched it).
    pub authored: bool,
}

/// What a tab had before it was reloaded, or was handed by its opener.
pub struct Restored {
    /// The editor's text and format.
    pub draft: (String, Format),
    /// The pages to host again, with their bytes.
    pub pages: Vec<(Kept, Vec<u8>)>,
}

/// Told of a page [`Store::keep`] could not keep after all.
pub type Unkept = Rc<dyn Fn(PageHash)>;

/// A listed page and where its bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Listed {
    kept: Kept,
    on_disk: bool,
}

impl Listed {
    /// `<hash> <format> <author|visitor>`, then ` disk` when the bytes
    /// are on disk rather than in `sessionStorage`.
    fn parse(line: &str) -> Option<Self> {
        let mut words = line.split(' ');
        let hash = words.next()?.parse().ok()?;
        let format = Format::parse(words.next()?);
        let authored = words.next()? == "author";
        Some(Self {
            kept: Kept {
                hash,
                format,
                authored,
            },
            on_disk: words.next() == Some("disk"),
        })
    }

    fn line(&self) -> String {
        let who = if self.kept.authored {
            "author"
        } else {
            "visitor"
        };
        let disk = if self.on_disk { " disk" } else { "" };
        format!(
            "{} {} {who}{disk}",
            self.kept.hash,
            self.kept.format.as_str()
        )
    }
}

/// The tab's storage; every operation is best effort, since a browser may
/// refuse storage (private modes, quota) and the tab must work without it.
pub struct Store {
    storage: Option<Storage>,
    disk: Option<Rc<Disk>>,
    /// This tab's id, once [`Store::restore`] has settled who the tab is;
    /// nothing is written before, lest the empty editor overwrite the
    /// draft it is about to get.
    tab: RefCell<Option<String>>,
    /// Told when a page was not kept after all (a write to disk failed).
    on_unkept: RefCell<Option<Unkept>>,
    window: Window,
    listeners: Listeners,
}

impl Store {
    pub fn new(window: &Window) -> Self {
        Self {
            storage: window.session_storage().ok().flatten(),
            disk: Disk::new(window),
            tab: RefCell::new(None),
            on_unkept: RefCell::new(None),
            window: window.clone(),
            listeners: Listeners::default(),
        }
    }

    /// Calls `f` with a page that turned out not to be kept after
    /// [`Store::keep`] said it would be.
    pub fn on_unkept(&self, f: Unkept) {
        *self.on_unkept.borrow_mut() = Some(f);
    }

    /// Settles who this tab is and returns what it kept: after a reload,
    /// its draft and pages; in a copy of another tab, the page "Edit a
    /// copy" asked for (else the opener's draft) and no pages.
    pub async fn restore(&self) -> Restored {
        let named = self.get(TAB);
        let copy = self.get(COPY);
        self.remove(COPY);
        let copied = copy.is_some() || self.is_copy_of_live_tab(named.as_deref()).await;
        let tab = match &named {
            Some(tab) if !copied => tab.clone(),
            _ => new_tab_id(),
        };
        self.set(TAB, &tab);
        self.mark_live();
        *self.tab.borrow_mut() = Some(tab.clone());
        // Kept under the id the storage named: the opener's, in a copy.
        let owner = named.as_deref().unwrap_or(&tab);
        let list = if copied { Vec::new() } else { self.list() };
        let draft_on_disk = self.get(DRAFT_ON_DISK).is_some();
        if let Some(disk) = &self.disk {
            let has_entries = !copied && (draft_on_disk || list.iter().any(|l| l.on_disk));
            disk.start(&tab, has_entries);
        }

        let wanted = copy.as_deref().and_then(parse_copy_mark);
        let mut draft = None;
        if let Some((hash, format)) = wanted {
            let listed = self.list().into_iter().find(|l| l.kept.hash == hash);
            if let Some(listed) = listed
                && let Some(bytes) = self.page_bytes(owner, listed).await
                && let Ok(text) = String::from_utf8(bytes)
            {
                draft = Some((text, format));
            }
        }
        let draft = match draft {
            Some(draft) => draft,
            None => self.draft(owner, draft_on_disk).await,
        };

        if copied {
            self.forget_hosted();
            // Its own now: kept under this tab's id.
            self.keep_draft(&draft.0, draft.1);
        }
        let mut pages = Vec::new();
        let mut still = Vec::new();
        for &listed in &list {
            if let Some(bytes) = self.page_bytes(&tab, listed).await {
                pages.push((listed.kept, bytes));
                still.push(listed);
            }
        }
        if still.len() != list.len() {
            self.write_list(&still);
        }
        Restored { draft, pages }
    }

    /// Marks the storage as a live document's until `pagehide`, after
    /// which the next document in this tab is this tab come back.
    fn mark_live(&self) {
        let Some(storage) = self.storage.clone() else {
            return;
        };
        let _ = storage.set_item(LIVE, "1");
        let registered = self
            .listeners
            .on(self.window.as_ref(), "pagehide", move |_| {
                let _ = storage.remove_item(LIVE);
            });
        if let Err(error) = registered {
            warn("could not watch the tab leave:", &error);
        }
    }

    /// Whether this document's storage was copied from a tab still open:
    /// it was marked live, and the tab it names is alive.
    async fn is_copy_of_live_tab(&self, named: Option<&str>) -> bool {
        match (&self.disk, named, self.get(LIVE)) {
            (Some(disk), Some(tab), Some(_)) => disk.is_alive(tab).await,
            _ => false,
        }
    }

    /// The bytes of a listed page, kept by `tab`.
    async fn page_bytes(&self, tab: &str, listed: Listed) -> Option<Vec<u8>> {
        if !listed.on_disk {
            return self
                .get(&page_key(listed.kept.hash))
                .map(String::into_bytes);
        }
        let value = self
            .disk
            .as_ref()?
            .get(tab, &listed.kept.hash.to_string())
            .await?;
        Some(Uint8Array::new(&value).to_vec())
    }

    /// The draft `tab` kept.
    async fn draft(&self, tab: &str, on_disk: bool) -> (String, Format) {
        let format = Format::parse(&self.get(DRAFT_FORMAT).unwrap_or_default());
        let text = match (&self.disk, on_disk) {
            (Some(disk), true) => disk
                .get(tab, DRAFT_NAME)
                .await
                .and_then(|text| text.as_string()),
            _ => self.get(DRAFT),
        };
        (text.unwrap_or_default(), format)
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

    fn list(&self) -> Vec<Listed> {
        self.get(HOSTED)
            .unwrap_or_default()
            .lines()
            .filter_map(Listed::parse)
            .collect()
    }

    fn write_list(&self, list: &[Listed]) {
        let lines: Vec<String> = list.iter().map(Listed::line).collect();
        self.set(HOSTED, &lines.join("\n"));
    }

    /// Keeps a hosted page; `false` when it cannot be kept, and then it
    /// survives no reload. A page bound for disk counts as kept at once;
    /// should the write fail, [`Store::on_unkept`] hears of it.
    pub fn keep(&self, kept: Kept, page: &Page) -> bool {
        let Some(tab) = self.tab.borrow().clone() else {
            return false;
        };
        if page.len() > MAX_KEPT_BYTES {
            return false;
        }
        let in_session = page.len() <= SESSION_MAX_BYTES
            && std::str::from_utf8(page).is_ok_and(|text| self.set(&page_key(kept.hash), text));
        if !in_session {
            let Some(disk) = self.disk.clone() else {
                return false;
            };
            let page = page.clone();
            let unkept = self.on_unkept.borrow().clone();
            wasm_bindgen_futures::spawn_local(async move {
                // Copying and cloning 16 MiB for IndexedDB takes a while:
                // not in the task that shows the page.
                next_task().await;
                let bytes = Uint8Array::from(page.bytes());
                let name = kept.hash.to_string();
                if let Err(error) = disk.put(&tab, &name, &bytes).await {
                    warn("could not keep a page for a reload:", &error);
                    if let Some(unkept) = unkept {
                        unkept(kept.hash);
                    }
                }
            });
        }
        let mut list = self.list();
        list.retain(|l| l.kept.hash != kept.hash);
        list.push(Listed {
            kept,
            on_disk: !in_session,
        });
        self.write_list(&list);
        true
    }

    /// Whether `hash` is kept.
    fn is_kept(&self, hash: PageHash) -> bool {
        self.list().iter().any(|l| l.kept.hash == hash)
    }

    /// Forgets every hosted page: for a tab that got them by being opened
    /// from another, whose pages are not its own. What the other tab keeps
    /// on disk is its own, and stays.
    fn forget_hosted(&self) {
        for listed in self.list() {
            self.remove(&page_key(listed.kept.hash));
        }
        self.remove(HOSTED);
    }

    /// Keeps the draft; one too large to keep is dropped rather than kept
    /// stale.
    pub fn keep_draft(&self, text: &str, format: Format) {
        let Some(tab) = self.tab.borrow().clone() else {
            return;
        };
        self.set(DRAFT_FORMAT, format.as_str());
        let was_on_disk = self.get(DRAFT_ON_DISK).is_some();
        if text.len() <= SESSION_MAX_BYTES && self.set(DRAFT, text) {
            if was_on_disk {
                self.remove(DRAFT_ON_DISK);
                if let Some(disk) = self.disk.clone() {
                    wasm_bindgen_futures::spawn_local(async move {
                        disk.delete(&tab, DRAFT_NAME).await;
                    });
                }
            }
            return;
        }
        self.remove(DRAFT);
        let Some(disk) = self.disk.clone().filter(|_| text.len() <= MAX_KEPT_BYTES) else {
            self.remove(DRAFT_ON_DISK);
            return;
        };
        self.set(DRAFT_ON_DISK, "1");
        let text = JsValue::from_str(text);
        wasm_bindgen_futures::spawn_local(async move {
            if let Err(error) = disk.put(&tab, DRAFT_NAME, &text).await {
                warn("could not keep the draft for a reload:", &error);
            }
        });
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
}

fn parse_copy_mark(mark: &str) -> Option<(PageHash, Format)> {
    let (hash, format) = mark.split_once(' ')?;
    Some((hash.parse().ok()?, Format::parse(format)))
}

fn page_key(hash: PageHash) -> String {
    format!("{PAGE}{hash}")
}

/// 128 random bits in hex: unique among the tabs of one browser.
fn new_tab_id() -> String {
    (0..4)
        .map(|_| format!("{:08x}", (js_sys::Math::random() * 4_294_967_296.0) as u32))
        .collect()
}

fn warn(what: &str, error: &JsValue) {
    web_sys::console::warn_2(&what.into(), error);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_page_reads_back_as_written() {
        let hash = PageHash::of(b"a page");
        for (format, authored, on_disk) in [
            (Format::Text, true, false),
            (Format::Markdown, false, true),
            (Format::Html, true, true),
        ] {
            let listed = Listed {
                kept: Kept {
                    hash,
                    format,
                    authored,
                },
                on_disk,
            };
            assert_eq!(Listed::parse(&listed.line()), Some(listed));
        }
    }

    #[test]
    fn a_line_without_a_place_is_in_session_storage() {
        let hash = PageHash::of(b"a page");
        let listed = Listed::parse(&format!("{hash} markdown visitor")).expect("a listed page");
        assert!(!listed.on_disk);
        assert!(!listed.kept.authored);
        assert_eq!(listed.kept.format, Format::Markdown);
        assert_eq!(Listed::parse("not-a-hash text author"), None);
        assert_eq!(Listed::parse(&hash.to_string()), None);
    }

    #[test]
    fn a_copy_mark_names_a_page_and_its_format() {
        let hash = PageHash::of(b"a page");
        assert_eq!(
            parse_copy_mark(&format!("{hash} html")),
            Some((hash, Format::Html))
        );
        assert_eq!(parse_copy_mark("nothing"), None);
    }
}
