"""Screenshots of the demo for docs/ and the README, taken in headless Chromium.

    python scripts/demo_screenshots.py [--model RUN_DIR] [--out docs/demo]

With no --model: the demo's default model (`load_demo_model(None)`). Taken at 1400x900, the size
at which tests/test_demo.py checks that Generate is above the fold in both modes.
"""
import argparse
import socket

from diffusionlm.demo import launch, load_demo_model
from diffusionlm.demo.browser import DemoBrowser


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--out", default="docs/demo")
    ap.add_argument("--prompt", default="def ")
    args = ap.parse_args()
    model = load_demo_model(args.model)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app, url = launch(model, port=port, block=False)
    try:
        with DemoBrowser(url, width=1400, height=900) as b:
            b.generate(args.prompt, steps=32)
            for _ in range(14):  # back to a step where MASK, changes and confidence all show
                b.click("back")
            b.page.wait_for_timeout(500)
            b.screenshot(f"{args.out}/simple.png")
            b.mode("Advanced")  # ACS under Block(32): settled blocks, the active one, MASK after it
            b.choose("sampler", "acs")
            b.choose("schedule", "block")
            b.generate(args.prompt, steps=32, length=128, width=32, eta=0.1)
            for _ in range(14):
                b.click("back")
            b.page.wait_for_timeout(500)
            b.screenshot(f"{args.out}/advanced.png")
    finally:
        app.close()
    print(f"wrote {args.out}/simple.png, {args.out}/advanced.png")


if __name__ == "__main__":
    main()
