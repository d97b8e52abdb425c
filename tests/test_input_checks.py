"""Out-of-range input to the public Python API (issue 14, item 9): every entry point that indexes
with its arguments -- processes' corrupt / loss / posterior_probs / step_kl / prior_kl, the mask
builders, the samplers' prompt / fixed, DiffusionTransformer and HFDenoiser forward -- raises a
ValueError / TypeError naming the bad argument, instead of an IndexError deep inside or a silently
wrong result. One table: (entry point, bad call, error, message)."""
import pytest
import torch
import transformers

from diffusionlm import masks
from diffusionlm.checks import as_mask, check_ids, check_levels, check_scores
from diffusionlm.lm import DiffusionLM
from diffusionlm.models import DiffusionTransformer, TransformerConfig
from diffusionlm.models.hf import HFDenoiser
from diffusionlm.processes import Absorb, EpsilonHybrid, GammaHybrid, Structural, Uniform
from diffusionlm.samplers import get_sampler
from diffusionlm.schedules import Flat

N, B, d = 10, 2, 6
X0 = torch.arange(B * d).reshape(B, d) % N
LEVEL = torch.full((B, d), 0.5)
PROCESSES = {"absorb": Absorb(N), "gamma": GammaHybrid(N, 0.1), "epsilon": EpsilonHybrid(N), "uniform": Uniform(N)}


def _probs(*shape):
    return torch.softmax(torch.randn(*shape, dtype=torch.float64), -1)


def process_cases(name):
    p = PROCESSES[name]
    V = p.model_vocab_size
    logits = torch.randn(B, d, V)
    c = p.corrupt(X0, LEVEL, generator=torch.Generator().manual_seed(0))
    x_t = c.ids
    return [
        ("corrupt: x0 beyond the vocabulary", lambda: p.corrupt(X0 + N, LEVEL), ValueError, r"clean ids out of range: found \[10, 19\], allowed \[0, 9\]"),
        ("corrupt: float x0", lambda: p.corrupt(X0.float(), LEVEL), TypeError, "clean ids must be an integer tensor, got torch.float32"),
        ("corrupt: level above 1", lambda: p.corrupt(X0, LEVEL * 3), ValueError, r"noise levels must lie in \[0, 1\]; got values in \[1.5, 1.5\]"),
        ("corrupt: level of another shape", lambda: p.corrupt(X0, torch.full((3,), 0.5)), ValueError, r"noise levels of shape \(3,\) do not fit ids of shape \(2, 6\)"),
        ("loss: x0 beyond the vocabulary", lambda: p.loss(logits, X0 + N, c, LEVEL), ValueError, r"x0 \(clean ids\) out of range: found \[10, 19\]"),
        ("loss: negative x0", lambda: p.loss(logits, X0 - N, c, LEVEL), ValueError, r"x0 \(clean ids\) out of range: found \[-10, -1\]"),
        ("loss: logits of another length", lambda: p.loss(torch.randn(B, d + 1, V), X0, c, LEVEL), ValueError, r"logits of shape \(2, 7, \d+\) do not fit ids of shape \(2, 6\)"),
        ("loss: logits narrower than the vocabulary", lambda: p.loss(torch.randn(B, d, 3), X0, c, LEVEL), ValueError, r"logits of shape \(2, 6, 3\) do not fit ids of shape \(2, 6\): expected \[2, 6, >= 10\]"),
        ("loss: integer logits", lambda: p.loss(torch.zeros(B, d, V, dtype=torch.long), X0, c, LEVEL), TypeError, "logits must be a float tensor, got torch.int64"),
        ("loss: negative level", lambda: p.loss(logits, X0, c, LEVEL - 1), ValueError, r"level must lie in \[0, 1\]"),
        ("loss: NaN level", lambda: p.loss(logits, X0, c, LEVEL * float("nan")), ValueError, r"level must lie in \[0, 1\]"),
        ("loss: level of another shape", lambda: p.loss(logits, X0, c, torch.full((B, d + 2), 0.5)), ValueError, r"level of shape \(2, 8\) do not fit ids"),
        ("loss: corruption of another batch", lambda: p.loss(logits, X0, p.corrupt(X0[:1], LEVEL[:1]), LEVEL), ValueError, r"corruption of shape \(1, 6\) does not fit x0 of shape \(2, 6\)"),
        ("posterior: x_t beyond the model vocabulary", lambda: p.posterior_probs(x_t + V, LEVEL, LEVEL / 2, _probs(B, d, N)), ValueError, rf"x_t out of range: found .*allowed \[0, {V - 1}\]"),
        ("posterior: float x_t", lambda: p.posterior_probs(x_t.float(), LEVEL, LEVEL / 2, _probs(B, d, N)), TypeError, "x_t must be an integer tensor"),
        ("posterior: level_t above 1", lambda: p.posterior_probs(x_t, LEVEL * 3, LEVEL / 2, _probs(B, d, N)), ValueError, r"level_t must lie in \[0, 1\]"),
        ("posterior: level_s above level_t", lambda: p.posterior_probs(x_t, LEVEL / 2, LEVEL, _probs(B, d, N)), ValueError, "level_s must not exceed level_t"),
        ("posterior: clean_probs over another vocabulary", lambda: p.posterior_probs(x_t, LEVEL, LEVEL / 2, _probs(B, d, N + 3)), ValueError, r"clean_probs of shape \(2, 6, 13\) do not fit ids of shape \(2, 6\): expected \[2, 6, 10\]"),
        ("step_kl: x0 beyond the vocabulary", lambda: p.step_kl(logits, X0 + N, x_t, LEVEL, LEVEL / 2), ValueError, r"x0 \(clean ids\) out of range"),
        ("step_kl: x_t beyond the model vocabulary", lambda: p.step_kl(logits, X0, x_t + V, LEVEL, LEVEL / 2), ValueError, "x_t out of range"),
        ("step_kl: x_t of another shape", lambda: p.step_kl(logits, X0, x_t[:, :3], LEVEL, LEVEL / 2), ValueError, r"x_t of shape \(2, 3\) does not fit x0 of shape \(2, 6\)"),
        ("step_kl: negative level_s", lambda: p.step_kl(logits, X0, x_t, LEVEL, LEVEL - 1), ValueError, r"level_s must lie in \[0, 1\]"),
        ("step_kl: logits narrower than the vocabulary", lambda: p.step_kl(torch.randn(B, d, 2), X0, x_t, LEVEL, LEVEL / 2), ValueError, r"logits of shape \(2, 6, 2\)"),
        ("prior_kl: level above 1", lambda: p.prior_kl(torch.tensor(2.0)), ValueError, r"level must lie in \[0, 1\]; got values in \[2, 2\]"),
    ]


