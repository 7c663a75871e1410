//! Each page's next routing deadline, earliest first: what the one timer
//! task of the registry sleeps until.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use ephemeral_shared::PageHash;

/// Each page's next deadline, earliest first: what the timer waits for.
#[derive(Debug, Default)]
pub struct Timers {
    of_page: HashMap<PageHash, Duration>,
    order: BTreeSet<(Duration, PageHash)>,
}

impl Timers {
    /// Sets the page's deadline; whether it is now the earliest of all.
    pub fn set(&mut self, hash: PageHash, deadline: Option<Duration>) -> bool {
        if self.of_page.get(&hash) == deadline.as_ref() {
            return false;
        }
        if let Some(old) = self.of_page.remove(&hash) {
            self.order.remove(&(old, hash));
        }
        let Some(at) = deadline else {
            return false;
        };
        self.of_page.insert(hash, at);
        self.order.insert((at, hash));
        self.order.first() == Some(&(at, hash))
    }

    pub fn first(&self) -> Option<Duration> {
        self.order.first().map(|(at, _)| *at)
    }

    /// Takes off the pages whose deadline has come.
    pub fn take_due(&mut self, now: Duration) -> Vec<PageHash> {
        let mut due = Vec::new();
        while let Some(&(at, hash)) = self.order.first()
            && at <= now
        {
            self.order.pop_first();
            self.of_page.remove(&hash);
            due.push(hash);
        }
        due
    }
}
