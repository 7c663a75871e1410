//! Web Locks (`navigator.locks`), bound here because web-sys offers them
//! only behind `--cfg=web_sys_unstable_apis`: the two calls
//! [`crate::disk`] makes — hold a lock for the life of the document, and
//! list the locks of the origin.
//!
//! A lock is the one sign of life the browser keeps for us: it is let go
//! when its document ends however it ends (closed, reloaded, crashed,
//! discarded), which no event of the page reliably tells.

use std::collections::BTreeSet;

use js_sys::{Array, Function, Promise, Reflect};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::Window;

#[wasm_bindgen]
extern "C" {
    type LockManager;

    #[wasm_bindgen(method, catch)]
    fn request(this: &LockManager, name: &str, callback: &Function) -> Result<Promise, JsValue>;

    #[wasm_bindgen(method, catch)]
    fn query(this: &LockManager) -> Result<Promise, JsValue>;
}

/// The origin's locks, where the browser has them (secure contexts:
/// https and localhost).
pub struct Locks(LockManager);

/// The names of the origin's locks at one instant.
#[derive(Debug, Default)]
pub struct Taken {
    /// Granted to some document.
    pub held: BTreeSet<String>,
    /// Asked for and not granted yet.
    pub pending: BTreeSet<String>,
}

impl Taken {
    /// Held or asked for: some document is alive under this name.
    pub fn claimed(&self, name: &str) -> bool {
        self.held.contains(name) || self.pending.contains(name)
    }
}

impl Locks {
    pub fn of(window: &Window) -> Option<Self> {
        let locks = Reflect::get(&window.navigator(), &"locks".into()).ok()?;
        (!locks.is_undefined() && !locks.is_null()).then(|| Self(locks.unchecked_into()))
    }

    /// Asks for `name` and, once granted, holds it until this document
    /// ends: the lock's callback returns a promise that never settles.
    pub fn hold(&self, name: &str) -> Result<(), JsValue> {
        let forever = Closure::once_into_js(|_lock: JsValue| Promise::new(&mut |_, _| {}));
        // What it returns settles once the lock is let go: never.
        let _ = self.0.request(name, forever.unchecked_ref())?;
        Ok(())
    }

    /// The locks held and asked for now, by every document of the origin.
    pub async fn taken(&self) -> Result<Taken, JsValue> {
        let snapshot = JsFuture::from(self.0.query()?).await?;
        let names = |field: &str| -> Result<BTreeSet<String>, JsValue> {
            let infos = Reflect::get(&snapshot, &field.into())?;
            Ok(Array::from(&infos)
                .iter()
                .filter_map(|info| Reflect::get(&info, &"name".into()).ok()?.as_string())
                .collect())
        };
        Ok(Taken {
            held: names("held")?,
            pending: names("pending")?,
        })
    }
}
