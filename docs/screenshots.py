"""Screenshot pages of the built site with headless Chromium, offline, to look at them.

    bash docs/build.sh
    python docs/screenshots.py                       # -> docs/_build/screenshots/*.png
    python docs/screenshots.py --out DIR quickstart.html spec/graph.html

Each PNG is the whole page: Chromium renders it in a very tall window, and the blank
space below the page's end is cut off (an anchor in the URL would be scrolled to before
MathJax has laid the page out, so whole pages are more reliable).

Chromium is Debian's ``chromium`` package (``apt-get install chromium``); set CHROMIUM to
use another binary. Pages load from ``file://`` URLs and MathJax is local, so nothing is
fetched. Chromium is given a virtual-time budget so MathJax finishes typesetting before
the shot is taken.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["DEFAULT_PAGES", "find_chromium", "screenshot", "main"]

DOCS = Path(__file__).resolve().parent
HTML = DOCS / "_build" / "html"
DEFAULT_PAGES = ("index.html", "quickstart.html", "spec/training.html", "spec/conformance.html")
WIDTH, TALL = 1280, 10000  # px; TALL must exceed the longest page (12000 hangs Chromium here)


def find_chromium() -> str:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    raise SystemExit("screenshots: no Chromium found; install Debian's package with "
                     "`apt-get install -y chromium`, or set CHROMIUM to the binary")


def _png_name(page: str) -> str:
    return page.replace("/", "_").replace(".html", "") + ".png"


def _trim(png: Path) -> None:
    """Cut the blank space of the tall window out of the shot.

    Furo keeps its footer at the bottom of the window, so the page is its content, a
    long blank run, then the footer: the longest blank run is cut down to 40 px.
    """
    import numpy as np
    from PIL import Image

    image = Image.open(png).convert("RGB")
    pixels = np.asarray(image)
    content = pixels[:, int(0.4 * pixels.shape[1]):]   # right of the grey sidebar
    inked = np.flatnonzero((content < 250).any(axis=(1, 2)))
    if inked.size < 2:
        return
    gaps = np.diff(inked)
    at = int(np.argmax(gaps))
    if gaps[at] > 200:
        top, bottom = pixels[:inked[at] + 40], pixels[inked[at + 1] - 40:inked[-1] + 40]
        pixels = np.concatenate([top, bottom])
    else:
        pixels = pixels[:inked[-1] + 40]
    Image.fromarray(pixels).save(png)


def screenshot(chromium: str, page: str, out_dir: Path, height: int = TALL) -> Path:
    """Render ``page`` of the built site into ``out_dir``; return the PNG's path."""
    source = HTML / page
    if not source.is_file():
        raise SystemExit(f"screenshots: {source} does not exist; build the site first: bash docs/build.sh")
    url = source.as_uri()
    png = out_dir / _png_name(page)
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--no-first-run", "--disable-extensions", "--force-device-scale-factor=1",
           f"--window-size={WIDTH},{height}", "--virtual-time-budget=15000",
           "--run-all-compositor-stages-before-draw", f"--screenshot={png}", url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not png.is_file():
        raise SystemExit(f"screenshots: chromium failed on {page} (exit {done.returncode}):\n{done.stderr[-2000:]}")
    _trim(png)
    return png


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Screenshot pages of the built docs with headless Chromium.")
    parser.add_argument("pages", nargs="*", help="pages relative to docs/_build/html, e.g. spec/graph.html")
    parser.add_argument("--out", type=Path, default=DOCS / "_build" / "screenshots", help="folder for the PNGs")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    chromium = find_chromium()
    for page in args.pages or DEFAULT_PAGES:
        print(screenshot(chromium, page, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
