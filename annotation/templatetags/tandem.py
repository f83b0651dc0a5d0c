"""Template filters of the Tandem pages."""

from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal

import markdown as markdown_lib
import nh3
from django import template
from django.utils.safestring import SafeString, mark_safe

register = template.Library()

# What instructions may use: text structure, emphasis, code, tables and links. No images (a
# project manager's markdown must not make annotators' browsers fetch arbitrary URLs), no
# attributes that carry styles or scripts.
ALLOWED_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5",
    "h6", "hr", "i", "kbd", "li", "ol", "p", "pre", "strong", "sub", "sup", "table", "tbody",
    "td", "th", "thead", "tr", "ul",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "abbr": {"title"}, "td": {"align"}, "th": {"align"}}
ALLOWED_URL_SCHEMES = {"http", "https", "mailto"}


@register.filter
def markdown_safe(text: str | None) -> SafeString:
    """Markdown rendered to HTML and then sanitized by nh3; the only door from text to markup."""
    html = markdown_lib.markdown(text or "", extensions=["tables", "fenced_code", "sane_lists"])
    cleaned = nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes=ALLOWED_URL_SCHEMES,
        link_rel="noopener noreferrer nofollow",
    )
    return mark_safe(cleaned)


def _span(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        minutes, rest = divmod(seconds, 60)
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, rest = divmod(seconds, 3600)
    return f"{hours} h {rest // 60} min" if rest // 60 else f"{hours} h"


@register.filter
def duration(value: timedelta | None) -> str:
    """'4 min 12 s', '2 h 5 min', or '–' when there is none."""
    return _span(value.total_seconds()) if value is not None else "–"


@register.filter
def seconds_ago(value: float | None) -> str:
    """'12 s ago' for an age in seconds."""
    return f"{_span(value)} ago" if value is not None else "never"


@register.filter
def percent(value: float | None) -> str:
    """'2.5%': the one way a share is written on every page (one decimal, '.0' dropped).

    Rounding never claims more or less than is true at the ends: a started project is never
    '0%' and an unfinished one never '100%'.
    """
    if value is None:
        return "–"
    share = Decimal(str(value)).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)
    if share <= 0 < value:
        return "<0.1%"
    if share >= 100 > value:
        return "99.9%"
    return f"{share.normalize():f}%" if share % 1 else f"{int(share)}%"


@register.filter
def percent_value(value: float | None) -> str:
    """The same share as a plain number with a dot ('2.5'), for value="" and data-width=""."""
    if value is None:
        return "0"
    return f"{Decimal(str(value)).quantize(Decimal('0.1'), rounding=ROUND_HALF_UP):f}"
