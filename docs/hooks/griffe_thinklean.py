"""Griffe extension for the docs site (mkdocs.yml lists it after griffe-inherited-docstrings).

1. A public function, class or method of ``thinklean.core`` or ``thinklean.methods`` without a
   docstring (after inheriting its base class's, for overridden trainer hooks) is a warning, so
   ``mkdocs build --strict`` fails on it.
2. thinklean's docstrings name other objects the Sphinx way (:class:`~thinklean.train.rl.RLTrainer`,
   :mod:`thinklean.core.registry`, :func:`group_median`), which Markdown would show as literal
   ``:class:`` text. Each role becomes an *optional* mkdocs-autorefs reference: a link where the
   target is documented on the site, plain code where it is not. A bare name is resolved in the
   docstring owner's scope (its module's imports included).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

REQUIRE_DOCSTRINGS = ("thinklean.core", "thinklean.methods")
ROLE = re.compile(r":(?:py:)?(?:mod|class|func|meth|attr|data|exc|obj|const):`(?P<tilde>~?)(?P<target>[\w.]+)`")


def _objects(obj: griffe.Object):
    for name, member in obj.members.items():
        if member.is_alias:
            continue
        yield member
        if member.is_module or member.is_class:
            yield from _objects(member)


def _public(obj: griffe.Object) -> bool:
    return not any(part.startswith("_") for part in obj.path.split("."))


def _link(obj: griffe.Object, match: re.Match[str]) -> str:
    target = match["target"]
    title = target.rsplit(".", 1)[-1] if match["tilde"] else target
    if not target.startswith("thinklean."):
        head, _, rest = target.partition(".")
        try:
            target = obj.resolve(head) + ("." + rest if rest else "")
        except Exception:  # noqa: BLE001 - not resolvable here: plain code
            return f"`{title}`"
    return f'<autoref identifier="{target}" optional><code>{title}</code></autoref>'


class ThinkleanDocs(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        if pkg.name != "thinklean":
            return
        for obj in [pkg, *_objects(pkg)]:
            if (obj.is_function or obj.is_class or obj.is_module) and _public(obj) and obj.path.startswith(
                REQUIRE_DOCSTRINGS
            ) and not (obj.docstring and obj.docstring.value.strip()):
                griffe.logger.warning("%s:%s: %s has no docstring", obj.relative_filepath, obj.lineno, obj.path)
            if obj.docstring is not None and obj.docstring.parent is obj:
                obj.docstring.value = ROLE.sub(lambda m, o=obj: _link(o, m), obj.docstring.value)
