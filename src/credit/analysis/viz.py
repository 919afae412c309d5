"""Shared rendering helpers for ``explain``, ``pmi``, ``eval`` and ``report``: HTML and PNG.

Everything here is presentation: colours, HTML escaping, self-contained pages (images embedded as
base64, no external assets), matplotlib figures written without a display (the Agg backend), and
the one place the command-line entry points turn a user error into a message and an exit status.
"""

from __future__ import annotations

import base64
import html
import io
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

# UserError and cli_entry live in credit.errors; imported here for callers of their old home
from credit.errors import UserError, cli_entry  # noqa: F401

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def pyplot():
    """matplotlib's pyplot, imported on first use (the commands that draw nothing, train and bench, never
    load matplotlib) on the Agg backend: never open a window; safe on headless machines and in tests."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# Diverging scale: negative values red, positive blue, zero white (the RdBu convention).
NEGATIVE_RGB = (178, 24, 43)
POSITIVE_RGB = (33, 102, 172)
CMAP = "RdBu"

#: How invisible characters are shown inside a token (the raw text is kept in the hover title).
VISIBLE_WHITESPACE = {"\n": "↵", "\t": "⇥", "\r": "␍"}
#: Shown for a token that decodes to nothing on its own (part of a multi-byte character).
EMPTY_TOKEN = "◦"


# ----------------------------------------------------------------------------- colours


def color_scale(values: Sequence[float], quantile: float = 0.98) -> float:
    """A symmetric colour limit ``vmax``: a high quantile of |value| (one outlier must not wash out
    the rest), at least a tiny positive number."""
    finite = sorted(abs(v) for v in values if math.isfinite(v))
    if not finite:
        return 1.0
    idx = min(len(finite) - 1, int(quantile * (len(finite) - 1) + 0.5))
    return max(finite[idx], 1e-6)


def diverging_rgb(value: float, vmax: float) -> tuple[int, int, int]:
    """White at 0, ``POSITIVE_RGB`` at ``+vmax`` and beyond, ``NEGATIVE_RGB`` at ``-vmax``."""
    if not math.isfinite(value):
        return (200, 200, 200)
    a = max(-1.0, min(1.0, value / vmax))
    end = POSITIVE_RGB if a >= 0 else NEGATIVE_RGB
    a = abs(a)
    return tuple(round(255 + (c - 255) * a) for c in end)  # type: ignore[return-value]


def css_rgb(rgb: tuple[int, int, int]) -> str:
    return f"rgb({rgb[0]},{rgb[1]},{rgb[2]})"


def text_color(rgb: tuple[int, int, int]) -> str:
    """Black on light backgrounds, white on dark ones (perceived luminance)."""
    lum = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return "#000" if lum > 140 else "#fff"


# ----------------------------------------------------------------------------- HTML


def visible_token(piece: str) -> str:
    """Token text for display: newlines/tabs as glyphs, a whitespace-only token as '␣'s, an empty
    token as ``EMPTY_TOKEN``. Not escaped (see ``token_span``)."""
    if piece == "":
        return EMPTY_TOKEN
    if piece.strip(" ") == "":
        return "␣" * len(piece)
    return "".join(VISIBLE_WHITESPACE.get(ch, ch) for ch in piece)


def token_span(piece: str, value: float, vmax: float, title: str) -> str:
    """One token as a coloured ``<span>``; the numbers go in ``title`` (shown on hover). A token that
    holds a newline is followed by a line break so the text keeps its shape."""
    rgb = diverging_rgb(value, vmax)
    style = f"background:{css_rgb(rgb)};color:{text_color(rgb)}"
    span = (f'<span class="tok" style="{style}" title="{html.escape(title, quote=True)}">'
            f"{html.escape(visible_token(piece))}</span>")
    return span + ("<br>" if "\n" in piece else "")


PAGE_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1400px}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:1.4em}
.tok{font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre;border-radius:2px;
     padding:1px 0;margin:0 1px 0 0;line-height:1.9;cursor:default}
.panel{border:1px solid #ddd;border-radius:4px;padding:.6em;background:#fafafa;overflow-wrap:anywhere}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:1em}
table{border-collapse:collapse;font-size:.9em} td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#eee} td.l,th.l{text-align:left}
pre{white-space:pre-wrap;background:#f4f4f4;padding:.5em;border-radius:4px}
.legend{font-size:.85em;color:#555} img{max-width:100%}
"""


