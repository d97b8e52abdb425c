"""Issue 25's error table: bad folders and out-of-range options are ONE line with exit status 1,
refused before any work (items 1-5)."""
import json
import shutil
import time
from pathlib import Path

import pytest

from diffusionlm.io import client

from test_cli import comp, one_error_line, run_cli  # noqa: F401  (a fixture too)
from test_hub import hf_dir  # noqa: F401  (a fixture)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _table(tmp: Path, comp: Path, hf: Path):
    pickle = tmp / "pickle"
    shutil.copytree(hf, pickle)
    (pickle / "model.safetensors").unlink()
    (pickle / "pytorch_model.bin").write_bytes(b"\x80\x04never opened")
    bad_tok = tmp / "bad-tok"
    shutil.copytree(hf, bad_tok)
    (bad_tok / "tokenizer.json").write_text("{\"version\": \"1.0\", \"model\": {\"type\": \"BPE\", \"vocab\": 7}")
    remote = tmp / "remote"
    shutil.copytree(hf, remote)
    cfg = json.loads((remote / "config.json").read_text())
    cfg.update(model_type="evil", auto_map={"AutoModelForCausalLM": "modeling_evil.Evil"})
    (remote / "config.json").write_text(json.dumps(cfg))
    (remote / "modeling_evil.py").write_text(f"open({str(tmp / 'ran')!r}, 'w')\n")
    layers = tmp / "layers"
    shutil.copytree(comp, layers)
    bcfg = json.loads((layers / "backbone" / "config.json").read_text())
    bcfg["n_layers"] = 10**6
    (layers / "backbone" / "config.json").write_text(json.dumps(bcfg))
    return [
        (["sample", "--model", pickle, "--length", "8"], "as a pickle (pytorch_model.bin)"),
        (["sample", "--model", bad_tok, "--length", "8"], "tokenizer.json"),
        (["sample", "--model", remote, "--length", "8"], "auto_map"),
        (["sample", "--model", layers], "implies at least"),
        (["sample", "--model", comp, "--steps", "1000000000000"], "1,000,000,000,000 steps"),
        (["sample", "--model", comp, "--num", "100000000"], "--num 100000000"),
        (["sample", "--model", comp, "--num", "0"], "--num must be >= 1"),
        (["eval", "--model", comp, "--batch-size", "0"], "--batch-size must be >= 1"),
        (["eval", "--model", comp, "--max-blocks", "-1"], "--max-blocks must be >= 1"),
        (["export", "--model", comp, tmp / "exported", "--push-to-hub", "me/x"], "Hub is not reachable"),
        (["train", "model.kind=hf", 'model.hf_config={"model_type": "gpt2", "vocab_size": 300, "n_positions": 16, '
          '"n_embd": 8, "n_layer": 1, "n_head": 2}', "data.length=12", "train.two_halves=true", "train.steps=1",
          "train.progress=false", f"train.out_dir={tmp / 'never'}"], "2 x 12 = 24 rows per sequence"),
        (["lm-eval", "--model", "diffusionlm", "--model_args", f"pretrained={comp},bogus=1", "--tasks", "lambada_openai"],
         "unknown model_args bogus for diffusionlm"),
    ]


def test_issue_25_errors_are_one_line_and_exit_1(tmp_path, capsys, monkeypatch, comp, hf_dir):  # noqa: F811
    monkeypatch.setattr(client, "_hub_reachable", lambda timeout=3.0: False)  # the Hub client (diffusionlm.io.client)
    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("transformers prompted"))
    capsys.readouterr()
    failures = []
    for argv, fragment in _table(tmp_path, comp, hf_dir):
        t = time.perf_counter()
        try:
            rc, _, err = run_cli(capsys, argv)
            assert rc == 1, rc
            line = one_error_line(err, argv[0])
            assert fragment in line, line
            assert time.perf_counter() - t < 20, f"took {time.perf_counter() - t:.1f} s"
        except Exception as e:  # a traceback is a failure of this row, reported with the others
            failures.append(f"{[str(a)[-30:] for a in argv[:6]]}: {type(e).__name__}: {e}")
    assert not failures, "\n".join(failures)
    assert not (tmp_path / "ran").exists() and not (tmp_path / "exported").exists()
    assert not (tmp_path / "never").exists()  # refused before the run directory was made


def test_sample_acs_runs_with_its_default_eta(capsys, comp):  # noqa: F811
    rc, out, err = run_cli(capsys, ["sample", "--model", comp, "--sampler", "acs", "--steps", "4", "--length", "16"])
    assert rc == 0, err
    assert json.loads(out)["sampler"]["eta"] == 0.1
