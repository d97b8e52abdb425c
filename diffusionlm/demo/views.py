"""How a frame looks: chips for the page (`frame_html`, `legend_html`, `FRAME_CSS`), one line
for a terminal (`frame_text`), and the text a row of ids reads as (`position_texts`, `row_text`).

Each position shows its own token's text, read so that nothing raw leaks into the view:
- a token that is only part of a character (byte fallback: one byte of "é" or "€") is decoded
  together with the positions after it; the character shows on the first of them and the others
  are marked `joined` (they hold the rest of its bytes). Bytes that make no character (the rest
  still masked, or invalid UTF-8) show as escapes (`\\xe2`), marked `bytes`: never U+FFFD.
- a special token (`<|im_end|>`, EOS: it decodes to nothing once specials are skipped) shows as
  a styled marker with its name, marked `special`; the final text leaves special tokens out.
- MASK is a grey dashed box holding no text (`mask`), so it cannot be taken for an underscore;
  in a terminal it is `MASK_GLYPH` (░).
- the whole token is shown: a chip is the run's width (`chip_width`), and a longer token's chip
  grows to hold it (wrapping inside the frame when it is wider than the frame).
Whitespace shows as muted glyphs (· space, ↵ newline, → tab).
"""
from __future__ import annotations

import functools
import html
import math
import re
from typing import Any, Optional

from transformers.convert_slow_tokenizer import bytes_to_unicode

from ..data.tokenizers import ByteTokenizer

__all__ = ["MIN_CHIP", "MAX_CHIP", "MASK_GLYPH", "WHITESPACE_GLYPHS", "LEGEND", "FRAME_CSS", "position_texts",
           "row_text", "chip_width", "frame_html", "legend_html", "frame_text", "frame_caption"]

#: chip widths in characters: every position is a chip at least the run's width (`chip_width`)
MIN_CHIP, MAX_CHIP = 2, 10
#: what whitespace looks like in a chip (muted): a space, a newline, a tab, a carriage return
WHITESPACE_GLYPHS = {" ": "·", "\n": "↵", "\t": "→", "\r": "␍"}
#: MASK in a terminal line (the page draws a dashed grey box instead)
MASK_GLYPH = "░"
#: the most positions one character's bytes are looked for in (UTF-8 takes at most 4 bytes)
_MAX_JOIN = 4


def _decode(tok: Any, ids: list, skip_special: bool) -> str:
    try:
        return tok.decode(ids, skip_special_tokens=skip_special)
    except TypeError:  # a tokenizer whose decode takes no such option
        return tok.decode(ids)


def _single(model: Any, t: int) -> tuple[str, str]:
    """(text, flavour) of one token alone: flavour "special" (its name as text) or ""; cached on
    the model (`DemoModel.texts`)."""
    cache = getattr(model, "texts", None)
    if cache is not None and t in cache:
        return cache[t]
    tok = model.tokenizer
    text = _decode(tok, [t], True)
    out = (text, "")
    if text == "":
        name = _decode(tok, [t], False)
        out = (name or f"<{t}>", "special")
    if cache is not None:
        cache[t] = out
    return out


_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@functools.lru_cache(maxsize=1)
def _byte_alphabet() -> dict:
    """Byte-level BPE's characters -> the bytes they stand for (GPT-2's alphabet, as transformers has it)."""
    return {c: b for b, c in bytes_to_unicode().items()}


def _token_bytes(tok: Any, t: int) -> Optional[bytes]:
    """The raw bytes of one token where the tokenizer says them (bytes ids, SentencePiece byte
    fallback `<0xE2>`, byte-level BPE's byte alphabet); None where it does not."""
    if isinstance(tok, ByteTokenizer):
        return bytes([t]) if 0 <= t < ByteTokenizer.NUM_BYTES else None
    hf = getattr(tok, "hf", None)
    if hf is None:
        return None
    piece = hf.convert_ids_to_tokens(int(t))
    if not isinstance(piece, str):
        return None
    m = _BYTE_PIECE.fullmatch(piece)
    if m:
        return bytes([int(m.group(1), 16)])
    back = _byte_alphabet()
    return bytes(back[c] for c in piece) if all(c in back for c in piece) else None


