"""The recipes in recipes/: they load, say what the papers say, train (on tiny random models put in
place of their checkpoints by overrides), run end to end through `diffusionlm train`, and fail
with a clear message before the first step when something is wrong.

Each training test overrides only what a CPU test must (the model -> a tiny random one; the data
-> a few local rows; a larger learning rate, since the recipes' are for real models), measures the
seeded NLL bound (or, for Structural, which has no likelihood, the seeded loss) on a fixed batch
of 8 rows, trains a few dozen steps on that batch through the real Trainer and checks it fell.
"""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffusionlm.cli import main as cli_main
from diffusionlm.config import RunConfig
from diffusionlm.io.runs import build
from diffusionlm.data import data_path
from diffusionlm.schedules import Block, Flat, hyperschedule
from diffusionlm.training import TrainConfig, Trainer, latest_checkpoint

# transformers' own deprecation notice, raised inside peft's LoRA injection
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
SCRATCH, DIFFUGPT, LAD = (RECIPES / f"{n}.json" for n in ("scratch", "diffugpt", "lad"))

TINY_TRANSFORMER = ["model.preset=tiny", 'model.overrides={"n_layers": 2, "hidden": 64, "n_heads": 2, "cond_dim": 32}']
# byte tokenizer: 256 bytes + EOS 256, BOS 257, PAD 258 (259 ids)
BYTE_SPECIALS = {"bos_token_id": 257, "eos_token_id": 256, "pad_token_id": 258}


def hf_gpt2(vocab=259, positions=64, **extra):
    cfg = {"model_type": "gpt2", "vocab_size": vocab, "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": positions, **extra}
    return ["model.path=null", "model.hf_config=" + json.dumps(cfg)]


