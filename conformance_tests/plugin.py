"""pytest plugin of the conformance suite: picks the backend, prints it, applies skip files.

It is registered as a ``pytest11`` entry point, so pytest loads it in every run of every
project. Everything it registers is namespaced (options ``--conformance-*``, the fixture
``conformance_backend``, markers ``conformance_*``), and it stays inert unless the suite
is being run (``--pyargs backlink_conformance`` or a path inside this package): only then
does it read ``$BACKLINK_BACKEND``, load the backend (which may import torch) and print
its header. When the suite's tests are collected it requires a backend, applies the
backend's capability skips and its skips/xfails file, and runs the cheap fixed-case checks
before the hypothesis sweeps.

The pre-0.2 option ``--backend`` still works, with a deprecation warning, when the suite
is being run and no other plugin or conftest registers an option of that name.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from .loader import ENV_VAR, describe_backend, installed_backends, load_backend
from .skiplist import apply_skip_file, read_skip_file

__all__ = ["OPTIONS", "Options", "conformance_backend", "suite_requested"]

PACKAGE = "backlink_conformance"
PACKAGE_DIR = Path(__file__).resolve().parent
SMOKE = "conformance_smoke"
#: Sections in the order a backend author should fix them: protocol, primitives, graph,
#: forbidden problems, gradients, reach, batch norm, optimizer, schedules.
SECTION_ORDER = ("test_bl6_protocol", "test_bl2_primitives", "test_bl2_graph", "test_bl3_partition",
                 "test_bl3_gradients", "test_bl3_reach", "test_bl2_batchnorm", "test_bl4_optimizer",
                 "test_bl4_schedule", "test_bl4_2_pipeline", "test_bl2_8_transformers")
REQUIRES = "conformance_requires"
OLD_OPTION = "--backend"
NEW_OPTION = "--conformance-backend"


@dataclass
class Options:
    """The suite's command-line settings, read by :mod:`backlink_conformance.strategies`."""

    backend: str | None = None
    examples: int = 8
    seed: int = 0
    structures: int | None = None  # None: chosen from ``examples`` (strategies.structure_count)
    skips: str | None = None
    active: bool = False  # the suite is being run (see suite_requested)
    loaded: object = None
    error: str | None = None
    deprecated: str | None = None  # the warning to give for --backend, once configured


OPTIONS = Options()


def pytest_addoption(parser):
    group = parser.getgroup("backlink-conformance", "BackLink conformance suite")
    group.addoption(NEW_OPTION, dest="conformance_backend", default=None, metavar="NAME|module:attr",
                    help=f"backend under test: an installed name (entry-point group backlink.backends) "
                         f"or module:attr of a backend class or instance; default ${ENV_VAR}")
    group.addoption("--conformance-examples", type=int, default=8, metavar="N",
                    help="hypothesis examples per sweep test (default 8)")
    group.addoption("--conformance-seed", type=int, default=0, metavar="N",
                    help="0 (default): derandomized, the same examples every run; "
                         "N > 0: another fixed stream of examples and graph structures")
    group.addoption("--conformance-structures", type=int, default=None, metavar="S",
                    help="graph structures per run that the sweeps draw from (default: the 5 "
                         "curated ones, more with more than 8 --conformance-examples)")
    group.addoption("--conformance-skips", default=None, metavar="FILE",
                    help="skips/xfails file (default: the package's skips/<backend name>.txt)")


def _names_package_path(arg: str) -> bool:
    path = arg.split("::")[0]
    if path == PACKAGE or path.startswith(PACKAGE + "."):
        return True
    try:
        p = Path(path).resolve()
        return p.exists() and (p.is_relative_to(PACKAGE_DIR) or PACKAGE_DIR.is_relative_to(p))
    except (OSError, ValueError):
        return False


def suite_requested(args) -> bool:
    """Whether these command-line arguments (or test paths) run the conformance suite."""
    return any(not a.startswith("-") and _names_package_path(a) for a in args)


def _registered_elsewhere(parser, option: str) -> bool:
    groups = list(getattr(parser, "_groups", ())) + [getattr(parser, "_anonymous", None)]
    return any(option in opt.names() for g in groups if g is not None for opt in g.options)


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(early_config, parser, args):
    """Rewrite the deprecated ``--backend`` to ``--conformance-backend`` before the final parse,
    but only when the suite is run and the name is free (projects may own ``--backend``)."""
    result = yield
    OPTIONS.deprecated = None
    old = [i for i, a in enumerate(args) if a == OLD_OPTION or a.startswith(OLD_OPTION + "=")]
    if old and suite_requested(args) and not _registered_elsewhere(parser, OLD_OPTION):
        for i in old:
            args[i] = NEW_OPTION + args[i][len(OLD_OPTION):]
        OPTIONS.deprecated = (f"{OLD_OPTION} is deprecated for the BackLink conformance suite (spec 0.2); "
                              f"use {NEW_OPTION} NAME (the short name clashes with other projects' options)")
    return result