def mask_cases():
    return [
        ("categories_from_levels: level above 1", lambda: masks.categories_from_levels(torch.full((1, d), 2.0)), ValueError, r"level must lie in \[0, 1\]"),
        ("categories_from_levels: NaN next_level", lambda: masks.categories_from_levels(LEVEL, LEVEL * float("nan")), ValueError, r"next_level must lie in \[0, 1\]"),
        ("categories_from_levels: shapes differ", lambda: masks.categories_from_levels(LEVEL, LEVEL[:1]), ValueError, "differ in shape"),
        ("inference_mask_mod: unknown code", lambda: masks.inference_mask_mod(torch.full((1, d), 7)), ValueError, "categories holds the code 7"),
        ("training_mask: float categories", lambda: masks.training_mask(torch.zeros(1, d)), ValueError, "categories must be an integer tensor"),
        ("two_halves_mask: float segment ids", lambda: masks.two_halves_mask(torch.zeros(1, d)), ValueError, "segment ids must be an integer tensor"),
        ("shift_inputs: float ids", lambda: masks.shift_inputs(X0.float(), "shifted", 3), TypeError, r"x \(token ids\) must be an integer tensor"),
        ("two_halves_inputs: float ids", lambda: masks.two_halves_inputs(X0.float(), X0.float(), torch.zeros(B, d, dtype=torch.long), "aligned"), TypeError, r"x_noisy \(token ids\) must be an integer tensor"),
        ("two_halves_inputs: shapes differ", lambda: masks.two_halves_inputs(X0, X0[:, :3], torch.zeros(B, d, dtype=torch.long), "aligned"), ValueError, "must both be"),
    ]


def tiny_transformer(**kw):
    torch.manual_seed(0)
    cfg = TransformerConfig.preset("tiny", vocab_size=N + 1, input_vocab_size=N + 2, max_positions=16, n_layers=1,
                                   hidden=16, n_heads=2, cond_dim=8, **kw)
    return DiffusionTransformer(cfg).eval()


