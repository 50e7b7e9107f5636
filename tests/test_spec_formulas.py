"""BL-4.4: the learning-rate formulas are stated once in words the code can run.

The ``LRSchedule`` docstring (the typed spec) and spec/schedules.md (the spec text) give
the same Python expressions; both are evaluated here against the reference's ``lr_at``
at the boundaries t = 0, W - 1, W, T - 1, T and past T, so neither can drop the clamp
(or change anything else) without a failing test.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from backlink.reference.optim import lr_at
from backlink.reference.models import make_partition, mlp
from backlink.spec import LRSchedule, Method, Optimizer, Problem, SpecError, validate_problem

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^\s*(constant|step|cosine, t < warmup|cosine, t >= warmup):\s+(.+?)\s*$", re.MULTILINE)
CASES = ("constant", "step", "cosine, t < warmup", "cosine, t >= warmup")
SCHEDULES = [LRSchedule(), LRSchedule("step", step_size=1, gamma=0.5), LRSchedule("step", step_size=3, gamma=0.1),
             LRSchedule("cosine", warmup=0, total=1), LRSchedule("cosine", warmup=0, total=4),
             LRSchedule("cosine", warmup=2, total=3), LRSchedule("cosine", warmup=3, total=7)]


def formulas(text: str) -> dict[str, str]:
    found = dict(LINE.findall(text))
    assert sorted(found) == sorted(CASES), f"expected one formula line per case {CASES}, found {sorted(found)}"
    return found


def documented_lr(found: dict[str, str], base: float, s: LRSchedule, t: int) -> float:
    case = s.kind if s.kind != "cosine" else ("cosine, t < warmup" if t < s.warmup else "cosine, t >= warmup")
    names = {"base": base, "t": t, "gamma": s.gamma, "step_size": s.step_size, "warmup": s.warmup,
             "total": s.total, "cos": math.cos, "pi": math.pi, "min": min}
    return eval(found[case], {"__builtins__": {}}, names)  # noqa: S307 - our own spec text


def boundary_steps(s: LRSchedule) -> list[int]:
    return sorted({0, 1, s.warmup - 1, s.warmup, s.total - 1, s.total, s.total + 1, s.total + 5,
                   s.step_size, 2 * s.step_size} - {-1})


SOURCES = {"LRSchedule docstring": lambda: LRSchedule.__doc__,
           "spec/schedules.md": lambda: (ROOT / "spec" / "schedules.md").read_text()}


@pytest.mark.parametrize("source", sorted(SOURCES))
@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_documented_formula_is_the_reference(source, schedule):
    found = formulas(SOURCES[source]())
    for t in boundary_steps(schedule):
        want = lr_at(0.4, schedule, t)
        assert documented_lr(found, 0.4, schedule, t) == pytest.approx(want, abs=1e-15), \
            f"{source}: lr({t}) for {schedule} is {documented_lr(found, 0.4, schedule, t)}, the reference says {want}"


def test_docstring_and_spec_text_state_the_same_formulas():
    assert formulas(SOURCES["LRSchedule docstring"]()) == formulas(SOURCES["spec/schedules.md"]())


def test_an_unclamped_formula_would_be_caught():
    """The check can fail: the cosine line without its clamp disagrees past T."""
    found = formulas(LRSchedule.__doc__)
    found["cosine, t >= warmup"] = "base / 2 * (1 + cos(pi * (t - warmup) / (total - warmup)))"
    s = LRSchedule("cosine", warmup=1, total=3)
    assert documented_lr(found, 0.4, s, s.total + 1) != pytest.approx(lr_at(0.4, s, s.total + 1))


@pytest.mark.parametrize("opt, field", [
    (Optimizer(lr=float("nan")), "optimizer.lr"), (Optimizer(momentum=-0.1), "optimizer.momentum"),
    (Optimizer(weight_decay=float("inf")), "optimizer.weight_decay"), (Optimizer(nesterov=True), "optimizer.nesterov"),
    (Optimizer(schedule=LRSchedule("linear")), "optimizer.schedule.kind"),
    (Optimizer(schedule=LRSchedule("step", step_size=0)), "optimizer.schedule.step_size"),
    (Optimizer(schedule=LRSchedule("step", gamma=-1.0)), "optimizer.schedule.gamma"),
    (Optimizer(schedule=LRSchedule("cosine", warmup=2, total=2)), "optimizer.schedule.warmup"),
    (Optimizer(schedule=LRSchedule("cosine", warmup=-1, total=2)), "optimizer.schedule.warmup"),
])
def test_public_optimizer_validator_names_the_full_field(opt, field):
    with pytest.raises(SpecError, match=re.escape(f"'{field}'")):
        opt.validate()


def test_valid_optimizers_pass():
    for s in SCHEDULES:
        Optimizer(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4, schedule=s).validate()


def test_validate_problem_checks_the_optimizer_of_an_unchecked_problem():
    graph = mlp(input_shape=(3,), hidden=(3,), num_classes=2)
    problem = object.__new__(Problem)  # as the conformance suite builds forbidden problems
    for k, v in dict(graph=graph, partition=make_partition(graph, (1,)), method=Method("greedy"),
                     optimizer=Optimizer(schedule=LRSchedule("cosine", warmup=0, total=0)),
                     schedule="synchronous", dtype="float64").items():
        object.__setattr__(problem, k, v)
    with pytest.raises(SpecError, match=re.escape("'optimizer.schedule.warmup'")):
        validate_problem(problem)
    object.__setattr__(problem, "optimizer", Optimizer())
    object.__setattr__(problem, "schedule", "cosine")  # the LR schedule's name in the problem's field
    with pytest.raises(SpecError, match=r"field 'schedule' is 'cosine'.*optimizer\.schedule"):
        validate_problem(problem)
