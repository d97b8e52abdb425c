"""One Generate request as the page sees it, without Gradio: `stream_run` runs the sampler in a
worker thread and yields the page's updates as the frames are made.

Each update is a dict {output name: value}; an output it does not name keeps what it shows, so a
refused request leaves the last result on the page beside its message. The outputs: "error" (one
line), "counter" (`counter_html`: "step k / K", with the run's id and state running / done /
stopped / refused as data attributes), "run" (the run's id, what Stop names), "view" (the frame
on screen), "frames" (PackedFrames for playback), "slider" (dict of its settings), "final"
(text), "timing" (the run's summary line).

Streaming: the sampler's callback hands each frame to the event loop (`generate(on_frame=...)`);
the page is sent the newest frame each time it is ready for one (a slow page skips frames, never
lags behind). Stop: `RunTracker.stop(run_id)` sets the run's cancel flag, the sampler stops at
its next step, and the last update says it was stopped and keeps the frames made so far for
playback. If the request itself is cancelled (an API client's cancel, a closed page), the flag is
set as well, so the sampler never runs on for nobody.
"""
from __future__ import annotations

import asyncio
import collections
import ctypes
import ctypes.util
import functools
import html
import threading
import uuid
from contextlib import contextmanager
from typing import Any, AsyncIterator, Iterator, Optional

from .core import DemoCancelled, DemoInputError, DemoLimits, DemoModel, FrameKeeper, PackedFrames, generate
from .form import form_settings
from .views import chip_width, frame_html

__all__ = ["RunTracker", "release_freed_memory", "stream_run", "counter_html", "slider_label", "frame_view"]


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


