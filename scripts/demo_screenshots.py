"""Screenshots of the demo for docs/ and the README, taken in headless Chromium.

    python scripts/demo_screenshots.py [--model RUN_DIR] [--out docs/demo]

With no --model: the main job's MDLM model (runs/compare/models/mdlm, trained first if missing).
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
            b.mode("Advanced")
            b.choose("sampler", "lad")
            b.page.locator("#confidence input").check()
            b.generate(args.prompt, steps=24, length=96, top_p=0.9, block_size=32, temperature=0.8)
            for _ in range(12):
                b.click("back")
            b.page.wait_for_timeout(500)
            b.screenshot(f"{args.out}/advanced.png")
    finally:
        app.close()
    print(f"wrote {args.out}/simple.png, {args.out}/advanced.png")


if __name__ == "__main__":
    main()
