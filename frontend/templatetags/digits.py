"""Small display helpers for templates."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from django import template
from django.utils import timezone
from django.utils.html import format_html

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
def starts_in(when: datetime | None) -> str:
    """An estimated start: "now", or "in ~12m 05s"."""
    if when is None:
        return "—"
    seconds = (when - timezone.now()).total_seconds()
    return "now" if seconds < 1 else f"in ~{duration(seconds)}"


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
def get(mapping: dict | list, key: str | int) -> object:
    """mapping[key] in a template: a dict's value, or a list's item (a colour per class)."""
    if isinstance(mapping, (list, tuple)):
        return mapping[key] if isinstance(key, int) and 0 <= key < len(mapping) else ""
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


@register.simple_tag(takes_context=True)
def sort_link(context: dict, field: str, label: str) -> str:
    """A column header that sorts the list by `field` (again: the other way), keeping the
    filters and going back to the first page."""
    request = context["request"]
    current = request.GET.get("ordering", "")
    params = request.GET.copy()
    params["ordering"] = f"-{field}" if current == field else field
    params.pop("page", None)
    arrow = " ▲" if current == field else " ▼" if current == f"-{field}" else ""
    return format_html('<a href="?{}" class="sort" data-sort="{}">{}{}</a>', params.urlencode(), field, label, arrow)


@register.simple_tag(takes_context=True)
def page_query(context: dict, page: int) -> str:
    """The current query string with another page."""
    params = context["request"].GET.copy()
    params["page"] = page
    return params.urlencode()



@register.inclusion_tag("partials/plugin_report.html")
def plugin_report() -> dict[str, Any]:
    """The installed plugins and those that failed to load (the admin index shows it)."""
    from models_app.view_plugins import installed_plugins

    return {"plugins": installed_plugins()}
