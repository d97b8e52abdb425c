"""Command line: `diffusionlm train | sample | eval | compare | demo`.

    diffusionlm train --config recipes/scratch.json train.steps=500 data.length=256
    diffusionlm sample --run runs/scratch --sampler mdlm --steps 64 --num 4 --show-steps
    diffusionlm eval --run runs/scratch --dataset ptb --samples 16
    diffusionlm compare --budget-minutes 6            # the main job (see diffusionlm.compare)
    diffusionlm demo --model runs/compare/models/mdlm  # the browser demo (see diffusionlm.demo)

`train` writes into train.out_dir (default runs/<config name>): checkpoints, metrics.jsonl,
run.json (the resolved configuration), model/ (the final weights), results.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

__all__ = ["main"]


def _dist_env() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def cmd_train(args) -> dict:
    from .config import RunConfig, build
    from .schedules import hyperschedule
    from .training import TrainConfig, Trainer

    run = RunConfig.from_file(args.config, args.overrides)
    if run.train.out_dir is None:
        run.train.out_dir = str(Path("runs") / (Path(args.config).stem if args.config else "default"))
    rank, world = _dist_env()
    built = build(run, rank=rank, world_size=world)
    out = Path(run.train.out_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "run.json").write_text(json.dumps(run.to_dict(), indent=2))
    stages = run.stages or [{}]
    results = {"stages": []}
    for i, stage in enumerate(stages):
        stage = dict(stage)
        if "schedule" in stage:
            built.lm.schedule = hyperschedule(stage.pop("schedule"))
        train_kw = {**dataclasses.asdict(run.train), **stage}
        if len(stages) > 1:
            train_kw["out_dir"] = str(out / f"stage-{i + 1}")
        cfg = TrainConfig(**train_kw)
        t0 = time.perf_counter()
        trainer = Trainer(built.lm, cfg, built.train_stream, built.val_batches)
        hist = trainer.fit()
        final = trainer.evaluate() if built.val_batches else {}
        results["stages"].append({"schedule": repr(built.lm.schedule), "steps": cfg.steps,
                                  "final_loss": hist[-1]["loss"] if hist else None, **final,
                                  "seconds": time.perf_counter() - t0})
    if rank == 0:
        model = trainer.module
        if hasattr(model, "save_pretrained"):
            model.save_pretrained(str(out / "model"))
        (out / "results.json").write_text(json.dumps(results, indent=2))
        print(json.dumps(results, indent=2))
    return results


def cmd_sample(args) -> dict:
    from . import samplers
    from .config import load_run
    from .demo.core import DemoModel, Frame, frame_text

    run, built = load_run(args.run)
    tok = built.tokenizer
    cls = samplers.get_sampler(args.sampler)
    kwargs = json.loads(args.options) if args.options else {}
    if args.steps is not None:
        kwargs["steps" if args.sampler != "lad" else "iterations"] = args.steps
    sampler = cls(**kwargs)
    prompt = None
    if args.prompt:
        prompt = torch.tensor([tok.encode(args.prompt)])
    length = args.length or run.data.length
    g = torch.Generator().manual_seed(args.seed)

    view = DemoModel(built.lm, tok, args.run)
    P = 0 if prompt is None else prompt.shape[1]
    fixed = [i < P for i in range(length)]
    colour = sys.stdout.isatty()

    def show(rec):  # the demo's own terminal view of a step (sample 0): MASK as _, changes marked
        if args.show_steps:
            print(frame_text(Frame.from_record(rec, fixed), view, colour=colour), flush=True)

    out = sampler.sample(built.lm, batch_size=args.num, length=length, prompt=prompt, generator=g, callback=show)
    texts = [tok.decode(row.tolist()) for row in out.tokens]
    result = {"sampler": sampler.to_dict() if hasattr(sampler, "to_dict") else args.sampler, "seconds": out.seconds,
              "model_calls": out.num_model_calls, "samples": texts}
    print(json.dumps(result, indent=2, default=str))
    return result


def cmd_eval(args) -> dict:
    """The likelihood suite (diffusionlm.eval.likelihood): NLL bound / PPL on a dataset's split."""
    from .config import load_run
    from .eval.likelihood import evaluate_likelihood

    run, built = load_run(args.run)
    result = evaluate_likelihood(
        built.lm, args.dataset, built.tokenizer, run.data.length, split=args.split, num_samples=args.samples,
        batch_size=args.batch_size, seed=args.seed, max_blocks=args.max_blocks, progress=True,
    )
    print(json.dumps(result, indent=2, default=str))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    return result


