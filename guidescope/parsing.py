"""Text into values: what the app's text fields and the command line's arguments say, translated
into the classes, numbers and guidance intervals a Request holds. Only translation happens here;
what the values may be is guidescope.request.check's rule. Each parser raises ValueError with the
message a user sees. Class names match without regard to case, everywhere."""
from __future__ import annotations

import re
from typing import Sequence

from .messages import finite_number, shown


def class_index(value, class_names: Sequence[str]) -> int:
    """A class given by name (any case) or by index (an int, or a string of digits). A reference
    to no class cannot be translated, so it is refused here, quoted as written."""
    folded = [name.casefold() for name in class_names]
    if isinstance(value, str) and value.strip().casefold() in folded:
        return folded.index(value.strip().casefold())
    index = int(value.strip()) if isinstance(value, str) and value.strip().isdigit() else value
    if finite_number(index) and index == int(index) and 0 <= index < len(class_names):
        return int(index)
    raise ValueError(f"class must be one of {', '.join(class_names)} or an index from 0 to "
                     f"{len(class_names) - 1}; got {shown(value)}")


def words(text, name: str, max_chars: int, example: str) -> list[str]:
    """Comma-, semicolon- or space-separated words of a text field (at least one)."""
    if not isinstance(text, str) or len(text) > max_chars:
        raise ValueError(f"{name} must be text of at most {max_chars} characters such as \"{example}\"; "
                         f"got {shown(text)}")
    found = [w for w in re.split(r"[,;\s]+", text.strip()) if w]
    if not found:
        raise ValueError(f"{name} is empty; write it like \"{example}\"")
    return found


def parse_numbers(text, name: str, max_chars: int = 200) -> tuple[float, ...]:
    """Numbers such as "0, 1, 2, 4, 8", none repeated; their range is the request's (check)."""
    values = []
    for word in words(text, name, max_chars, "0, 1, 2, 4, 8"):
        try:
            values.append(float(word))
        except ValueError:
            raise ValueError(f"{name}: {shown(word)} is not a number; write them like \"0, 1, 2, 4, 8\"") from None
    _no_repeats(values, name, lambda v: f"{v:g}")
    return tuple(values)


def parse_interval(text) -> tuple[int, int] | None:
    """'full' (None: every timestep) or 'LO-HI', two original timesteps (check says where they may lie)."""
    if isinstance(text, str) and text.strip().casefold() in ("full", "all"):
        return None
    match = re.fullmatch(r"\s*(\d{1,9})\s*-\s*(\d{1,9})\s*", text) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"a guidance interval is 'full' or two timesteps like '200-800'; got {shown(text)}")
    return int(match[1]), int(match[2])


def parse_intervals(text, max_chars: int = 200) -> tuple[tuple[int, int] | None, ...]:
    """Intervals such as "full, 0-500, 200-800, 500-999", none repeated."""
    values = [parse_interval(w) for w in words(text, "intervals", max_chars, "full, 0-500, 500-999")]
    _no_repeats(values, "intervals", interval_text)
    return tuple(values)


def parse_list(text, name: str, example: str, every: Sequence, parse, max_chars: int = 200) -> list:
    """Comma- or semicolon-separated items (a class name may hold a space), each through parse,
    or "all" for every one of `every`; none repeated."""
    if not isinstance(text, str) or len(text) > max_chars:
        raise ValueError(f"{name} must be text of at most {max_chars} characters such as \"{example}\"; "
                         f"got {shown(text)}")
    items = [item.strip() for item in re.split(r"[,;]", text) if item.strip()]
    if not items:
        raise ValueError(f"{name} is empty; write it like \"{example}\"")
    if len(items) == 1 and items[0].casefold() == "all":
        return list(every)
    values = [parse(item) for item in items]
    _no_repeats(values, name, shown, items)
    return values


def parse_classes(text, class_names: Sequence[str], max_chars: int = 200) -> list[int]:
    """Classes such as "Bag, Ankle boot, 3" (names in any case, or indices), or "all"."""
    return parse_list(text, "classes", ", ".join(class_names[:2]), range(len(class_names)),
                      lambda item: class_index(item, class_names), max_chars)


def interval_text(interval: tuple[int, int] | None) -> str:
    return "full" if interval is None else f"{interval[0]}-{interval[1]}"


def _no_repeats(values: list, name: str, fmt, written: list | None = None) -> None:
    """Refuse a value given twice, quoting the repeat as written (default: the value) through fmt."""
    written = values if written is None else written
    repeated = [w for i, (v, w) in enumerate(zip(values, written)) if v in values[:i]]
    if repeated:
        raise ValueError(f"{name} must differ from each other; {fmt(repeated[0])} appears twice")
