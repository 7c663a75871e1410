//! The client's one timer: a `setTimeout` re-armed to whatever deadline
//! the core names next, so the tab wakes exactly when there is something
//! to do and never polls.

use std::cell::Cell;
use std::time::Duration;

use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::Window;

/// `setTimeout` takes a signed 32-bit delay; longer ones fire at once.
const MAX_DELAY_MS: f64 = i32::MAX as f64;

/// One pending `setTimeout`, moved when the deadline moves.
pub struct Timer {
    window: Window,
    callback: Closure<dyn FnMut()>,
    /// The deadline armed, and the browser's handle for it.
    armed: Cell<Option<(Duration, i32)>>,
}

impl Timer {
    /// A timer that calls `fire` when it goes off.
    pub fn new(window: Window, fire: impl FnMut() + 'static) -> Self {
        Self {
            window,
            callback: Closure::new(fire),
            armed: Cell::new(None),
        }
    }

    /// Fires once at `deadline` (`now` and `deadline` on the same clock);
    /// `None` disarms it. Arming the deadline already armed does nothing.
    pub fn arm(&self, deadline: Option<Duration>, now: Duration) {
        if self.armed.get().map(|(at, _)| at) == deadline {
            return;
        }
        self.disarm();
        let Some(deadline) = deadline else {
            return;
        };
        // Rounded up: a timer that fires early finds nothing due and is
        // only armed again.
        let delay = deadline.saturating_sub(now).as_secs_f64() * 1000.0;
        let delay = delay.ceil().min(MAX_DELAY_MS) as i32;
        let handle = self
            .window
            .set_timeout_with_callback_and_timeout_and_arguments_0(
                self.callback.as_ref().unchecked_ref(),
                delay,
            );
        if let Ok(handle) = handle {
            self.armed.set(Some((deadline, handle)));
        }
    }

    /// Called first thing when the timer fires: nothing is armed then.
    pub fn fired(&self) {
        self.armed.set(None);
    }

    fn disarm(&self) {
        if let Some((_, handle)) = self.armed.take() {
            self.window.clear_timeout_with_handle(handle);
        }
    }
}

/// Resolves in a later task of the event loop (not a microtask, which
/// would run before the tab could handle anything else). Long work awaits
/// it between slices, so the tab draws and answers meanwhile.
pub async fn next_task() {
    let Some(window) = web_sys::window() else {
        return;
    };
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        let _ = window.set_timeout_with_callback(&resolve);
    });
    let _: Result<JsValue, JsValue> = wasm_bindgen_futures::JsFuture::from(promise).await;
}
