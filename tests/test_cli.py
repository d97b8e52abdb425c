"""The command line explains itself: every runtime error is ONE line with exit status 1 (a table of
bad inputs), usage errors stay argparse's exit 2, --help shows choices and defaults, --version,
--device, time estimates from a timed step, `train` on an HF backbone writes its model, every
command takes a plain HF directory, and `diffusionlm lm-eval` runs lm-eval's own command line."""
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffusionlm.io import client, hub
from diffusionlm.cli import main

from test_hub import TOK, hf_dir, llama_base, lora_composition, tiny_composition  # noqa: F401  (fixtures too)
from test_recipes import corpus  # noqa: F401  (a fixture: a small local text file)

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.preset=tiny", 'model.overrides={"n_layers": 1, "hidden": 32, "n_heads": 2, "cond_dim": 16}']


@pytest.fixture(scope="module")
def comp(tmp_path_factory) -> Path:
    """A tiny saved composition trained (nominally) at length 32."""
    path = tmp_path_factory.mktemp("comp")
    tiny_composition().save_pretrained(path, tokenizer=TOK, training={"data": {"corpus": "stdlib", "length": 32}})
    return path


def run_cli(capsys, argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_error_line(err: str, command: str) -> str:
    """The error report: one line, the last one on stderr, and no traceback anywhere."""
    assert "Traceback" not in err, err
    lines = [l for l in err.replace("\r", "\n").splitlines() if l.strip()]
    reports = [l for l in lines if ": error: " in l]
    assert len(reports) == 1 and lines[-1] == reports[0], err
    assert reports[0].startswith(f"diffusionlm {command}: error: "), reports[0]
    return reports[0]


# ---------------------------------------------------------------------------------------------
# the error table (issue 14, item 8; issue 13's bad inputs)
# ---------------------------------------------------------------------------------------------
def _table(tmp: Path, comp: Path, hf: Path, corpus: Path, lora_out: Path, other_base: Path):
    newer = tmp / "newer"
    shutil.copytree(comp, newer)
    cfg = json.loads((newer / "config.json").read_text())
    cfg["format_version"] += 1
    (newer / "config.json").write_text(json.dumps(cfg))
    corrupt = tmp / "corrupt"
    shutil.copytree(comp, corrupt)
    w = corrupt / "backbone" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:64])
    (tmp / "a-dir").mkdir()
    (tmp / "empty").mkdir()
    (tmp / "results.json").write_text("{}")
    (tmp / "full").mkdir()
    (tmp / "full" / "x").write_text("x")
    train = ["train", *TINY, f"data.corpus={corpus}", "data.length=16", "data.val_batches=0", "train.steps=1",
             "train.batch_size=2", "train.progress=false", f"train.out_dir={tmp / 'never'}"]
    return [
        # (argv, fragment of the one line)
        (["train", "--config", tmp / "a-dir"], "a-dir: Is a directory"),
        (["eval", "--model", comp, "--out", tmp / "a-dir"], "is a directory: give a file name"),
        (["eval", "--model", comp, "--out", tmp / "results.json"], "results.json exists: pass --overwrite"),
        (["export", "--model", comp, tmp / "full"], "exists and is not empty: pass --overwrite"),
        ([*train, "process.gama=0.1"], "process absorb: unknown key(s) gama; its keys: vocab_size, mask_id, noise"),
        (["sample", "--model", hf, "--length", "8", "--process", '{"name": "absorb", "gama": 1}'], "unknown key(s) gama"),
        (["sample", "--model", comp, "--schedule", '{"name": "block", "widht": 4}'], "schedule block: unknown key(s) widht"),
        (["sample", "--model", comp, "--options", '{"etaa": 1}'], "unknown option(s) etaa for sampler mdlm; its options: steps"),
        (["sample", "--model", comp, "--options", "{eta"], "--options '{eta' is not valid JSON"),
        ([*train, "train.log_every=0"], "log_every"),
        (["sample", "--model", corrupt], "a weights file is corrupt or truncated"),
        (["sample", "--model", "diffusionlm-tests/no-such-model"], "diffusionlm-tests/no-such-model: not found locally and no network: pass a local directory"),
        (["sample", "--model", comp, "--sampler", "ar", "--steps", "4"], "the ar sampler takes no --steps"),
        (["compare", "--eval-samples", "0", "--out", tmp / "cmp", "--train-steps", "1", "--budget-minutes", "0.05",
          "--variants", "ar", "--length", "16", "--batch-size", "2", "--eval-blocks", "1", "--num-samples", "1", "--steps", "1"],
         "eval_samples"),
        (["sample", "--model", tmp / "nope"], "nope: no such file or directory"),
        (["sample", "--model", tmp / "empty"], "holds neither run.json (a run directory) nor config.json"),
        (["sample", "--model", newer], f"composition format {hub.FORMAT_VERSION + 1}"),
        (["sample", "--model", comp, "--device", "nonsense:7"], "--device 'nonsense:7' is not a device"),
        (["sample", "--model", hf], "plain Hugging Face model with no training length: give --length"),
        (["sample", "--model", comp, "--process", "uniform"], "--process apply to a plain Hugging Face model"),
        (["sample", "--model", comp, "--prompt", "x" * 40], "the prompt is 40 tokens, not shorter than --length 32"),
        (["sample", "--model", lora_out, "--base", other_base], "differs in embedding_sha256"),
        (["eval", "--model", comp, "--dataset", "ptb", "--samples", "0", "--max-blocks", "1"], "num_samples"),
    ]


