//! What a tab keeps on disk, in IndexedDB, under its own id: pages and
//! drafts too large for `sessionStorage` — and the sweep that removes them
//! once no tab owns them, since IndexedDB, unlike `sessionStorage`, does
//! not end with the tab.
//!
//! A tab holds a Web Lock named after its id for as long as its document
//! lives. Sweeping (when a tab starts, then every minute while it lives)
//! removes everything kept under ids whose lock nobody holds or asks for.
//! A reloading tab lets go of its lock until its new document asks again,
//! so an id is swept only when it is unclaimed at two looks [`GRACE_MS`]
//! apart and was not seen — started, or wrote — since the first look
//! ([`Db::forget_unless_seen_since`]). The bytes of a tab closed while no
//! other tab of the origin is open stay until the origin is next opened.

use std::cell::Cell;
use std::rc::Rc;

use js_sys::Promise;
use wasm_bindgen::prelude::*;
use web_sys::Window;

use crate::idb::{self, Db};
use crate::locks::Locks;

/// How long an unclaimed id may take to be claimed again before its
/// entries go: more than a reload takes to start the new document.
const GRACE_MS: i32 = 10_000;
/// Between sweeps while the tab lives, so a closed tab's pages go within
/// about a minute while any tab of the origin stays open.
const SWEEP_EVERY_MS: i32 = 60_000;
/// `<html data-swept>`: how many sweeps this tab has finished. A test hook.
const SWEPT: &str = "data-swept";

/// This origin's IndexedDB, where this browser can also tell live tabs
/// from gone ones.
pub struct Disk {
    window: Window,
    locks: Locks,
    /// The database, opened once ([`Db::opening`]).
    db: Promise,
    /// This document asked for its tab's lock: only then may it write, or
    /// a sweep elsewhere would take what it writes for a closed tab's.
    claimed: Cell<bool>,
}

impl Disk {
    /// `None` without Web Locks (outside secure contexts: plain http to
    /// an address other than localhost) or without IndexedDB: keeping
    /// bytes there with no way to tell when to remove them would leave
    /// pages on disk, so nothing goes to disk.
    pub fn new(window: &Window) -> Option<Rc<Self>> {
        let locks = Locks::of(window)?;
        window.indexed_db().ok()??;
        Some(Rc::new(Self {
            window: window.clone(),
            locks,
            db: Db::opening(window),
            claimed: Cell::new(false),
        }))
    }

    /// Whether a live document holds `tab`'s lock: a tab whose
    /// `sessionStorage` names `tab` is then a copy of it (opened with
    /// `window.open`, or duplicated), not `tab` come back.
    pub async fn is_alive(&self, tab: &str) -> bool {
        match self.locks.taken().await {
            Ok(taken) => taken.held.contains(&lock_name(tab)),
            Err(error) => {
                warn("could not list the tabs' locks:", &error);
                false
            }
        }
    }

    /// This document is `tab` from now on: holds its lock, marks it seen
    /// when it has entries (a reload), and sweeps now and then.
    pub fn start(self: &Rc<Self>, tab: &str, has_entries: bool) {
        if let Err(error) = self.locks.hold(&lock_name(tab)) {
            warn("could not hold this tab's lock:", &error);
            return;
        }
        self.claimed.set(true);
        let disk = self.clone();
        let tab = tab.to_string();
        wasm_bindgen_futures::spawn_local(async move {
            if has_entries {
                let touched = async { disk.db().await?.touch(&tab).await }.await;
                if let Err(error) = touched {
                    warn("could not mark this tab as back:", &error);
                }
            }
            disk.sweep_while_open(&tab).await;
        });
    }

    /// Keeps `value` as `tab`'s `name`.
    pub async fn put(&self, tab: &str, name: &str, value: &JsValue) -> Result<(), JsValue> {
        if !self.claimed.get() {
            return Err(JsValue::from_str("this tab holds no lock"));
        }
        self.db().await?.put(tab, name, value).await
    }

    /// `tab`'s `name`, if kept.
    pub async fn get(&self, tab: &str, name: &str) -> Option<JsValue> {
        let got = async { self.db().await?.get(tab, name).await }.await;
        match got {
            Ok(value) if !value.is_undefined() => Some(value),
            Ok(_) => None,
            Err(error) => {
                warn("could not read what this tab kept:", &error);
                None
            }
        }
    }

    pub async fn delete(&self, tab: &str, name: &str) {
        let deleted = async { self.db().await?.delete(tab, name).await }.await;
        if let Err(error) = deleted {
            warn("could not delete what this tab kept:", &error);
        }
    }

    async fn db(&self) -> Result<Db, JsValue> {
        Db::opened(&self.db).await
    }

    /// Sweeps at once, then every [`SWEEP_EVERY_MS`], until a sweep fails
    /// (the database will not open, or the locks cannot be listed).
    async fn sweep_while_open(&self, tab: &str) {
        let mut sweeps = 0u32;
        loop {
            if let Err(error) = self.sweep(tab).await {
                warn("stopped sweeping closed tabs' pages:", &error);
                return;
            }
            sweeps += 1;
            if let Some(root) = self.window.document().and_then(|d| d.document_element()) {
                let _ = root.set_attribute(SWEPT, &sweeps.to_string());
            }
            if let Err(error) = sleep(&self.window, SWEEP_EVERY_MS).await {
                warn("stopped sweeping closed tabs' pages:", &error);
                return;
            }
        }
    }

    /// Removes what every tab gone for good kept (see the module's
    /// comment).
    async fn sweep(&self, own: &str) -> Result<(), JsValue> {
        let first_look = idb::now();
        let db = self.db().await?;
        let taken = self.locks.taken().await?;
        let unclaimed: Vec<String> = db
            .tabs()
            .await?
            .into_iter()
            .filter(|tab| tab != own && !taken.claimed(&lock_name(tab)))
            .collect();
        if unclaimed.is_empty() {
            return Ok(());
        }
        sleep(&self.window, GRACE_MS).await?;
        let taken = self.locks.taken().await?;
        for tab in unclaimed {
            if !taken.claimed(&lock_name(&tab)) {
                db.forget_unless_seen_since(&tab, first_look).await?;
            }
        }
        Ok(())
    }
}

fn lock_name(tab: &str) -> String {
    format!("ephemeral.tab.{tab}")
}

async fn sleep(window: &Window, ms: i32) -> Result<(), JsValue> {
    let mut armed = Ok(0);
    let done = Promise::new(&mut |resolve, _| {
        armed = window.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms);
    });
    armed?;
    wasm_bindgen_futures::JsFuture::from(done).await.map(drop)
}

fn warn(what: &str, error: &JsValue) {
    web_sys::console::warn_2(&what.into(), error);
}