def hf_llama(vocab=259, positions=256, **extra):
    cfg = {"model_type": "llama", "vocab_size": vocab, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": positions, **extra}
    return ["model.path=null", "model.hf_config=" + json.dumps(cfg)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A small local text file (the start of Tiny Shakespeare) in place of the stdlib corpus."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(data_path("tinyshakespeare", "input.txt").read_text(encoding="utf-8")[:12000])
    return path


@pytest.fixture(scope="module")
def gsm8k_jsonl(tmp_path_factory) -> Path:
    """16 real GSM8K rows as a prompt / response JSONL (the shortest: with the byte tokenizer they
    fit the LAD recipe's 256 tokens)."""
    rows = [json.loads(l) for l in data_path("gsm8k", "test.jsonl").read_text().splitlines() if l.strip()]
    rows = sorted(rows, key=lambda r: len((r["question"] + r["answer"]).encode()))[:16]
    path = tmp_path_factory.mktemp("instruct") / "gsm8k.jsonl"
    path.write_text("".join(json.dumps({"prompt": r["question"] + "\n", "response": r["answer"]}) + "\n" for r in rows))
    return path


class FixedBatch:
    """A resumable stream that yields the same batch every step."""

    def __init__(self, batch):
        self.batch = batch

    def __next__(self):
        return self.batch

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def seeded_bound(lm, x, samples=8) -> float:
    """NLL upper bound per token on x, with the same Monte-Carlo draws every call."""
    lm.model.eval()
    with torch.no_grad():
        b = lm.nll_bound(x, num_samples=samples, generator=torch.Generator().manual_seed(0))
    return float(b.nll.sum() / b.num_tokens.sum())


def seeded_loss(lm, batch, seeds=4) -> float:
    """Structural's training loss on a batch, averaged over fixed corruption seeds."""
    lm.model.eval()
    with torch.no_grad():
        return sum(float(lm.loss(batch["input_ids"], generator=torch.Generator().manual_seed(s),
                                 response_mask=batch["response_mask"]).loss) for s in range(seeds)) / seeds


def train_on(lm, run, batch, steps, stage=None, **kw) -> list:
    """`steps` steps of the real Trainer on one fixed batch, with the run's (or a stage's) train
    settings plus `kw`; returns the losses."""
    train = {**dataclasses.asdict(run.train), **(stage or {}), "steps": steps, "out_dir": None, "progress": False,
             "eval_every": 0, "save_every": 0, **kw}
    train.pop("schedule", None)
    hist = Trainer(lm, TrainConfig(**train), FixedBatch(batch)).fit()
    return [m["loss"] for m in hist]


# ------------------------------------------------------------------------------------------
# what the recipes say
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [SCRATCH, DIFFUGPT, LAD], ids=lambda p: p.stem)
def test_recipe_loads_and_round_trips(path):
    raw = json.loads(path.read_text())
    assert "_comment" in raw  # explanations live in the recipe, ignored by the loader
    run = RunConfig.from_file(path)
    again = RunConfig.from_dict(json.loads(json.dumps(run.to_dict())))
    assert again.to_dict() == run.to_dict()
    hyperschedule(run.composition["schedule"])
    for stage in run.stages:
        assert not any(k.startswith("_") for k in stage)


def test_scratch_recipe_is_the_two_stage_paper_setup():
    run = RunConfig.from_file(SCRATCH)
    comp = run.composition
    assert comp["backbone"] == {"name": "transformer", "preset": "gpt2-small"} and run.init is None
    assert comp["process"]["name"] == "gamma_hybrid" and comp["process"]["gamma"] == 0.01
    assert run.data.corpus == "stdlib" and run.data.tokenizer == "data:tokenizers/gpt2"
    s1, s2 = run.stages
    assert hyperschedule(s1["schedule"]) == Flat() and not s1.get("two_halves", run.train.two_halves)
    assert hyperschedule(s2["schedule"]) == Block(16) and s2["two_halves"] is True


def test_diffugpt_recipe_is_the_adaptation_setup():
    run = RunConfig.from_file(DIFFUGPT)
    comp, backbone = run.composition, run.composition["backbone"]
    assert backbone["name"] == "hf" and backbone["path"] == "gpt2" and backbone.get("hf_config") is None
    assert comp["layout"] == "shifted" and comp["annealing"]["warmup_steps"] > 0 and backbone.get("lora") is None
    assert comp["process"] == {"name": "absorb", "noise": {"name": "linear"}}  # alpha = 1 - t: weight 1/t
    assert hyperschedule(comp["schedule"]) == Flat()
    assert run.data.tokenizer == "data:tokenizers/gpt2"


def test_lad_recipe_has_the_paper_hyperparameters():
    run = RunConfig.from_file(LAD)
    comp, backbone = run.composition, run.composition["backbone"]
    assert backbone["name"] == "hf" and "llama" in backbone["path"].lower()
    assert backbone["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert set(backbone["lora"]) == {"r", "target_modules"}  # alpha defaults to r, dropout to 0
    assert comp["process"]["name"] == "structural" and hyperschedule(comp["schedule"]) == Flat()  # bidirectional
    assert run.data.instruct and run.data.length == 256
    t = run.train
    assert (t.lr, t.lr_schedule, t.weight_decay, t.clip, t.batch_size) == (1e-5, "cosine", 0.01, 0.5, 8)


# ------------------------------------------------------------------------------------------
# each recipe trains: its loss falls on a fixed batch
# ------------------------------------------------------------------------------------------
def test_scratch_recipe_trains_both_stages(corpus):
    run = RunConfig.from_file(SCRATCH, TINY_TRANSFORMER + ["data.tokenizer=byte", f"data.corpus={corpus}", "data.length=32"])
    torch.manual_seed(0)
    built = build(run)
    x = next(built.train_stream)["input_ids"]
    assert x.shape == (8, 32)
    falls = []
    for i, stage in enumerate(run.stages):  # as `diffusionlm train` runs them, on the same model
        built.lm.schedule = hyperschedule(stage["schedule"])
        before = seeded_bound(built.lm, x)
        losses = train_on(built.lm, run, x, 40 if i == 0 else 80, stage, lr=3e-3, warmup_steps=0)
        after = seeded_bound(built.lm, x)
        assert all(map(torch.isfinite, torch.tensor(losses)))
        falls.append((before, after))
    (b1, a1), (b2, a2) = falls
    assert a1 < 0.6 * b1, falls  # stage 1 (Flat) from scratch
    assert a2 < 0.98 * b2, falls  # stage 2 (Block(16), two halves) fine-tunes further


def test_diffugpt_recipe_trains(corpus):
    # a tiny random GPT-2 in place of "gpt2"; the byte tokenizer (the recipe's own is checked below)
    over = hf_gpt2(vocab=259, positions=64, **BYTE_SPECIALS)
    run = RunConfig.from_file(DIFFUGPT, over + ["data.tokenizer=byte", f"data.corpus={corpus}", "data.length=32",
                                                "model.annealing_steps=20"])
    torch.manual_seed(0)
    built = build(run)
    lm = built.lm
    assert type(lm.model).__name__ == "HFDenoiser" and lm.model.model.config.model_type == "gpt2"
    assert lm.layout.value == "shifted" and lm.bos_id == 257
    assert lm.model.mask_id == 259 and lm.process.vocab_size == 259  # one MASK row added
    assert lm.annealing is not None and lm.annealing.warmup_steps == 20
    x = next(built.train_stream)["input_ids"]
    assert x.shape == (8, 32)
    before = seeded_bound(lm, x)
    losses = train_on(lm, run, x, 40, lr=3e-3, warmup_steps=0)
    after = seeded_bound(lm, x)
    assert lm.training_step == 39 and lm.annealing.ratio(lm.training_step) == 1.0  # annealed to full attention
    assert after < 0.8 * before, (before, after, losses[::10])


def test_a_run_without_final_weights_loads_its_newest_checkpoint(tmp_path, corpus):
    """An HF / LoRA run writes no model/ directory: load_run (sample, eval, demo) takes the newest
    checkpoint's weights, and refuses a directory with neither rather than use untrained ones."""
    from diffusionlm.io.runs import load_run
    from diffusionlm.training.checkpoint import save_checkpoint

    run = RunConfig.from_file(DIFFUGPT, hf_gpt2(vocab=259, positions=64, **BYTE_SPECIALS)
                              + ["data.tokenizer=byte", f"data.corpus={corpus}", "data.length=32"])
    (tmp_path / "run.json").write_text(json.dumps(run.to_dict()))
    with pytest.raises(FileNotFoundError, match="holds no trained weights"):
        load_run(tmp_path)
    torch.manual_seed(1)
    trained = build(run, data=False).lm.model
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_checkpoint(tmp_path, 7, trained.state_dict(), {}, {"step": 7})
    _, built = load_run(tmp_path)
    for (n, a), (_, b) in zip(trained.state_dict().items(), built.lm.model.state_dict().items()):
        assert torch.equal(a, b), n
    assert not built.lm.model.training


def test_diffugpt_recipe_with_its_gpt2_tokenizer(corpus):
    # the recipe's tokenizer (GPT-2 BPE from the data folder, 50257 ids) on a GPT-2-vocabulary model
    over = hf_gpt2(vocab=50257, positions=64, bos_token_id=50256, eos_token_id=50256)
    run = RunConfig.from_file(DIFFUGPT, over + [f"data.corpus={corpus}", "data.length=32", "train.batch_size=2"])
    torch.manual_seed(0)
    built = build(run)
    lm = built.lm
    assert built.tokenizer.vocab_size == 50257 and lm.bos_id == 50256
    assert lm.model.mask_id == 50257 and lm.model.vocab_size == 50258 and lm.process.mask_id == 50257
    x = next(built.train_stream)["input_ids"]
    assert x.shape == (2, 32) and int(x.max()) < 50257
    losses = train_on(lm, run, x, 2)
    assert all(l == l and l > 0 for l in losses)


def test_lad_recipe_trains_lora_on_instruction_data(gsm8k_jsonl):
    over = hf_llama(vocab=259, positions=256, **BYTE_SPECIALS) + [
        "model.lora.r=8", "data.tokenizer=byte", f"data.instruct={gsm8k_jsonl}"]
    run = RunConfig.from_file(LAD, over)
    assert run.data.length == 256 and run.train.batch_size == 8
    torch.manual_seed(0)
    built = build(run)
    lm = built.lm
    assert len(built.train_stream.examples) == 16  # none skipped as too long
    batch = next(built.train_stream)
    x, resp = batch["input_ids"], batch["response_mask"]
    assert x.shape == (8, 256) and resp.any(1).all() and not resp.all()  # prompts carry no loss
    # LoRA on q_proj / v_proj only, alpha = r, everything else frozen
    trainable = [n for n, p in lm.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and ("q_proj" in n or "v_proj" in n) for n in trainable)
    lora_cfg = lm.model.model.peft_config["default"]
    assert lora_cfg.r == 8 and lora_cfg.lora_alpha == 8 and lora_cfg.lora_dropout == 0.0
    frozen = {n: p.detach().clone() for n, p in lm.model.named_parameters() if not p.requires_grad}
    # Flat: bidirectional attention (an early position sees a change at the end)
    with torch.no_grad():
        lm.model.eval()
        y = x[:1].clone()
        a = lm.forward(y, torch.zeros(1, 256), None)
        y[0, -1] = (y[0, -1] + 1) % 256
        b = lm.forward(y, torch.zeros(1, 256), None)
    assert not torch.allclose(a[0, 0], b[0, 0])

    before = seeded_loss(lm, batch)
    losses = train_on(lm, run, batch, 40, lr=3e-2, warmup_steps=0)
    after = seeded_loss(lm, batch)
    # LoRA on a frozen random backbone cannot go far (it plateaus near 5.3 nats from log 259 = 5.56)
    assert after < 0.97 * before, (before, after, losses[::10])
    for n, p in lm.model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"{n} changed but is frozen"


# ------------------------------------------------------------------------------------------
# the CLI, end to end
# ------------------------------------------------------------------------------------------
def test_cli_trains_the_two_stage_scratch_recipe(tmp_path, corpus):
    stages = json.loads(SCRATCH.read_text())["stages"]
    for s, n in zip(stages, (3, 2)):
        s["steps"], s["warmup_steps"] = n, 0
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "diffusionlm.cli", "train", "--config", str(SCRATCH), *TINY_TRANSFORMER,
           "data.tokenizer=byte", f"data.corpus={corpus}", "data.length=32", "data.val_batches=1",
           "train.batch_size=4", "train.eval_samples=2", "train.log_every=1", "train.progress=false",
           f"train.out_dir={out}", "stages=" + json.dumps(stages)]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]

    resolved = RunConfig.from_dict(json.loads((out / "run.json").read_text()))
    assert resolved.composition["backbone"]["preset"] == "tiny" and resolved.train.out_dir == str(out)
    assert [s["steps"] for s in resolved.stages] == [3, 2]
    results = json.loads((out / "results.json").read_text())
    assert [s["steps"] for s in results["stages"]] == [3, 2]
    assert results["stages"][0]["schedule"].startswith("Flat") and results["stages"][1]["schedule"].startswith("Block")
    for st in results["stages"]:
        assert st["final_loss"] is not None and st["val_nll"] > 0
    for i, n in ((1, 3), (2, 2)):
        ck = latest_checkpoint(out / f"stage-{i}")
        assert ck is not None and ck.name == f"checkpoint-{n:06d}"
        steps = [json.loads(l)["step"] for l in (out / f"stage-{i}" / "metrics.jsonl").read_text().splitlines()]
        assert steps == list(range(1, n + 1))
    assert (out / "model" / "config.json").exists()


