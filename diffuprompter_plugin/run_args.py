"""The arguments every way of starting a run shares, declared once.

:func:`~diffuprompter_plugin.labelling.compute_pseudo_labels`,
:func:`~diffuprompter_plugin.labelling.queue_pseudo_labels` and the run
operator's ``__call__`` all take what to label, where to write it and with
which models. :class:`RunArgs` declares those parameters (names, types,
defaults, docs) once, and :func:`takes_run_args` puts them into each
signature. This module is light: the operators import it without torch.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .brain import DEFAULT_HEATMAP_FIELD, DEFAULT_PRED_FIELD

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class RunArgs:
    """What a new run labels, where it writes, and with which models: the
    arguments of these names of
    :func:`~diffuprompter_plugin.labelling.compute_pseudo_labels`, which
    documents them."""

    classes: Sequence[str] | None = None
    class_field: str | None = None
    pred_field: str = DEFAULT_PRED_FIELD
    heatmap_field: str = DEFAULT_HEATMAP_FIELD
    sd_model: Any = None
    sam_model: Any = None
    sam_checkpoint: str | None = None
    device: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The arguments by name, as keyword arguments."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


DEFAULT_RUN_ARGS = RunArgs()
"""Every run argument at its default."""

RUN_PARAMETERS = tuple(
    inspect.Parameter(
        f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=f.default, annotation=f.type
    )
    for f in dataclasses.fields(RunArgs)
)
"""The fields of :class:`RunArgs` as the parameters of a signature."""


def takes_run_args(func: F) -> F:
    """Gives ``func`` the :class:`RunArgs` as parameters of its own.

    ``func`` declares a parameter ``run_args``; its public signature has the
    fields of :class:`RunArgs` in that place, in their order and with their
    defaults, and a call passes them to ``func`` as one ``run_args``. Positional
    and keyword calls bind as they would to a written-out signature.
    """
    own = inspect.signature(func)
    public = own.replace(
        parameters=[
            q
            for p in own.parameters.values()
            for q in (RUN_PARAMETERS if p.name == "run_args" else [p])
        ]
    )
    extra = next(
        (p.name for p in own.parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD), None
    )

    @functools.wraps(func)
    def call(*args: Any, **kwargs: Any) -> Any:
        bound = public.bind(*args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        values.update(values.pop(extra) if extra else {})
        run_args = RunArgs(**{p.name: values.pop(p.name) for p in RUN_PARAMETERS})
        return func(run_args=run_args, **values)

    call.__signature__ = public  # type: ignore[attr-defined]
    return call  # type: ignore[return-value]