def sampler_cases(name):
    lm = DiffusionLM(tiny_transformer(), Absorb(N), Flat(), bos_id=0)
    sampler = {"mdlm": lambda: get_sampler("mdlm")(steps=3), "acs": lambda: get_sampler("acs")(eta=0.1, steps=3),
               "ar": lambda: get_sampler("ar")(), "lad": lambda: get_sampler("lad")(iterations=3)}[name]()
    full = torch.zeros(1, 8, dtype=torch.long)
    run = sampler.sample
    return [
        ("prompt: float ids", lambda: run(lm, 1, 8, prompt=torch.zeros(1, 3)), TypeError, r"prompt \(token ids\) must be an integer tensor, got torch.float32"),
        ("prompt: bool ids", lambda: run(lm, 1, 8, prompt=torch.ones(1, 3, dtype=torch.bool)), TypeError, r"prompt \(token ids\) must be an integer tensor, got torch.bool"),
        ("prompt: MASK or beyond", lambda: run(lm, 1, 8, prompt=torch.full((1, 3), N)), ValueError, r"prompt \(token ids\) out of range: found \[10, 10\], allowed \[0, 9\]"),
        ("prompt: negative ids", lambda: run(lm, 1, 8, prompt=torch.full((1, 3), -1)), ValueError, r"prompt \(token ids\) out of range"),
        ("prompt: 3-D", lambda: run(lm, 1, 8, prompt=torch.zeros(1, 1, 3, dtype=torch.long)), ValueError, r"prompt must be \[P\] or \[B, P\] token ids, got shape \(1, 1, 3\)"),
        ("prompt: another batch", lambda: run(lm, 2, 8, prompt=torch.zeros(3, 3, dtype=torch.long)), ValueError, "prompt batch 3 does not match batch_size 2"),
        ("prompt: longer than the length", lambda: run(lm, 1, 8, prompt=torch.zeros(1, 12, dtype=torch.long)), ValueError, "prompt of 12 tokens is longer than the sequence length 8"),
        ("fixed: float", lambda: run(lm, 1, 8, prompt=full, fixed=torch.rand(1, 8)), TypeError, "fixed must be a bool tensor, got torch.float32"),
        ("fixed: integers", lambda: run(lm, 1, 8, prompt=full, fixed=torch.full((1, 8), 2)), TypeError, "fixed must be a bool tensor, got torch.int64"),
        ("fixed: another length", lambda: run(lm, 1, 8, prompt=full, fixed=torch.ones(1, 5, dtype=torch.bool)), ValueError, r"fixed of shape \(1, 5\) does not fit the batch \(1, 8\)"),
        ("fixed: another batch", lambda: run(lm, 2, 8, prompt=full, fixed=torch.ones(3, 8, dtype=torch.bool)), ValueError, r"fixed of shape \(3, 8\) does not fit the batch \(2, 8\)"),
        ("fixed: prompt of another length", lambda: run(lm, 1, 8, prompt=full[:, :5], fixed=torch.ones(1, 8, dtype=torch.bool)), ValueError, "the prompt holds a value for every position: it must have the sequence length 8, got 5"),
        ("fixed: without a prompt", lambda: run(lm, 1, 8, fixed=torch.ones(1, 8, dtype=torch.bool)), ValueError, "fixed positions given without the prompt"),
    ]


def model_cases():
    m = tiny_transformer()
    mt = tiny_transformer(time_conditioning=True)
    mw = tiny_transformer(weighted_embedding_gamma=0.5, mask_id=N)
    cfg = transformers.GPT2Config(vocab_size=N, n_positions=16, n_embd=16, n_layer=1, n_head=2, bos_token_id=0,
                                  eos_token_id=0)
    torch.manual_seed(0)
    hf = HFDenoiser.from_model(transformers.GPT2LMHeadModel(cfg), mask="add")
    ones = torch.ones(B, d)
    return [
        ("transformer: ids beyond the input vocabulary", lambda: m(X0 + N + 2), ValueError, r"input_ids must lie in \[0, 12\)"),
        ("transformer: float ids", lambda: m(X0.float()), TypeError, "input_ids must be integer ids"),
        ("transformer: mask of another shape", lambda: m(X0, attention_mask=torch.ones(1, 1, d, d + 1, dtype=torch.bool)), ValueError, r"attention_mask has shape \[1, 1, 6, 7\]"),
        ("transformer: float mask", lambda: m(X0, attention_mask=torch.ones(1, 1, d, d)), TypeError, "attention_mask must be a boolean tensor"),
        ("transformer: float position_ids", lambda: m(X0, position_ids=torch.zeros(B, d)), TypeError, "position_ids must be an integer tensor, got torch.float32"),
        ("transformer: position_ids beyond max_positions", lambda: m(X0, position_ids=torch.full((B, d), 16)), ValueError, r"position_ids must lie in \[0, 16\)"),
        ("transformer: levels above 1", lambda: mt(X0, levels=ones * 3), ValueError, r"levels must lie in \[0, 1\]; got values in \[3, 3\]"),
        ("transformer: NaN levels", lambda: mt(X0, levels=ones * float("nan")), ValueError, r"levels must lie in \[0, 1\]"),
        ("transformer: levels of another shape", lambda: mt(X0, levels=torch.full((B, d + 1), 0.5)), ValueError, r"levels has shape \[2, 7\]"),
        ("transformer: negative levels, not time-conditioned", lambda: m(X0, levels=-ones), ValueError, r"levels must lie in \[0, 1\]"),
        ("transformer: embedding_weight above 1", lambda: mw(X0, embedding_weight=ones * 2), ValueError, r"embedding_weight must lie in \[0, 1\]"),
        ("hf: ids beyond the vocabulary", lambda: hf(X0 + N + 5), ValueError, r"input ids out of range: found \[15, 24\], allowed \[0, 10\]"),
        ("hf: float ids", lambda: hf(X0.float()), TypeError, "input_ids must be an integer tensor"),
        ("hf: mask of another shape", lambda: hf(X0, attention_mask=torch.ones(1, 1, d, d + 1, dtype=torch.bool)), ValueError, r"attention_mask has shape \[1, 1, 6, 7\]"),
        ("hf: float position_ids", lambda: hf(X0, position_ids=torch.zeros(B, d)), TypeError, "position_ids must be an integer tensor"),
        ("hf: levels above 1", lambda: hf(X0, levels=ones * 3), ValueError, r"levels must lie in \[0, 1\]"),
    ]


