"""Small server-rendered SVG charts: a line chart (with optional error bars) and a bar chart,
drawn in templates by the `charts` template tags. No JavaScript and no chart library: the page stays one HTML response that works
offline, and htmx can swap a chart like any other fragment.

Every text that reaches the SVG goes through `escape`; every number through `_num`, so a chart
can hold untrusted labels without becoming markup. Colours come from tandem.css classes, so the
charts follow the light and dark themes.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe


@dataclass(frozen=True)
class Point:
    """One x position of a line chart; `value` None leaves a gap. `low`/`high` draw an error bar."""

    label: str
    value: float | None
    low: float | None = None
    high: float | None = None
    note: str = ""  # the tooltip (an SVG <title>); the label and value when empty


@dataclass(frozen=True)
class Bar:
    label: str  # the tick label under the bar; "" shows none
    value: float
    note: str = ""


@dataclass(frozen=True)
class Frame:
    """The chart's coordinate system: a viewBox of width × height with margins around the plot."""

    width: float = 480
    height: float = 240
    left: float = 48
    right: float = 12
    top: float = 30
    bottom: float = 44

    @property
    def plot_left(self) -> float:
        return self.left

    @property
    def plot_right(self) -> float:
        return self.width - self.right

    @property
    def plot_top(self) -> float:
        return self.top

    @property
    def plot_bottom(self) -> float:
        return self.height - self.bottom

    def band(self, n: int) -> float:
        """Width of one of n equal slots along the x axis."""
        return (self.plot_right - self.plot_left) / max(n, 1)

    def x(self, i: int, n: int) -> float:
        """Centre of slot i of n."""
        return self.plot_left + (i + 0.5) * self.band(n)

    def y(self, value: float, lo: float, hi: float) -> float:
        """Maps value in [lo, hi] to the plot's height, lo at the bottom; values outside are clamped."""
        value = min(max(value, lo), hi)
        share = (value - lo) / (hi - lo) if hi > lo else 0.0
        return self.plot_bottom - share * (self.plot_bottom - self.plot_top)


FRAME = Frame()
MAX_TICK_LABELS = 12


def nice_ticks(maximum: float, count: int = 4, *, integer: bool = False) -> list[float]:
    """0 and about `count` round steps (1, 2 or 5 × 10^k) up to the first one ≥ maximum; with
    `integer`, steps of at least 1 (a count has no half judgements)."""
    if maximum <= 0:
        return [0.0, 1.0]
    raw = max(maximum / count, 1.0) if integer else maximum / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    top = math.ceil(maximum / step - 1e-9) * step
    steps = round(top / step)
    return [round(i * step, 10) for i in range(steps + 1)]


def _num(value: float) -> str:
    """A coordinate: one decimal, never an exponent or a locale's comma."""
    return f"{value:.1f}"


def _tick(value: float) -> str:
    return f"{value:g}"


def _frame_open(title: str, summary: str, frame: Frame) -> list[str]:
    return [
        f'<svg class="chart-svg" viewBox="0 0 {_num(frame.width)} {_num(frame.height)}" '
        f'role="img" aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f"<desc>{escape(summary)}</desc>",
        f'<text class="chart-title" x="{_num(frame.plot_left)}" y="18">{escape(title)}</text>',
    ]


def _axes(
    frame: Frame, *, ticks: list[float], lo: float, hi: float, x_label: str, y_label: str
) -> list[str]:
    parts = []
    for tick in ticks:
        y = _num(frame.y(tick, lo, hi))
        parts.append(
            f'<line class="grid" x1="{_num(frame.plot_left)}" x2="{_num(frame.plot_right)}" '
            f'y1="{y}" y2="{y}"/>'
            f'<text class="tick y-tick" x="{_num(frame.plot_left - 6)}" y="{y}" '
            f'text-anchor="end" dominant-baseline="middle">{_tick(tick)}</text>'
        )
    bottom = _num(frame.plot_bottom)
    parts.append(
        f'<line class="axis" x1="{_num(frame.plot_left)}" x2="{_num(frame.plot_right)}" '
        f'y1="{bottom}" y2="{bottom}"/>'
        f'<line class="axis" x1="{_num(frame.plot_left)}" x2="{_num(frame.plot_left)}" '
        f'y1="{_num(frame.plot_top)}" y2="{bottom}"/>'
    )
    middle_x = _num((frame.plot_left + frame.plot_right) / 2)
    middle_y = _num((frame.plot_top + frame.plot_bottom) / 2)
    parts.append(
        f'<text class="axis-label" x="{middle_x}" y="{_num(frame.height - 6)}" '
        f'text-anchor="middle">{escape(x_label)}</text>'
        f'<text class="axis-label" x="12" y="{middle_y}" text-anchor="middle" '
        f'transform="rotate(-90 12 {middle_y})">{escape(y_label)}</text>'
    )
    return parts