# ------------------------------------------------------------------------------------------
# clear errors before the first step
# ------------------------------------------------------------------------------------------
def test_unknown_keys_name_the_closest_valid_key(tmp_path):
    bad = json.loads(SCRATCH.read_text())
    bad["train"]["stpes"] = 5
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"unknown config key train\.stpes; did you mean train\.steps\?"):
        RunConfig.from_file(f)
    with pytest.raises(ValueError, match=r"did you mean train\.warmup_steps\?"):
        RunConfig.from_file(SCRATCH, ["train.warmup=10"])
    with pytest.raises(ValueError, match=r"did you mean model\.hf_config\?"):
        RunConfig.from_file(DIFFUGPT, ["model.hf_cofig={}"])
    with pytest.raises(ValueError, match=r"did you mean train\?"):
        RunConfig.from_file(SCRATCH, ["trian.lr=1e-4"])
    # a typo in a late stage fails at load time, not after the first stage has trained
    with pytest.raises(ValueError, match=r"stages\[1\]\.two_halfs; did you mean stages\[1\]\.two_halves\?"):
        RunConfig.from_file(SCRATCH, ['stages=[{"steps": 2}, {"schedule": {"name": "block"}, "two_halfs": true}]'])
    with pytest.raises(ValueError, match=r"stages\[0\]\.schedule: unknown hyperschedule 'blok'"):
        RunConfig.from_file(SCRATCH, ['stages=[{"schedule": {"name": "blok"}}]'])
    with pytest.raises(ValueError, match=r"did you mean model\.overrides\.n_layers\?"):
        build(RunConfig.from_file(SCRATCH, ["model.preset=tiny", 'model.overrides={"n_layer": 1}', "data.tokenizer=byte"]))


