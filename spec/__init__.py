"""backlink.spec: the machine-readable part of the BackLink specification.

Clause numbers (BL-x.y) refer to the normative text in ``spec/*.md``.
"""
from .config import (DTYPES, LR_SCHEDULES, OPTIMIZER_KINDS, SCHEDULES, LRSchedule, Optimizer, Problem,
                     UpdateEvent, validate_problem)
from .graph import INPUT, PRIMITIVES, ArraySpec, Graph, Op, SpecError, Unit
from .partition import (METHODS, Method, Partition, Reach, module_bounds, reach_sets,
                        tail_bounds, validate)
from .protocol import (LEAN_METHODS, Backend, Batch, Capabilities, LeanRunner, Runner, StepRecord,
                       check_labels, check_values, lean_missing, state_key)
from .tolerances import TOLERANCES, tolerance

SPEC_VERSION = "0.2"

__all__ = ["SPEC_VERSION", "DTYPES", "LR_SCHEDULES", "OPTIMIZER_KINDS", "SCHEDULES", "LRSchedule", "Optimizer",
           "Problem", "UpdateEvent", "validate_problem", "INPUT", "PRIMITIVES", "ArraySpec", "Graph", "Op",
           "SpecError", "Unit",
           "METHODS", "Method", "Partition", "Reach", "module_bounds", "reach_sets", "tail_bounds",
           "validate", "Backend", "Batch", "Capabilities", "Runner", "StepRecord", "LeanRunner",
           "LEAN_METHODS", "lean_missing", "state_key", "check_labels", "check_values", "TOLERANCES",
           "tolerance"]
