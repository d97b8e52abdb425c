"""Screenshots of the demo for docs/ and the README, taken in headless Chromium.

    python scripts/demo_screenshots.py [--model RUN_DIR] [--out docs/demo] [--unadapted HF_DIR]
        [--prompt P] [--steps K] [--width W --length N --advanced-steps K]

With no --model: the demo's default model (`load_demo_model(None)`). Taken at 1400x900, the size
at which tests/test_demo.py checks that Generate is above the fold in both modes. `--unadapted`:
also ar.png, a plain Hugging Face causal LM (e.g. the fetched SmolLM2 folder) read as a denoiser,
labelled "autoregressive LM (not adapted)" and decoded by the AR sampler (greedy).
"""
import argparse
import contextlib
import socket

from diffusionlm.demo import launch, load_demo_model
from diffusionlm.demo.browser import DemoBrowser


@contextlib.contextmanager
def served(model):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app, url = launch(model, port=port, block=False)
    try:
        with DemoBrowser(url, width=1400, height=900) as b:
            yield b
    finally:
        app.close()


def back(b: DemoBrowser, n: int) -> None:
    """n steps back from the last frame (to one where MASK, changes and confidence all show)."""
    for _ in range(n):
        b.click("back")
        b.page.wait_for_timeout(150)
    b.page.wait_for_timeout(500)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--out", default="docs/demo")
    ap.add_argument("--prompt", default="def ")
    ap.add_argument("--steps", type=int, default=32, help="the simple-mode run's steps")
    ap.add_argument("--width", type=int, default=32, help="advanced mode: ACS under Block(width)")
    ap.add_argument("--length", type=int, default=128, help="advanced mode: tokens generated")
    ap.add_argument("--advanced-steps", type=int, default=32)
    ap.add_argument("--unadapted")
    ap.add_argument("--unadapted-prompt", default="The three primary colours are")
    args = ap.parse_args()
    wrote = []
    with served(load_demo_model(args.model)) as b:
        b.generate(args.prompt, steps=args.steps)
        back(b, 14)
        b.screenshot(f"{args.out}/simple.png")
        b.mode("Advanced")  # ACS under Block(32): settled blocks, the active one, MASK after it
        b.choose("sampler", "acs")
        b.choose("schedule", "block")
        b.generate(args.prompt, steps=args.advanced_steps, length=args.length, width=args.width, eta=0.1)
        back(b, 14)
        b.screenshot(f"{args.out}/advanced.png")
        wrote += [f"{args.out}/simple.png", f"{args.out}/advanced.png"]
    if args.unadapted:
        with served(load_demo_model(args.unadapted)) as b:
            b.mode("Advanced")
            b.choose("sampler", "ar")
            b.page.locator("#greedy input").check()
            b.generate(args.unadapted_prompt, length=48)
            back(b, 12)
            b.screenshot(f"{args.out}/ar.png")
            wrote.append(f"{args.out}/ar.png")
    print("wrote " + ", ".join(wrote))


if __name__ == "__main__":
    main()
