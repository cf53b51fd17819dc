"""A griffe extension for the API reference: docstrings' Sphinx roles read as code.

jaxpoison's docstrings name other objects as ``:func:`~jaxpoison.influence.fit_factors```
(the form Python's own tooling understands). Markdown has no such roles, so each one becomes
a code span of the name it shows: the last component with ``~``, the whole path without.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|obj|exc|const):`(~?)([^`]+)`")


def _as_code(match: re.Match) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


def plain_roles(text: str) -> str:
    """``text`` with every Sphinx cross-reference role replaced by a code span."""
    return _ROLE.sub(_as_code, text)


class SphinxRolesAsCode(griffe.Extension):
    """Rewrite the roles of every docstring in a loaded package."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        seen: set[int] = set()

        def visit(obj: griffe.Object) -> None:
            if id(obj) in seen:
                return
            seen.add(id(obj))
            if obj.docstring is not None:
                obj.docstring.value = plain_roles(obj.docstring.value)
            for member in obj.members.values():
                if not member.is_alias:
                    visit(member)

        visit(pkg)
