"""Small display helpers for templates."""
from __future__ import annotations

from django import template

register = template.Library()


@register.filter
def duration(seconds: float | None) -> str:
    """1h 02m, 3m 05s, 12s."""
    if seconds is None:
        return "—"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


@register.filter
def percent(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "—"
    return f"{value * 100:.{digits}f}%"


@register.filter
def split(value: str, sep: str | None = None) -> list[str]:
    return value.split(sep)


@register.filter
def attr(obj: object, name: str) -> object:
    return getattr(obj, name, "")


@register.filter
def get(mapping: dict, key: str) -> object:
    return mapping.get(key, "") if hasattr(mapping, "get") else ""


@register.filter
def max_of(values: list[float]) -> float:
    """The largest of a list (at least 1): the scale of a bar chart drawn in HTML."""
    return max([1, *values])


@register.filter
def at(values: list, index: int | None) -> object:
    """values[index], or "" when there is no such item."""
    try:
        return values[int(index)] if index is not None else ""
    except (IndexError, TypeError, ValueError):
        return ""
