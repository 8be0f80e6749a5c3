"""The one way a page is made: jinja2 templates (bench/reporting/templates/) on one autoescaping
Environment, numbers formatted by its filters, figures inlined as SVG.

A results folder travels (a colleague's, a CI artefact): every string in it is text, never markup.
Autoescaping makes that the default rather than a call each f-string had to remember; matplotlib
escapes what it writes into the SVG, and `plot_text` keeps it from reading a `$` as mathtext. Every
value a template prints, plot label and tooltip is capped (common.text.cap): a 60 MB string in a
result is a line with an ellipsis on the page, whole in the JSON; and its control characters
(ESC, a bidirectional override) are written as escapes (common.text.page_text), never raw.
"""
from __future__ import annotations

import io
import math
from collections.abc import Iterable
from functools import cache
from numbers import Real
from pathlib import Path

from common.text import cap, page_text

DASH = "–"  # what a page shows for a number that is missing or not finite
# The largest magnitude a figure draws: matplotlib's ticks fail on an axis spanning more than a
# float holds (a crafted loss of 1e308 beside one of -1e308). Past it a value is a gap in the
# figure, never left out of a table.
DRAWABLE = 1e100


def _real(x: object) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool) and math.isfinite(x)


def drawable(values: Iterable[object]) -> list[float]:
    """`values` as a figure may draw them: each beyond +-DRAWABLE, or not finite, as NaN (a gap)."""
    return [float(v) if isinstance(v, Real) and _real(v) and abs(float(v)) <= DRAWABLE else math.nan for v in values]


def number(x: object, digits: int = 3) -> str:
    """A float with thousands separators and `digits` decimals; an int as it is; missing or not finite: a dash."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return DASH
    return f"{x:,.{digits}f}" if isinstance(x, float) else str(x)


def times(x: object, digits: int = 1) -> str:
    """A speed ratio: 2.3x."""
    return f"{x:.{digits}f}x" if _real(x) else DASH


def scientific(x: object, digits: int = 2) -> str:
    """A small difference: 1.23e-05."""
    return f"{x:.{digits}e}" if _real(x) else DASH


def signed(x: object, digits: int = 4) -> str:
    """A change: +0.0123."""
    return f"{x:+.{digits}f}" if _real(x) else DASH


def percent(x: object) -> str:
    """A fraction as a whole percentage: 12%."""
    return f"{x:.0%}" if _real(x) else DASH


@cache
def environment():
    """The pages' one jinja2 Environment: autoescaping, undefined names an error, these filters.
    Imported on first use: every process imports the CLI (and with it compare), backend envs
    included, and only the ones that draw a page need jinja2 (the `harness` extra)."""
    import jinja2

    from bench.reporting.limit import share_text

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             finalize=_capped)
    env.filters.update(num=number, times=times, sci=scientific, signed=signed, percent=percent, share=share_text)
    return env


def _capped(value: object) -> object:
    """What a template prints of one value: text capped; markup (our own figures) as it is."""
    from markupsafe import Markup

    if isinstance(value, Markup):
        return value
    if isinstance(value, str):
        return cap(page_text(value))
    return cap(page_text(value)) if isinstance(value, (list, tuple, dict)) else value


def render(template: str, **context: object) -> str:
    """One page (or fragment) from its template, writable as UTF-8: a lone surrogate (valid in a
    folder's JSON as an escape, and no character) is shown as its escape, not an encoding error."""
    text = environment().get_template(template).render(**context)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def plot_text(text: object) -> str:
    """Text from a results folder as matplotlib must get it: a `$` is a literal dollar sign, not
    the start of mathtext (which would parse the rest as TeX and fail on most of it)."""
    return cap(page_text(text)).replace("$", r"\$")


def headless_matplotlib() -> None:
    """Draw without a display, and keep text as (escaped) text in the SVG: searchable, smaller.
    Matplotlib's warnings (a glyph a font lacks in a label from someone's results, a log axis
    with nothing positive) and its logging stay off stderr: a page is made whatever the data,
    and stderr is for the one line that says what the user must fix."""
    import logging
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"
    # warn_external attributes a warning to the first caller outside matplotlib: the pages' modules.
    warnings.filterwarnings("ignore", module=r"(matplotlib|bench\.reporting)(\.|$)")
    logging.getLogger("matplotlib").setLevel(logging.ERROR)


def svg(fig, titles: dict[str, str] | None = None):
    """The figure as an inline <svg> element; `titles` puts a <title> (a browser's tooltip,
    escaped) first in the group matplotlib wrote for the artist with that gid."""
    import matplotlib.pyplot as plt
    from markupsafe import Markup, escape

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    text = text[text.index("<svg"):]
    for gid, title in (titles or {}).items():
        opening = f'<g id="{gid}">'
        if opening not in text:
            raise RuntimeError(f"matplotlib wrote no group {opening}: the points' titles would be lost")
        text = text.replace(opening, f"{opening}<title>{escape(cap(page_text(title)))}</title>", 1)
    return Markup(text)  # noqa: S704 (matplotlib's own output; the text in it is escaped by its writer)