def _escaped(model: Any, t: int) -> str:
    raw = _token_bytes(model.tokenizer, t)
    return "\\x??" if raw is None else raw.decode("utf-8", errors="backslashreplace")


def position_texts(tokens: list, model: Any) -> list:
    """(text, flavour) per position (module docstring): flavour "" (plain), "special", "joined"
    (the rest of the character shown at an earlier position: text ""), "bytes" (escapes), or
    "mask" (text "")."""
    mask_id = model.mask_id
    out: list = []
    i, d = 0, len(tokens)
    while i < d:
        t = tokens[i]
        if t == mask_id:
            out.append(("", "mask"))
            i += 1
            continue
        text, flavour = _single(model, t)
        if flavour or "\ufffd" not in text:
            out.append((text, flavour))
            i += 1
            continue
        j = i + 1  # a piece of a character: decode it with the positions after it
        while j < min(d, i + _MAX_JOIN) and tokens[j] != mask_id and not _single(model, tokens[j])[1]:
            joint = _decode(model.tokenizer, tokens[i: j + 1], True)
            if "\ufffd" not in joint:
                out += [(joint, "")] + [("", "joined")] * (j - i)
                i = j + 1
                break
            j += 1
        else:
            out.append((_escaped(model, t), "bytes"))
            i += 1
    return out


def row_text(tokens: list, model: Any) -> str:
    """The text a row of ids reads as: decoded whole with special tokens left out; where that
    holds bytes that make no character, the positions' own texts joined (escapes for those bytes)."""
    text = _decode(model.tokenizer, list(tokens), True)
    if "\ufffd" not in text:
        return text
    return "".join(t for t, flavour in position_texts(list(tokens), model) if flavour != "special")


def _pieces(frame: Any, model: Any):
    """(position, id, text, kind, flavour, confidence, changed) per position; kind: prompt | mask | token."""
    for i, (t, (text, flavour)) in enumerate(zip(frame.tokens, position_texts(frame.tokens, model))):
        kind = "prompt" if frame.fixed[i] else ("mask" if flavour == "mask" else "token")
        yield i, t, text, kind, flavour, frame.confidence[i], bool(frame.changed[i])


def chip_width(ids: Any, model: Any) -> int:
    """The chip width, in characters, for frames that show the token ids `ids` (an iterable):
    the longest token's length (whitespace counts one glyph), between MIN_CHIP and MAX_CHIP.
    Every chip of a run, MASK and prompt included, is at least this wide; a longer token's chip
    grows to hold the whole token."""
    texts = [_single(model, int(t)) for t in set(ids) if t != model.mask_id]
    longest = max((len(text) for text, flavour in texts if not flavour), default=0)  # specials: their own width
    return max(MIN_CHIP, min(MAX_CHIP, longest))


def _glyphs(text: str) -> str:
    """A token's text as chip HTML: whitespace as muted glyphs, the rest escaped; never cut."""
    return "".join(f'<span class="ws">{WHITESPACE_GLYPHS[c]}</span>' if c in WHITESPACE_GLYPHS else html.escape(c)
                   for c in text)


def _state(frame: Any, i: int) -> str:
    """" settled" (noise level 0 after the step), " active" (0 < level < 1: the hyperschedule is
    working on it), or "" (level 1, the prompt, or a sampler without levels: LAD)."""
    if frame.levels is None or frame.fixed[i]:
        return ""
    lv = frame.levels[i]
    return " settled" if lv == 0 else (" active" if 0 < lv < 1 else "")


def _colour(conf: float) -> str:
    """Low confidence red, high green (HSL hue 0..120)."""
    if conf != conf:  # nan
        return "#eeeeee"
    return f"hsl({int(120 * max(0.0, min(1.0, conf)))}, 75%, 82%)"


