"""The demo: its frames are the sampler's own history, its views show MASK / changes /
confidence, bad input becomes a sentence, models load from a run directory or a Hugging Face
directory, and in a real headless browser the page shows the same steps and final text.
Under load: requests over the limits are refused, a run keeps a bounded number of frames, a
cancelled run stops at its next step and releases its frames, and the queue is bounded."""
import asyncio
import dataclasses
import gc
import inspect
import json
import re
import math
import socket
import threading
import time
import weakref

import pytest
import torch

from diffusionlm.cli import main
from diffusionlm.data import load_tokenizer
from diffusionlm.demo.views import MASK_GLYPH, position_texts, row_text
from diffusionlm.demo import (
    DemoCancelled,
    DemoInputError,
    DemoLimits,
    DemoModel,
    DemoSettings,
    Frame,
    frame_html,
    frame_text,
    generate,
    load_demo_model,
    sampler_knobs,
    sampler_kwargs,
)
from diffusionlm.lm import DiffusionLM
from diffusionlm.models import DiffusionTransformer, TransformerConfig
from diffusionlm.processes import Absorb, Structural
from diffusionlm.samplers import SAMPLERS, get_sampler
from diffusionlm.schedules import Block, Flat

TOK = load_tokenizer("byte")
N = TOK.vocab_size


def tiny_model(process=None, schedule=None, length=48, cls=DiffusionTransformer) -> DemoModel:
    process = process or Absorb(N)
    torch.manual_seed(0)
    cfg = TransformerConfig.preset("tiny", vocab_size=process.model_vocab_size, input_vocab_size=N + 2,
                                   max_positions=length, n_layers=1, hidden=32, n_heads=2, cond_dim=16)
    lm = DiffusionLM(cls(cfg).eval(), process, schedule or Flat(), bos_id=TOK.bos_id)
    return DemoModel(lm, TOK, "tiny-random")