def structural_cases():
    s = Structural(N)
    return [
        ("corrupt: x0 beyond the vocabulary", lambda: s.corrupt(X0 + N), ValueError, r"clean ids out of range: found \[10, 19\]"),
        ("corrupt: float x0", lambda: s.corrupt(X0.float()), TypeError, "clean ids must be an integer tensor"),
        ("corrupt: response_mask of another shape", lambda: s.corrupt(X0, response_mask=torch.ones(B, d + 1, dtype=torch.bool)), ValueError, "response_mask of shape"),
        ("corrupt: level above 1", lambda: s.corrupt(X0, torch.full((B,), 1.5)), ValueError, r"levels must lie in \[0, 1\]"),
        ("loss: x0 beyond the vocabulary", lambda: s.loss(torch.randn(B, d, N + 1), X0 + N, None), ValueError, "clean ids out of range"),
        ("loss: logits of another shape", lambda: s.loss(torch.randn(B, d + 1, N + 1), X0, None), ValueError, "logits of shape"),
    ]


TABLE = (
    [(f"{k}.{name}", *rest) for k in PROCESSES for name, *rest in process_cases(k)]
    + [(f"structural.{name}", *rest) for name, *rest in structural_cases()]
    + [(f"masks.{name}", *rest) for name, *rest in mask_cases()]
    + [(f"{k}.sample {name}", *rest) for k in ("mdlm", "acs", "ar", "lad") for name, *rest in sampler_cases(k)]
    + [(name, *rest) for name, *rest in model_cases()]
)


@pytest.mark.parametrize("call, bad, error, message", TABLE, ids=[row[0] for row in TABLE])
def test_bad_input_raises_naming_the_argument(call, bad, error, message):
    with pytest.raises(error, match=message):
        bad()


def test_the_checks_pass_good_input_through():
    """The same entry points with good arguments: no error, and the values are those given."""
    p = PROCESSES["gamma"]
    c = p.corrupt(X0, LEVEL, generator=torch.Generator().manual_seed(0))
    logits = torch.randn(B, d, p.model_vocab_size)
    assert torch.isfinite(p.loss(logits, X0, c, LEVEL[:, :1])).all()  # a per-sequence level broadcasts
    post = p.posterior_probs(c.ids, LEVEL, LEVEL / 2, _probs(B, d, N))
    assert torch.allclose(post.sum(-1), torch.ones(B, d, dtype=torch.float64))
    assert p.step_kl(logits, X0, c.ids, LEVEL, LEVEL).abs().max() == 0  # level_s == level_t: nothing moves
    check_ids(torch.tensor([0, 9]), 10)
    assert check_levels(torch.tensor([0, 1])).dtype == torch.float32  # integer 0 / 1 levels are levels
    check_scores(torch.zeros(B, d, N), X0, N, exact=True)
    assert as_mask(torch.tensor([True, False]), 3, 2, False, "m").shape == (3, 2)
    out = get_sampler("mdlm")(steps=2).sample(DiffusionLM(tiny_transformer(), Absorb(N), Flat(), bos_id=0), 2, 8,
                                              prompt=torch.tensor([1, 2, 3]), generator=torch.Generator().manual_seed(0))
    assert out.tokens[:, :3].tolist() == [[1, 2, 3]] * 2
