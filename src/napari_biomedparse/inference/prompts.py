"""The one parser of text prompts (CLI, widgets, tasks, slide engine).

:func:`parse_prompts` accepts one string (prompts separated by commas, semicolons or new
lines: ``"neoplastic cells; inflammatory cells"``) or a sequence of strings (each one prompt,
or several separated the same way), strips spaces, drops duplicates (first occurrence kept,
compared case-insensitively) and returns the list. Nothing usable raises
:class:`~napari_biomedparse.errors.InvalidInputError` (a ``ValueError``) with one line that
says what to pass.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from napari_biomedparse.errors import InvalidInputError

from .validate import check_prompt_text

__all__ = ["parse_prompts", "split_prompts"]

_SEP = re.compile(r"[,;\n]")
_EXAMPLE = "e.g. 'neoplastic cells, inflammatory cells'"


def split_prompts(text: str) -> list[str]:
    """The non-empty, stripped pieces of ``text`` split at commas, semicolons and new lines
    (duplicates kept; an empty list for blank text)."""
    return [p.strip() for p in _SEP.split(str(text)) if p.strip()]


def parse_prompts(
    prompts: str | Iterable[str] | None, *, what: str = "prompt", strict: bool = False
) -> list[str]:
    """The prompts of ``prompts`` as a clean list (see the module docstring).

    Args:
        prompts: a string or a sequence of strings.
        what: the word used in error messages ("prompt", "target").
        strict: for the model-level calls whose output has one map per prompt given
            (``Predictor.predict`` / ``decode`` / ``predict_batch``): a string is one prompt,
            list items are neither split nor deduplicated, and an empty item is an error.

    Returns:
        list of P >= 1 stripped, non-empty prompts, in the order given (distinct unless
        ``strict``).
    """
    if prompts is None:
        raise InvalidInputError(f"no {what}s given: pass at least one text {what}, {_EXAMPLE}")
    items = [prompts] if isinstance(prompts, str) else prompts
    try:
        items = list(items)
    except TypeError:
        raise InvalidInputError(
            f"{what}s must be a string or a list of strings, got {type(prompts).__name__}"
        ) from None
    out: list[str] = []
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, str) or (strict and not item.strip()):
            raise InvalidInputError(
                f"{what}s must be non-empty strings, got {item!r} ({type(item).__name__})"
            )
        for p in [item.strip()] if strict else split_prompts(item):
            check_prompt_text(p)
            key = " ".join(p.lower().split())
            if strict or key not in seen:
                seen.add(key)
                out.append(p)
    if not out:
        raise InvalidInputError(
            f"the {what} list is empty: pass at least one text {what}, {_EXAMPLE}"
        )
    return out
