"""``thinklean explain-tokens``: colour each response token by IAPO's normalised information gain.

For a few sampled responses, the early-exit probe gives the answer entropy before every token;
its smoothed drop ``s_t`` is centred and L2-normalised per response (``s̃``, exactly the token
term IAPO adds to the advantage; :func:`thinklean.methods.iapo.explain_tokens` computes them).
Green tokens reduced the model's uncertainty about the answer; red ones raised it; pale ones
carried little. The page is self-contained HTML.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any


def _colour(score: float, scale: float) -> str:
    strength = min(1.0, abs(score) / scale) if scale > 0 else 0.0
    alpha = round(0.15 + 0.75 * strength, 3)
    return f"rgba(46,160,67,{alpha})" if score >= 0 else f"rgba(218,54,51,{alpha})"


def render_html(items: list[dict[str, Any]], title: str = "Information gain per token") -> str:
    """A self-contained page: one block per response, a tooltip per token with its numbers."""
    blocks = []
    for item in items:
        scale = max((abs(s) for s in item["score"]), default=0.0)
        spans = "".join(
            f'<span style="background:{_colour(s, scale)}" title="s̃={s:+.3f} gain={g:+.3f} H^A={h:.3f}">'
            f"{html.escape(tok)}</span>"
            for tok, s, g, h in zip(item["tokens"], item["score"], item["gain"], item["answer_entropy"])
        )
        blocks.append(f"<h3>{html.escape(item['prompt'])}</h3><p class=resp>{spans}</p>")
    return (
        "<!doctype html><meta charset=utf-8><title>" + html.escape(title) + "</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        ".resp{font-family:monospace;white-space:pre-wrap;line-height:1.8}</style>"
        f"<h1>{html.escape(title)}</h1><p>Green: the token lowered the model's uncertainty about the final "
        "answer (early-exit probe); red: raised it. Hover a token for s̃ (IAPO's normalised score), the raw "
        "smoothed gain and the answer entropy before it.</p>" + "".join(blocks)
    )


def write_explanation(items: list[dict[str, Any]], out_dir: str | Path) -> Path:
    path = Path(out_dir) / "tokens.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(items))
    return path