def release_freed_memory() -> bool:
    """Hand the heap pages a finished run freed back to the OS (glibc's malloc_trim; False where
    there is none). glibc keeps freed memory in per-thread arenas: after 10 concurrent runs at
    length 512 a server stayed ~100 MB above idle with no object alive to hold it, and one
    malloc_trim took it back below idle."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class RunTracker:
    """The runs in progress (their cancel flags, by run id) and how the last ones ended: what the
    server holds for its requests, for Stop, monitoring and tests."""

    def __init__(self, history: int = 100):
        self._lock = threading.Lock()
        self._runs: dict = {}  # run id -> (its cancel flag, the page session that started it; None: an API call)
        self.ended: collections.deque = collections.deque(maxlen=history)  # (status, steps done or frames kept)

    @property
    def active(self) -> int:
        with self._lock:
            return len(self._runs)

    @contextmanager
    def run(self, flag: threading.Event, run_id: Optional[str] = None, owner: Optional[str] = None
            ) -> Iterator[threading.Event]:
        """Count a run as in progress (in the thread that runs it) while the block lasts; `owner`
        is the page session that started it, so that its Stop finds it by session as well."""
        key = run_id or uuid.uuid4().hex
        with self._lock:
            self._runs[key] = (flag, owner)
        try:
            yield flag
        finally:
            with self._lock:
                self._runs.pop(key, None)

    def stop(self, run_id: Any, owner: Optional[str] = None) -> bool:
        """Set the cancel flag of the run `run_id` (its sampler stops at its next step). When no
        run has that id and `owner` is given, set the flags of that session's runs: a page's Stop
        names the run id its state holds, and that state may not yet hold the running run's id
        when Stop is pressed (issue 25: a Stop was once lost under load). False when nothing was
        stopped (the run ended already, or neither the id nor the session has one)."""
        with self._lock:
            named = self._runs.get(run_id) if isinstance(run_id, str) else None
            flags = [named[0]] if named is not None else [f for f, o in self._runs.values() if owner is not None and o == owner]
        for f in flags:
            f.set()
        return bool(flags)


def counter_html(run_id: str, state: str, done: int = 0, total: Optional[int] = None) -> str:
    """The step counter: "step k / K" while running; then done, stopped or refused."""
    steps = f"step {done}" + (f" / {total}" if total else "")
    words = {"running": steps, "done": f"{steps} · done", "stopped": f"{steps} · stopped",
             "refused": "not run (see the message)"}[state]
    return (f'<div class="counter" data-run="{html.escape(run_id)}" data-state="{state}" data-done="{done}">'
            f"{words}</div>")


def slider_label(frames: int) -> str:
    return f"Frame (0–{frames - 1}: the caption above the frame names the same frame number, and its step)"


def frame_view(pages: PackedFrames, k: int, model: DemoModel) -> str:
    """Frame k of a run's kept frames, captioned "frame k / F · step n / N" (the slider's k)."""
    return frame_html(pages[k], model, pages.chip, position=(k, len(pages) - 1), total=pages.total)


def _finished(run: Any, mode: str, model: DemoModel, run_id: str) -> dict:
    """The page once a run is done: its frames for playback, the last on screen, its text and summary."""
    packed = PackedFrames(run.frames, chip_width({t for f in run.frames for t in f.tokens}, model), run.steps)
    last = len(packed) - 1
    knobs_used = ", ".join(f"{k}={v}" for k, v in run.sampler.items() if k != "name")
    kept = "" if run.stride == 1 else (f" · showing {len(run.frames)} of {run.num_frames} frames "
                                       f"(1 in {run.stride}, and the last)")
    s = run.settings
    info = (f"**{run.model_calls} network calls** · {run.sampler.get('name', s.sampler)} ({mode} mode) · "
            f"{run.steps} steps · {run.seconds:.2f} s · schedule {run.schedule} · seed {s.seed}{kept}  \n`{knobs_used}`")
    text = run.text if len(run.texts) == 1 else "\n\n".join(f"[sample {i + 1}] {t}" for i, t in enumerate(run.texts))
    return {"error": "", "counter": counter_html(run_id, "done", run.steps, run.steps), "frames": packed,
            "slider": {"maximum": max(last, 1), "value": last, "label": slider_label(len(packed))},
            "view": frame_view(packed, last, model), "final": text, "timing": info}


def _stopped(keeper: FrameKeeper, err: DemoCancelled, model: DemoModel, run_id: str) -> dict:
    """The page after Stop: the frames made so far stay for playback, the last on screen."""
    frames = keeper.frames()
    out = {"error": f"**Stopped** at step {err.steps_done}" + (f" of {err.total}" if err.total else "")
                    + ": the frames made so far are kept (no final text).",
           "counter": counter_html(run_id, "stopped", err.steps_done, err.total), "final": "", "timing": ""}
    if frames:
        packed = PackedFrames(frames, chip_width({t for f in frames for t in f.tokens}, model), err.total, stopped=True)
        last = len(packed) - 1
        out.update(frames=packed, view=frame_view(packed, last, model),
                   slider={"maximum": max(last, 1), "value": last, "label": slider_label(len(packed))})
    return out


def _work(model: DemoModel, settings: Any, limits: DemoLimits, runs: RunTracker, flag: threading.Event,
          run_id: str, on_frame: Any, keeper: FrameKeeper, owner: Optional[str] = None) -> Any:
    """The run, in a worker thread; how it ended goes to `runs.ended` while it still counts as
    active, and what it freed goes back to the OS when it ends."""
    try:
        with runs.run(flag, run_id, owner):
            try:
                run = generate(model, settings, limits, cancel=flag, on_frame=on_frame, keeper=keeper)
            except DemoCancelled as err:
                runs.ended.append(("cancelled", err.steps_done))
                raise
            except DemoInputError:
                runs.ended.append(("refused", 0))
                raise
            runs.ended.append(("done", len(run.frames)))
            return run
    finally:
        release_freed_memory()


async def stream_run(model: DemoModel, limits: DemoLimits, runs: RunTracker, mode: str, values: dict,
                     flag: Optional[threading.Event] = None, owner: Optional[str] = None) -> AsyncIterator[dict]:
    """The page's updates for one Generate (module docstring), as the run makes its frames;
    `owner`: the page session (its Stop also finds the run by it)."""
    run_id, flag = uuid.uuid4().hex, flag or threading.Event()
    try:
        settings = form_settings(model, mode, values)
    except DemoInputError as err:
        runs.ended.append(("refused", 0))
        yield {"error": f"**Cannot generate:** {err}", "counter": counter_html(run_id, "refused"), "run": run_id}
        return
    loop, made = asyncio.get_running_loop(), asyncio.Queue()
    keeper = FrameKeeper(limits.max_frames)
    on_frame = lambda frame, k, total: loop.call_soon_threadsafe(made.put_nowait, (frame, k, total))  # noqa: E731
    task = asyncio.ensure_future(asyncio.to_thread(_work, model, settings, limits, runs, flag, run_id, on_frame, keeper, owner))
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # read, so none is reported as lost
    yield {"run": run_id, "counter": counter_html(run_id, "running")}
    try:
        chip, first = 0, True
        while not task.done() or not made.empty():
            getter = asyncio.ensure_future(made.get())
            done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                continue
            frame, k, total = getter.result()
            while not made.empty():  # only the newest frame is drawn
                frame, k, total = made.get_nowait()
            chip = max(chip, chip_width(frame.tokens, model))
            update = {"counter": counter_html(run_id, "running", k, total), "view": frame_html(frame, model, chip, total=total)}
            if first:  # the new run replaces the last one's text and summary
                update.update(final="", timing="", error="")
                first = False
            yield update
        try:
            run = task.result()
        except DemoInputError as err:
            yield {"error": f"**Cannot generate:** {err}", "counter": counter_html(run_id, "refused")}
        except DemoCancelled as err:
            yield _stopped(keeper, err, model, run_id)
        else:
            yield _finished(run, mode, model, run_id)
    finally:
        flag.set()  # the request ended or was cancelled: the sampler stops at its next step if it still runs
