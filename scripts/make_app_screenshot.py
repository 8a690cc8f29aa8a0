"""Regenerates docs/images/app.png, the screenshot of the web page, with the real programs.

    python scripts/make_app_screenshot.py        # a few minutes on the CPU

It needs the app's packages (``pip install -e ".[app,test]"``) and Debian's Chromium
(``apt-get install chromium``; Playwright drives it, nothing is downloaded). In a temporary
folder it trains the demo's model for the short schedule of ``scripts/make_doc_images.py``
(the same data and settings), starts ``python -m mit_semseg.app --run DIR``, opens the page in
headless Chromium at 1400x900, uploads a validation image, compares the last epoch with the
first, hovers a pixel, and saves the window, reduced to 256 colours like the other pictures.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from make_doc_images import CONFIG, REPO_ROOT, RUN_NAME, run, save_small

CHROMIUM = os.environ.get("MIT_SEMSEG_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def start_app(run_dir: Path, env: dict) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "mit_semseg.app", "--run", str(run_dir),
                                "--port", "0"], cwd=REPO_ROOT, env=env, text=True,
                               stdout=subprocess.PIPE)
    line = process.stdout.readline()
    if "open http://" not in line:
        process.kill()
        sys.exit(f"the app did not start: {line!r}")
    return process, line.split("open ", 1)[1].split()[0]


def screenshot(url: str, image: Path, out: Path, profile: Path, pixel: tuple[float, float]
               ) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 900})
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("body[data-ready=true]")
        page.set_input_files("#photo-input", str(image))
        page.wait_for_selector("#view-a[data-state=done]", timeout=300_000)
        page.check("#compare")
        page.select_option("#model-b", "run-1")
        page.select_option("#epoch-b", "1")
        page.wait_for_selector("#view-b[data-state=done]", timeout=300_000)
        box = page.locator("#view-a .overlay").bounding_box()
        page.mouse.move(box["x"] + pixel[0] * box["width"], box["y"] + pixel[1] * box["height"])
        page.screenshot(path=str(out))
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "images" / "app.png")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--epoch-iters", type=int, default=40)
    parser.add_argument("--image", type=int, default=2,
                        help="which validation image to show (1-based, default 2)")
    parser.add_argument("--hover", type=float, nargs=2, default=(0.5, 0.5), metavar=("X", "Y"),
                        help="where the mouse rests, as a share of the picture's width and "
                             "height (default: the middle)")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the data and the run, kept and reused when it already "
                             "holds the trained run (default: a temporary folder)")
    args = parser.parse_args()
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO_ROOT))
    with tempfile.TemporaryDirectory(prefix="mit_semseg_app_screenshot_") as tmp:
        work = args.work or Path(tmp)
        data, ckpt = work / "data", work / RUN_NAME
        if not (ckpt / f"decoder_epoch_{args.epochs}.pth").is_file():
            run(["-m", "mit_semseg.data.synthetic", "--out", str(data), "--num-train", "100",
                 "--num-val", str(max(args.image, 4)), "--seed", "0"], env)
            run(["train.py", "--cfg", str(CONFIG), "--gpus", "cpu", "DIR", str(ckpt),
                 "DATASET.root_dataset", str(data), "DATASET.list_train",
                 str(data / "training.odgt"), "DATASET.list_val",
                 str(data / "validation.odgt"), "TRAIN.num_epoch", str(args.epochs),
                 "TRAIN.epoch_iters", str(args.epoch_iters), "TRAIN.disp_iter", "5"], env)
        image = sorted((data / "images" / "validation").iterdir())[args.image - 1]
        process, url = start_app(ckpt, env)
        try:
            raw = Path(tmp) / "app.png"
            screenshot(url, image, raw, Path(tmp) / "profile", tuple(args.hover))
        finally:
            process.terminate()
            process.wait(60)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        save_small(raw, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