def _x_ticks(frame: Frame, labels: Sequence[str]) -> list[str]:
    """Tick labels under the slots; thinned to at most MAX_TICK_LABELS so they never overlap."""
    shown = [i for i, label in enumerate(labels) if label]
    every = math.ceil(len(shown) / MAX_TICK_LABELS) if shown else 1
    y = _num(frame.plot_bottom + 16)
    return [
        f'<text class="tick x-tick" x="{_num(frame.x(i, len(labels)))}" y="{y}" '
        f'text-anchor="middle">{escape(labels[i])}</text>'
        for k, i in enumerate(shown)
        if k % every == 0
    ]


def _empty(message: str) -> SafeString:
    return mark_safe(f'<p class="chart-empty muted">{escape(message)}</p>')


def _close(parts: list[str]) -> SafeString:
    # Every piece above escaped its text and formatted its numbers itself.
    return mark_safe("".join(parts) + "</svg>")


def line_chart(
    points: Sequence[Point],
    *,
    title: str,
    x_label: str,
    y_label: str,
    y_min: float = 0.0,
    y_max: float = 1.0,
    reference: float | None = None,
    empty: str = "no rounds yet",
    unmeasured: str = "no values yet",
    frame: Frame = FRAME,
) -> SafeString:
    """Points joined by a line (gaps where a value is missing), error bars where low/high are set,
    and a dashed reference line (e.g. 0.5 = chance). `empty` replaces a chart without x positions;
    `unmeasured` is written across one whose positions all lack a value."""
    if not points:
        return _empty(empty)
    present = [p for p in points if p.value is not None]
    summary = "; ".join(f"{p.label}: {_tick(round(p.value, 3))}" for p in present) or unmeasured
    parts = _frame_open(title, summary, frame)
    ticks = [y_min + (y_max - y_min) * i / 4 for i in range(5)]
    parts += _axes(frame, ticks=ticks, lo=y_min, hi=y_max, x_label=x_label, y_label=y_label)
    if reference is not None:
        y = _num(frame.y(reference, y_min, y_max))
        parts.append(
            f'<line class="reference" x1="{_num(frame.plot_left)}" x2="{_num(frame.plot_right)}" '
            f'y1="{y}" y2="{y}" stroke-dasharray="5 4"/>'
        )
    parts += _x_ticks(frame, [p.label for p in points])
    n = len(points)
    path, pen_down = [], False
    for i, p in enumerate(points):
        if p.value is None:
            pen_down = False
            continue
        path.append(
            f"{'L' if pen_down else 'M'}{_num(frame.x(i, n))} {_num(frame.y(p.value, y_min, y_max))}"
        )
        pen_down = True
    if any(step.startswith("L") for step in path):  # at least two neighbours to join
        parts.append(f'<path class="series" d="{" ".join(path)}" fill="none"/>')
    for i, p in enumerate(points):
        if p.value is None:
            continue
        x = frame.x(i, n)
        if p.low is not None and p.high is not None:
            top, bottom = frame.y(p.high, y_min, y_max), frame.y(p.low, y_min, y_max)
            parts.append(
                f'<path class="error-bar" d="M{_num(x)} {_num(top)}V{_num(bottom)}'
                f'M{_num(x - 4)} {_num(top)}H{_num(x + 4)}M{_num(x - 4)} {_num(bottom)}H{_num(x + 4)}"/>'
            )
        note = p.note or f"{p.label}: {_tick(round(p.value, 3))}"
        parts.append(
            f'<circle class="point" cx="{_num(x)}" cy="{_num(frame.y(p.value, y_min, y_max))}" r="4">'
            f"<title>{escape(note)}</title></circle>"
        )
    if not present:
        parts.append(
            f'<text class="chart-note" x="{_num((frame.plot_left + frame.plot_right) / 2)}" '
            f'y="{_num(frame.plot_top + 0.3 * (frame.plot_bottom - frame.plot_top))}" '
            f'text-anchor="middle">{escape(unmeasured)}</text>'
        )
    return _close(parts)