def test_cli_reports_config_errors_before_training(tmp_path, capsys):
    out = tmp_path / "never"
    assert cli_main(["train", "--config", str(SCRATCH), "train.stpes=3", f"train.out_dir={out}"]) == 1
    assert "did you mean train.steps?" in capsys.readouterr().err
    missing = tmp_path / "nope.json"
    assert cli_main(["train", "--config", str(missing)]) == 1
    assert f"config file not found: {missing}" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="config file not found"):
        RunConfig.from_file(missing)
    assert not out.exists()


def test_missing_instruction_file(tmp_path):
    missing = tmp_path / "no" / "train.jsonl"
    run = RunConfig.from_file(LAD, hf_llama(**BYTE_SPECIALS) + ["model.lora.r=4", "data.tokenizer=byte", f"data.instruct={missing}"])
    with pytest.raises(FileNotFoundError, match=f"instruction data not found: {missing}"):
        build(run)


def test_tokenizer_that_does_not_fit_the_model(corpus):
    # an HF model whose vocabulary (100 ids) is smaller than the tokenizer's (259)
    run = RunConfig.from_file(DIFFUGPT, hf_gpt2(vocab=100, bos_token_id=0, eos_token_id=0) + ["data.tokenizer=byte", f"data.corpus={corpus}", "data.length=32"])
    with pytest.raises(ValueError, match="tokenizer has 259 ids but the model takes 100"):
        build(run)


