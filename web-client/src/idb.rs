//! IndexedDB as futures, for [`crate::disk`]: the `ephemeral` database,
//! its two object stores, and the few transactions the client makes.
//!
//! - `tabs`: tab id → when that tab last wrote or started (`Date.now()`
//!   ms), so a sweep can tell a tab that came back from one that is gone.
//! - `kept`: `[tab id, name]` → what the tab keeps: a page's bytes under
//!   its hash, or the editor's draft under `draft`.
//!
//! Writes are committed explicitly rather than when the transaction runs
//! out of requests, so one made as the tab goes away (`pagehide`) is
//! already on its way when the document ends.

use std::collections::BTreeSet;

use js_sys::{Array, Promise};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{JsFuture, future_to_promise};
use web_sys::{IdbDatabase, IdbKeyRange, IdbRequest, IdbTransaction, IdbTransactionMode, Window};

const NAME: &str = "ephemeral";
const VERSION: u32 = 1;
const TABS: &str = "tabs";
const KEPT: &str = "kept";

/// The open database.
pub struct Db(IdbDatabase);

impl Db {
    /// Opens the database as a promise, which any number of callers can
    /// await ([`Db::opened`]) for the one opening.
    pub fn opening(window: &Window) -> Promise {
        let window = window.clone();
        future_to_promise(async move { Ok(Db::open(&window).await?.0.into()) })
    }

    /// The database `opening` opened.
    pub async fn opened(opening: &Promise) -> Result<Db, JsValue> {
        Ok(Db(JsFuture::from(opening.clone()).await?.dyn_into()?))
    }

    /// Opens (and on first use creates) the database.
    async fn open(window: &Window) -> Result<Db, JsValue> {
        let factory = window
            .indexed_db()?
            .ok_or_else(|| JsValue::from_str("no IndexedDB"))?;
        let request = factory.open_with_u32(NAME, VERSION)?;
        let opening = request.clone();
        let upgrade: Closure<dyn FnMut(JsValue)> = Closure::once(move |_: JsValue| {
            if let Ok(db) = opening.result().and_then(|db| db.dyn_into::<IdbDatabase>()) {
                for store in [TABS, KEPT] {
                    if let Err(error) = db.create_object_store(store) {
                        web_sys::console::warn_2(&"could not create a store:".into(), &error);
                    }
                }
            }
        });
        request.set_onupgradeneeded(Some(upgrade.as_ref().unchecked_ref()));
        let opened = done(&request).await;
        request.set_onupgradeneeded(None);
        Ok(Db(opened?.dyn_into()?))
    }

    /// Keeps `value` as the tab's `name`, and marks the tab as just seen.
    pub async fn put(&self, tab: &str, name: &str, value: &JsValue) -> Result<(), JsValue> {
        let tx = self.transaction(&[TABS, KEPT], IdbTransactionMode::Readwrite)?;
        tx.object_store(TABS)?
            .put_with_key(&now().into(), &tab.into())?;
        tx.object_store(KEPT)?
            .put_with_key(value, &key(tab, name))?;
        committed(&tx).await
    }

    /// The tab's `name`, or `undefined`.
    pub async fn get(&self, tab: &str, name: &str) -> Result<JsValue, JsValue> {
        let tx = self.transaction(&[KEPT], IdbTransactionMode::Readonly)?;
        let request = tx.object_store(KEPT)?.get(&key(tab, name))?;
        done(&request).await
    }

    pub async fn delete(&self, tab: &str, name: &str) -> Result<(), JsValue> {
        let tx = self.transaction(&[KEPT], IdbTransactionMode::Readwrite)?;
        tx.object_store(KEPT)?.delete(&key(tab, name))?;
        committed(&tx).await
    }

    /// Marks the tab as just seen.
    pub async fn touch(&self, tab: &str) -> Result<(), JsValue> {
        let tx = self.transaction(&[TABS], IdbTransactionMode::Readwrite)?;
        tx.object_store(TABS)?
            .put_with_key(&now().into(), &tab.into())?;
        committed(&tx).await
    }

    /// Every tab id that has a record or keeps something.
    pub async fn tabs(&self) -> Result<BTreeSet<String>, JsValue> {
        let tx = self.transaction(&[TABS, KEPT], IdbTransactionMode::Readonly)?;
        let tabs = done(&tx.object_store(TABS)?.get_all_keys()?);
        let kept = done(&tx.object_store(KEPT)?.get_all_keys()?);
        let mut ids = BTreeSet::new();
        for key in Array::from(&tabs.await?).iter() {
            ids.extend(key.as_string());
        }
        for key in Array::from(&kept.await?).iter() {
            if let Some(key) = key.dyn_ref::<Array>() {
                ids.extend(key.get(0).as_string());
            }
        }
        Ok(ids)
    }

    /// Deletes everything the tab keeps, unless it was seen at or after
    /// `since` (ms): then it came back. One transaction, so the tab cannot
    /// come back between the look and the deletion.
    pub async fn forget_unless_seen_since(&self, tab: &str, since: f64) -> Result<(), JsValue> {
        let tx = self.transaction(&[TABS, KEPT], IdbTransactionMode::Readwrite)?;
        let tabs = tx.object_store(TABS)?;
        let seen = done(&tabs.get(&tab.into())?).await?.as_f64();
        if seen.is_some_and(|seen| seen >= since) {
            return Ok(());
        }
        tabs.delete(&tab.into())?;
        // Array keys sort after strings: `[tab, []]` follows every
        // `[tab, name]`, and `[tab]` precedes them.
        let all = IdbKeyRange::bound(
            &Array::of1(&tab.into()).into(),
            &Array::of2(&tab.into(), &Array::new()).into(),
        )?;
        tx.object_store(KEPT)?.delete(&all)?;
        committed(&tx).await
    }

    fn transaction(
        &self,
        stores: &[&str],
        mode: IdbTransactionMode,
    ) -> Result<IdbTransaction, JsValue> {
        let names: Array = stores.iter().map(|s| JsValue::from_str(s)).collect();
        self.0.transaction_with_str_sequence_and_mode(&names, mode)
    }
}

fn key(tab: &str, name: &str) -> JsValue {
    Array::of2(&tab.into(), &name.into()).into()
}

/// Wall-clock ms, which every tab of the origin reads alike.
pub fn now() -> f64 {
    js_sys::Date::now()
}

/// The request's result once it succeeds. Listens at once, before any
/// await, so no event is missed; the future resumes in the microtask
/// checkpoint of the success event, while the transaction is still active
/// for further requests.
fn done(request: &IdbRequest) -> impl Future<Output = Result<JsValue, JsValue>> + use<> {
    let settled = Promise::new(&mut |resolve, reject| {
        request.set_onsuccess(Some(&resolve));
        request.set_onerror(Some(&reject));
    });
    let request = request.clone();
    async move {
        JsFuture::from(settled).await?;
        request.result()
    }
}

/// Commits `tx` now and waits until it is durable (or failed).
async fn committed(tx: &IdbTransaction) -> Result<(), JsValue> {
    let settled = Promise::new(&mut |resolve, reject| {
        tx.set_oncomplete(Some(&resolve));
        tx.set_onabort(Some(&reject));
    });
    // Standard (IndexedDB 3.0, in every current browser); web-sys marks it
    // deprecated all the same.
    #[expect(deprecated, reason = "IDBTransaction.commit() is not deprecated")]
    tx.commit()?;
    JsFuture::from(settled).await.map(drop)
}
