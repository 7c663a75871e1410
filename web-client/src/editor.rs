//! The author's side of the home page: the editor, its format (Text,
//! Markdown, HTML), Write / Preview, the live size against the limit, the
//! draft kept across reloads, and images pasted or dropped in as `data:`
//! URLs, so a page stays one self-contained byte string, verified whole.

use std::cell::Cell;
use std::rc::{Rc, Weak};

use ephemeral_shared::size::{Bytes, compared};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{
    Document, File, FileList, FileReader, HtmlElement, HtmlIFrameElement, HtmlInputElement,
    HtmlTextAreaElement,
};

use crate::Listeners;
use crate::page::{self, Format};
use crate::render::Renderer;
use crate::store::Store;
use crate::view::element;

/// Drafts up to this size are saved on every keystroke; larger ones when
/// the editor loses focus or the tab is left, so typing stays quick.
const DRAFT_ON_INPUT_BYTES: usize = 256 * 1024;

/// The editor and what belongs to it.
pub struct Editor {
    pub textarea: HtmlTextAreaElement,
    pub share: HtmlElement,
    formats: Vec<HtmlInputElement>,
    write_tab: HtmlElement,
    preview_tab: HtmlElement,
    preview: HtmlElement,
    preview_renderer: Rc<Renderer>,
    size: HtmlElement,
    hint: HtmlElement,
    error: HtmlElement,
    store: Rc<Store>,
    max_bytes: usize,
    format: Cell<Format>,
    previewing: Cell<bool>,
    listeners: Listeners,
}

impl Editor {
    pub fn find(
        document: &Document,
        store: Rc<Store>,
        max_bytes: usize,
    ) -> Result<Rc<Self>, JsValue> {
        let mut formats = Vec::new();
        for format in Format::ALL {
            formats.push(element::<HtmlInputElement>(
                document,
                &format!("format-{}", format.as_str()),
            )?);
        }
        let preview_renderer = Renderer::new(
            document,
            element(document, "preview-text")?,
            element::<HtmlIFrameElement>(document, "preview-frame")?,
        );
        let editor = Rc::new(Self {
            textarea: element(document, "editor")?,
            share: element(document, "share")?,
            formats,
            write_tab: element(document, "write-tab")?,
            preview_tab: element(document, "preview-tab")?,
            preview: element(document, "preview")?,
            preview_renderer,
            size: element(document, "size")?,
            hint: element(document, "format-hint")?,
            error: element(document, "home-error")?,
            store,
            max_bytes,
            format: Cell::new(Format::Text),
            previewing: Cell::new(false),
            listeners: Listeners::default(),
        });
        editor.listen()?;
        Ok(editor)
    }

    /// Puts the tab's draft (see [`Store::restore`]) in the editor.
    pub fn load(&self, (text, format): (String, Format)) {
        self.textarea.set_value(&text);
        self.set_format(format);
        self.edited();
    }

    pub fn format(&self) -> Format {
        self.format.get()
    }

    pub fn text(&self) -> String {
        // Read raw and encoded by the browser: a page can be 16 MiB, and
        // this runs on every keystroke.
        js_sys::Reflect::get(&self.textarea, &JsValue::from_str("value")).map_or_else(
            |_| self.textarea.value(),
            |value| crate::utf8::string(&value),
        )
    }

    pub fn set_error(&self, text: &str) {
        self.error.set_text_content(Some(text));
    }

    /// The text as a page to share, or `None` having said why not.
    pub fn page(&self) -> Option<String> {
        let text = self.text();
        if text.trim().is_empty() {
            self.set_error("Write something first.");
            return None;
        }
        if text.len() > self.max_bytes {
            let (size, max) = compared(text.len() as u64, self.max_bytes as u64);
            self.set_error(&format!("This page is {size}; pages can be up to {max}."));
            return None;
        }
        self.set_error("");
        self.store.keep_draft(&text, self.format());
        Some(text)
    }

    /// Keeps the draft now (before the tab goes, or on blur).
    pub fn save_draft(&self) {
        self.store.keep_draft(&self.text(), self.format());
    }

    fn set_format(&self, format: Format) {
        self.format.set(format);
        for (input, f) in self.formats.iter().zip(Format::ALL) {
            input.set_checked(f == format);
        }
        self.hint.set_text_content(Some(match format {
            Format::Text => "Text: readers see exactly what you type; links become clickable.",
            Format::Markdown => {
                "Markdown: # headings, **bold**, lists, [links](https://…), and images you paste or drop in."
            }
            Format::Html => {
                "HTML: your own markup and styles, shown in a sandbox: no scripts, forms or outside files; images you paste or drop in."
            }
        }));
        if self.previewing.get() {
            self.render_preview();
        }
    }

    /// The text changed: the size against the limit, and the draft.
    fn edited(&self) {
        let text = self.text();
        let over = text.len() > self.max_bytes;
        self.size.set_text_content(Some(&format!(
            "{} of {}{}",
            Bytes(text.len() as u64),
            Bytes(self.max_bytes as u64),
            if over { ": too large to share" } else { "" }
        )));
        let _ = self
            .size
            .set_attribute("data-over", if over { "true" } else { "false" });
        if text.len() <= DRAFT_ON_INPUT_BYTES {
            self.store.keep_draft(&text, self.format());
        }
    }

