"""Sphinx extension: the docs fail to build when the spec and its documentation drift apart.

After all pages are read it warns (an error under ``-W``) when

- a public item of ``backlink.spec`` (its ``__all__``) is not documented by autodoc on
  some page, or a member of the ``Backend``/``Runner`` protocols is not;
- the code cites a clause ``BL-x.y`` that no built page defines, or a clause anchor in
  ``spec/*.md`` did not make it into the build (the page is not included anywhere);
- the BL-5 tolerance table differs from ``backlink.spec.TOLERANCES``.

In HTML output it also turns every ``BL-x.y`` in running text (docstrings included)
into a link to the clause.
"""
from __future__ import annotations

import inspect

from docutils import nodes
from sphinx import addnodes
from sphinx.util import logging

import spec_text

__all__ = ["protocol_members", "undocumented", "setup"]

logger = logging.getLogger(__name__)

# Text inside these nodes is left alone by the clause linker.
NO_LINKS = (nodes.literal, nodes.FixedTextElement, nodes.reference, nodes.title, nodes.target,
            nodes.raw, nodes.math, nodes.math_block, addnodes.desc_signature, addnodes.pending_xref)


def protocol_members(cls) -> list[str]:
    """Attributes (annotated) and methods a protocol class declares itself."""
    names = list(getattr(cls, "__annotations__", {}))
    names += [n for n, v in vars(cls).items() if not n.startswith("_") and inspect.isfunction(v)]
    return names


def _aliases(name: str, obj) -> set[str]:
    """Names under which autodoc may have documented ``backlink.spec.<name>``."""
    names = {f"backlink.spec.{name}"}
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str):
        names.add(f"{module}.{qualname}")
    return names


def undocumented(documented: set[str]) -> list[str]:
    """Public spec items and protocol members that no page documents."""
    import backlink.spec as spec

    missing = []
    for name in spec.__all__:
        if not _aliases(name, getattr(spec, name)) & documented:
            missing.append(f"backlink.spec.{name}")
    for cls in (spec.Backend, spec.Runner):
        for member in protocol_members(cls):
            if not {f"{alias}.{member}" for alias in _aliases(cls.__name__, cls)} & documented:
                missing.append(f"backlink.spec.{cls.__name__}.{member}")
    return missing


def _title_numbered_items(app, env) -> None:
    """Let ``{ref}`BL-3.4.3``` work for a numbered item's anchor, shown as "BL-3.4.3".

    An item's ``(BL-x.y.n)=`` target has no title of its own, so Sphinx would refuse a
    ``ref`` to it without explicit text; its clause number is the natural text.
    """
    std = env.get_domain("std")
    for name, (docname, label_id) in list(std.anonlabels.items()):
        if name not in std.labels and spec_text.CITATION.fullmatch(name.upper()):
            std.labels[name] = (docname, label_id, name.upper())


def _check(app, env) -> None:
    for name in undocumented(set(env.get_domain("py").objects)):
        logger.warning(f"spec item {name} is not documented on any page: add an autodoc directive "
                       f"for it next to the clause that defines it (spec/*.md)",
                       type="backlink", subtype="undocumented")
    # anonlabels: numbered items (BL-x.y.n) have no title, so only anonlabels holds them.
    labels = env.get_domain("std").anonlabels
    for clause, where in spec_text.citations().items():
        if clause.lower() not in labels:
            logger.warning(f"{clause} is cited ({', '.join(where[:3])}) but no page defines it: "
                           f"add a '({clause})=' anchor to the spec", type="backlink", subtype="clause")
    for clause, (page, line) in spec_text.anchors().items():
        if clause.lower() not in labels:
            logger.warning(f"{spec_text._rel(page)}:{line}: clause {clause} is not in the built "
                           f"docs: include the page from docs/spec/", type="backlink", subtype="clause")
    problem = spec_text.tolerance_table_problem()
    if problem:
        logger.warning(problem, type="backlink", subtype="tolerances")


def _inside(node, kinds) -> bool:
    while node is not None:
        if isinstance(node, kinds):
            return True
        node = node.parent
    return False


def _link_clauses(app, doctree, docname) -> None:
    if app.builder.format != "html":
        return
    labels = app.env.get_domain("std").anonlabels
    for text in list(doctree.findall(nodes.Text)):
        if text.parent is None or _inside(text.parent, NO_LINKS):
            continue
        source, pieces, last = str(text), [], 0
        for m in spec_text.CITATION.finditer(source):
            target = labels.get(m.group(0).lower())
            if target is None:
                continue
            doc, label_id = target[0], target[1]
            uri = app.builder.get_relative_uri(docname, doc) + "#" + label_id
            pieces += [nodes.Text(source[last:m.start()]),
                       nodes.reference("", m.group(0), internal=True, refuri=uri, classes=["bl-clause"])]
            last = m.end()
        if pieces:
            pieces.append(nodes.Text(source[last:]))
            text.parent.replace(text, [p for p in pieces if not (isinstance(p, nodes.Text) and not str(p))])


def setup(app):
    app.connect("env-updated", _title_numbered_items)
    app.connect("env-check-consistency", _check)
    app.connect("doctree-resolved", _link_clauses)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
