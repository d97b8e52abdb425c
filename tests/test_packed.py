"""PackedLinears: MKL's prepacked GEMM for few-row CPU inference gives F.linear's results bitwise,
only inside its context, only for the row counts asked, and never with a stale pack."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from diffusionlm.lm import DiffusionLM
from diffusionlm.models import DiffusionTransformer, TransformerConfig
from diffusionlm.models import packed as P
from diffusionlm.models.packed import PackedLinears, mkl_packing_available
from diffusionlm.processes import Absorb
from diffusionlm.samplers import MDLM
from diffusionlm.schedules.hyper import Block, Slide

N = 13


def tiny(seed: int = 0) -> DiffusionTransformer:
    torch.manual_seed(seed)
    cfg = TransformerConfig(vocab_size=N + 1, input_vocab_size=N + 1, max_positions=64, n_layers=2, n_heads=2,
                            hidden=32, bias=True)
    return DiffusionTransformer(cfg).eval()


@pytest.mark.parametrize("schedule", [Block(4, 4), Slide(4)])
def test_cached_sampling_gives_the_same_tokens_packed(schedule):
    model = tiny()
    lm = DiffusionLM(model, Absorb(N), schedule)
    B, d = 4, 24
    with torch.no_grad():
        plain = MDLM(cache=True).sample(lm, batch_size=B, length=d, generator=torch.Generator().manual_seed(3))
        with PackedLinears(model) as ctx:  # the first two row counts >= 16 the sampler feeds
            packed = MDLM(cache=True).sample(lm, batch_size=B, length=d, generator=torch.Generator().manual_seed(3))
    assert ctx.packed_calls > 0  # the packed path ran
    assert torch.equal(plain.tokens, packed.tokens)


def test_bitwise_equal_to_linear_and_restored_on_exit():
    lin = nn.Linear(768, 2304)  # gpt2-small's qkv
    x = torch.randn(4, 5, 768)
    with torch.no_grad():
        expected = lin(x)
        with PackedLinears(lin, rows=(20,)) as ctx:
            assert "forward" in lin.__dict__
            got = lin(x)
            other = lin(x[:2])  # 10 rows: not packed, plain F.linear
        assert ctx.packed_calls == 1
        assert torch.equal(got, expected) and torch.equal(other, nn.functional.linear(x[:2], lin.weight, lin.bias))
    assert "forward" not in lin.__dict__  # the class's forward again
    with pytest.raises(ZeroDivisionError):
        with PackedLinears(lin, rows=(20,)):
            1 / 0
    assert "forward" not in lin.__dict__  # restored after an error too


def test_a_changed_weight_is_repacked_and_grad_goes_through_linear():
    lin = nn.Linear(16, 24, bias=False)
    x = torch.randn(16, 16)
    with PackedLinears(lin, rows=(16,)) as ctx:
        with torch.no_grad():
            lin(x)
            lin.weight.mul_(2.0)  # a training step between calls: the pack is stale
            assert torch.equal(lin(x), nn.functional.linear(x, lin.weight))
        assert ctx.packed_calls == 2
        y = lin(x)  # grad enabled and the weight needs grad: plain F.linear, differentiable
        y.sum().backward()
        assert ctx.packed_calls == 2 and lin.weight.grad is not None


def test_the_tested_torch_has_mkl_packing():
    assert mkl_packing_available()  # torch 2.13.0's x86 CPU wheel: the tests above use the packed path


def test_without_mkl_nothing_is_replaced(monkeypatch):
    monkeypatch.setattr(P, "mkl_packing_available", lambda: False)
    lin = nn.Linear(8, 8)
    with PackedLinears(lin, rows=(16,)) as ctx:
        assert "forward" not in lin.__dict__
        lin(torch.randn(16, 8))
    assert ctx.packed_calls == 0


@pytest.mark.parametrize("rows, message", [((), "positive ints"), ((0,), "positive ints"), ((True,), "positive ints"),
                                           (tuple(range(16, 25)), "at most 8"), ((8, 16), "rows must be >= 16")])
def test_bad_rows_are_named(rows, message):
    with pytest.raises(ValueError, match=message):
        PackedLinears(nn.Linear(2, 2), rows=rows)


def test_rows_none_packs_the_first_row_counts_seen_up_to_the_limits():
    lin = nn.Linear(64, 96)
    with torch.no_grad(), PackedLinears(lin, max_packs=2, max_rows=64) as ctx:
        for M in (20, 100, 8, 32, 40, 20):  # 100 > max_rows, 8 < 16; 40 comes after two row counts were taken
            x = torch.randn(M, 64)
            assert torch.equal(lin(x), nn.functional.linear(x, lin.weight, lin.bias))
    assert ctx.packed_calls == 3  # 20, 32, 20


@pytest.mark.parametrize("kw, message", [({"max_packs": 0}, "max_packs must be"), ({"max_packs": 9}, "at most 8"),
                                         ({"max_rows": -1}, "max_rows must be")])
def test_bad_limits_are_named(kw, message):
    with pytest.raises(ValueError, match=message):
        PackedLinears(nn.Linear(2, 2), **kw)
