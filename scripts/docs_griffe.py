"""A Griffe extension for sitq's API reference (mkdocs.yml, mkdocstrings' ``extensions``).

sitq's docstrings are prose in reStructuredText's inline markup, read by ``help()`` as they
are: roles (``:class:`TaskQueue```, ``:meth:`~sitq.locks.Lock.acquire```), double-backquoted
literals and ``::`` before a literal block. Markdown renders the literals and the indented
blocks already; this turns the rest into Markdown when the reference is built, without
touching the source:

- a role becomes its name in code, linked to that object's entry in the reference when it has
  one (an *optional* cross-reference: a name the reference does not show, such as a private
  helper or a standard-library function, stays plain code instead of failing the build);
- a paragraph's closing ``::`` becomes ``:``.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Alias, Extension, Module, NameResolutionError, Object

_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|mod|data|attr|exc|obj):`(~?)([^`]+)`")
_LITERAL_BLOCK = re.compile(r"(\S)::(\n[ \t]*\n)")


def _target(obj: Object, name: str) -> str:
    """The full path ``name`` means where ``obj``'s docstring says it, or ``name`` itself."""
    head, _, rest = name.partition(".")
    if head == obj.package.name:
        return name
    try:
        found = obj.resolve(head)  # in the object's scope, then its parents'
    except NameResolutionError:
        return name
    return f"{found}.{rest}" if rest else found


def _markdown(obj: Object, text: str) -> str:
    def role(match: re.Match[str]) -> str:
        short, name = match.group(1), match.group(2).strip()
        shown = name.rsplit(".", 1)[-1] if short else name
        path = _target(obj, name)
        return f'<autoref identifier="{path}" optional><code>{shown}</code></autoref>'

    text = _ROLE.sub(role, text)
    return _LITERAL_BLOCK.sub(r"\1:\2", text)


class SphinxRoles(Extension):
    """Rewrite every docstring of the loaded package as described in the module docstring."""

    def on_package(self, *, pkg: Module, **kwargs: Any) -> None:
        self._walk(pkg, set())

    def _walk(self, obj: Object, seen: set[str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if obj.docstring is not None:
            obj.docstring.value = _markdown(obj, obj.docstring.value)
        for member in obj.members.values():
            if not isinstance(member, Alias):
                self._walk(member, seen)
