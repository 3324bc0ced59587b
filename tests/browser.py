"""Headless Chromium for the report tests: layout measured in the real browser, and screenshots."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

# Added to a copy of the report only (the report itself has no script): after load, every element box that
# reaches past either side of the viewport is listed in the title, with the page's scroll width.
_MEASURE = """<script>addEventListener('load', () => {
  const width = document.documentElement.clientWidth, cut = [];
  for (const el of document.body.querySelectorAll('*')) {
    if (el.closest('svg') && el.tagName.toLowerCase() !== 'svg') continue;  // a chart scales as one box
    const r = el.getBoundingClientRect();
    if (r.width > 0 && (r.right > width + 0.5 || r.left < -0.5))
      cut.push(el.tagName.toLowerCase() + ' ' + Math.round(r.left) + '..' + Math.round(r.right));
  }
  const svgs = [...document.querySelectorAll('svg')].map(s => Math.round(s.getBoundingClientRect().width));
  document.title = 'LAYOUT ' + JSON.stringify({width, scroll: document.documentElement.scrollWidth, cut, svgs});
});</script>"""


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "Chromium is part of the test set-up (make test installs Debian's chromium)"
    return found


def _run(args: list[str]) -> str:
    base = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    return subprocess.run(base + args, capture_output=True, text=True, timeout=120).stdout


def layout(report: Path, width: int) -> dict:
    """{width, scroll, cut, svgs} of `report` rendered `width` CSS pixels wide."""
    probe = report.with_name(f"{report.stem}.measure.html")
    probe.write_text(report.read_text(encoding="utf-8").replace("</body>", _MEASURE + "</body>"), encoding="utf-8")
    dom = _run([f"--window-size={width},1200", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()])
    found = re.search(r"<title>LAYOUT (.*?)</title>", dom)
    assert found, f"the page did not finish loading in Chromium: {dom[:300]!r}"
    return json.loads(found.group(1).replace("&quot;", '"'))


def screenshot(report: Path, width: int, height: int = 6000) -> Path:
    """A PNG of the top `height` pixels of `report` at `width` pixels."""
    out = report.with_name(f"{report.stem}-{width}.png")
    _run([f"--window-size={width},{height}", f"--screenshot={out}", report.as_uri()])
    assert out.exists(), f"Chromium wrote no screenshot of {report}"
    return out


def drawn_at_right_edge(png: Path, strip_px: int = 6) -> int:
    """How many pixels of the rightmost `strip_px` columns are not the page background (white): the page has a
    margin there, so anything drawn in it was pushed past the layout."""
    from PIL import Image

    image = Image.open(png).convert("L")
    strip = image.crop((image.width - strip_px, 0, image.width, image.height))
    return sum(1 for value in strip.getdata() if value < 250)