    fn set_previewing(&self, on: bool) {
        self.previewing.set(on);
        self.textarea.set_hidden(on);
        self.preview.set_hidden(!on);
        let pressed = |b: bool| if b { "true" } else { "false" };
        let _ = self.write_tab.set_attribute("aria-pressed", pressed(!on));
        let _ = self.preview_tab.set_attribute("aria-pressed", pressed(on));
        if on {
            self.render_preview();
        } else {
            self.preview_renderer.clear();
            let _ = self.textarea.focus();
        }
    }

    fn render_preview(&self) {
        self.preview_renderer
            .show(&self.text(), self.format(), false);
    }

    /// Sizes the preview frame after the window's width changed.
    pub fn fit(&self) {
        if self.previewing.get() {
            self.preview_renderer.fit();
        }
    }

    fn listen(self: &Rc<Self>) -> Result<(), JsValue> {
        let me = Rc::downgrade(self);
        self.listeners
            .on(self.textarea.as_ref(), "input", move |_| {
                with(&me, |e| e.edited())
            })?;
        let me = Rc::downgrade(self);
        self.listeners
            .on(self.textarea.as_ref(), "change", move |_| {
                with(&me, |e| e.save_draft())
            })?;
        for (input, format) in self.formats.iter().zip(Format::ALL) {
            let me = Rc::downgrade(self);
            self.listeners.on(input.as_ref(), "change", move |_| {
                with(&me, |e| {
                    e.set_format(format);
                    e.save_draft();
                })
            })?;
        }
        let me = Rc::downgrade(self);
        self.listeners
            .on(self.write_tab.as_ref(), "click", move |_| {
                with(&me, |e| e.set_previewing(false))
            })?;
        let me = Rc::downgrade(self);
        self.listeners
            .on(self.preview_tab.as_ref(), "click", move |_| {
                with(&me, |e| e.set_previewing(true))
            })?;
        let me = Rc::downgrade(self);
        self.listeners
            .on(self.textarea.as_ref(), "paste", move |event| {
                let Ok(event) = event.dyn_into::<web_sys::ClipboardEvent>() else {
                    return;
                };
                let files = event.clipboard_data().and_then(|data| data.files());
                if let Some(editor) = me.upgrade()
                    && editor.take_images(files)
                {
                    event.prevent_default();
                }
            })?;
        // A file dragged over the editor would otherwise be opened by the
        // browser in place of this tab, ending what it hosts.
        self.listeners
            .on(self.textarea.as_ref(), "dragover", move |event| {
                if let Ok(event) = event.dyn_into::<web_sys::DragEvent>()
                    && has_files(&event)
                {
                    event.prevent_default();
                }
            })?;
        let me = Rc::downgrade(self);
        self.listeners
            .on(self.textarea.as_ref(), "drop", move |event| {
                let Ok(event) = event.dyn_into::<web_sys::DragEvent>() else {
                    return;
                };
                if !has_files(&event) {
                    return;
                }
                event.prevent_default();
                let files = event.data_transfer().and_then(|data| data.files());
                if let Some(editor) = me.upgrade() {
                    editor.take_images(files);
                }
            })?;
        Ok(())
    }

    /// Reads every image in `files` as a `data:` URL and inserts it at the
    /// cursor. Returns whether there were images (then the browser's own
    /// paste must not happen).
    fn take_images(self: &Rc<Self>, files: Option<FileList>) -> bool {
        let images: Vec<File> = files
            .map(|list| {
                (0..list.length())
                    .filter_map(|i| list.item(i))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
            .into_iter()
            .filter(|file| file.type_().starts_with("image/"))
            .collect();
        if images.is_empty() {
            return false;
        }
        if self.format() == Format::Text {
            self.set_error(
                "Images need a Markdown or HTML page: choose one above, then paste or drop the image again.",
            );
            return true;
        }
        for file in images {
            self.read_image(file);
        }
        true
    }

    fn read_image(self: &Rc<Self>, file: File) {
        let Ok(reader) = FileReader::new() else {
            return;
        };
        let me = Rc::downgrade(self);
        let name = file.name();
        let loaded = reader.clone();
        let on_load = Closure::once_into_js(move |_: JsValue| {
            let url = loaded.result().ok().and_then(|r| r.as_string());
            if let (Some(url), Some(editor)) = (url, me.upgrade()) {
                editor.insert_image(&name, &url);
            }
        });
        reader.set_onload(Some(on_load.unchecked_ref()));
        let _ = reader.read_as_data_url(&file);
    }

    fn insert_image(&self, name: &str, data_url: &str) {
        let Some(markup) = page::image_markup(self.format(), name, data_url) else {
            return;
        };
        let start = self.textarea.selection_start().ok().flatten().unwrap_or(0);
        let end = self
            .textarea
            .selection_end()
            .ok()
            .flatten()
            .unwrap_or(start);
        let _ = self
            .textarea
            .set_range_text_with_start_and_end_and_mode(&markup, start, end, "end");
        self.set_error("");
        self.edited();
        if self.previewing.get() {
            self.render_preview();
        }
    }
}

fn has_files(event: &web_sys::DragEvent) -> bool {
    event
        .data_transfer()
        .is_some_and(|data| data.types().includes(&JsValue::from_str("Files"), 0))
}

fn with(editor: &Weak<Editor>, f: impl FnOnce(&Editor)) {
    if let Some(editor) = editor.upgrade() {
        f(&editor);
    }
}
