"""Drive the demo in a real headless browser (Playwright + the system's Chromium): the tests'
end-to-end check and the screenshots in docs/ use the same steps.

    with DemoBrowser(url) as b:
        b.generate("def ", steps=8)          # simple mode, until the run is over (b.counter())
        b.frame()                            # (step, [ids shown]) of the frame on screen
        b.screenshot("docs/demo/simple.png")

Chromium comes from the system (Debian's `chromium`, /usr/bin/chromium); Playwright's own
browser download is never used. `find_chromium()` says where it is, or None.
"""
from __future__ import annotations

import os
import shutil
from typing import Optional

__all__ = ["DemoBrowser", "find_chromium"]

#: the flags a root, offline, display-less machine needs (no sandbox, no background network)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def find_chromium() -> Optional[str]:
    for name in (os.environ.get("DIFFUSIONLM_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


class DemoBrowser:
    def __init__(self, url: str, executable: Optional[str] = None, width: int = 1400, height: int = 1000,
                 timeout_ms: int = 60_000):
        self.url, self.executable, self.size, self.timeout = url, executable or find_chromium(), (width, height), timeout_ms
        if self.executable is None:
            raise FileNotFoundError("no Chromium found (install Debian's chromium, or set DIFFUSIONLM_CHROMIUM)")

    def __enter__(self) -> "DemoBrowser":
        from playwright.sync_api import sync_playwright  # optional: playwright (browser tests)

        self._pw = sync_playwright().start()
        self._browser = self._pw.chromium.launch(executable_path=self.executable, headless=True, args=CHROMIUM_ARGS)
        self.page = self._browser.new_page(viewport={"width": self.size[0], "height": self.size[1]})
        self.page.set_default_timeout(self.timeout)
        self.page.goto(self.url)
        self.page.wait_for_selector("#generate")
        return self

    def __exit__(self, *exc) -> None:
        self._browser.close()
        self._pw.stop()

    # -- the form ----------------------------------------------------------------------------
    def mode(self, name: str) -> None:
        self.page.locator("#mode").get_by_label(name, exact=True).check()
        if name == "Advanced":
            self.page.wait_for_selector("#advanced", state="visible")
        else:
            self.page.wait_for_selector("#advanced", state="hidden")

    def fill(self, elem_id: str, value) -> None:
        """Set a textbox / number field by its elem_id."""
        box = self.page.locator(f"#{elem_id} textarea, #{elem_id} input").first
        box.fill("" if value is None else str(value))
        box.dispatch_event("change")  # Gradio reads numbers on change / blur
        box.blur()

    def choose(self, elem_id: str, value: str) -> None:
        """Pick a dropdown option by its text."""
        box = self.page.locator(f"#{elem_id} input").first
        box.click()
        self.page.get_by_role("option", name=value, exact=True).click()

    def options(self, elem_id: str) -> list:
        """The texts of a dropdown's options, in order (opens it and closes it again)."""
        self.page.locator(f"#{elem_id} input").first.click()
        self.page.wait_for_selector("[role=option]")
        names = [t.strip().split("\n")[-1].strip() for t in self.page.get_by_role("option").all_inner_texts()]  # less "✓"
        self.page.keyboard.press("Escape")
        self.page.locator(f"#{elem_id} input").first.blur()
        return names

    def above_the_fold(self, elem_id: str) -> bool:
        """Whether the element is wholly inside the viewport with the page scrolled to the top."""
        self.page.evaluate("() => window.scrollTo(0, 0)")
        box = self.page.locator(f"#{elem_id}").bounding_box()
        return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= self.page.viewport_size["height"]

    def chip_boxes(self) -> list:
        """(classes, width, height) of every chip in the frame on screen, as the browser lays them out."""
        return self.page.locator("#frame-view .tok").evaluate_all(
            "els => els.map(e => { const r = e.getBoundingClientRect(); return [e.className, r.width, r.height]; })")

    def generate(self, prompt: str, steps=None, wait: bool = True, **fields) -> None:
        """Fill the prompt, steps (unless None: AR has none) and any other fields (elem_id ->
        value), press Generate and (with `wait`) wait until that run is over: done, stopped or
        refused, as the step counter says (`wait_for_run`)."""
        self.fill("prompt", prompt)
        if steps is not None:
            self.fill("steps", steps)
        for k, v in fields.items():
            self.fill(k, v)
        before = self.counter()[0]
        self.page.locator("#generate").click()
        if wait:
            self.wait_for_run(before)

    def wait_for_run(self, before: Optional[str]) -> None:
        """Wait until the counter shows a run other than `before` that is no longer running."""
        self.page.wait_for_function(
            "prev => { const c = document.querySelector('#counter .counter');"
            " return c !== null && c.dataset.run !== prev && c.dataset.state !== 'running'; }", arg=before)
        self.page.wait_for_timeout(300)

    def counter(self) -> tuple:
        """(run id, state, steps done) as the step counter shows them ((None, None, 0) before any run)."""
        return tuple(self.page.evaluate(
            "() => { const c = document.querySelector('#counter .counter');"
            " return c ? [c.dataset.run, c.dataset.state, Number(c.dataset.done)] : [null, null, 0]; }"))

    def record(self) -> None:
        """From now on, note every change of the step counter and the frame on screen, as the
        browser draws them (`recorded`)."""
        self.page.evaluate(
            "() => { window.__seen = []; const note = () => { const c = document.querySelector('#counter .counter');"
            " const h = document.querySelector('#frame-view .frame-head');"
            " if (c) window.__seen.push([c.dataset.run, c.dataset.state, Number(c.dataset.done), h ? h.innerText : '']); };"
            " for (const id of ['#counter', '#frame-view']) new MutationObserver(note).observe(document.querySelector(id),"
            " {subtree: true, childList: true, characterData: true, attributes: true}); }")

    def recorded(self) -> list:
        """[(run id, state, steps done, frame caption)] at each change since `record()`."""
        return [tuple(x) for x in self.page.evaluate("() => window.__seen || []")]

    # -- what the page shows -------------------------------------------------------------------
    def error(self) -> str:
        return self.page.locator("#error").inner_text().strip()

    def final_text(self) -> str:
        return self.page.locator("#final textarea").input_value()

    def frame(self) -> tuple[int, list]:
        head = self.page.locator("#frame-view .frame-head")
        step = int(head.get_attribute("data-step"))
        ids = [int(x) for x in self.page.locator("#frame-view .tok").evaluate_all("els => els.map(e => e.dataset.id)")]
        return step, ids

    def click(self, elem_id: str, expect_step: Optional[int] = None) -> None:
        self.page.locator(f"#{elem_id}").click()
        if expect_step is not None:
            self.page.wait_for_selector(f'#frame-view .frame-head[data-step="{expect_step}"]')

    def screenshot(self, path: str) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.page.screenshot(path=path, full_page=True)