def test_every_runtime_error_is_one_line_and_exit_1(tmp_path, capsys, monkeypatch, comp, hf_dir, corpus, llama_base):  # noqa: F811
    monkeypatch.setattr(client, "_hub_reachable", lambda timeout=3.0: False)  # the Hub client (diffusionlm.io.client)
    lora_out = tmp_path / "lora"
    lora_composition(llama_base).save_pretrained(lora_out, tokenizer=TOK)
    other_base = tmp_path / "other-base"
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    torch.manual_seed(9)
    LlamaForCausalLM(AutoModelForCausalLM.from_pretrained(llama_base).config).save_pretrained(other_base)
    capsys.readouterr()
    failures = []
    for argv, fragment in _table(tmp_path, comp, hf_dir, corpus, lora_out, other_base):
        try:
            rc, _, err = run_cli(capsys, argv)
            assert rc == 1, rc
            line = one_error_line(err, argv[0])
            assert fragment in line, line
        except Exception as e:  # a traceback is a failure of this row, reported with the others
            failures.append(f"{argv[:4]}: {type(e).__name__}: {e}")
    assert not failures, "\n".join(failures)
    assert not (tmp_path / "never").exists() and not (tmp_path / "cmp" / "models").exists()  # refused before any work


@pytest.mark.parametrize("argv", [["sample", "--model", "x", "--sampler", "nope"], ["eval", "--model", "x", "--rule", "nope"],
                                  ["frobnicate"], ["sample"], ["train", "--bogus"]])
def test_usage_errors_stay_argparse_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    assert "usage: diffusionlm" in capsys.readouterr().err


def test_traceback_on_request(comp, monkeypatch, capsys):
    monkeypatch.setenv("DIFFUSIONLM_TRACEBACK", "1")
    with pytest.raises(ValueError, match="unknown option"):
        main(["sample", "--model", str(comp), "--options", '{"etaa": 1}'])


