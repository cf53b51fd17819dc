"""Progress bars that say what is running.

A run trains several models (the clean model, the victim, the unlearners) and streams the
training set several times (factors, scores); a bar that reads only ``epoch 1/3`` cannot
tell them apart. Code that runs a named step wraps it in :func:`stage`, and every bar
opened inside it — by :func:`jaxpoison.training.train`, the influence passes or any other
layer — shows that name first::

    with stages(10):             # a run that will take 10 stages
        with stage("victim"):    # the third of them
            train(...)           # bar: "[3/10] victim · epoch 1/3"

Without :func:`stages` a stage is named without a position, and without :func:`stage` a bar
shows only its own description. The names live in a context variable, so threads and
nested calls see their own.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterable, Iterator

from tqdm.auto import tqdm

SEPARATOR = " · "

_STAGE: contextvars.ContextVar[str | None] = contextvars.ContextVar("jaxpoison_stage", default=None)
_COUNTER: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("jaxpoison_stages", default=None)


@contextlib.contextmanager
def stages(total: int) -> Iterator[None]:
    """Number the :func:`stage` blocks inside as ``[i/total]``, in the order they start."""
    token = _COUNTER.set([0, int(total)])
    try:
        yield
    finally:
        _COUNTER.reset(token)


@contextlib.contextmanager
def stage(name: str) -> Iterator[str]:
    """Name every progress bar opened inside; yields the full label (``"[3/10] victim"``).

    Inside :func:`stages` each call takes the next position. A stage inside another stage
    adds its name to the outer one's (``"[5/10] FreqDef · detector network"``).
    """
    counter, outer = _COUNTER.get(), _STAGE.get()
    if outer is not None:
        label = outer + SEPARATOR + name
    elif counter is not None:
        counter[0] += 1
        label = f"[{counter[0]}/{counter[1]}] {name}"
    else:
        label = name
    token = _STAGE.set(label)
    try:
        yield label
    finally:
        _STAGE.reset(token)


def current_stage() -> str | None:
    """The label of the innermost :func:`stage` (``None`` outside every stage)."""
    return _STAGE.get()


def describe(desc: str | None = None) -> str:
    """``desc`` prefixed with the current stage's label (either may be missing).

    Examples:
      >>> with stages(11):
      ...     with stage("clean model"):
      ...         pass
      ...     with stage("poison"):
      ...         pass
      ...     with stage("victim"):
      ...         describe("epoch 1/3")
      '[3/11] victim · epoch 1/3'
    """
    parts = [p for p in (_STAGE.get(), desc) if p]
    return SEPARATOR.join(parts)


def progress_bar(iterable: Iterable | None = None, *, desc: str | None = None, disable: bool = False, **kwargs) -> tqdm:
    """A tqdm bar whose description names the current stage; it clears itself when done.

    Keyword arguments go to ``tqdm`` (``total``, ``initial``, ...); the defaults are
    ``leave=False`` and ``mininterval=1.0``.
    """
    kwargs.setdefault("leave", False)
    kwargs.setdefault("mininterval", 1.0)
    return tqdm(iterable, desc=describe(desc), disable=disable, **kwargs)
