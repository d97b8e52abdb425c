"""A diffusion LM as an lm-evaluation-harness model.

    from diffusionlm.eval.lm_eval_adapter import DiffusionLMEval
    model = DiffusionLMEval(lm, tokenizer, num_samples=None, seed=0, sampler="mdlm")
    model.loglikelihood([("The capital of France is", " Paris")])   # [(logprob, is_greedy)]

    # with lm-eval installed, importing this module registers the model as "diffusionlm":
    import diffusionlm.eval.lm_eval_adapter, lm_eval
    lm_eval.simple_evaluate(model="diffusionlm", model_args="pretrained=runs/scratch", tasks=["lambada_openai"])

    # from the shell: lm-eval's own command line with the model registered (lm-eval 0.4.13 finds
    # models only in its registry; newer releases read the `lm_eval.models` entry point in setup.py)
    diffusionlm lm-eval --model diffusionlm --model_args pretrained=out/mdlm --tasks lambada_openai

``pretrained`` is any kind of model (:func:`diffusionlm.io.hub.load_model`: a run directory, a saved
composition, a Hugging Face causal-LM directory or hub id, with ``process``, ``schedule``,
``layout`` for the latter); ``run`` is its older name.

Without ``lm_eval`` the class works standalone (its methods take plain tuples); with it, the
class subclasses ``lm_eval.api.model.LM`` and requests may be the harness's ``Instance``
objects (anything with ``.args``).

Definitions (docs/EVALUATION.md):

* **Encoding.** As the harness's HF model: trailing spaces of the context move to the
  continuation; the continuation's ids are those of ``encode(context + continuation)`` after the
  context's ids. An empty context becomes one token, ``prefix_token_id`` (default: the
  tokenizer's EOS, which separates documents in wrap-rule training data). When context +
  continuation exceed ``max_length`` (default: the model's positions) the context is cut from
  the LEFT; a continuation that alone does not fit is refused (never truncated).
* **loglikelihood** = MINUS the Monte-Carlo NLL upper bound of the continuation given the
  context: the context positions are FIXED (clean at every step, as a sampler's prompt) and only
  the continuation's terms are counted (:func:`diffusionlm.eval.bound.conditional_nll_bound`,
  the toolkit's one bound estimator; ``DiffusionLM.nll_bound`` is the same with nothing fixed).
  So it is a LOWER bound on log p(continuation | context); exact for Absorb + Quench
  (autoregression), whose bound an autoregressive composition (SHIFTED, a backbone that ignores
  the levels) gets from ONE causal forward per request (:mod:`.causal`) whatever M. ``num_samples=None`` (default): for a discrete schedule every step that moves
  a continuation position is computed exactly once (M = |K|, one replicate; exact under Quench
  and wherever the corruption is deterministic), for continuous time M = 32. Each request is seeded from sha1(seed, context, continuation), so its
  answer does not depend on the other requests or their order.
* **is_greedy**: for every continuation position, the model's argmax over the real tokens in the
  lowest-noise draw in which that position moves and is corrupted (MASK or a substitute) equals
  the token (under Quench + SHIFTED: greedy decoding reproduces the continuation).
* **loglikelihood_rolling**: the log-likelihood bound of the whole text given the prefix token,
  in windows of at most ``max_length`` positions: the first window scores up to max_length - 1
  tokens after the prefix; each later window scores the next max_length // 2 tokens given the
  max_length - (that many) tokens before them as fixed context. Every token is scored once.
* **generate_until**: the registry sampler (``sampler``, ``sampler_kwargs``) fills
  ``max_gen_toks`` positions after the context, which is passed as the prompt (fixed positions:
  checked unchanged). The generated ids are cut at the first EOS, decoded (special tokens
  dropped) and cut before the earliest ``until`` string. ``temperature=0`` / ``do_sample=False``
  select ``greedy=True`` on samplers that have that option (AR); other samplers ignore them.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import torch

from ..data import load_tokenizer
from ..specs import provided
from ..samplers import get_sampler
from ..samplers.driver import model_device as _device
from .bound import check_likelihood, conditional_nll_bound, relevant_steps, row_generators

try:  # the harness is optional
    import lm_eval.models  # noqa: F401  (fills the registry's built-in names before ours is added)
    from lm_eval.api.model import LM as _LMBase
    from lm_eval.api.registry import register_model as _register_model

    HAVE_LM_EVAL = True
except ImportError:  # standalone
    HAVE_LM_EVAL = False
    _register_model = None

    class _LMBase:  # type: ignore[no-redef]
        """Stand-in for lm_eval.api.model.LM: single process, no cache hook."""

        def __init__(self) -> None:
            self._rank = 0
            self._world_size = 1
            self._device = None
            self.cache_hook = None

        @property
        def rank(self) -> int:
            return self._rank

        @property
        def world_size(self) -> int:
            return self._world_size


__all__ = ["DiffusionLMEval", "HAVE_LM_EVAL", "load_run"]

DEFAULT_CONTINUOUS_SAMPLES = 32
#: keyword arguments lm-eval itself adds to a model's model_args (taken and not used)
HARNESS_ARGS = ("max_batch_size",)


def load_run(spec: "str | Path", **load_kw: Any):
    """(DiffusionLM, tokenizer) of any kind of model (``diffusionlm.io.hub.load_model``)."""
    m = provided("load_model")(spec, **{k: v for k, v in load_kw.items() if v is not None})  # io's loader, late-bound
    return m.lm, m.tokenizer


def _int_or_none(v: Any, name: str) -> Optional[int]:
    if v is None or v == "None" or v == "":
        return None
    try:
        out = int(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int, got {v!r}") from None
    return out


def _args(request: Any) -> tuple:
    args = getattr(request, "args", request)
    if not isinstance(args, (tuple, list)):
        args = (args,)
    return tuple(args)


class DiffusionLMEval(_LMBase):
    """lm-evaluation-harness model over a :class:`diffusionlm.lm.DiffusionLM` (module docstring).

    lm, tokenizer: the composition and the tokenizer of its ids (anything ``load_tokenizer``
    takes); or ``run``: a ``diffusionlm train`` directory (both loaded from it). num_samples: M
    per request (None: see the module docstring). seed: the requests' seeds derive from it.
    batch_size: Monte-Carlo draws per model forward. sampler / sampler_kwargs: the generation
    sampler (a registry name and its arguments, or an instance). max_gen_toks: default
    generation length. max_length: positions per sequence (default the model's). prefix_token_id:
    the token an empty context becomes (default EOS).
    """

    def __init__(
        self,
        lm: Any = None,
        tokenizer: Any = None,
        *,
        pretrained: Optional[str] = None,
        run: Optional[str] = None,
        process: Optional[str] = None,
        schedule: Optional[str] = None,
        layout: Optional[str] = None,
        num_samples: Any = None,
        seed: Any = 0,
        batch_size: Any = 16,
        sampler: Any = "mdlm",
        sampler_kwargs: Optional[dict] = None,
        max_gen_toks: Any = 256,
        max_length: Any = None,
        prefix_token_id: Any = None,
        device: Any = None,
        **harness: Any,  # what the harness adds to model_args (max_batch_size); anything else is refused
    ) -> None:
        unknown = sorted(set(harness) - set(HARNESS_ARGS))
        if unknown:
            known = [p for p in inspect.signature(DiffusionLMEval.__init__).parameters if p not in ("self", "harness")]
            raise ValueError(f"unknown model_args {', '.join(unknown)} for diffusionlm; its arguments: {', '.join(known)}")
        super().__init__()

        if pretrained is not None and run is not None:
            raise ValueError("give pretrained (or its older name run), not both")
        spec = pretrained if pretrained is not None else run
        if spec is not None:
            if lm is not None:
                raise ValueError("give either lm (with tokenizer) or pretrained, not both")
            dev = None if device in (None, "", "auto") else device
            lm, tokenizer = load_run(spec, process=process, schedule=schedule, layout=layout, device=dev)
        elif any(v is not None for v in (process, schedule, layout)):
            raise ValueError("process / schedule / layout say how to read pretrained=<model>; give it")
        if lm is None:
            raise ValueError("give lm (a DiffusionLM) and its tokenizer, or pretrained=<a model: run directory, "
                             "saved composition, HF directory or hub id>")
        if tokenizer is None:
            raise ValueError("give the tokenizer of the lm's token ids")
        check_likelihood(lm)
        self.lm = lm
        self.tokenizer = load_tokenizer(tokenizer)
        if self.tokenizer.vocab_size > lm.process.vocab_size:
            raise ValueError(
                f"tokenizer has {self.tokenizer.vocab_size} ids but the process has {lm.process.vocab_size} real tokens"
            )
        self.num_samples = _int_or_none(num_samples, "num_samples")
        if self.num_samples is not None and self.num_samples < 1:
            raise ValueError(f"num_samples (M) must be >= 1, got {self.num_samples}")
        self.seed = int(seed)
        bs = 16 if batch_size in (None, "auto") or str(batch_size).startswith("auto") else int(batch_size)
        if bs < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        self.batch_size = bs
        if isinstance(sampler, str):
            if isinstance(sampler_kwargs, str):
                sampler_kwargs = json.loads(sampler_kwargs)
            sampler = get_sampler(sampler)(**(sampler_kwargs or {}))
        elif sampler_kwargs:
            raise ValueError("sampler_kwargs go with a sampler name, not an instance")
        self.sampler = sampler
        self.max_gen_toks = int(max_gen_toks)
        ml = _int_or_none(max_length, "max_length")
        model_max = getattr(lm, "max_positions", None)
        if ml is None:
            ml = model_max
        elif model_max is not None and ml > model_max:
            raise ValueError(f"max_length {ml} exceeds the model's {model_max} positions")
        if ml is not None and ml < 2:
            raise ValueError(f"max_length must be >= 2, got {ml}")
        self._max_length = ml
        pid = _int_or_none(prefix_token_id, "prefix_token_id")
        self.prefix_token_id = self.tokenizer.eos_id if pid is None else pid
        self._device = device

    # -- harness plumbing -------------------------------------------------------------------
    @property
    def max_length(self) -> Optional[int]:
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        return repr(self.tokenizer)

    def _cache(self, kind: str, args: tuple, answer: Any) -> None:
        hook = getattr(self, "cache_hook", None)
        if hook is not None and hasattr(hook, "add_partial"):
            hook.add_partial(kind, args, answer)

    # -- encoding ---------------------------------------------------------------------------
    def tok_encode(self, text: str) -> List[int]:
        return list(self.tokenizer.encode(text))

    def tok_decode(self, ids: Sequence[int]) -> str:
        try:
            return self.tokenizer.decode(list(ids), skip_special_tokens=True)
        except TypeError:
            return self.tokenizer.decode(list(ids))

    def _encode_pair(self, context: str, continuation: str) -> Tuple[List[int], List[int]]:
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces > 0:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self.tok_encode(context + continuation)
        ctx = self.tok_encode(context)
        return ctx, whole[len(ctx) :]

    def _fit(self, ctx: List[int], cont: List[int], what: str) -> List[int]:
        if not ctx:
            ctx = [self.prefix_token_id]
        L = self._max_length
        if L is not None:
            if len(cont) + 1 > L:
                raise ValueError(
                    f"{what}: the continuation has {len(cont)} tokens; with at least one context token it does not "
                    f"fit max_length {L} (continuations are never truncated)"
                )
            if len(ctx) + len(cont) > L:
                ctx = ctx[len(ctx) + len(cont) - L :]  # cut the context from the left
        return ctx

    # -- scoring ----------------------------------------------------------------------------
    def score(self, ctx: List[int], cont: List[int], key: str) -> Tuple[float, bool]:
        """(log-likelihood bound, is_greedy) of token ids `cont` after the fixed ids `ctx`."""
        if not cont:
            raise ValueError(f"{key[:60]!r}: empty continuation")
        ids = ctx + cont
        x0 = torch.tensor([ids], dtype=torch.long)
        fixed = torch.zeros(1, len(ids), dtype=torch.bool)
        fixed[0, : len(ctx)] = True
        M, R = self.num_samples, None
        if M is None:
            if self.lm.schedule.continuous:
                M = DEFAULT_CONTINUOUS_SAMPLES
            else:  # every relevant step once: no step-sampling noise (the harness takes no error bar)
                M, R = max(1, int(relevant_steps(self.lm.schedule, len(ids), ~fixed)[0])), 1
        dev = _device(self.lm.model)
        out = conditional_nll_bound(
            self.lm, x0.to(dev), M, fixed=fixed.to(dev), generator=row_generators(self.seed, [key]),
            chunk_size=self.batch_size, track_greedy=True, replicates=R,
        )
        return -float(out.nll[0]), bool(out.greedy[0])

    def loglikelihood(self, requests: Sequence[Any], disable_tqdm: bool = False) -> List[Tuple[float, bool]]:
        """[(logprob, is_greedy)] per (context, continuation) request (module docstring)."""
        results = []
        for r in requests:
            args = _args(r)
            if len(args) < 2:
                raise ValueError(f"a loglikelihood request is (context, continuation), got {args!r}")
            context, continuation = args[0], args[1]
            ctx, cont = self._encode_pair(context, continuation)
            ctx = self._fit(ctx, cont, "loglikelihood")
            ans = self.score(ctx, cont, f"ll\0{context}\0{continuation}")
            self._cache("loglikelihood", args, ans)
            results.append(ans)
        return results

    def rolling_windows(self, ids: List[int]) -> List[Tuple[List[int], List[int]]]:
        """(context ids, scored ids) windows of loglikelihood_rolling (module docstring)."""
        seq = [self.prefix_token_id] + list(ids)
        n = len(seq)
        L = self._max_length or n
        out = []
        pos = min(L, n)
        out.append((seq[:1], seq[1:pos]))
        stride = max(1, L // 2)
        while pos < n:
            end = min(pos + stride, n)
            start = max(0, end - L)
            out.append((seq[start:pos], seq[pos:end]))
            pos = end
        return out

    def loglikelihood_rolling(self, requests: Sequence[Any], disable_tqdm: bool = False) -> List[float]:
        """Log-likelihood bound of each whole text (module docstring)."""
        results = []
        for r in requests:
            args = _args(r)
            text = args[0]
            ids = self.tok_encode(text)
            total = 0.0
            for w, (ctx, cont) in enumerate(self.rolling_windows(ids)):
                if cont:
                    total += self.score(ctx, cont, f"roll\0{w}\0{text}")[0]
            self._cache("loglikelihood_rolling", args, total)
            results.append(total)
        return results

    # -- generation -------------------------------------------------------------------------
    def _sampler_for(self, gen_kwargs: dict) -> Any:
        s = self.sampler
        if not dataclasses.is_dataclass(s):
            return s
        fields = {f.name for f in dataclasses.fields(s)}
        greedy = gen_kwargs.get("do_sample") is False or gen_kwargs.get("temperature") in (0, 0.0)
        if greedy and "greedy" in fields:
            return dataclasses.replace(s, greedy=True)
        t = gen_kwargs.get("temperature")
        if t and "temperature" in fields:
            return dataclasses.replace(s, temperature=float(t))
        return s

    def generate_until(self, requests: Sequence[Any], disable_tqdm: bool = False) -> List[str]:
        """Generated continuation of each (context, gen_kwargs) request, cut at `until`."""
        results = []
        eos = self.tokenizer.eos_id
        for r in requests:
            args = _args(r)
            context = args[0]
            gen_kwargs = dict(args[1]) if len(args) > 1 and args[1] else {}
            until = gen_kwargs.get("until", [])
            if isinstance(until, str):
                until = [until]
            until = [u for u in until if u]
            n_new = int(gen_kwargs.get("max_gen_toks", self.max_gen_toks))
            if n_new < 1:
                raise ValueError(f"max_gen_toks must be >= 1, got {n_new}")
            ctx = self.tok_encode(context) or [self.prefix_token_id]
            L = self._max_length
            if L is not None:
                if n_new + 1 > L:
                    raise ValueError(f"max_gen_toks {n_new} leaves no room for context in max_length {L}")
                ctx = ctx[-(L - n_new) :]
            P = len(ctx)
            sampler = self._sampler_for(gen_kwargs)
            g = row_generators(self.seed, [f"gen\0{context}\0{sorted(gen_kwargs.items())!r}"])[0]
            dev = _device(self.lm.model)
            prompt = torch.tensor([ctx], dtype=torch.long, device=dev)
            out = sampler.sample(self.lm, batch_size=1, length=P + n_new, prompt=prompt, generator=g)
            tokens = out.tokens[0].cpu().tolist()
            if tokens[:P] != ctx:
                raise RuntimeError(f"{type(sampler).__name__} altered the fixed context positions")
            new = tokens[P:]
            if eos is not None and eos in new:
                new = new[: new.index(eos)]
            text = self.tok_decode(new)
            cuts = [text.find(u) for u in until if u in text]
            if cuts:
                text = text[: min(cuts)]
            self._cache("generate_until", args, text)
            results.append(text)
        return results


if HAVE_LM_EVAL:
    try:
        _register_model("diffusionlm")(DiffusionLMEval)
    except ValueError:  # pragma: no cover - a reloaded module: the name is held by the earlier class
        pass
