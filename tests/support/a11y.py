"""A small accessibility check of a rendered page, from what the browser computed.

* every form control a person fills in has a label (``<label for>``, a wrapping
  label, aria-label or aria-labelledby);
* exactly one ``h1``; heading levels never skip one going down;
* every visible text has a contrast of at least 4.5:1 (WCAG 2 AA, normal text)
  between its colour and the first opaque background behind it, both as the
  stylesheet made them (getComputedStyle).
"""

from __future__ import annotations

import dataclasses
import re

from playwright.sync_api import Page

MIN_CONTRAST = 4.5

_COLLECT = """
() => {
  const controls = [...document.querySelectorAll('input, select, textarea')]
    .filter(e => e.type !== 'hidden' && e.type !== 'submit')
    .map(e => ({name: e.name || e.id,
                labelled: e.labels.length > 0 || !!e.getAttribute('aria-label')
                          || !!e.getAttribute('aria-labelledby')}));
  const headings = [...document.querySelectorAll('h1, h2, h3, h4, h5, h6')]
    .map(h => ({level: Number(h.tagName[1]), text: h.textContent.trim()}));
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const bg = getComputedStyle(e).backgroundColor;
      const m = bg.match(/rgba?\\(([^)]+)\\)/);
      if (m) {
        const parts = m[1].split(',').map(Number);
        if (parts.length < 4 || parts[3] > 0) return bg;
      }
    }
    return 'rgb(255, 255, 255)';
  };
  const texts = [];
  for (const el of document.querySelectorAll('body *')) {
    const own = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
    if (!own) continue;
    const r = el.getBoundingClientRect();
    const style = getComputedStyle(el);
    if (r.width <= 1 || r.height <= 1 || style.visibility === 'hidden'
        || style.display === 'none' || style.clip === 'rect(0px, 0px, 0px, 0px)') continue;
    const svg = el instanceof SVGElement;
    texts.push({text: el.textContent.trim().slice(0, 40), tag: el.tagName,
                fg: svg ? style.fill : style.color, bg: background(el)});
  }
  return {controls, headings, texts};
}
"""


@dataclasses.dataclass
class Report:
    problems: list[str]
    texts_checked: int


def _rgb(text: str) -> tuple[float, float, float]:
    match = re.match(r"rgba?\(([^)]+)\)", text)
    if match is None:
        raise ValueError(f"not an rgb() colour: {text!r}")
    parts = [float(p) for p in match.group(1).split(",")[:3]]
    return parts[0], parts[1], parts[2]


def luminance(rgb: tuple[float, float, float]) -> float:
    def channel(c: float) -> float:
        c /= 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(fg: tuple[float, float, float], bg: tuple[float, float, float]) -> float:
    high, low = sorted((luminance(fg), luminance(bg)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def check_page(page: Page) -> Report:
    found = page.evaluate(_COLLECT)
    problems = [
        f"form control {c['name']!r} has no label" for c in found["controls"] if not c["labelled"]
    ]
    levels = [h["level"] for h in found["headings"]]
    if levels.count(1) != 1:
        problems.append(f"{levels.count(1)} h1 headings (want exactly one)")
    for before, after, heading in zip(levels, levels[1:], found["headings"][1:], strict=False):
        if after > before + 1:
            problems.append(f"heading h{after} {heading['text']!r} follows h{before}")
    for text in found["texts"]:
        ratio = contrast(_rgb(text["fg"]), _rgb(text["bg"]))
        if ratio < MIN_CONTRAST:
            problems.append(
                f"contrast {ratio:.2f} of {text['tag']} {text['text']!r} "
                f"({text['fg']} on {text['bg']})"
            )
    return Report(problems, len(found["texts"]))
