"""The one exception family for mistakes a user can fix.

Every error raised because of what a caller gave — a value, an array, a file, a run
directory — derives from :class:`InputError`, and its message says what to change. The
command line prints these (and filesystem errors) as one clean line; any other exception is
a bug in jaxpoison and keeps its full traceback, so it never passes for a user mistake.
"""

from __future__ import annotations


class InputError(ValueError):
    """An input that cannot be used; the message names it and says what to change."""


class ArtifactError(InputError):
    """A stored artifact (a stage file, a checkpoint, factors) is missing, damaged or belongs to other inputs."""


class RecoveryWarning(UserWarning):
    """A damaged or stale artifact was discarded and is being recomputed; the message names it."""


def warn_recovery(message: str) -> None:
    """Say that an artifact is being recomputed (the CLI prints this as one ``jaxpoison:`` line)."""
    import warnings

    warnings.warn(message, RecoveryWarning, stacklevel=3)