def _chip(cls: str, inner: str, chip: int, bg: str, title: str, attrs: str = "") -> str:
    return (f'<span class="{cls}"{attrs} title="{html.escape(title)}" style="width:{chip}ch;background:{bg}">'
            f"{inner}</span>")


#: what a chip of each flavour holds and says in its tooltip (text: the position's text)
_MASK_INNER = '<span class="mask-box" aria-label="MASK"></span>'


def _chip_body(kind: str, flavour: str, text: str, conf: float) -> tuple[str, str, str, int]:
    """(inner HTML, tooltip, background, characters shown) of one chip."""
    if kind == "mask":
        return _MASK_INNER, "MASK", "#d0d0d0", 0
    bg = "#dbe8ff" if kind == "prompt" else _colour(conf)
    title = "prompt" if kind == "prompt" else f"p = {conf:.3f}"
    if flavour == "special":
        name = text.strip("<|>") or text
        return html.escape(name), f"{title} · special token {text}", bg, len(name)
    if flavour == "joined":
        return '<span class="join">+</span>', f"{title} · the rest of the character before it", bg, 1
    if flavour == "bytes":
        return html.escape(text), f"{title} · bytes that make no character", bg, len(text)
    return _glyphs(text), title, bg, len(text)


def frame_caption(frame: Any, position: Optional[tuple] = None, total: Optional[int] = None) -> str:
    """The words above a frame: "frame f / F · step n / N" (`position` (f, F): its place among
    the frames kept, as the slider counts; n: the steps done when it was made, out of `total`)."""
    n = frame.n if getattr(frame, "n", None) is not None else frame.step
    out = f"frame {position[0]} / {position[1]} · " if position else ""
    return out + f"step {n}" + (f" / {total}" if total else "")


def frame_html(frame: Any, model: Any, chip: Optional[int] = None, position: Optional[tuple] = None,
               total: Optional[int] = None) -> str:
    """One frame as chips, one per position (at least `chip` characters wide; default: this
    frame's `chip_width`): the prompt blue, MASK a dashed grey box, tokens coloured by the model's
    probability of them; classes say each position's state (settled / active, from its level),
    `changed` (its id changed in this step), `remasked` (a token turned back into MASK) and its
    flavour (special / joined / bytes: module docstring). The caption: `frame_caption`."""
    chip = chip or chip_width(frame.tokens, model)
    spans, masked, active = [], 0, 0
    for i, t, text, kind, flavour, conf, changed in _pieces(frame, model):
        masked += kind == "mask"
        state = _state(frame, i)
        active += state == " active"
        cls = (f"tok {kind}{state}" + (" changed" if changed else "") + (" remasked" if changed and kind == "mask" else "")
               + (f" {flavour}" if flavour and flavour != "mask" else ""))
        inner, title, bg, shown = _chip_body(kind, flavour, text, conf)
        width = max(chip, shown)  # the whole token: a longer one widens its chip
        spans.append(_chip(cls, inner, width, bg, title, f' data-pos="{i}" data-id="{t}"'))
    where = "" if position is None else f' data-frame="{position[0]}"'
    head = (f'<div class="frame-head" data-step="{frame.step}"{where}>{frame_caption(frame, position, total)} · '
            f"{masked} masked" + (f" · {active} active" if frame.levels is not None else "") + "</div>")
    return head + '<div class="frame">' + "".join(spans) + "</div>"