class Watched(DiffusionTransformer):
    """The same transformer, counting its calls; it can be slowed down and can run a hook at a call."""

    delay, calls, hook = 0.0, 0, None

    def forward(self, *args, **kwargs):
        self.calls += 1
        if self.hook is not None:
            self.hook(self.calls)
        if self.delay:
            time.sleep(self.delay)
        return super().forward(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
# frames = the sampler's history
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mdlm", "acs", "lad", "ar", "sedd_analytic"])
def test_frames_are_the_samplers_own_history(name):
    model = tiny_model()
    s = DemoSettings(prompt="def f", length=24, sampler=name, steps=6, seed=3, eta=0.3)
    run = generate(model, s)
    prompt = torch.tensor([TOK.encode("def f")])
    sampler = get_sampler(name)(**sampler_kwargs(s, model, prompt.shape[1]))
    ref = sampler.sample(model.lm, 1, length=24, prompt=prompt, generator=torch.Generator().manual_seed(3), keep_history=True)
    assert run.tokens == ref.tokens[0].tolist() and run.text == row_text(run.tokens, model)
    # frame 0: the prompt, MASK elsewhere; then one frame per recorded step
    assert run.frames[0].tokens == prompt[0].tolist() + [model.mask_id] * (24 - 5)
    assert len(run.frames) == len(ref.history) + 1
    for f, rec in zip(run.frames[1:], ref.history):
        assert f.step == rec.step and f.tokens == rec.tokens[0].tolist() and f.changed == rec.changed[0].tolist()
    for f, rec in zip(run.frames[1:], ref.history):  # each position's noise level after the step (LAD: none)
        assert f.levels == (None if rec.levels is None else rec.levels[0].tolist())
    assert run.frames[-1].tokens == run.tokens and model.mask_id not in run.tokens
    assert all(f.tokens[:5] == prompt[0].tolist() for f in run.frames)  # the prompt never changes
    assert run.model_calls == ref.num_model_calls
    assert [f.n for f in run.frames] == list(range(len(run.frames)))  # the steps done when each was made


def test_schedule_and_rate_reach_the_sampler():
    model = tiny_model()
    blocks = generate(model, DemoSettings(length=32, sampler="mdlm", steps=8, schedule="block", width=8))
    # Block(8) over 32 positions: positions 8.. stay masked until block 1 is done
    first = blocks.frames[1].tokens
    assert all(t == model.mask_id for t in first[8:]) and any(t != model.mask_id for t in first[:8])
    fast = generate(model, DemoSettings(length=32, sampler="mdlm", steps=8, schedule="block", width=8, rate=8.0))
    assert blocks.model_calls == 8 and fast.model_calls == 32 // 8  # a rate replaces the steps


def test_views_show_mask_changes_and_confidence():
    model = tiny_model()
    run = generate(model, DemoSettings(prompt="ab", length=16, sampler="mdlm", steps=4))
    f = run.frames[2]
    page = frame_html(f, model)
    masked = sum(t == model.mask_id for t in f.tokens)
    assert page.count('class="tok mask') == masked and page.count('title="MASK"') == masked
    assert page.count('class="tok prompt') == 2 and f'data-step="{f.step}"' in page
    assert page.count(" changed") == sum(f.changed)
    assert [int(x.split('"')[0]) for x in page.split('data-id="')[1:]] == f.tokens
    for i, c in enumerate(f.confidence):  # the title carries the model's probability of each token
        if not f.fixed[i] and f.tokens[i] != model.mask_id:
            assert f'data-pos="{i}" data-id="{f.tokens[i]}" title="p = {c:.3f}' in page
    line = frame_text(f, model)
    assert line.startswith(f"[step {f.step:>4}] ") and eval(line.split("] ", 1)[1]).count(MASK_GLYPH) == masked
    assert "\x1b[7m" in frame_text(f, model, colour=True) or not any(f.changed)


def _gpt2_model(length: int = 32) -> DemoModel:
    """The GPT-2 tokenizer (multi-character tokens) on a tiny random network."""
    tok = load_tokenizer("data:tokenizers/gpt2")
    V = tok.vocab_size
    torch.manual_seed(0)
    cfg = TransformerConfig.preset("tiny", vocab_size=V + 1, input_vocab_size=V + 2, max_positions=length,
                                   n_layers=1, hidden=16, n_heads=2, cond_dim=8)
    return DemoModel(DiffusionLM(DiffusionTransformer(cfg).eval(), Absorb(V), Flat(), bos_id=tok.bos_id), tok, "gpt2-tiny")


def test_chips_hold_whole_tokens_and_whitespace_is_visible():
    """Every chip is at least the run's width (MASK as wide as a token); a token longer than that
    is shown whole in a wider chip, never cut (issue 25 item 9: "assortme...")."""
    from diffusionlm.demo.views import MAX_CHIP, chip_width

    model = _gpt2_model()
    tok = model.tokenizer
    ids = tok.encode("def f(x):\n    return x") + tok.encode(" internationalization")
    pieces = [tok.decode([t]) for t in ids]
    assert "\n" in "".join(pieces) and any(len(p) > MAX_CHIP for p in pieces)  # a newline and a too-long token
    d = len(ids) + 3
    tokens = ids + [model.mask_id] * 3
    frame = Frame(1, tokens, [True] * d, [0.5] * d, [i < 2 for i in range(d)], [0.0] * len(ids) + [1.0] * 3)
    chip = chip_width(tokens, model)
    assert chip == MAX_CHIP  # the longest token is over the cap
    assert chip_width(tok.encode("ab cd"), model) == 3  # " cd"
    assert chip_width(TOK.encode("abc"), tiny_model()) == 2  # bytes: the smallest chip
    page = frame_html(frame, model, chip)
    chips = page.removesuffix("</div>").split('<span class="tok ')[1:]
    assert len(chips) == d
    for c, p in zip(chips, pieces + [""] * 3):  # each chip as wide as the run's chip, or its whole token
        assert f'style="width:{max(chip, len(p))}ch;' in c
    # spaces and newlines as muted glyphs, never as raw whitespace inside a chip
    shown = [c.split(">", 1)[1].rsplit("</span>", 1)[0] for c in chips]
    assert sum(c.count('<span class="ws">·</span>') for c in shown) == "".join(pieces).count(" ")
    assert sum(c.count('<span class="ws">↵</span>') for c in shown) == "".join(pieces).count("\n")
    assert not any(" " in re.sub(r"<[^>]*>", "", c) or "\n" in c for c in shown)
    # a token longer than the chip: all of it, no "…"
    long = next(i for i, p in enumerate(pieces) if len(p) > chip)
    assert chips[long].endswith(">" + pieces[long].replace(" ", '<span class="ws">·</span>') + "</span>")
    assert "…" not in page
    assert frame_text(frame, model) == f"[step    1] {''.join(pieces) + MASK_GLYPH * 3!r}"


def test_mask_is_a_box_never_an_underscore():
    """MASK is drawn as a dashed grey box with no text (issue 25 item 9: it was "_", which real
    underscores in the corpus also are); in a terminal it is MASK_GLYPH, apart from a real "_"."""
    from diffusionlm.demo.views import FRAME_CSS

    model = tiny_model()
    ids = TOK.encode("a_b")
    frame = Frame(1, ids + [model.mask_id] * 2, [False] * 5, [0.5] * 5, [False] * 5, None)
    page = frame_html(frame, model)
    masks = [c for c in page.split('<span class="tok ')[1:] if c.startswith("mask")]
    assert len(masks) == 2 and all('<span class="mask-box" aria-label="MASK"></span></span>' in c for c in masks)
    assert page.count("_") == 1  # the real underscore only
    assert ".frame .tok.mask { outline: 1px dashed" in FRAME_CSS and ".frame .tok .mask-box" in FRAME_CSS
    assert frame_text(frame, model) == f"[step    1] {'a_b' + MASK_GLYPH * 2!r}"
    assert "\x1b[90m" + MASK_GLYPH in frame_text(frame, model, colour=True)


def test_bytes_of_one_character_are_merged_and_special_tokens_are_marked():
    """No raw U+FFFD and no raw special token in a frame (issue 25 item 9): a character's bytes
    spread over positions show as the character (the rest marked joined), bytes that make no
    character as escapes; EOS / <|endoftext|> as a special marker, left out of the text."""
    model = tiny_model()
    ids = TOK.encode("é€x") + [TOK.eos_id] + TOK.encode("€")[:2] + [model.mask_id] + [0xE2]
    texts = position_texts(ids, model)
    assert texts == [("é", ""), ("", "joined"), ("€", ""), ("", "joined"), ("", "joined"), ("x", ""),
                     ("<|eos|>", "special"), ("\\xe2", "bytes"), ("\\x82", "bytes"), ("", "mask"), ("\\xe2", "bytes")]
    d = len(ids)
    page = frame_html(Frame(1, ids, [False] * d, [0.5] * d, [False] * d, None), model)
    assert "\ufffd" not in page and "&lt;|eos|&gt;" not in page.split('title="')[0]
    classes = re.findall(r'class="(tok [^"]*)"', page)
    assert [sum(c.endswith(" " + f) for c in classes) for f in ("special", "joined", "bytes")] == [1, 3, 3]
    assert ">eos</span>" in page  # the special token's name, in its own styled chip
    assert row_text(TOK.encode("é€x") + [TOK.eos_id], model) == "é€x"  # the final text: whole, no specials
    assert row_text(ids[:-2] + [0xE2], model) == "é€x\\xe2\\x82\\xe2"
    gpt2 = _gpt2_model()
    tok = gpt2.tokenizer
    emoji = tok.encode(" 🦙 ok")
    assert any("\ufffd" in tok.decode([t]) for t in emoji)  # byte-level BPE splits the emoji
    shown = position_texts(emoji + [tok.eos_id], gpt2)
    assert "".join(t for t, f in shown if f != "special") == " 🦙 ok" and shown[-1] == ("<|endoftext|>", "special")
    assert all("\ufffd" not in t for t, _f in shown)
    assert row_text(emoji + [tok.eos_id], gpt2) == " 🦙 ok"
    lone = position_texts([emoji[0]], gpt2)[0]  # a byte piece alone: its bytes as escapes (byte-level alphabet)
    assert lone[1] == "bytes" and lone[0].startswith(" \\xf0")


def test_chips_carry_each_positions_state_from_its_level_and_remasking():
    model = tiny_model()
    run = generate(model, DemoSettings(prompt="ab", length=24, sampler="mdlm", steps=6, schedule="block", width=8))
    seen = set()
    for f in run.frames[1:]:
        page = frame_html(f, model)
        for i, lv in enumerate(f.levels):
            cls = page.split(f'data-pos="{i}"')[0].rsplit('class="', 1)[1]
            want = "" if f.fixed[i] else (" settled" if lv == 0 else " active" if lv < 1 else "")
            got = " settled" if " settled" in cls else " active" if " active" in cls else ""
            assert got == want, (f.step, i, lv, cls)
            seen.add(got)
        assert f"{sum(0 < v < 1 for v in f.levels)} active" in page.split("</div>")[0]
    assert seen == {"", " settled", " active"}
    # LAD re-masks decoded tokens: exactly those chips are marked re-masked; LAD has no levels
    lad = generate(model, DemoSettings(prompt="ab", length=24, sampler="lad", steps=8, eta0=0.9, patience=None))
    remasked = 0
    for f in lad.frames[1:]:
        page = frame_html(f, model)
        want = sum(c and t == model.mask_id for c, t in zip(f.changed, f.tokens))
        assert page.count(" remasked") == want and " active" not in page and " settled" not in page
        remasked += want
    assert remasked > 0


def test_the_legend_names_every_mark_with_the_frames_own_chips():
    from diffusionlm.demo.core import legend_html

    page = legend_html()
    keys = [x.split('"')[0] for x in page.split('data-legend="')[1:]]
    assert keys == ["prompt", "mask", "settled", "active", "changed", "remasked", "whitespace", "special", "joined",
                    "bytes", "unscored", "confidence"]
    for key, cls in [("settled", "tok token settled"), ("active", "tok token active"), ("changed", "tok token changed"),
                     ("remasked", "tok mask changed remasked"), ("mask", "tok mask"), ("special", "tok token special"),
                     ("joined", "tok token joined"), ("bytes", "tok token bytes")]:
        item = page.split(f'data-legend="{key}"')[1].split('data-legend=')[0]
        assert f'class="{cls}"' in item  # the same classes frame_html gives, so the same CSS draws both
    unscored = page.split('data-legend="unscored"')[1].split('data-legend=')[0]
    model = tiny_model()
    frame = Frame(1, TOK.encode("ab"), [False, True], [math.nan, 0.5], [False, False], None)
    assert "background:#eeeeee" in unscored and frame_html(frame, model).count("background:#eeeeee") == 1


def test_the_call_count_is_the_samplers_or_one_per_step():
    from types import SimpleNamespace

    from diffusionlm.demo.core import model_calls

    assert model_calls(SimpleNamespace(num_model_calls=3), 9) == 3
    assert model_calls(SimpleNamespace(), 9) == 9  # a sampler that does not count: one call per step run
    model = tiny_model()
    ar = generate(model, DemoSettings(prompt="ab", length=12, sampler="ar"))
    assert ar.model_calls == 10 == ar.steps == ar.num_frames - 1  # one call per new token: one per step run


def test_only_the_samplers_that_fit_are_offered():
    from diffusionlm.demo.core import fitting_samplers
    from diffusionlm.processes import Uniform

    absorb = fitting_samplers(tiny_model())
    assert {"acs", "ar", "lad", "mdlm", "sedd_analytic"} <= set(absorb) and "sedd_euler" not in absorb
    structural = fitting_samplers(tiny_model(Structural(N)))
    assert {"ar", "lad"} <= set(structural) and not {"mdlm", "acs", "sedd_analytic", "sedd_euler"} & set(structural)
    uniform = fitting_samplers(tiny_model(Uniform(N)))
    assert {"mdlm", "sedd_analytic", "sedd_euler"} <= set(uniform) and not {"acs", "lad"} & set(uniform)
    for proc in (Absorb(N), Structural(N), Uniform(N)):
        model = tiny_model(proc)
        offered = fitting_samplers(model)
        assert offered == sorted(offered)
        for name in SAMPLERS:  # offered <=> it runs; the others are refused with the sampler's own sentence
            s = DemoSettings(prompt="ab", length=12, sampler=name, steps=2)
            if name in offered:
                generate(model, s)
            else:
                with pytest.raises(ValueError) as own:
                    get_sampler(name)(**sampler_kwargs(s, model, 2)).check_fits(model.lm)
                with pytest.raises(DemoInputError, match=re.escape(str(own.value))):
                    generate(model, s)


def test_the_model_kind_is_named_from_the_model():
    from diffusionlm.demo.core import model_kind
    from diffusionlm.schedules import Quench

    assert tiny_model().kind == "diffusion LM (Absorb + Flat)"
    assert tiny_model(schedule=Block(8)).kind == "diffusion LM (Absorb + Block)"
    assert tiny_model(Structural(N)).kind == "LAD (Structural)"
    # autoregressive is Absorb + Quench read SHIFTED (DiffusionLM.is_autoregressive): aligned, it is not
    assert tiny_model(schedule=Quench()).kind == "diffusion LM (Absorb + Quench)"
    ar = tiny_model(schedule=Quench()).lm
    ar.layout = type(ar.layout)("shifted")
    assert ar.is_autoregressive and model_kind(ar) == "autoregressive LM (Absorb + Quench)"
    assert model_kind(tiny_model().lm, adapted=False) == "autoregressive LM (not adapted)"


def test_knobs_come_from_each_samplers_fields():
    assert {"eta0", "sharpness", "remask", "confidence", "block_size", "edit_previous", "top_k", "top_p",
            "eos_bias", "patience", "temperature", "steps"} <= set(sampler_knobs("lad"))
    assert set(sampler_knobs("acs")) == {"steps", "rate", "precision", "eta"}
    assert "steps" not in sampler_knobs("ar") and "greedy" in sampler_knobs("ar")
    for name in SAMPLERS:  # every registered sampler is offered
        sampler_knobs(name)
    model = tiny_model()
    kw = sampler_kwargs(DemoSettings(sampler="lad", steps=7, eos_bias=2.0), model, 0)
    assert kw["iterations"] == 7 and kw["eos_id"] == TOK.eos_id and kw["eos_bias"] == 2.0
    assert sampler_kwargs(DemoSettings(sampler="ar", length=20), model, 5)["max_new_tokens"] == 15
    assert sampler_kwargs(DemoSettings(sampler="mdlm", precision="float32"), model, 0)["dtype"] is torch.float32


@pytest.fixture
def knobbed_sampler():
    """A sampler registered for one test with fields no DemoSettings knob covers, one of them
    named like the demo's own hyperschedule field (as ReMDM's re-masking "schedule")."""
    from typing import ClassVar, Optional

    from diffusionlm.samplers.mdlm import ACS

    @dataclasses.dataclass
    class Knobbed(ACS):
        name: ClassVar[str] = "knobbed"
        schedule: str = "cap"
        cutoff: Optional[float] = None
        budget: int = 2

        def __post_init__(self):
            super().__post_init__()
            if self.schedule not in ("cap", "rescale"):
                raise ValueError(f"schedule must be cap or rescale, got {self.schedule!r}")

    SAMPLERS["knobbed"] = Knobbed
    try:
        yield Knobbed
    finally:
        del SAMPLERS["knobbed"]


def test_a_samplers_other_fields_are_extra_knobs(knobbed_sampler):
    from diffusionlm.demo.app import _settings, api_args, form_fields
    from diffusionlm.demo.core import extra_knobs, fitting_samplers

    assert extra_knobs("knobbed") == [("knobbed.cache", "bool", True), ("knobbed.schedule", "str", "cap"),
                                      ("knobbed.cutoff", "Optional[float]", None), ("knobbed.budget", "int", 2)]
    assert extra_knobs("mdlm") == [("mdlm.cache", "bool", True)] and extra_knobs("lad") == []
    assert sampler_knobs("knobbed") == ["steps", "rate", "precision", "eta"]  # not the demo's "schedule"
    model = tiny_model()
    assert "knobbed" in fitting_samplers(model)  # built with its own defaults, not the hyperschedule's "trained"
    s = DemoSettings(prompt="ab", length=16, sampler="knobbed", steps=4, schedule="block", width=8,
                     extra={"knobbed.schedule": "rescale", "knobbed.budget": 5, "mdlm.cache": False})
    kw = sampler_kwargs(s, model, 2)
    assert (kw["schedule"], kw["budget"], "cutoff" in kw, "cache" in kw) == ("rescale", 5, False, False)
    run = generate(model, s)
    assert (run.sampler["schedule"], run.sampler["budget"], run.sampler["cutoff"]) == ("rescale", 5, None)
    assert generate(model, dataclasses.replace(s, sampler="acs")).tokens == run.tokens  # Block(8) reached it too
    with pytest.raises(DemoInputError, match="schedule must be cap or rescale, got 'x'"):
        generate(model, dataclasses.replace(s, extra={"knobbed.schedule": "x"}))
    with pytest.raises(DemoInputError, match="knobbed has no knob 'knobbed.nope'; its extra knobs: knobbed.budget"):
        generate(model, dataclasses.replace(s, extra={"knobbed.nope": 1}))
    # the form reads them by type: empty is None for an Optional field, refused for another
    form = dict(zip(form_fields(), api_args(prompt="ab", steps=4, length=16, sampler="knobbed")[1:]))
    assert _settings(model, "Advanced", form).extra == {"knobbed.cache": True, "knobbed.schedule": "cap",
                                                         "knobbed.cutoff": None, "knobbed.budget": 2}
    form.update({"knobbed.cutoff": 0.5, "knobbed.budget": 3.0, "knobbed.cache": False})
    assert _settings(model, "Advanced", form).extra == {"knobbed.schedule": "cap", "knobbed.cutoff": 0.5,
                                                         "knobbed.budget": 3, "knobbed.cache": False}
    form["knobbed.budget"] = None
    with pytest.raises(DemoInputError, match="knobbed.budget is empty: give a number"):
        _settings(model, "Advanced", form)


@pytest.mark.parametrize("bad, message", [
    (dict(steps=0), "steps must be a whole number >= 1, got 0"),
    (dict(length=100), "length 100 is beyond the model's 48 positions"),
    (dict(prompt="x" * 30, length=24), "the prompt is 30 tokens, which leaves nothing to generate in length 24"),
    (dict(sampler="nope"), "unknown sampler 'nope'; known:"),
    (dict(sampler="lad", eta0=2.0), r"eta0 \(initial re-masking fraction\) must be in \[0, 1\], got 2.0"),
    (dict(sampler="acs", eta=-1.0), "eta"),
    (dict(schedule="block", width=0), "the block width must be a whole number >= 1, got 0"),
    (dict(rate=-2.0), "rate must be a number > 0"),
])
def test_bad_settings_become_one_sentence(bad, message):
    with pytest.raises(DemoInputError, match=message):
        generate(tiny_model(), DemoSettings(**{"length": 24, **bad}))


# ---------------------------------------------------------------------------------------------
# under load: limits, bounded frames, cancellation, the queue
# ---------------------------------------------------------------------------------------------
LIMITS = DemoLimits(max_steps=40, max_length=32, max_batch=3, max_prompt_chars=20, max_frames=8)


@pytest.mark.parametrize("bad, message", [
    (dict(steps=41), "steps 41 is over the demo's limit of 40"),
    (dict(sampler="lad", steps=41), "steps 41 is over the demo's limit of 40"),
    (dict(length=33), "length 33 is over the demo's limit of 32 tokens"),
    (dict(batch=4), r"samples \(batch\) 4 is over the demo's limit of 3"),
    (dict(batch=0), r"samples \(batch\) must be a whole number >= 1, got 0"),
    (dict(prompt="x" * 21), "the prompt is 21 characters; the demo takes at most 20"),
    (dict(schedule="block", width=8, rate=0.5), "rate 0.5 tokens per step means 64 steps at length 32, over the demo's limit of 40 steps"),
    (dict(rate=float("inf")), r"rate must be a number > 0 \(tokens per step, finite\), got inf"),
    (dict(schedule="slide", width=30, rate=1.0), "rate 1.0 tokens per step means 61 steps"),
    (dict(schedule="block", width=33), "the block width 33 is wider than the length 32"),
    (dict(seed=-1), r"seed must be a whole number in \[0, 2\^63\), got -1"),
    (dict(seed=2**63), r"seed must be a whole number in \[0, 2\^63\)"),
])
def test_requests_over_the_limits_are_refused_not_clamped(bad, message):
    model = tiny_model()
    with pytest.raises(DemoInputError, match=message):
        generate(model, DemoSettings(**{"length": 32, "sampler": "mdlm", **bad}), LIMITS)


def test_a_request_at_the_limits_runs_as_asked():
    model = tiny_model()
    run = generate(model, DemoSettings(prompt="x" * 20, length=32, steps=40, batch=3, sampler="acs"), LIMITS)
    assert len(run.texts) == 3 and len(run.tokens) == 32 and run.frames[-1].step == 40 and run.num_frames == 41
    at_rate = DemoSettings(length=32, schedule="block", width=8, rate=0.8, sampler="mdlm")  # 4 blocks / 0.1 per step
    assert generate(model, at_rate, LIMITS).frames[-1].step == 40


def test_defaults_limits_and_their_checks():
    lim = DemoLimits()
    assert (lim.max_steps, lim.max_length, lim.max_batch, lim.max_frames) == (256, 512, 4, 64)
    assert lim.length_for(tiny_model()) == 48  # the model's positions are the tighter limit
    text = lim.describe(tiny_model())
    assert "steps 1–256" in text and "length 1–48" in text and "samples 1–4" in text and "64 of its steps" in text
    with pytest.raises(ValueError, match="DemoLimits.max_batch must be a whole number >= 1, got 0"):
        DemoLimits(max_batch=0)
    with pytest.raises(ValueError, match="DemoLimits.max_frames must be >= 2"):
        DemoLimits(max_frames=1)
    with pytest.raises(DemoInputError, match="steps 257 is over the demo's limit of 256"):
        generate(tiny_model(), DemoSettings(steps=257, length=8))  # generate applies the defaults


@pytest.mark.parametrize("limit", [2, 3, 8])
def test_frame_keeper_keeps_evenly_spaced_frames_and_the_last(limit):
    from diffusionlm.demo.core import FrameKeeper

    for n in range(1, 200):
        converted = []
        keeper = FrameKeeper(limit, lambda i: converted.append(i) or i)
        for i in range(n):
            keeper.add(i)
        s = 1
        while -(-n // s) > limit:  # the smallest power-of-two stride that keeps at most `limit`
            s *= 2
        want = list(range(0, n, s)) + ([n - 1] if (n - 1) % s else [])
        got = keeper.frames()
        assert got == want and keeper.stride == s and keeper.seen == n and len(got) <= limit + 1
        assert len(set(converted)) == len(converted)  # each frame converted once at most


@pytest.mark.parametrize("name", ["acs", "lad", "ar"])
def test_a_long_run_keeps_a_bounded_subset_of_the_samplers_own_steps(name):
    model = tiny_model()
    s = DemoSettings(prompt="ab", length=32, sampler=name, steps=37, seed=5, eta=0.2, patience=None)
    run = generate(model, s, LIMITS)
    full = generate(model, s, dataclasses.replace(LIMITS, max_frames=1000))  # every frame
    assert full.num_frames == len(full.frames) == run.num_frames and run.tokens == full.tokens
    assert len(run.frames) <= LIMITS.max_frames + 1 and run.stride > 1
    picked = list(range(0, run.num_frames, run.stride))
    if picked[-1] != run.num_frames - 1:
        picked.append(run.num_frames - 1)
    assert [f.step for f in run.frames] == [full.frames[i].step for i in picked]
    for f, i in zip(run.frames, picked):
        assert f.tokens == full.frames[i].tokens and f.changed == full.frames[i].changed
    assert run.frames[-1].tokens == run.tokens


def test_batch_draws_that_many_samples_and_shows_the_first():
    model = tiny_model()
    run = generate(model, DemoSettings(prompt="ab", length=16, sampler="mdlm", steps=4, batch=3, seed=2))
    prompt = torch.tensor([TOK.encode("ab")])
    ref = get_sampler("mdlm")(steps=4).sample(model.lm, 3, length=16, prompt=prompt,
                                              generator=torch.Generator().manual_seed(2))
    assert run.texts == [row_text(r, model) for r in ref.tokens.tolist()] and run.text == run.texts[0]
    assert run.frames[-1].tokens == ref.tokens[0].tolist()


def test_a_cancelled_run_stops_at_the_next_step_and_frees_its_frames():
    from diffusionlm.demo.core import Frame

    model = tiny_model(cls=Watched)
    net = model.lm.model
    flag, held = threading.Event(), []

    def at_call(k):  # during the 5th model call: note the frames the run holds, then press Stop
        if k == 5:
            held.extend(weakref.ref(o) for o in gc.get_objects() if type(o) is Frame and id(o) not in before)
            flag.set()

    net.hook = at_call
    before = {id(o) for o in gc.get_objects() if type(o) is Frame}
    with pytest.raises(DemoCancelled, match="stopped after 4 steps") as err:  # LAD: one model call per step
        generate(model, DemoSettings(length=32, sampler="lad", steps=40, patience=None), cancel=flag)
    assert err.value.steps_done == 4 and net.calls == 5  # no model call after the step that saw the flag
    assert len(held) == 5  # the run held the prompt frame and steps 1-4 ...
    gc.collect()
    assert all(r() is None for r in held)  # ... and holds none once stopped (the traceback kept by `err` included)
    net.hook, net.calls = None, 0
    with pytest.raises(DemoCancelled, match="stopped after 0 steps"):  # cancelled before it started
        generate(model, DemoSettings(length=32, sampler="lad", steps=40), cancel=flag)
    assert net.calls == 0


def test_the_queue_and_the_concurrency_limit_are_configured():
    import gradio  # noqa: F401  (the test extras install it: required, never skipped)
    from diffusionlm.demo import build_app

    limits = DemoLimits(concurrency=3, max_queue=7)
    app = build_app(tiny_model(), limits)
    assert app._queue.max_size == 7 and app.demo_limits is limits
    fns = {fn.api_name: fn for fn in app.fns.values()}
    gen = fns["generate"]
    assert gen.concurrency_limit == 3 and gen.queue
    assert inspect.isasyncgenfunction(gen.fn)  # Generate streams its updates
    # Stop sets the running run's flag (named by the session's run id) instead of cancelling the
    # event, so the stream itself reports the stop and keeps the frames made so far
    assert not [d["cancels"] for d in app.get_config_file()["dependencies"] if d["cancels"]]
    stop = fns["stop"]
    assert not stop.queue and [type(c).__name__ for c in stop.inputs] == ["State"]  # never waits behind the runs it stops


def _stream(model, mode="Simple", limits=None, runs=None, on_update=None, **values):
    """Every update stream_run yields for one request (the form's defaults, then `values`)."""
    from diffusionlm.demo.app import api_args, form_fields
    from diffusionlm.demo.stream import RunTracker, stream_run

    runs = runs or RunTracker()
    form = dict(zip(form_fields(), api_args(**values)[1:]))

    async def collect():
        out = []
        async for update in stream_run(model, limits or DemoLimits(), runs, mode, form):
            out.append(update)
            if on_update is not None:
                on_update(update, runs)
        return out

    return asyncio.run(collect())


def _counter(update):
    m = re.search(r'data-state="(\w+)" data-done="(\d+)"', update["counter"])
    return m.group(1), int(m.group(2))


def test_frames_stream_as_the_sampler_makes_them():
    """Each frame reaches `on_frame` before the sampler's next model call (issue 25 item 9: the
    demo streams), and the page's stream draws them under a counter "step k / K" that advances."""
    model = tiny_model(cls=Watched)
    net = model.lm.model
    net.calls, seen = 0, []
    run = generate(model, DemoSettings(prompt="ab", length=24, sampler="acs", steps=6),
                   on_frame=lambda f, k, total: seen.append((k, total, net.calls, f)))
    assert [(k, total) for k, total, _c, _f in seen] == [(k, 6) for k in range(7)]
    assert [calls for _k, _t, calls, _f in seen] == list(range(7))  # frame k drawn after call k, before call k + 1
    assert [f.tokens for *_x, f in seen] == [f.tokens for f in run.frames]
    # the page's updates: the newest frame each time (a frame made while the page is busy is
    # skipped, so at 50 ms a call none is), then the finished run
    net.calls, net.delay = 0, 0.05
    try:
        updates = _stream(model, prompt="ab", steps=6)
    finally:
        net.delay = 0.0
    live = [u for u in updates if "view" in u and _counter(u)[0] == "running"]
    drawn = [_counter(u)[1] for u in live]
    assert drawn == sorted(set(drawn)) and len(drawn) >= 5 and drawn[-1] == 6, drawn
    assert all(f"step {k} / 6" in u["counter"] and f"step {k} / 6 ·" in u["view"] for k, u in zip(drawn, live))
    last = updates[-1]
    assert _counter(last) == ("done", 6) and "step 6 / 6 · done" in last["counter"]
    assert last["final"] == generate(model, DemoSettings(prompt="ab", length=48, sampler="acs", steps=6)).text


def test_stop_ends_the_stream_at_the_next_step_and_keeps_its_frames():
    from diffusionlm.demo.stream import RunTracker

    model = tiny_model(cls=Watched)
    model.lm.model.delay = 0.05
    runs, stopped_at, run_id = RunTracker(), [], []

    def press_stop(update, runs):  # Stop, as the page sends it: the run's id, once 3 steps are drawn
        if "view" in update and _counter(update)[1] >= 3 and not stopped_at:
            stopped_at.append((_counter(update)[1], model.lm.model.calls))
            assert runs.stop(run_id[0])

    try:
        updates = _stream(model, runs=runs, prompt="ab", steps=40, length=32, sampler="lad", mode="Advanced",
                          patience=0, on_update=lambda u, r: (run_id.append(u["run"]) if "run" in u else None,
                                                              press_stop(u, r)))
    finally:
        model.lm.model.delay = 0.0
    last = updates[-1]
    state, done = _counter(last)
    (k, calls), = stopped_at
    assert state == "stopped" and k <= done <= k + 1 and runs.ended[-1] == ("cancelled", done)  # at once: the next step
    assert model.lm.model.calls <= calls + 1
    assert last["error"].startswith(f"**Stopped** at step {done} of 40") and last["final"] == ""
    pages = last["frames"]  # the partial result stays, for playback, and says it was stopped
    assert pages.stopped and len(pages) == done + 1 and last["slider"]["value"] == done
    assert f'data-frame="{done}"' in last["view"] and f"frame {done} / {done} · step {done} / 40" in last["view"]
    assert runs.active == 0 and not runs.stop(run_id[0])  # nothing left to stop


def test_stop_finds_the_run_by_its_page_session_when_the_id_is_not_known_yet():
    """A page's Stop names the run id its state holds; if that is not yet the running run's (the
    state lags the stream), the session's own runs stop, and no other session's."""
    import threading

    from diffusionlm.demo.stream import RunTracker

    runs, mine, theirs, api = RunTracker(), threading.Event(), threading.Event(), threading.Event()
    with runs.run(mine, "run-a", owner="page-1"), runs.run(theirs, "run-b", owner="page-2"), runs.run(api, "run-c"):
        assert not runs.stop(None) and not runs.stop("not-a-run") and not runs.stop(None, owner="page-3")
        assert not (mine.is_set() or theirs.is_set() or api.is_set())
        assert runs.stop(None, owner="page-1") and mine.is_set() and not theirs.is_set() and not api.is_set()
        assert runs.stop("run-c", owner="page-2") and api.is_set() and not theirs.is_set()  # the id wins
        assert runs.stop("stale-id", owner="page-2") and theirs.is_set()
    assert runs.active == 0 and not runs.stop(None, owner="page-1")


def test_a_refused_request_keeps_the_last_result():
    """An error names only the message and the counter: every other output keeps what it shows
    (issue 25 item 9: an error wiped the previous result)."""
    model = tiny_model()
    for bad in (dict(steps=0), dict(steps=300), dict(steps=2.5)):  # refused by the form, the limits, generate
        updates = _stream(model, prompt="ab", **bad)
        assert _counter(updates[-1])[0] == "refused" and updates[-1]["error"].startswith("**Cannot generate:** ")
        assert all(set(u) <= {"error", "counter", "run"} for u in updates), updates


def test_the_slider_and_the_caption_count_the_same_frames():
    """Frame k of F on the slider is "frame k / F" in the caption, with the step it shows beside
    it (issue 25 item 9: the slider said "Frame 16" where the caption said "step 32")."""
    from diffusionlm.demo.stream import frame_view

    model = tiny_model()
    limits = DemoLimits(max_frames=8)
    last = _stream(model, limits=limits, prompt="ab", steps=20)[-1]
    pages = last["frames"]
    F = len(pages) - 1
    assert last["slider"] == {"maximum": F, "value": F, "label": last["slider"]["label"]} and f"0–{F}" in last["slider"]["label"]
    run = generate(model, DemoSettings(prompt="ab", length=48, sampler="acs", steps=20), limits)
    assert run.stride > 1  # kept frames are not every step: frame number and step differ
    for k in range(len(pages)):
        view = frame_view(pages, k, model)
        n = run.frames[k].n
        assert f'data-frame="{k}"' in view and f">frame {k} / {F} · step {n} / 20 ·" in view
    assert last["view"] == frame_view(pages, F, model)


def test_a_given_schedule_is_named_by_its_spec_not_trained(tmp_path):
    from diffusionlm.compare import CompareConfig, save_variant
    from diffusionlm.demo import build_app
    from diffusionlm.demo.core import schedule_name

    assert schedule_name(Block(4, 4)) == "Block(4, 4)" and schedule_name(Flat()) == "Flat()"
    save_variant(tmp_path / "run", CompareConfig(length=48), "block", tiny_model(schedule=Block(8)).lm)
    own = load_demo_model(tmp_path / "run")
    assert own.schedule_label == "trained (Block(8, 1))" and not own.schedule_given
    given = load_demo_model(tmp_path / "run", schedule="flat")
    assert given.lm.schedule == Flat() and given.schedule_given
    assert given.schedule_label == "Flat() (given with --schedule; trained: Block(8, 1))"
    run = generate(given, DemoSettings(prompt="ab", length=24, steps=3))
    assert run.schedule == given.schedule_label and run.frames[1].levels is not None
    for model, want, wrong in ((own, "trained (Block(8, 1))", None), (given, "Flat() (given with --schedule", "trained (")):
        cfg = build_app(model).get_config_file()
        header = next(c["props"]["value"] for c in cfg["components"] if c["props"].get("elem_id") == "model")
        choices = next(c["props"]["choices"] for c in cfg["components"] if c["props"].get("elem_id") == "schedule")
        assert want in header and list(choices[0]) == [model.schedule_label, "trained"]
        assert wrong is None or wrong not in header + choices[0][0]


def test_each_mode_says_which_sampler_generate_runs():
    """The line under Generate names the sampler of the mode shown: Advanced its own choice, never
    the Simple run's (issue 25 item 9)."""
    from diffusionlm.demo.form import runs_with

    model = tiny_model()
    assert runs_with(model, "Simple", "mdlm", True) == "Generate runs **acs** (Simple: re-masking on)"
    assert runs_with(model, "Simple", "lad", False) == "Generate runs **mdlm** (Simple: re-masking off)"
    assert runs_with(model, "Advanced", "lad", True) == "Generate runs **lad** (Advanced: the sampler chosen below)"
    assert "**lad**" in runs_with(tiny_model(Structural(N)), "Simple", "mdlm", True)
    # and the summary of a run says which mode and sampler made it
    assert "· acs (Simple mode) ·" in _stream(model, prompt="ab", steps=2)[-1]["timing"]
    assert "· mdlm (Advanced mode) ·" in _stream(model, mode="Advanced", prompt="ab", steps=2, length=16)[-1]["timing"]


@pytest.fixture(scope="module")
def served():
    """A demo server on a slow-able model, and a gradio_client on it (the HTTP API)."""
    from gradio_client import Client

    from diffusionlm.demo import launch

    model = tiny_model(cls=Watched)
    app, url = launch(model, port=_free_port(), block=False, limits=LIMITS)
    try:
        yield model, app, Client(url, verbose=False)
    finally:
        app.close()


@pytest.mark.slow
def test_the_api_refuses_requests_over_the_limits(served, monkeypatch):
    from diffusionlm.demo import stream
    from diffusionlm.demo.app import OUTPUTS, api_args

    model, app, client = served
    trims = []  # every request, refused or run, hands the memory it freed back when it ends
    monkeypatch.setattr(stream, "release_freed_memory", lambda: trims.append(1) or True)
    shown = [k for k in OUTPUTS if k not in ("run", "frames")]  # the API's result: the outputs that are not states
    out = dict(zip(shown, client.predict(*api_args(prompt="ab", steps=41, length=32), api_name="/generate")))
    assert out["error"] == "**Cannot generate:** steps 41 is over the demo's limit of 40"
    assert 'data-state="refused"' in out["counter"]
    out = dict(zip(shown, client.predict(*api_args(prompt="ab", steps=40, length=32, batch=3, sampler="acs"),
                                         api_name="/generate")))
    run = generate(model, DemoSettings(prompt="ab", steps=40, length=32, batch=3, sampler="acs"), LIMITS)
    assert out["error"] == "" and out["final"] == "\n\n".join(f"[sample {i + 1}] {t}" for i, t in enumerate(run.texts))
    assert f"showing {len(run.frames)} of {run.num_frames} frames" in out["timing"]
    assert len(trims) == 2


@pytest.mark.slow
def test_the_api_cancels_a_run_and_the_sampler_stops(served):
    from diffusionlm.demo.app import api_args

    model, app, client = served
    net = model.lm.model
    net.delay, net.calls = 0.05, 0
    try:
        job = client.submit(*api_args(prompt="ab", steps=40, length=32, sampler="acs"), api_name="/generate")
        deadline = time.time() + 60
        while net.calls < 3 and time.time() < deadline:
            time.sleep(0.01)
        job.cancel()
        while app.demo_runs.active and time.time() < deadline:
            time.sleep(0.01)
        assert app.demo_runs.active == 0
        status, steps = app.demo_runs.ended[-1]
        assert status == "cancelled" and 3 <= steps < 40
        calls = net.calls
        time.sleep(0.3)
        assert net.calls == calls  # nothing runs on after the cancel
    finally:
        net.delay = 0.0


def test_chat_template_wraps_the_prompt():
    tok = load_tokenizer("data:tokenizers/gpt2")
    tok.hf.chat_template = ("{% for m in messages %}<u>{{ m['content'] }}</u>{% endfor %}"
                            "{% if add_generation_prompt %}<a>{% endif %}")
    V = tok.vocab_size
    torch.manual_seed(0)
    cfg = TransformerConfig.preset("tiny", vocab_size=V + 1, input_vocab_size=V + 2, max_positions=32,
                                   n_layers=1, hidden=16, n_heads=2, cond_dim=8)
    model = DemoModel(DiffusionLM(DiffusionTransformer(cfg).eval(), Absorb(V), Flat(), bos_id=tok.bos_id), tok, "t")
    want = tok.encode("<u>hi</u><a>")
    run = generate(model, DemoSettings(prompt="hi", chat_template=True, length=24, steps=3, sampler="lad"))
    assert run.frames[0].tokens[: len(want)] == want and run.tokens[: len(want)] == want
    plain = generate(model, DemoSettings(prompt="hi", length=24, steps=3, sampler="lad"))
    assert plain.frames[0].tokens[:1] == tok.encode("hi")[:1] and not plain.frames[0].fixed[len(tok.encode("hi"))]
    # a tokenizer without a template: the prompt as is
    assert generate(tiny_model(), DemoSettings(prompt="ab", chat_template=True, length=8, steps=2)).tokens[:2] == TOK.encode("ab")


def test_simple_mode_picks_lad_for_a_structural_model():
    from diffusionlm.demo.app import simple_sampler

    assert simple_sampler(tiny_model(), True) == "acs" and simple_sampler(tiny_model(), False) == "mdlm"
    assert simple_sampler(tiny_model(Structural(N)), False) == "lad"
    from diffusionlm.demo.app import _settings

    s = _settings(tiny_model(Structural(N)), "Simple", {"prompt": "q", "steps": 4.0, "remask": False})
    assert s.sampler == "lad" and s.chat_template and not s.remask and s.steps == 4
    with pytest.raises(DemoInputError, match="steps must be a whole number, got 2.5"):
        _settings(tiny_model(), "Simple", {"prompt": "", "steps": 2.5, "remask": True})


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------
def test_load_a_run_directory_and_an_hf_directory(tmp_path):
    from diffusionlm.compare import CompareConfig, save_variant

    model = tiny_model(schedule=Block(8))
    save_variant(tmp_path / "run", CompareConfig(length=48), "block", model.lm)
    loaded = load_demo_model(tmp_path / "run")
    assert loaded.lm.schedule == Block(8) and loaded.max_length == 48
    s = DemoSettings(prompt="x", length=20, steps=5)
    assert generate(loaded, s).tokens == generate(model, s).tokens  # the same weights

    import transformers
    hf_tok = load_tokenizer("data:tokenizers/gpt2").hf
    cfg = transformers.GPT2Config(vocab_size=len(hf_tok), n_positions=32, n_embd=16, n_layer=1, n_head=2)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "hf")
    hf_tok.save_pretrained(tmp_path / "hf")
    hf = load_demo_model(tmp_path / "hf")
    assert hf.lm.layout.value == "shifted" and hf.max_length == 32 and hf.mask_id == len(hf_tok)
    run = generate(hf, DemoSettings(prompt="Hello", length=12, steps=4))
    assert run.text.startswith("Hello") and hf.mask_id not in run.tokens
    # what each kind of model is: a run directory by its composition; a causal LM read as a
    # denoiser is not a diffusion model until trained as one (a composition with training recorded)
    assert (loaded.source, loaded.kind) == ("run", "diffusion LM (Absorb + Block)")
    assert (hf.source, hf.kind) == ("hf", "autoregressive LM (not adapted)")
    hf.lm.save_pretrained(tmp_path / "exported", tokenizer=hf.tokenizer)  # `diffusionlm export` of a plain HF model
    exported = load_demo_model(tmp_path / "exported")
    assert (exported.source, exported.kind) == ("composition", "autoregressive LM (not adapted)")
    hf.lm.save_pretrained(tmp_path / "adapted", tokenizer=hf.tokenizer, training={"steps": 10})
    assert load_demo_model(tmp_path / "adapted").kind == "diffusion LM (Absorb + Flat)"

    with pytest.raises(FileNotFoundError, match="neither run.json"):
        load_demo_model(tmp_path)


def _saved_run(path) -> DemoModel:
    """tiny_model() saved as a compare variant's run directory at `path`."""
    from diffusionlm.compare import CompareConfig, save_variant

    model = tiny_model()
    save_variant(path, CompareConfig(length=48), "mdlm", model.lm)
    return model


def test_sample_show_steps_prints_the_demos_frames(tmp_path, capsys):
    model = _saved_run(tmp_path / "run")
    assert main(["sample", "--run", str(tmp_path / "run"), "--steps", "5", "--length", "16", "--prompt", "ab",
                 "--show-steps"]) == 0
    out = capsys.readouterr()
    json.loads(out.out)  # stdout is the JSON alone (`| jq` works); the frames are on stderr
    lines = [l for l in out.err.splitlines() if l.startswith("[step")]
    run = generate(model, DemoSettings(prompt="ab", length=16, steps=5, sampler="mdlm"))
    assert lines == [frame_text(f, model) for f in run.frames[1:]]


def test_sample_show_steps_shows_every_sample(tmp_path, capsys):
    _saved_run(tmp_path / "run")
    assert main(["sample", "--run", str(tmp_path / "run"), "--steps", "4", "--length", "16", "--num", "3",
                 "--show-steps"]) == 0
    out = capsys.readouterr()
    assert len(json.loads(out.out)["samples"]) == 3
    for i in (1, 2, 3):
        assert len([l for l in out.err.splitlines() if l.startswith(f"[sample {i}] [step")]) == 4


# ---------------------------------------------------------------------------------------------
# the page, in a real headless browser
# ---------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser_page():
    from diffusionlm.demo.browser import find_chromium

    if find_chromium() is None:
        pytest.skip("no Chromium on this machine: scripts/test.sh installs Debian's chromium; "
                    "it could not be installed here (no apt or no root)")
    from diffusionlm.demo import launch
    from diffusionlm.demo.browser import DemoBrowser

    model = tiny_model(cls=Watched)
    app, url = launch(model, port=_free_port(), block=False)
    try:
        with DemoBrowser(url) as b:
            yield model, b, app
    finally:
        app.close()


@pytest.mark.slow
def test_browser_shows_the_samplers_steps_and_final_text(browser_page):
    model, b, _ = browser_page
    b.mode("Simple")
    b.generate("def ", steps=6)
    assert b.error() == ""
    run = generate(model, DemoSettings(prompt="def ", length=48, sampler="acs", steps=6, remask=True))
    assert b.final_text() == run.text
    T = len(run.frames) - 1
    assert b.frame() == (run.frames[T].step, run.frames[T].tokens)
    b.click("back", expect_step=run.frames[T - 1].step)
    assert b.frame() == (run.frames[T - 1].step, run.frames[T - 1].tokens)
    b.click("back", expect_step=run.frames[T - 2].step)
    b.click("fwd", expect_step=run.frames[T - 1].step)
    assert b.frame()[1] == run.frames[T - 1].tokens
    b.click("play", expect_step=run.frames[T].step)  # plays from where it is to the last step
    assert b.frame() == (run.frames[T].step, run.frames[T].tokens)
    # re-masking off in simple mode is plain MDLM
    b.page.locator("#remask input").uncheck()
    b.generate("def ", steps=6)
    assert b.final_text() == generate(model, DemoSettings(prompt="def ", length=48, sampler="mdlm", steps=6)).text
    b.page.locator("#remask input").check()


@pytest.mark.slow
def test_browser_advanced_mode_runs_every_knob_through(browser_page):
    model, b, _ = browser_page
    b.mode("Advanced")
    b.choose("sampler", "lad")
    b.page.locator("#confidence input").check()
    b.generate("ab", steps=5, length=20, top_k=5, seed=7, block_size=0)
    assert b.error() == ""
    run = generate(model, DemoSettings(prompt="ab", length=20, sampler="lad", steps=5, top_k=5, seed=7, confidence=True))
    assert b.final_text() == run.text
    assert b.frame() == (run.frames[-1].step, run.frames[-1].tokens)
    b.page.locator("#confidence input").uncheck()
    b.choose("sampler", "mdlm")
    b.mode("Simple")


@pytest.mark.slow
@pytest.mark.parametrize("fields, message", [
    (dict(steps=0), "steps must be a whole number >= 1, got 0"),
    (dict(steps=4, length=500), "length 500 is beyond the model's 48 positions"),
    (dict(steps=4, length=3), "the prompt is 4 tokens, which leaves nothing to generate in length 3"),
    (dict(steps=257), "steps 257 is over the demo's limit of 256"),
    (dict(steps=4, batch=5), "samples (batch) 5 is over the demo's limit of 4"),
])
def test_browser_bad_input_shows_a_message_not_a_traceback(browser_page, fields, message):
    model, b, _ = browser_page
    b.mode("Simple")
    b.generate("abcd", steps=2)
    kept = (b.final_text(), b.frame(), b.page.locator("#timing").inner_text())
    assert kept[0].startswith("abcd")
    b.mode("Advanced")
    b.generate("abcd", **fields)
    err = b.error()
    assert message in err and "Traceback" not in b.page.content()
    # the message sits beside the last result, which stays (issue 25 item 9: an error wiped it)
    assert (b.final_text(), b.frame(), b.page.locator("#timing").inner_text()) == kept
    b.fill("length", 48)
    b.fill("batch", 1)
    b.mode("Simple")
    b.generate("abcd", steps=3)  # the page still works afterwards
    assert b.error() == "" and b.final_text().startswith("abcd")


@pytest.mark.slow
def test_browser_watches_frames_arrive_during_the_run(browser_page):
    """The page draws each frame as the sampler makes it (issue 25 item 9): the counter and the
    frame on screen are seen to advance, step by step, before the run is over."""
    model, b, app = browser_page
    net = model.lm.model
    net.delay, net.calls = 0.1, 0
    try:
        b.mode("Simple")
        b.record()
        b.generate("def ", steps=12)
        run_id, state, done = b.counter()
        assert (state, done) == ("done", 12)
        seen = [x for x in b.recorded() if x[0] == run_id]
        live = [(k, head) for _r, st, k, head in seen if st == "running" and head.startswith(f"step {k} / 12")]
        steps_drawn = sorted({k for k, _h in live})
        # watched arriving while the counter said the run was going, not replayed after it
        assert len(steps_drawn) >= 4 and steps_drawn[-1] >= 10, seen
    finally:
        net.delay = 0.0
    assert b.final_text() == generate(model, DemoSettings(prompt="def ", length=48, sampler="acs", steps=12)).text


@pytest.mark.slow
def test_browser_shows_the_limits_and_stop_ends_the_run(browser_page):
    model, b, app = browser_page
    assert "steps 1–256" in b.page.locator("#limits").inner_text()
    assert "1–256" in b.page.locator("#steps label").inner_text()
    net = model.lm.model
    net.delay, net.calls = 0.1, 0  # 200 steps take 20 s: a Stop slowed by a loaded machine still lands mid-run
    owners, run = [], app.demo_runs.run
    app.demo_runs.run = lambda flag, run_id=None, owner=None: (owners.append(owner), run(flag, run_id, owner))[1]
    try:
        b.mode("Simple")
        before = b.counter()[0]
        b.generate("def ", steps=200, wait=False)
        b.page.wait_for_function("() => { const c = document.querySelector('#counter .counter');"
                                 " return c && c.dataset.state === 'running' && Number(c.dataset.done) >= 3; }")
        t0 = time.time()
        b.page.locator("#stop").click()
        b.wait_for_run(before)
        answered = time.time() - t0
        run_id, state, done = b.counter()
        assert state == "stopped" and 3 <= done < 200 and answered < 5, (state, done, answered)
        assert len(owners) == 1 and isinstance(owners[0], str) and owners[0]  # the run knows its page's session
        assert app.demo_runs.active == 0 and app.demo_runs.ended[-1] == ("cancelled", done)
        calls = net.calls
        time.sleep(0.3)
        assert net.calls == calls  # nothing runs on after the stop
        # the partial result stays on the page and says it was stopped; its frames can be played back
        assert b.error().startswith(f"Stopped at step {done} of 200") and b.final_text() == ""
        step, ids = b.frame()
        assert model.mask_id in ids and f"step {done} / 200" in b.page.locator("#frame-view .frame-head").inner_text()
        b.click("back")
        b.page.wait_for_function("() => !document.querySelector('#frame-view .frame-head').innerText.includes"
                                 f"('step {done} / 200 ·')")
    finally:
        net.delay = 0.0
        del app.demo_runs.run
    b.generate("def ", steps=6)  # the page still works afterwards
    assert b.error() == "" and b.final_text() == generate(
        model, DemoSettings(prompt="def ", length=48, sampler="acs", steps=6, remask=True)).text


@pytest.mark.slow
def test_browser_reads_at_a_glance(browser_page):
    """At 1400x900: Generate above the fold in both modes, the model's kind, the legend, only the
    samplers that fit, chips of one width (MASK as wide as a token), whitespace shown, the calls."""
    from diffusionlm.demo.core import fitting_samplers

    model, b, _ = browser_page
    b.page.set_viewport_size({"width": 1400, "height": 900})
    try:
        for mode in ("Advanced", "Simple"):
            b.mode(mode)
            assert b.above_the_fold("generate") and b.above_the_fold("stop"), mode
        header = b.page.locator("#model").inner_text()
        assert "diffusion LM (Absorb + Flat)" in header and "schedule trained (Flat())" in header
        legend = b.page.locator("#legend [data-legend]").evaluate_all("els => els.map(e => e.dataset.legend)")
        assert legend == ["prompt", "mask", "settled", "active", "changed", "remasked", "whitespace", "special", "joined",
                          "bytes", "unscored", "confidence"]
        assert b.page.locator("#legend").is_visible()
        b.mode("Advanced")
        offered = b.options("sampler")
        assert offered == fitting_samplers(model) and "sedd_euler" not in offered and "mdlm" in offered
        b.choose("sampler", "acs")  # a sampler's extra knobs show with it only
        b.page.wait_for_selector("#acs-cache", state="visible")
        assert not b.page.locator("#mdlm-cache").is_visible() and b.page.locator("#eta").is_visible()
        assert b.page.locator("#schedule").is_visible() and b.page.locator("#rate").is_visible()  # a level sampler
        b.choose("sampler", "mdlm")
        b.page.wait_for_selector("#mdlm-cache", state="visible")
        b.mode("Simple")
        b.generate("def ", steps=5)
        run = generate(model, DemoSettings(prompt="def ", length=48, sampler="acs", steps=5, remask=True))
        assert f"{run.model_calls} network calls · acs (Simple mode) · {run.steps} steps" in b.page.locator("#timing").inner_text()
        assert "Generate runs acs" in b.page.locator("#runs-with").inner_text()
        b.mode("Advanced")  # the Advanced panel says its own sampler, not the Simple run's
        b.page.wait_for_function("() => document.querySelector('#runs-with').innerText.includes('Generate runs mdlm')")
        assert b.page.locator("#sampler input").first.input_value() == "mdlm"
        b.mode("Simple")
        for k in (2, 3, 4):  # back to a frame with MASK and tokens both
            b.click("back", expect_step=run.frames[-k].step)
        boxes = b.chip_boxes()
        kinds = {c.split()[1] for c, _w, _h in boxes}
        assert len(boxes) == 48 and kinds == {"prompt", "mask", "token"}
        plain = [(c, w, h) for c, w, h in boxes if not {"special", "bytes"} & set(c.split())]  # those widen to their text
        widths = {round(w, 1) for _c, w, _h in plain}
        assert len(widths) == 1 and min(w for _c, w, _h in boxes) >= min(widths) > 10, widths  # one width for every chip
        assert len({round(h, 1) for _c, _w, h in boxes}) == 1
        masks = b.page.locator("#frame-view .tok.mask:not(.changed)").evaluate_all(
            "els => els.map(e => [e.innerText, getComputedStyle(e).outlineStyle])")
        assert masks and all(m == ["", "dashed"] for m in masks)  # a box with no text, never "_"
        # the prompt's space is a visible glyph
        assert b.page.locator("#frame-view .tok.prompt .ws").all_inner_texts() == ["·"]
    finally:
        b.page.set_viewport_size({"width": 1400, "height": 1000})
