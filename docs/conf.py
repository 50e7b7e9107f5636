"""Sphinx configuration: furo + MyST, autodoc, local MathJax, spec checks (build with docs/build.sh)."""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import sys
from pathlib import Path

from sphinx.errors import ConfigError

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
GENERATED = DOCS / "_generated"
sys.path.insert(0, str(DOCS / "_ext"))

import backlink  # noqa: E402  (installed with `pip install -e .`)

project = "BackLink"
author = "the backlink authors"
copyright = "2025, the backlink authors"
release = version = backlink.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.doctest",
    "flow_figure",   # docs/_ext: draws _generated/flow.png from the spec's reach sets
    "spec_checks",   # docs/_ext: fails the build on undocumented spec items or unknown clauses
    "results_tables",  # docs/_ext: tables of the committed sweep results (docs/results)
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_generated", "_vendor"]

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 0  # clauses carry explicit (BL-x.y)= targets instead

html_theme = "furo"
html_title = f"BackLink {release}"
html_static_path = ["_generated/static"]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# Doctests: ``{doctest}`` blocks in the spec pages and ``>>>`` examples in docstrings.
doctest_test_doctest_blocks = "default"

nitpicky = True
# No intersphinx (the build is offline), so references to types that live outside this
# project cannot resolve. Each entry says why it is ignored.
nitpick_ignore = [
    ("py:class", "numpy.ndarray"),            # NumPy's docs are not available offline
    ("py:class", "torch.Tensor"),             # PyTorch's docs are not available offline
    ("py:class", "torch.nn.modules.module.Module"),         # idem: torch.nn.Module's real path
    ("py:class", "torch.nn.modules.container.Sequential"),  # idem: torch.nn.Sequential's real path
    ("py:class", "Module"),                   # idem, as the torch API's docstrings spell it
]


def _mathjax(dest: Path) -> str:
    """Copy a local MathJax 3 into ``dest``; return ``mathjax_path`` relative to _static.

    The build is offline, so MathJax cannot come from a CDN. docs/build.sh unpacks the
    npm package ``mathjax`` (pinned there) into docs/_vendor/mathjax; BACKLINK_MATHJAX
    may point at another unpacked copy. Only the CommonHTML bundle and its fonts are
    copied (about 1.6 MB).
    """
    src = Path(os.environ.get("BACKLINK_MATHJAX", DOCS / "_vendor" / "mathjax"))
    bundle = src / "es5" / "tex-mml-chtml.js"
    if not bundle.is_file():
        raise ConfigError(f"MathJax not found: {bundle} does not exist. Run `bash docs/build.sh`, "
                          f"which fetches the npm package mathjax into docs/_vendor/mathjax, or set "
                          f"BACKLINK_MATHJAX to a folder holding es5/tex-mml-chtml.js.")
    out = dest / "mathjax"
    if out.exists():
        shutil.rmtree(out)
    (out / "output" / "chtml").mkdir(parents=True)
    shutil.copy2(bundle, out / "tex-mml-chtml.js")
    shutil.copytree(src / "es5" / "output" / "chtml" / "fonts", out / "output" / "chtml" / "fonts")
    return "mathjax/tex-mml-chtml.js"


def _torch_api_page(dest: Path) -> None:
    """The body of torch_api.md: autodoc once the module exists, an honest stub before."""
    if (ROOT / "backends" / "torch_backend" / "api.py").is_file():
        body = "```{eval-rst}\n.. automodule:: backlink.backends.torch_backend.api\n   :members:\n```\n"
    else:
        body = ("```{note}\nThe PyTorch API (`backlink.backends.torch_backend.api`) is being written; "
                "its reference appears here when it lands.\n```\n")
    dest.write_text(body, encoding="utf-8")


GENERATED.mkdir(exist_ok=True)
(GENERATED / "static").mkdir(exist_ok=True)
mathjax_path = _mathjax(GENERATED / "static")
_torch_api_page(GENERATED / "torch_api.md")


# --- docstring handling ---------------------------------------------------------------

ATTRIBUTE_KINDS = ("data", "attribute", "property")
_as_written: dict[str, list[str]] = {}


def _remember_attribute_doc(app, what, name, obj, options, lines):
    """Keep attribute docstrings as written (see _restore_attribute_doc).

    A module constant without a ``#:`` comment would show the docstring of its type
    (``dict``, ``tuple``): a builtin's docstring never describes our constant, so drop it.
    """
    if what not in ATTRIBUTE_KINDS:
        return
    if what == "data" and type(obj).__module__ == "builtins":
        lines[:] = []
    _as_written[name] = list(lines)


def _restore_attribute_doc(app, what, name, obj, options, lines):
    """Undo napoleon on attributes: it reads 'Words: text' as a type 'Words'.

    The code writes types as annotations, never inline in attribute docstrings, and its
    ``#:`` comments often start with a label ('BL-2.2: the primitive names ...').
    """
    if what in ATTRIBUTE_KINDS and name in _as_written:
        lines[:] = _as_written.pop(name)


_FACTORY_DEFAULT = re.compile(r"(\w+)(\s*:\s*[^=,]+)?\s*=\s*<factory>")


def _factory_defaults(app, what, name, obj, options, signature, return_annotation):
    """Show a dataclass field's ``default_factory`` as a call instead of ``<factory>``.

    ``<factory>`` is not Python, so Sphinx could not parse the signature and split it at
    every comma, ``Literal['a', 'b']`` included.
    """
    if not signature or "<factory>" not in signature or not dataclasses.is_dataclass(obj):
        return None
    factories = {f.name: f.default_factory for f in dataclasses.fields(obj)}

    def call(m):
        factory = factories.get(m.group(1))
        shown = f"{factory.__name__}()" if callable(factory) else "..."
        return f"{m.group(1)}{m.group(2) or ''} = {shown}"

    return _FACTORY_DEFAULT.sub(call, signature), return_annotation


def setup(app):
    app.connect("autodoc-process-signature", _factory_defaults)
    # napoleon processes docstrings at the default priority 500; run before and after it.
    app.connect("autodoc-process-docstring", _remember_attribute_doc, priority=400)
    app.connect("autodoc-process-docstring", _restore_attribute_doc, priority=600)