#: the legend's entries: (key, chip classes, chip text, background, what it means)
LEGEND = (
    ("prompt", "tok prompt", "ab", "#dbe8ff", "prompt"),
    ("mask", "tok mask", _MASK_INNER, "#d0d0d0", "MASK (a dashed box: no text)"),
    ("settled", "tok token settled", "ab", _colour(0.9), "settled (noise level 0)"),
    ("active", "tok token active", "ab", _colour(0.9), "active (noise level between 0 and 1)"),
    ("changed", "tok token changed", "ab", _colour(0.9), "just changed (in this step)"),
    ("remasked", "tok mask changed remasked", _MASK_INNER, "#d0d0d0", "re-masked (a token turned back into MASK)"),
    ("whitespace", "tok token", _glyphs(" \n"), _colour(0.9), "a space · and a newline ↵"),
    ("special", "tok token special", "eos", _colour(0.9), "a special token (<|eos|>, <|im_end|>; left out of the final text)"),
    ("joined", "tok token joined", '<span class="join">+</span>', _colour(0.9),
     "more bytes of the character before it"),
    ("bytes", "tok token bytes", "\\xe2", _colour(0.9), "bytes that make no character (yet)"),
    ("unscored", "tok token", "ab", _colour(math.nan), "not predicted in this step (no confidence)"),
)


def legend_html() -> str:
    """What the chips' colours and marks mean, drawn with the frame's own chips and CSS; then the
    confidence scale (the model's probability of each token, red low, green high)."""
    items = [f'<span class="legend-item" data-legend="{key}">{_chip(cls, inner, 4, bg, what)} {html.escape(what)}</span>'
             for key, cls, inner, bg, what in LEGEND]
    scale = "".join(_chip("tok token", "", 1, _colour(c / 4), f"p = {c / 4:.2f}") for c in range(5))
    items.append(f'<span class="legend-item" data-legend="confidence">confidence p = 0 {scale} 1</span>')
    return '<div class="frame legend">' + "".join(items) + "</div>"


def frame_text(frame: Any, model: Any, colour: bool = False) -> str:
    """One line for a terminal: MASK as MASK_GLYPH (░; grey with `colour`), a special token as
    its name in angle brackets; with `colour`, changed tokens in reverse video."""
    out = []
    for _i, _t, text, kind, flavour, _conf, changed in _pieces(frame, model):
        if kind == "mask":
            s = f"\x1b[90m{MASK_GLYPH}\x1b[0m" if colour else MASK_GLYPH
        else:
            s = f"⟨{text.strip('<|>')}⟩" if flavour == "special" else text
        out.append(f"\x1b[7m{s}\x1b[0m" if colour and changed else s)
    body = "".join(out)
    return f"[step {frame.step:>4}] {body if colour else repr(body)}"


#: the CSS the page needs for frames and the legend (chips at least one width; marks as in LEGEND)
FRAME_CSS = """
.frame { font-family: ui-monospace, monospace; font-size: 14px; line-height: 1.7; white-space: normal; }
.frame .tok { display: inline-block; box-sizing: content-box; min-height: 21px; line-height: 21px; padding: 0 2px;
  margin: 2px 1px; border-radius: 3px; max-width: calc(100% - 8px); white-space: normal; overflow-wrap: anywhere;
  word-break: break-all; vertical-align: middle; color: #111; font-size: 14px; }
.frame .tok.mask { outline: 1px dashed #666; outline-offset: -1px; background-image:
  repeating-linear-gradient(135deg, transparent 0 4px, rgba(0,0,0,.08) 4px 8px) !important; }
.frame .tok .mask-box { display: inline-block; width: 0.8em; height: 0.8em; background: #9a9a9a; border-radius: 2px;
  vertical-align: middle; }
.frame .tok.special { font-style: italic; font-size: 11px; color: #fff; background: #5b4b8a !important; }
.frame .tok.bytes { font-size: 11px; color: #8a3b00; font-style: italic; }
.frame .tok .join { color: #9a9a9a; }
.frame .tok.settled { box-shadow: inset 0 -3px 0 #555; }
.frame .tok.active { box-shadow: inset 0 -3px 0 #f08c00; }
.frame .tok.changed { outline: 2px solid #1f5fd6; outline-offset: -1px; }
.frame .tok.remasked { outline: 2px solid #d62828; }
.frame .ws { color: #9a9a9a; }
.frame-head { font-weight: 600; margin-bottom: 4px; }
.legend { font-family: inherit; font-size: 13px; }
.legend .legend-item { margin-right: 14px; white-space: nowrap; display: inline-block; }
#counter { font-weight: 600; }
"""