def pytest_configure(config):
    config.addinivalue_line("markers", f"{SMOKE}: a cheap fixed-case conformance check, run first")
    config.addinivalue_line("markers", f"{REQUIRES}(**caps): the conformance test needs these "
                                       "backend capabilities (primitives, cross_module, device)")
    OPTIONS.active = suite_requested(config.args)
    OPTIONS.backend = config.getoption("conformance_backend") or None
    if OPTIONS.active and not OPTIONS.backend:
        OPTIONS.backend = os.environ.get(ENV_VAR) or None
    for option, low in (("--conformance-examples", 1), ("--conformance-structures", 1), ("--conformance-seed", 0)):
        value = config.getoption(option)
        if value is not None and value < low:
            raise pytest.UsageError(f"{option} is {value}; allowed: an integer >= {low}")
    OPTIONS.examples = max(1, config.getoption("--conformance-examples"))
    OPTIONS.seed = config.getoption("--conformance-seed")
    structures = config.getoption("--conformance-structures")
    OPTIONS.structures = None if structures is None else max(1, structures)
    OPTIONS.skips = config.getoption("--conformance-skips")
    OPTIONS.loaded, OPTIONS.error = None, None
    if OPTIONS.deprecated:
        config.issue_config_time_warning(pytest.PytestDeprecationWarning(OPTIONS.deprecated), stacklevel=2)


def _backend_or_none():
    """Load the chosen backend once; remember a failure for the usage error."""
    if OPTIONS.loaded is None and OPTIONS.error is None and OPTIONS.backend:
        try:
            OPTIONS.loaded = load_backend(OPTIONS.backend)
        except pytest.UsageError as e:
            OPTIONS.error = str(e)
    return OPTIONS.loaded


def pytest_report_header(config):
    if not (OPTIONS.active and OPTIONS.backend):
        return None
    backend = _backend_or_none()
    if backend is None:
        return [f"backlink conformance: backend {OPTIONS.backend!r} failed to load: {OPTIONS.error}"]
    from .strategies import structure_summary

    return describe_backend(backend, OPTIONS.examples, OPTIONS.seed) + [structure_summary()]


def is_conformance(item) -> bool:
    try:
        return Path(str(item.path)).resolve().is_relative_to(PACKAGE_DIR)
    except (OSError, ValueError):
        return False


def _require_backend():
    if not OPTIONS.backend:  # collected without being named on the command line (a parent folder)
        OPTIONS.backend = os.environ.get(ENV_VAR) or None
    backend = _backend_or_none()
    if backend is not None:
        return backend
    if OPTIONS.error:
        raise pytest.UsageError(OPTIONS.error)
    names = ", ".join(installed_backends()) or "none installed"
    raise pytest.UsageError(
        "the BackLink conformance suite was collected but no backend was chosen. Choose one:\n"
        f"  pytest --pyargs backlink_conformance {NEW_OPTION} NAME   (installed: {names})\n"
        f"  pytest --pyargs backlink_conformance {NEW_OPTION} package.module:attr   "
        "(a backend class or instance)\n"
        f"or set {ENV_VAR}=NAME (or module:attr) in the environment.")


def _skip_file(config, backend) -> Path | None:
    if OPTIONS.skips:
        path = Path(OPTIONS.skips)
        if not path.is_file():
            raise pytest.UsageError(f"--conformance-skips {OPTIONS.skips!r}: no such file")
        return path
    default = PACKAGE_DIR / "skips" / f"{getattr(backend, 'name', '')}.txt"
    return default if default.is_file() else None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items):
    ours = [i for i, item in enumerate(items) if is_conformance(item)]
    if not ours:
        return
    backend = _require_backend()
    path = _skip_file(config, backend)
    if path is not None:
        entries = read_skip_file(path)
        for entry in apply_skip_file(entries, [items[i] for i in ours]):
            config.issue_config_time_warning(pytest.PytestConfigWarning(
                f"conformance skips file {path}, line {entry.line}: {entry.kind} {entry.pattern!r} "
                f"matches no collected test; remove the line or fix the test id"), stacklevel=2)
    # Cheap fixed-case checks first, section by section, so a broken backend fails fast
    # under -x, and at the most basic clause it breaks.
    ordered = sorted((items[i] for i in ours), key=_order)
    for i, item in zip(ours, ordered):
        items[i] = item


def _order(item):
    stem = Path(str(item.path)).stem
    rank = SECTION_ORDER.index(stem) if stem in SECTION_ORDER else len(SECTION_ORDER)
    return (item.get_closest_marker(SMOKE) is None, rank)


def _capability_gap(backend, item) -> str | None:
    caps = backend.capabilities
    name = getattr(backend, "name", "?")
    params = getattr(getattr(item, "callspec", None), "params", {})
    for key, field in (("dtype", "dtypes"), ("method", "methods"), ("schedule", "schedules")):
        want = params.get(key)
        have = tuple(getattr(caps, field, ()))
        if want is not None and want not in have:
            return f"backend {name!r} does not declare {key} {want!r} (capabilities.{field} = {have})"
    marker = item.get_closest_marker(REQUIRES)
    for cap, want in (marker.kwargs.items() if marker else ()):
        if cap == "device":
            have = tuple(getattr(caps, "devices", ()))
            if want not in have:
                return f"backend {name!r} does not declare device {want!r} (capabilities.devices = {have})"
        elif not getattr(caps, cap, False):
            return f"backend {name!r} does not declare capabilities.{cap} (needed by this test)"
    return None


def pytest_runtest_setup(item):
    if not is_conformance(item):
        return
    gap = _capability_gap(_require_backend(), item)
    if gap:
        pytest.skip(gap)


@pytest.fixture(scope="session")
def conformance_backend():
    """The backend under test (chosen with --conformance-backend or $BACKLINK_BACKEND)."""
    return _require_backend()
