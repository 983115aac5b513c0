"""A class name and the forms it takes; every class-name rule is checked here.

A class name (``"Storage Tank"``) is kept as given: results, thresholds and
labels are keyed by it. :class:`ClassName` derives the other forms:

- the prompt form, what goes into the template (``"storage tank"`` in
  ``"Photo of a storage tank"``);
- the slug, which names a run's heatmap field and folder (``storage_tank``);
- the matching key, on which importers and evaluation match folder and
  ground-truth names (``storagetank``; :func:`match_key`).

:func:`validate_class_names` checks a list of them. Whether the text encoder
takes a class's prompt depends on the model: see
:func:`~diffuprompter_plugin.engine.grounding.check_class_prompts`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

MAX_SLUG_LENGTH = 100
"""A class slug names a heatmap field and a folder: 100 characters leave room
for the field prefix and stay far below file systems' 255-byte name limit."""


def match_key(name: str) -> str:
    """The matching key of a class or folder name: its lowercase ASCII
    letters and digits only (``Storage-Tanks`` -> ``storagetanks``). Folder
    and ground-truth names are matched on it without being checked as class
    names."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _shown(name: object) -> str:
    """A name as error messages quote it, cut to 60 characters."""
    if isinstance(name, str) and len(name) > 60:
        return repr(name[:60] + "...")
    return repr(name)


def _problem(name: object) -> str | None:
    """What makes ``name`` no class name ("'__' has no letter or digit"), or None."""
    if not isinstance(name, str):
        return f"{name!r} is a {type(name).__name__}, not a string"
    slug = _slug(name)
    if not slug:
        return f"{_shown(name)} has no letter or digit"
    if len(slug) > MAX_SLUG_LENGTH:
        return (
            f"{_shown(name)} is too long: its field and folder name would be {len(slug)} "
            f"characters, at most {MAX_SLUG_LENGTH} fit"
        )
    return None


def _slug(name: str) -> str:
    return re.sub(r"\W+", "_", name.strip().lower()).strip("_")


@dataclass(frozen=True)
class ClassName:
    """A checked class name and its prompt form, slug and matching key.

    Attributes:
        name: the name as given.

    Raises:
        ValueError: ``name`` is not a string, has no letter or digit, or its
            slug is longer than :data:`MAX_SLUG_LENGTH`; the message quotes it.
    """

    name: str

    def __post_init__(self) -> None:
        problem = _problem(self.name)
        if problem is not None:
            raise ValueError(f"Invalid class name: {problem}")

    def __str__(self) -> str:
        return self.name

    @property
    def prompt_name(self) -> str:
        """The name as it goes into the prompt: runs of spaces, underscores
        and hyphens become one space, lowercase (``Storage_Tank`` ->
        ``storage tank``)."""
        return re.sub(r"[\s_\-]+", " ", self.name).strip().lower()

    def prompt(self, template: str) -> str:
        """The prompt: ``template`` (e.g. ``"Photo of a {}"``) with the prompt name."""
        return template.format(self.prompt_name)

    @property
    def slug(self) -> str:
        """The field- and folder-safe name: runs of other characters than
        letters, digits and underscores become ``_`` (``Storage Tank`` ->
        ``storage_tank``). Stored runs' heatmap fields and folders are named by it."""
        return _slug(self.name)

    @property
    def key(self) -> str:
        """The matching key (:func:`match_key`): ``Storage-Tank`` -> ``storagetank``."""
        return match_key(self.name)


def validate_class_names(class_names: Iterable[str]) -> list[str]:
    """The names, checked as a list: a list (not one string) of one or more
    distinct class names (see :class:`ClassName`), no two of which share a
    slug and so a heatmap field and folder.

    Raises:
        ValueError: naming the names at fault.
    """
    if isinstance(class_names, str):
        raise ValueError(f"class_names must be a list of names, not the string {class_names!r}")
    names = list(class_names)
    if not names:
        raise ValueError("class_names is empty: give at least one class name")
    problems = [p for p in map(_problem, names) if p is not None]
    if problems:
        raise ValueError("Invalid class names: " + "; ".join(problems))
    if len(set(names)) != len(names):
        raise ValueError(f"Duplicate class names in {names!r}")
    by_slug: dict[str, str] = {}
    for name in names:
        slug = _slug(name)
        if slug in by_slug:
            raise ValueError(
                f"Class names '{by_slug[slug]}' and '{name}' differ only in case, spaces or "
                f"punctuation, so both would be stored in the heatmap field and folder of "
                f"'{slug}': keep one"
            )
        by_slug[slug] = name
    return names
