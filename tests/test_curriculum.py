"""The training curriculum (issue 22): the hyperschedule changes at the stated optimizer step, a
run resumed across the change equals the straight run, and the recipe's configuration checks it
before anything trains. Also the two-halves layout's head over the noisy half only."""
import json

import pytest
import torch

from diffusionlm.config import RunConfig
from diffusionlm.io.runs import build
from diffusionlm.schedules import Block
from diffusionlm.training import TrainConfig, Trainer, latest_checkpoint, seed_everything
from diffusionlm.schedules.curriculum import Curriculum

LLAMA = {"model_type": "llama", "vocab_size": 259, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
         "bos_token_id": 257, "eos_token_id": 256, "pad_token_id": 258}
D = 16
B2 = {"name": "block", "width": 2, "steps_per_block": 2}
B4 = {"name": "block", "width": 4, "steps_per_block": 4}
CURRICULUM = [{"step": 0, "schedule": B2}, {"step": 3, "schedule": B4}]


class Stream:
    """Resumable random byte batches: batch i depends only on i."""

    def __init__(self):
        self.i = 0

    def __next__(self):
        g = torch.Generator().manual_seed(7919 + self.i)
        self.i += 1
        return torch.randint(0, 256, (3, D), generator=g)

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, s):
        self.i = s["i"]


def lm(seed=0, layout="shifted"):
    """A tiny random Llama with LoRA, SHIFTED, Absorb, as recipes/smollm2-block.json builds SmolLM2."""
    run = RunConfig.from_file(None, ["model.kind=hf", "model.path=null", "model.hf_config=" + json.dumps(LLAMA),
                                     'model.lora={"r": 4, "target_modules": ["q_proj", "v_proj", "up_proj"]}',
                                     "data.tokenizer=byte", f"data.length={D}", 'process={"name": "absorb"}',
                                     f"layout={layout}", "schedule=" + json.dumps(B4)])
    seed_everything(seed)
    return build(run, data=False).lm


def cfg(out, **kw):
    base = dict(steps=6, lr=3e-3, warmup_steps=1, out_dir=str(out), progress=False, seed=5, two_halves=True,
                curriculum=CURRICULUM, save_every=1, keep_checkpoints=0)
    base.update(kw)
    return TrainConfig(**base)


def test_curriculum_picks_the_entry_whose_start_is_the_last_at_or_before_the_step():
    c = Curriculum([(0, Block(2, 2)), (3, Block(4, 4)), (10, Block(8, 8))])
    assert [c.at(k) for k in (0, 1, 2, 3, 9, 10, 1000)] == [Block(2, 2)] * 3 + [Block(4, 4)] * 2 + [Block(8, 8)] * 2
    assert Curriculum.from_spec(c.to_spec()).to_spec() == c.to_spec()


@pytest.mark.parametrize("spec, message", [
    ([], "at least one"),
    ([{"step": 1, "schedule": B2}], "must start at step 0"),
    ([{"step": 0, "schedule": B2}, {"step": 0, "schedule": B4}], "strictly increase"),
    ([{"step": 0, "schedule": B2, "lr": 1}], "exactly the keys step and schedule"),
    ([{"step": -1, "schedule": B2}], "integer >= 0"),
    ([{"step": 0, "schedule": {"name": "blok"}}], r"train.curriculum\[0\].schedule"),
])
def test_bad_curricula_are_refused_when_the_config_is_made(spec, message):
    with pytest.raises((ValueError, TypeError), match=message):
        TrainConfig(curriculum=spec)


def test_a_run_config_refuses_a_curriculum_block_wider_than_the_rows_before_building_anything():
    with pytest.raises(ValueError, match=r"train.curriculum\[1\].schedule"):
        RunConfig.from_file(None, ["data.length=8", "train.curriculum=" + json.dumps(
            [{"step": 0, "schedule": B2}, {"step": 5, "schedule": {"name": "block", "width": 16}}])])


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("layout", ["shifted", "shifted_last"])
def test_the_schedule_changes_at_the_stated_step_and_resume_across_the_change_is_exact(tmp_path, layout):
    straight = Trainer(lm(layout=layout), cfg(tmp_path / "a"), Stream())
    straight.fit()
    seen = [m["schedule"] for m in straight.history]
    assert seen == [repr(Block(2, 2))] * 3 + [repr(Block(4, 4))] * 3
    assert straight.lm.schedule == Block(4, 4)  # the composition leaves with the last entry's schedule
    assert straight.lm.layout.value == layout

    for stop in (3, 4):  # stopped just before the change, and just after it
        out = tmp_path / f"stop{stop}"
        first = Trainer(lm(layout=layout), cfg(out), Stream())
        first.fit(steps=stop)
        assert latest_checkpoint(out).name.endswith(str(stop))
        torch.manual_seed(1234)  # resume must not depend on the global RNG of the new process
        second = Trainer(lm(layout=layout), cfg(out), Stream())
        assert second.step == stop
        second.fit()
        assert [m["loss"] for m in first.history + second.history] == [m["loss"] for m in straight.history]
        assert [m["schedule"] for m in first.history + second.history] == seen
        a, b = straight.module.state_dict(), second.module.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_two_halves_scores_the_noisy_half_only_with_the_same_loss():
    """The HF denoiser computes the head over the first rows only (first_logits); the two-halves
    loss is the same as with the head over all 2d rows, sliced afterwards."""
    model = lm()
    x = Stream().__next__()
    ids = torch.randint(0, 256, (3, 2 * D))
    full = model.model(ids).logits
    part = model.model(ids, first_logits=D).logits
    assert part.shape[1] == D and torch.allclose(part, full[:, :D], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="first_logits must be an int"):
        model.model(ids, first_logits=2 * D + 1)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    got = model.loss(x, generator=g1, two_halves=True).loss
    forward = type(model.model).forward
    try:  # the same loss with the head everywhere: a forward that ignores first_logits
        type(model.model).forward = lambda self, *a, first_logits=0, **k: forward(self, *a, **k)
        want = model.loss(x, generator=g2, two_halves=True).loss
    finally:
        type(model.model).forward = forward
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