def test_sequence_longer_than_the_model_positions(corpus):
    run = RunConfig.from_file(DIFFUGPT, hf_gpt2(positions=16, **BYTE_SPECIALS) + ["data.tokenizer=byte", f"data.corpus={corpus}", "data.length=32"])
    with pytest.raises(ValueError, match="data.length 32 exceeds the model's 16 positions"):
        build(run)
    run = RunConfig.from_file(SCRATCH, ["model.preset=tiny", 'model.overrides={"n_layers": 1, "max_positions": 16}',
                                        "data.tokenizer=byte", f"data.corpus={corpus}", "data.length=32"])
    with pytest.raises(ValueError, match="data.length 32 exceeds the model's 16 positions"):
        build(run)
    # shifted_last reads the last token at position data.length: one position more
    run = RunConfig.from_file(DIFFUGPT, hf_gpt2(positions=32, **BYTE_SPECIALS) + [
        "data.tokenizer=byte", f"data.corpus={corpus}", "data.length=32", "layout=shifted_last", "composition.annealing=null"])
    with pytest.raises(ValueError, match="data.length 32 exceeds the model's 32 positions \\(the shifted_last layout's reader"):
        build(run)
    run = RunConfig.from_file(SCRATCH, ["model.preset=tiny", "data.tokenizer=byte", f"data.corpus={corpus}",
                                        "data.length=32", "layout=shifted_last"])
    assert build(run, data=False).lm.max_positions == 33


def test_lora_targets_missing_from_the_model(tmp_path, gsm8k_jsonl):
    # the LAD recipe's q_proj / v_proj on a GPT-2 (fused c_attn): named, with the fix
    run = RunConfig.from_file(LAD, hf_gpt2(**BYTE_SPECIALS) + ["model.lora.r=4", "data.tokenizer=byte", f"data.instruct={gsm8k_jsonl}"])
    with pytest.raises(ValueError, match=r"\['q_proj', 'v_proj'\] not found.*c_attn"):
        build(run)
