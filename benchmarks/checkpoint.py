"""What the hardened checkpoints cost: checksums, the per-step weight check, checkpoint sizes.

    python benchmarks/checkpoint.py [--preset gpt2-small] [--repeats 3] [--out benchmarks/out/checkpoint.json]

1. Checksums (diffusionlm.io.safeio): writing a model's weights with the sha256 in the metadata
   (save_safetensors: hash + temporary file + fsync + rename) against safetensors' own save_file
   followed by an fsync (the durability a checkpoint needs either way), as a ratio;
   reading them verified (load_safetensors) against load_file, which maps the file lazily and
   reads nothing, so the difference is the cost of reading and hashing every byte, given as MB/s.
   Same weights, same folder; medians of `repeats`.
2. The non-finite weight check the trainer runs after every optimizer step, against the step
   itself (tiny preset, batch 8, length 128, Absorb + Flat).
3. Checkpoint sizes: a full model (tiny preset) and a LoRA run (a small random Llama, r = 8 on
   q / v), against the model's own weights.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch

from common import timed


def checksum_cost(preset: str, repeats: int) -> dict:
    from safetensors.torch import load_file, save_file

    from diffusionlm.models import DiffusionTransformer, TransformerConfig
    from diffusionlm.io.safeio import load_safetensors, save_safetensors

    model = DiffusionTransformer(TransformerConfig.preset(preset, vocab_size=50258, time_conditioning=True))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    nbytes = sum(v.numel() * v.element_size() for v in state.values())
    with tempfile.TemporaryDirectory() as d:
        plain, ours = os.path.join(d, "plain.safetensors"), os.path.join(d, "ours.safetensors")
        def save_plain():
            save_file(state, plain)
            fd = os.open(plain, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)

        t_save_plain = timed(save_plain, repeats)
        t_save_ours = timed(lambda: save_safetensors(ours, state), repeats)
        t_load_plain = timed(lambda: load_file(plain), repeats)
        t_load_ours = timed(lambda: load_safetensors(ours, require_checksum=True), repeats)
    return {"preset": preset, "megabytes": nbytes / 1e6, "save_plain_s": t_save_plain, "save_checksummed_s": t_save_ours,
            "save_ratio": t_save_ours / t_save_plain, "load_lazy_s": t_load_plain, "load_verified_s": t_load_ours,
            "verify_mb_per_s": nbytes / 1e6 / max(t_load_ours - t_load_plain, 1e-9)}


class Stream:
    def __init__(self, batch, d, vocab):
        self.g, self.shape, self.vocab = torch.Generator().manual_seed(0), (batch, d), vocab

    def __next__(self):
        return torch.randint(0, self.vocab, self.shape, generator=self.g)


def weight_check_cost(repeats: int) -> dict:
    from diffusionlm.lm import DiffusionLM
    from diffusionlm.models import DiffusionTransformer, TransformerConfig
    from diffusionlm.processes import Absorb
    from diffusionlm.schedules import Flat
    from diffusionlm.training import TrainConfig, Trainer

    proc = Absorb(259)
    model = DiffusionTransformer(TransformerConfig.preset("tiny", vocab_size=proc.model_vocab_size, max_positions=128))
    trainer = Trainer(DiffusionLM(model, proc, Flat()), TrainConfig(steps=10**6, progress=False), Stream(8, 128, 259))
    t_step = timed(trainer.train_step, repeats)
    t_check = timed(trainer._non_finite_weight, repeats * 5)
    return {"step_s": t_step, "check_s": t_check, "check_fraction": t_check / t_step}


def checkpoint_sizes() -> dict:
    import transformers

    from diffusionlm.lm import DiffusionLM
    from diffusionlm.models import DiffusionTransformer, TransformerConfig
    from diffusionlm.models.hf import HFDenoiser
    from diffusionlm.models.lora import apply_lora
    from diffusionlm.processes import Absorb
    from diffusionlm.schedules import Flat
    from diffusionlm.training import TrainConfig, Trainer, latest_checkpoint

    def size(trainer, out):
        trainer.fit()
        ck = latest_checkpoint(out)
        model_bytes = sum(v.numel() * v.element_size() for v in trainer.module.state_dict().values())
        files = {f.name: f.stat().st_size for f in ck.iterdir()}
        return {"model_mb": model_bytes / 1e6, "checkpoint_mb": sum(files.values()) / 1e6,
                "weights_file_mb": files["model.safetensors"] / 1e6,
                "checkpoint_over_model": sum(files.values()) / model_bytes}

    out = {}
    with tempfile.TemporaryDirectory() as d:
        proc = Absorb(259)
        model = DiffusionTransformer(TransformerConfig.preset("tiny", vocab_size=proc.model_vocab_size, max_positions=64))
        cfg = TrainConfig(steps=1, progress=False, out_dir=os.path.join(d, "full"))
        out["full_tiny"] = size(Trainer(DiffusionLM(model, proc, Flat()), cfg, Stream(2, 64, 259)), cfg.out_dir)
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=259, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=4, max_position_embeddings=64))
        denoiser = HFDenoiser.from_model(apply_lora(hf, r=8, target_modules=("q_proj", "v_proj")), mask="add")
        cfg = TrainConfig(steps=1, progress=False, out_dir=os.path.join(d, "lora"))
        out["lora_llama"] = size(Trainer(DiffusionLM(denoiser, Absorb(259, mask_id=denoiser.mask_id), Flat()), cfg,
                                         Stream(2, 64, 259)), cfg.out_dir)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="gpt2-small")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/out/checkpoint.json")
    args = ap.parse_args()
    res = {"checksum": checksum_cost(args.preset, args.repeats), "weight_check": weight_check_cost(args.repeats),
           "sizes": checkpoint_sizes()}
    c, w = res["checksum"], res["weight_check"]
    print(f"checksums, {c['preset']} ({c['megabytes']:.0f} MB): save {c['save_checksummed_s']:.2f} s vs "
          f"{c['save_plain_s']:.2f} s save_file + fsync ({c['save_ratio']:.2f}x); load + verify {c['load_verified_s']:.2f} s vs "
          f"{c['load_lazy_s']:.3f} s lazy load_file: verifying reads {c['verify_mb_per_s']:.0f} MB/s")
    print(f"weight check per step: {w['check_s'] * 1e3:.2f} ms vs a {w['step_s'] * 1e3:.0f} ms step "
          f"({100 * w['check_fraction']:.2f}%)")
    for name, s in res["sizes"].items():
        print(f"checkpoint {name}: {s['checkpoint_mb']:.2f} MB (weights file {s['weights_file_mb']:.2f} MB) for a "
              f"{s['model_mb']:.2f} MB model: {s['checkpoint_over_model']:.3f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