# ---------------------------------------------------------------------------------------------
# --help, --version, --device
# ---------------------------------------------------------------------------------------------
def test_help_shows_choices_and_defaults_and_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"diffusionlm {version('diffusionlm')}"
    helps = {}
    for cmd in ("train", "sample", "eval", "compare", "demo", "export"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        helps[cmd] = " ".join(capsys.readouterr().out.split())
    for cmd in ("train", "sample", "eval", "demo", "export", "compare"):
        assert "--device" in helps[cmd], cmd
    assert "{acs,ar,lad,mdlm,remdm,sedd_analytic,sedd_euler,threshold}" in helps["sample"] and "(default: mdlm)" in helps["sample"]
    assert "(default: auto)" in helps["sample"] and "{aligned,shifted,shifted_last}" in helps["sample"]
    assert "ptb" in helps["eval"] and "(default: ptb)" in helps["eval"] and "(default: 8)" in helps["eval"]
    assert "seed of the Monte-Carlo draws (default: 0)" in helps["eval"]
    assert "(default: the spec's; 4)" in helps["compare"] and "(default: the spec's; runs/compare)" in helps["compare"]
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    for cmd in ("train", "sample", "eval", "compare", "demo", "export", "lm-eval"):
        assert re.search(rf"^\s+{cmd}\s", top, re.M), cmd


# ---------------------------------------------------------------------------------------------
# time estimates from one timed step
# ---------------------------------------------------------------------------------------------
def _estimate(err: str) -> tuple[float, int, float]:
    m = re.search(r"will take about ([\d.]+) (s|min|h|days) on cpu \(([\d,]+) [a-z -]+ x ([\d.e+-]+) s, timed on one here\)", err)
    assert m, err
    scale = {"s": 1, "min": 60, "h": 3600, "days": 86400}[m.group(2)]
    return float(m.group(1)) * scale, int(m.group(3).replace(",", "")), float(m.group(4))


def test_train_dry_run_prints_the_estimate_of_a_long_run(tmp_path, capsys, corpus):
    out = tmp_path / "run"
    rc, _, err = run_cli(capsys, ["train", "--config", ROOT / "recipes" / "scratch.json", *TINY, f"data.corpus={corpus}",
                                  "data.length=32", "data.val_batches=0", "train.batch_size=2", f"train.out_dir={out}",
                                  'stages=[{"steps": 3000000}, {"schedule": {"name": "block", "width": 16}, "steps": 1000000, "two_halves": true}]',
                                  "--device", "cpu", "--dry-run"])
    assert rc == 0 and "training will take about" in err
    total, units, per = _estimate(err)
    assert units == 4_000_000 and total == pytest.approx(units * per, rel=0.06)  # the printed figure is rounded
    assert not out.exists()  # a dry run writes nothing


def test_a_long_run_prints_its_estimate_first(tmp_path, capsys, corpus, monkeypatch):
    import diffusionlm.estimate

    args = ["train", *TINY, f"data.corpus={corpus}", "data.length=16", "data.val_batches=0", "train.steps=2",
            "train.batch_size=2", "train.progress=false", f"train.out_dir={tmp_path / 'a'}"]
    rc, _, err = run_cli(capsys, args)
    assert rc == 0 and "will take about" not in err  # short: nothing printed
    monkeypatch.setattr(diffusionlm.estimate, "LONG_RUN_SECONDS", 0.0)  # every run is "long" now
    rc, _, err = run_cli(capsys, [a.replace("/a", "/b") for a in args])
    assert rc == 0 and "training will take about" in err and (tmp_path / "b" / "model" / "config.json").is_file()


def test_eval_dry_run_estimates_from_one_timed_forward(capsys, comp):
    from diffusionlm.eval.likelihood import dataset_blocks

    rc, out, err = run_cli(capsys, ["eval", "--model", comp, "--dataset", "ptb", "--samples", "1000", "--batch-size", "4",
                                    "--device", "cpu", "--dry-run"])
    rows = len(dataset_blocks("ptb", TOK, 32, "test")[0].ids)
    assert rc == 0 and f"evaluating {rows:,d} rows of ptb (1000 draws each)" in err
    total, calls, per = _estimate(err)
    assert calls == -(-rows // 4) * 1000 and total == pytest.approx(calls * per, rel=0.06)


# ---------------------------------------------------------------------------------------------
# every command on a plain HF directory; train on an HF backbone writes its model
# ---------------------------------------------------------------------------------------------
def test_sample_eval_and_demo_on_a_plain_hf_directory(capsys, hf_dir, tmp_path):  # noqa: F811
    rc, out, err = run_cli(capsys, ["sample", "--model", hf_dir, "--process", "absorb", "--schedule", "quench", "--layout",
                                    "shifted", "--sampler", "ar", "--length", "12", "--prompt", "Hello", "--options",
                                    '{"greedy": true}', "--device", "cpu"])
    assert rc == 0, err
    res = json.loads(out)
    assert res["samples"][0].startswith("Hello") and res["model"] == str(hf_dir)
    rc, out, err = run_cli(capsys, ["eval", "--model", hf_dir, "--schedule", "quench", "--dataset", "ptb", "--length", "16",
                                    "--max-blocks", "2", "--samples", "16", "--out", tmp_path / "r.json"])
    assert rc == 0, err
    res = json.loads((tmp_path / "r.json").read_text())["results"]["ptb"]
    # absorb + quench with M = T draws is the exact AR NLL: the HF model's own, BOS first
    from transformers import AutoModelForCausalLM

    from diffusionlm.data import load_tokenizer
    from diffusionlm.eval.likelihood import dataset_blocks

    tok = load_tokenizer(hf_dir)
    rows = dataset_blocks("ptb", tok, 16, "test")[0].ids[:2]
    hf = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        logits = hf(input_ids=torch.cat([torch.full((2, 1), tok.bos_id), rows[:, :-1]], 1)).logits
    nll = -torch.log_softmax(logits.double(), -1).gather(-1, rows[..., None]).sum().item()
    assert res["tokens"] == 32 and res["nll"] == pytest.approx(nll / 32, rel=1e-5)
    from diffusionlm.demo import DemoSettings, generate, load_demo_model

    demo = load_demo_model(hf_dir, schedule="block")
    run = generate(demo, DemoSettings(prompt="Hi", length=16, steps=4, schedule="trained"))  # Block(16): width <= length
    assert run.text.startswith("Hi") and demo.lm.schedule.name == "block"


def test_train_on_an_hf_lora_backbone_writes_the_adapter(tmp_path, capsys, corpus, llama_base):  # noqa: F811
    from diffusionlm.models.lora import is_peft

    out = tmp_path / "run"
    args = ["train", "--config", ROOT / "recipes" / "diffugpt.json", f"model.path={llama_base}", "model.annealing_steps=null",
            'model.lora={"r": 2, "target_modules": ["q_proj", "v_proj"]}', "data.tokenizer=byte", f"data.corpus={corpus}",
            "data.length=16", "data.val_batches=1", "train.steps=2", "train.batch_size=2", "train.eval_every=0",
            "train.save_every=0", "train.eval_samples=2", "train.progress=false", f"train.out_dir={out}", "--device", "cpu"]
    rc, stdout, err = run_cli(capsys, args)
    assert rc == 0, err
    model = out / "model"
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["backbone"]["weights"] == "adapter" and cfg["training"]["steps"] == 2
    assert cfg["training"]["tokens"] == 2 * 2 * 16 and "val_nll" in cfg["evaluation"]
    assert (model / "backbone" / "adapter_model.safetensors").is_file()
    assert not list(model.rglob("model.safetensors"))  # not the base
    card = (model / "README.md").read_text()
    assert "| steps | 2 |" in card and "| val_nll |" in card and f"`{llama_base}`" in card
    m = hub.load_model(out)  # the run directory loads its saved composition
    assert m.kind == "run" and is_peft(m.lm.model.model) and m.length == 16
    rc, stdout, err = run_cli(capsys, ["sample", "--model", out, "--steps", "2", "--num", "2"])
    assert rc == 0 and len(json.loads(stdout)["samples"]) == 2
    # --merge: full weights, AutoModelForCausalLM loads them alone
    rc, stdout, err = run_cli(capsys, ["export", "--model", out, tmp_path / "merged", "--merge"])
    assert rc == 0, err
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", subfolder="backbone")
    ids = torch.tensor([[1, 2, TOK.vocab_size, 4]])
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, m.lm.model.model(input_ids=ids).logits, atol=1e-5)


def test_the_block_recipe_under_shifted_last_from_train_to_eval(tmp_path, capsys, corpus, llama_base):  # noqa: F811
    """recipes/smollm2-block.json on a tiny Llama with the layout that reads a block's last token:
    train (two halves, the curriculum), save, load with the layout kept, sample, evaluate."""
    from diffusionlm.masks import Layout

    out = tmp_path / "run"
    curriculum = [{"step": 0, "schedule": {"name": "block", "width": 2, "steps_per_block": 2}},
                  {"step": 1, "schedule": {"name": "block", "width": 4, "steps_per_block": 4}}]
    args = ["train", "--config", ROOT / "recipes" / "smollm2-block.json", f"composition.backbone.path={llama_base}",
            'composition.backbone.lora={"r": 2, "target_modules": ["q_proj", "v_proj"]}', "composition.layout=shifted_last",
            "data.tokenizer=byte", f"data.corpus={corpus}", "data.rule=wrap", "data.length=16", "data.val_batches=1",
            "train.steps=2", "train.batch_size=2", "train.warmup_steps=0", "train.curriculum=" + json.dumps(curriculum),
            "train.eval_every=0", "train.save_every=0", "train.eval_samples=2", "train.progress=false",
            f"train.out_dir={out}", "--device", "cpu"]
    rc, stdout, err = run_cli(capsys, args)
    assert rc == 0, err
    m = hub.load_model(out)
    assert m.lm.layout is Layout.SHIFTED_LAST and m.lm.schedule.width(16) == 4
    rc, stdout, err = run_cli(capsys, ["sample", "--model", out, "--steps", "4", "--num", "2", "--length", "16"])
    assert rc == 0, err
    assert len(json.loads(stdout)["samples"]) == 2
    rc, stdout, err = run_cli(capsys, ["eval", "--model", out, "--dataset", "ptb", "--length", "16", "--max-blocks", "2",
                                       "--samples", "2", "--out", tmp_path / "r.json"])
    assert rc == 0, err
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["config"]["layout"] == "shifted_last" and res["config"]["schedule"]["width"] == 4
    assert res["results"]["ptb"]["tokens"] == 32 and math.isfinite(res["results"]["ptb"]["nll"])


# ---------------------------------------------------------------------------------------------
# lm-eval from the shell
# ---------------------------------------------------------------------------------------------
TASK_YAML = """task: dlm_local_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@pytest.mark.slow
def test_lm_eval_subprocess_runs_a_local_yaml_task(tmp_path):
    lm = tiny_composition(schedule=__import__("diffusionlm.schedules", fromlist=["Quench"]).Quench())
    lm.save_pretrained(tmp_path / "model", tokenizer=TOK)
    rows = [{"context": "def f(x): return", "choices": [" x", " zzzq"], "label": 0},
            {"context": "import os, ", "choices": [" sys", " !!!"], "label": 0},
            {"context": "for i in ", "choices": [" range(3):", " ??"], "label": 1},
            {"context": "class A", "choices": [":", " qq"], "label": 0}]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "local.yaml").write_text(TASK_YAML.format(data=data))
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "diffusionlm.cli", "lm-eval", "--model", "diffusionlm", "--model_args",
           f"pretrained={tmp_path / 'model'}", "--tasks", "dlm_local_choice", "--include_path", str(tmp_path / "tasks"),
           "--output_path", str(tmp_path / "results"), "--device", "cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    [result_file] = list((tmp_path / "results").rglob("results_*.json"))
    acc = json.loads(result_file.read_text())["results"]["dlm_local_choice"]["acc,none"]
    # the same metric computed here: argmax of the adapter's log-likelihood bound per row
    from diffusionlm.eval.lm_eval_adapter import DiffusionLMEval

    ev = DiffusionLMEval(pretrained=str(tmp_path / "model"))
    picks = [max(range(len(r["choices"])), key=lambda i: ev.loglikelihood([(r["context"], r["choices"][i])])[0][0])
             for r in rows]
    assert acc == pytest.approx(sum(p == r["label"] for p, r in zip(picks, rows)) / len(rows))
    assert "dlm_local_choice" in done.stdout  # lm-eval's own table


def test_setup_declares_the_lm_eval_entry_point():
    import importlib
    from unittest import mock

    import setuptools

    with mock.patch.object(setuptools, "setup") as setup:
        src = (ROOT / "setup.py").read_text()
        exec(compile(src, "setup.py", "exec"), {"__name__": "__main__"})
    eps = setup.call_args.kwargs["entry_points"]
    [ep] = eps["lm_eval.models"]
    name, target = (s.strip() for s in ep.split("="))
    module, attr = target.split(":")
    from diffusionlm.eval.lm_eval_adapter import DiffusionLMEval

    assert name == "diffusionlm" and getattr(importlib.import_module(module), attr) is DiffusionLMEval


def test_export_an_hf_directory_and_push_it(tmp_path, capsys, monkeypatch, hf_dir):  # noqa: F811
    """`export` turns any model into a saved composition; --push-to-hub uploads it (HfApi replaced)."""
    uploads = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False):
            from types import SimpleNamespace

            return SimpleNamespace(repo_id=repo_id)

        def upload_folder(self, repo_id, repo_type, folder_path, **kw):
            uploads.append((repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
            return f"https://huggingface.co/{repo_id}/commit/1"

    import huggingface_hub.hub_mixin

    monkeypatch.setattr(huggingface_hub.hub_mixin, "HfApi", FakeApi)
    monkeypatch.setattr(client, "_hub_reachable", lambda timeout=3.0: True)  # the network, replaced (io.client)
    rc, out, err = run_cli(capsys, ["export", "--model", hf_dir, "--schedule", "quench", tmp_path / "c", "--push-to-hub", "me/g2"])
    assert rc == 0, err
    assert json.loads(out)["commit"] == "https://huggingface.co/me/g2/commit/1"
    assert uploads == [("me/g2", ["README.md", "backbone", "config.json", "tokenizer.json", "tokenizer_config.json"])]
    a, b = hub.load_model(hf_dir, schedule="quench"), hub.load_model(tmp_path / "c")
    assert b.kind == "composition" and b.lm.schedule == a.lm.schedule and b.lm.layout == a.lm.layout
    ids = torch.randint(0, a.tokenizer.vocab_size, (1, 9))
    with torch.no_grad():
        assert torch.equal(a.lm.model(ids).logits, b.lm.model(ids).logits)


def test_sample_packed_gives_the_same_samples(capsys, comp):
    """`sample --packed` (models.packed.PackedLinears) changes speed, not tokens: Block(4) at 4
    samples feeds 16 / 32 rows a step, the row counts it packs."""
    argv = ["sample", "--model", comp, "--schedule", '{"name": "block", "width": 4}', "--num", "4", "--length", "16",
            "--seed", "3"]
    outs = []
    for extra in ([], ["--packed"]):
        rc, out, err = run_cli(capsys, argv + extra)
        assert rc == 0, err
        outs.append(json.loads(out)["samples"])
    assert outs[0] == outs[1]