def html_page(title: str, body: str) -> str:
    """A complete, self-contained HTML document (no external CSS, scripts or images)."""
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{PAGE_CSS}</style></head>\n"
            f"<body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def html_table(header: Sequence[str], rows: Sequence[Sequence[object]], left_columns: int = 1) -> str:
    """A table; cells are escaped; floats printed with 4 significant digits."""
    def cell(v: object) -> str:
        return html.escape(format_number(v) if isinstance(v, float) else str(v))

    def row(cells: Sequence[object], tag: str) -> str:
        return "<tr>" + "".join(
            f'<{tag}{" class=l" if i < left_columns else ""}>{cell(c)}</{tag}>' for i, c in enumerate(cells)
        ) + "</tr>"

    return "<table>" + row(header, "th") + "".join(row(r, "td") for r in rows) + "</table>"


def format_number(v: object, digits: int = 4) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.{digits}g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def write_json(path: str | Path, obj: object) -> None:
    """Write ``obj`` as indented UTF-8 JSON (parents made) and say where."""
    import json

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=1, ensure_ascii=False), encoding="utf-8")
    print(f"wrote {path}")


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def html_img(png: bytes, alt: str) -> str:
    return f'<img src="{png_data_uri(png)}" alt="{html.escape(alt, quote=True)}">'


# ----------------------------------------------------------------------------- PNG


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes. Characters the font lacks (emoji) are drawn as boxes, silently."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> bytes:
    """Write the figure as a PNG at ``path`` (parents created) and return the bytes."""
    png = figure_png(fig, dpi)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(png)
    return png


def heat_strip(
    labels: Sequence[str], rows: Mapping[str, Sequence[float]], title: str = "", max_per_line: int = 48,
    legend: str = "",
) -> Figure:
    """Per-token heat strips: one row per series (e.g. ΔV, S, G), one column per token, each row with
    its own symmetric diverging colour scale around 0 (give a series that is far from 0, such as a
    log-prob, centred), the token text under the columns. Long responses wrap into several blocks of
    ``max_per_line`` tokens. ``legend``: a line under the figure saying what the colours mean.

    The figure's axes hold one image per block (``ax.images``), in the order of ``rows``.
    """
    import numpy as np

    names = list(rows)
    data = np.array([list(rows[n]) for n in names], dtype=float)  # (S, T)
    n_tok = data.shape[1]
    blocks = max(1, math.ceil(n_tok / max_per_line))
    width = min(n_tok, max_per_line)
    limits = [color_scale(list(r)) for r in data]
    plt = pyplot()
    fig, axes = plt.subplots(blocks, 1, figsize=(max(6.0, 0.32 * width + 1.5), (0.45 * len(names) + 0.9) * blocks),
                             squeeze=False)
    for b in range(blocks):
        ax = axes[b, 0]
        lo, hi = b * max_per_line, min(n_tok, (b + 1) * max_per_line)
        block = data[:, lo:hi] / np.array(limits)[:, None]  # each row scaled to [-1, 1]
        padded = np.full((len(names), width), np.nan)
        padded[:, : hi - lo] = block
        ax.imshow(padded, cmap=CMAP, vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
        ax.set_yticks(range(len(names)), [f"{n} (±{limits[i]:.2g})" for i, n in enumerate(names)])
        ax.set_xticks(range(hi - lo), [visible_token(t) for t in labels[lo:hi]], rotation=90,
                      fontsize=8, fontfamily="monospace")
        ax.tick_params(length=0)
        for i in range(len(names)):  # the value, printed on the cell when it fits
            for j in range(hi - lo):
                v = data[i, lo + j]
                if math.isfinite(v):
                    ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=5.5,
                            color="white" if abs(block[i, j]) > 0.6 else "black")
    if title:
        axes[0, 0].set_title(title, fontsize=10, loc="left")
    if legend:
        import textwrap

        wrapped = textwrap.fill(legend, width=max(60, int(fig.get_figwidth() * 14)))
        fig.text(0.01, 0.0, wrapped, fontsize=7, va="top", ha="left", color="#444")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig.tight_layout()
    return fig


def close(fig: Figure) -> None:
    pyplot().close(fig)