def bar_chart(
    bars: Sequence[Bar],
    *,
    title: str,
    x_label: str,
    y_label: str,
    empty: str = "no data yet",
    integer: bool = True,
    frame: Frame = FRAME,
) -> SafeString:
    """Vertical bars from 0, on a y axis of round steps that reaches the largest value."""
    if not bars or not any(b.value for b in bars):
        return _empty(empty)
    ticks = nice_ticks(max(b.value for b in bars), integer=integer)
    hi = ticks[-1]
    summary = "; ".join(f"{b.label or i}: {_tick(b.value)}" for i, b in enumerate(bars) if b.value)
    parts = _frame_open(title, summary, frame)
    parts += _axes(frame, ticks=ticks, lo=0.0, hi=hi, x_label=x_label, y_label=y_label)
    parts += _x_ticks(frame, [b.label for b in bars])
    n = len(bars)
    width = frame.band(n) * 0.7
    for i, b in enumerate(bars):
        top = frame.y(b.value, 0.0, hi)
        note = b.note or f"{b.label}: {_tick(b.value)}"
        parts.append(
            f'<rect class="bar" x="{_num(frame.x(i, n) - width / 2)}" y="{_num(top)}" '
            f'width="{_num(width)}" height="{_num(frame.plot_bottom - top)}">'
            f"<title>{escape(note)}</title></rect>"
        )
    return _close(parts)


@dataclass(frozen=True)
class Series:
    """One series of a grouped bar chart: a value per group (None: no bar), in the groups' order,
    and optionally a tooltip per group."""

    label: str
    values: Sequence[float | None]
    notes: Sequence[str] = ()


# Wider than FRAME: eight category names side by side still read at 10.5 px.
GROUPED_FRAME = Frame(width=640)
SERIES_STYLES = 6  # `.bar.series-0` … `.bar.series-5` in tandem.css; series past that reuse them
LEGEND_LABEL_CHARS = 24


def _shorten(label: str, limit: int = LEGEND_LABEL_CHARS) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def grouped_bar_chart(
    groups: Sequence[str],
    series: Sequence[Series],
    *,
    title: str,
    x_label: str,
    y_label: str,
    unit: str = "",
    empty: str = "no data yet",
    frame: Frame = GROUPED_FRAME,
) -> SafeString:
    """Bars side by side within each group, one per series, with a legend above the plot.

    Each series has its own class (`bar series-k`) and a fill-opacity step, so series stay apart
    whatever the stylesheet; the legend, every bar's tooltip and the <desc> name the series in
    words, so colour is never the only carrier. `unit` follows values in the text ("%").
    """
    values = [v for s in series for v in s.values if v is not None]
    if not groups or not series or not any(values):
        return _empty(empty)
    # The legend takes rows of up to four entries between the title and the plot.
    per_row = 4
    legend_rows = math.ceil(len(series) / per_row)
    frame = Frame(
        width=frame.width,
        height=frame.height + 16 * legend_rows,
        left=frame.left,
        right=frame.right,
        top=frame.top + 16 * legend_rows,
        bottom=frame.bottom,
    )
    ticks = nice_ticks(max(values))
    hi = ticks[-1]
    summary = "; ".join(
        f"{s.label}: "
        + ", ".join(
            f"{g} {_tick(round(v, 1))}{unit}"
            for g, v in zip(groups, s.values, strict=False)
            if v is not None
        )
        for s in series
    )
    parts = _frame_open(title, summary, frame)
    slot = (frame.plot_right - frame.plot_left) / per_row
    for k, s in enumerate(series):
        x = frame.plot_left + (k % per_row) * slot
        y = 30 + 16 * (k // per_row)
        parts.append(
            f'<g class="legend-entry"><rect class="bar series-{k % SERIES_STYLES}" '
            f'fill-opacity="{_opacity(k, len(series))}" x="{_num(x)}" y="{_num(y - 9)}" '
            f'width="10" height="10"/><text class="tick" x="{_num(x + 14)}" y="{_num(y)}">'
            f"{escape(_shorten(s.label))}<title>{escape(s.label)}</title></text></g>"
        )
    parts += _axes(frame, ticks=ticks, lo=0.0, hi=hi, x_label=x_label, y_label=y_label)
    parts += _x_ticks(frame, list(groups))
    band = frame.band(len(groups))
    width = band * 0.8 / len(series)
    for i, group in enumerate(groups):
        left = frame.x(i, len(groups)) - band * 0.4
        for k, s in enumerate(series):
            value = s.values[i] if i < len(s.values) else None
            if value is None:
                continue
            top = frame.y(value, 0.0, hi)
            note = (s.notes[i] if i < len(s.notes) else "") or (
                f"{s.label} · {group}: {_tick(round(value, 1))}{unit}"
            )
            parts.append(
                f'<rect class="bar series-{k % SERIES_STYLES}" '
                f'fill-opacity="{_opacity(k, len(series))}" x="{_num(left + k * width)}" '
                f'y="{_num(top)}" width="{_num(width * 0.92)}" '
                f'height="{_num(frame.plot_bottom - top)}"><title>{escape(note)}</title></rect>'
            )
    return _close(parts)


def _opacity(k: int, n: int) -> str:
    """1.0 for the first series down to 0.4 for the last: apart even in one colour."""
    return f"{1.0 - 0.6 * k / (n - 1):.2f}" if n > 1 else "1.00"