def cmd_compare(args) -> dict:
    from .compare import CompareConfig, compare

    cfg = CompareConfig(
        corpus=args.corpus, tokenizer=args.tokenizer, preset=args.preset, length=args.length,
        batch_size=args.batch_size, train_steps=args.train_steps,
        budget_minutes=None if args.budget_minutes <= 0 else args.budget_minutes, eval_blocks=args.eval_blocks,
        eval_samples=args.eval_samples, num_samples=args.num_samples, steps=tuple(args.steps),
        variants=tuple(args.variants), judge=args.judge, out_dir=args.out, seed=args.seed, device=args.device,
    )
    results = compare(cfg)
    print((Path(cfg.out_dir) / "results.md").read_text())
    print(f"wrote {cfg.out_dir}/results.json, results.md, ppl.png, genppl_vs_entropy.png, quality_vs_steps.png")
    return results


def cmd_demo(args) -> dict:
    """Serve the browser demo (diffusionlm.demo.app) until interrupted."""
    from .demo import launch, load_demo_model

    try:
        import gradio  # noqa: F401
    except ImportError as err:
        raise ValueError("the demo needs Gradio: pip install 'diffusionlm[demo]'") from err
    model = load_demo_model(args.model, default_dir=args.default_dir)
    print(f"serving {model.name} on http://{args.host}:{args.port} (Ctrl-C stops)", flush=True)
    launch(model, host=args.host, port=args.port, block=True)
    return {}


def main(argv=None) -> int:
    from .demo.core import DEFAULT_MODEL_DIR

    ap = argparse.ArgumentParser(prog="diffusionlm", description="discrete diffusion language models")
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train from a recipe (JSON) with key=value overrides")
    t.add_argument("--config", help="recipe file (JSON); omitted: the defaults")
    t.add_argument("overrides", nargs="*", help="section.key=value")
    t.set_defaults(fn=cmd_train)
    s = sub.add_parser("sample", help="generate from a trained run")
    s.add_argument("--run", required=True)
    s.add_argument("--sampler", default="mdlm")
    s.add_argument("--steps", type=int)
    s.add_argument("--length", type=int)
    s.add_argument("--num", type=int, default=1)
    s.add_argument("--prompt")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--options", help="sampler keyword arguments as JSON")
    s.add_argument("--show-steps", action="store_true", help="print every step (MASK as _)")
    s.set_defaults(fn=cmd_sample)
    e = sub.add_parser("eval", help="NLL upper bound / perplexity of a trained run on a dataset")
    e.add_argument("--run", required=True)
    e.add_argument("--dataset", default="ptb")
    e.add_argument("--split", default="test")
    e.add_argument("--samples", type=int, default=8)
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--max-blocks", type=int)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", help="write the results JSON here")
    e.set_defaults(fn=cmd_eval)
    c = sub.add_parser("compare", help="the main job: train, evaluate and compare AR vs diffusion variants")
    c.add_argument("--corpus", default="stdlib")
    c.add_argument("--tokenizer", default="byte")
    c.add_argument("--preset", default="tiny")
    c.add_argument("--length", type=int, default=128)
    c.add_argument("--batch-size", type=int, default=16)
    c.add_argument("--train-steps", type=int, default=150, help="optimizer steps per variant")
    c.add_argument("--budget-minutes", type=float, default=8.0,
                   help="cap on total training time, shared by the variants (0: no cap)")
    c.add_argument("--eval-blocks", type=int, default=32)
    c.add_argument("--eval-samples", type=int, default=4, help="Monte-Carlo draws M of the bound")
    c.add_argument("--num-samples", type=int, default=16)
    c.add_argument("--steps", type=int, nargs="+", default=[16, 64])
    c.add_argument("--variants", nargs="+", default=["ar", "mdlm", "block", "gamma", "epsilon"])
    c.add_argument("--judge", help="a local Hugging Face causal LM directory (default: the trained AR variant)")
    c.add_argument("--out", default="runs/compare")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--device", default="cpu")
    c.set_defaults(fn=cmd_compare)
    m = sub.add_parser("demo", help="watch a model denoise step by step in the browser (Gradio)")
    m.add_argument("--model", help="a run directory (run.json), a Hugging Face model directory or hub id; "
                                   "omitted: the main job's MDLM model, trained first if missing")
    m.add_argument("--default-dir", default=DEFAULT_MODEL_DIR, help="where the default model lives")
    m.add_argument("--host", default="127.0.0.1")
    m.add_argument("--port", type=int, default=7860)
    m.set_defaults(fn=cmd_demo)
    args = ap.parse_args(argv)
    try:
        args.fn(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"diffusionlm {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
