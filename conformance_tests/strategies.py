"""Hypothesis strategies and fixed cases: every problem the suite draws comes from here.

Graph structures. The sweeps draw graphs from a small fixed set of *structures* per run
(a graph and a batch size, :func:`structures`), and vary everything else within them:
partitions, heads, methods, link lengths, link and loss weights, optimizers, seeds. A
backend that compiles once per graph structure (``torch.compile``, ``jax.jit``) then
compiles a few dozen graphs per run, not one per example. The default run (seed 0) uses
the curated :data:`DEFAULT_STRUCTURES`, which between them hold every model kind and
the degenerate sizes; ``--conformance-seed N`` draws another set, and more
``--conformance-examples`` (or ``--conformance-structures S``) draw more structures, so
long runs keep their structural variety.

Boundaries first. Hypothesis tries the simplest draw first (index 0 of every
``sampled_from``), so every choice lists its boundary or most revealing value first:
beta 0.5 (never 1, which hides beta bugs), then 0; P = |M_{k-1}| (the longest link the
smallest previous module allows), then 0; conv heads (batch norm inside); momentum,
Nesterov and weight decay on; a cosine schedule whose T falls inside the steps run, so
t = 0, W, T and t > T all occur. docs/conformance_suite.md lists, clause by clause, how
the suite chooses these values.

Sizes are bounded so that one example runs in milliseconds. Batch norm sees either one
value per channel (M = 1, the degenerate size of BL-2.5.2, where the output is exact)
or at least 16: in between, float32 batch statistics are too ill-conditioned to compare
with float64 at the float32 tolerances. Every draw is labelled, so a failing example
prints as a readable case.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from backlink.reference.models import make_partition, mlp, resnet, small_cnn, vit
from backlink.spec import Graph, LRSchedule, Method, Optimizer, Partition, Problem

from .oracle import Case, make_case
from .plugin import OPTIONS

__all__ = ["MODEL_KINDS", "BN_KINDS", "Structure", "DEFAULT_STRUCTURES", "structures", "structure_count",
           "structure_summary", "sweep", "graphs", "partitions", "methods", "optimizers", "problems", "cases",
           "smoke_graph", "smoke_problem", "smoke_case", "SMOKE_OPTIMIZER", "BOUNDARY_CASES", "boundary_case",
           "TRANSFORMER_KINDS", "DEFAULT_VIT_STRUCTURES", "transformer_structures", "transformer_examples",
           "adamw_optimizers", "SMOKE_ADAMW", "transformer_smoke_case"]

MODEL_KINDS = ("mlp", "cnn", "resnet-block", "resnet-layer")
BN_KINDS = ("cnn", "resnet-block", "resnet-layer")
#: Link weights, boundary first: never 1 in the first example (1 hides a missing or
#: compounded beta), then 0 (the tail term vanishes but stays in the reach set).
BETAS = (0.5, 0.0, 2.0, 1.0, 0.25)
LOSS_WEIGHTS = (0.5, 2.0, 1.0, 0.25, 1.5)
HEADS = ("conv", "linear")  # conv first: a head with batch norm inside


# ---------------------------------------------------------------- graph structures

@dataclass(frozen=True)
class Structure:
    """What a compiling backend compiles for: a graph and the batch size it is run with."""

    kind: str
    graph: Graph
    batch: int
    note: str = ""

    def describe(self) -> str:
        g = self.graph
        return f"{self.kind} {g.name} {tuple(g.input_shape)} x{len(g.units)} units, batch {self.batch}{self.note}"


def _default_structures() -> tuple[Structure, ...]:
    return (
        # 8 units, cuts between blocks only (1, 3, 5): tails inside blocks; BN M = 180, 45, 20
        Structure("resnet-layer", resnet(depth=8, input_shape=(6, 6, 2), widths=(3, 4, 2), num_classes=3,
                                         granularity="layer"), 5),
        # 4 units, every boundary a valid cut: K = N, one unit per module, P = |M_{k-1}| = 1
        Structure("mlp", mlp(input_shape=(5,), hidden=(4, 3, 4), num_classes=3), 6),
        # max-pool, BN M = 144 and 36
        Structure("cnn", small_cnn(input_shape=(6, 6, 3), widths=(4, 3, 2), num_classes=4), 4),
        # block granularity, option-B shortcuts; BN M down to 16
        Structure("resnet-block", resnet(depth=8, input_shape=(8, 8, 1), widths=(2, 3, 4), num_classes=2,
                                         granularity="block"), 4),
        # BL-2.5.2's degenerate size: 1x1 images, a batch of 1, every batch norm (heads too) sees M = 1
        Structure("cnn", small_cnn(input_shape=(1, 1, 2), widths=(3, 2), num_classes=3), 1, ": M = 1"),
    )


DEFAULT_STRUCTURES = _default_structures()


def _random_structure(rng: np.random.Generator, kind: str) -> Structure:
    """One structure drawn from the old per-example ranges (sizes for which BN sees M >= 16)."""
    classes = int(rng.integers(2, 5))
    batch = int(rng.integers(4, 11))
    if kind == "mlp":
        hidden = tuple(int(w) for w in rng.integers(2, 7, size=int(rng.integers(1, 5))))
        return Structure(kind, mlp(input_shape=(int(rng.integers(2, 7)),), hidden=hidden, num_classes=classes), batch)
    side, channels = int(rng.choice((6, 8))), int(rng.integers(1, 4))
    if kind == "cnn":
        widths = tuple(int(w) for w in rng.integers(2, 7, size=int(rng.integers(1, 4))))
        return Structure(kind, small_cnn(input_shape=(side, side, channels), widths=widths, num_classes=classes),
                         batch)
    widths = tuple(int(w) for w in rng.integers(2, 6, size=3))
    return Structure(kind, resnet(depth=8, input_shape=(side, side, channels), widths=widths, num_classes=classes,
                                  granularity=kind.split("-")[1]), batch)


def structure_count(examples: int) -> int:
    """Structures per run: the 5 default ones up to 8 examples, then one more per 2 examples."""
    return len(DEFAULT_STRUCTURES) + max(0, math.ceil((examples - 8) / 2))


@lru_cache(maxsize=None)
def _structures(run_seed: int, count: int) -> tuple[Structure, ...]:
    rng = np.random.default_rng([run_seed, 17])
    if run_seed == 0:
        fixed = DEFAULT_STRUCTURES[:count]
    else:  # another set: every kind in turn, the degenerate M = 1 one kept
        fixed = (DEFAULT_STRUCTURES[-1],)
    extra = [_random_structure(rng, MODEL_KINDS[i % len(MODEL_KINDS)]) for i in range(count - len(fixed))]
    return tuple(fixed) + tuple(extra)


def structures() -> tuple[Structure, ...]:
    """This run's graph structures (from --conformance-seed, -examples and -structures)."""
    count = OPTIONS.structures or structure_count(OPTIONS.examples)
    return _structures(OPTIONS.seed, count)


def structure_summary() -> str:
    s = structures()
    kinds = sorted({x.kind for x in s})
    return f"backlink conformance: {len(s)} graph structures per run ({', '.join(kinds)})"


def sweep(examples=None, **strategies):
    """``@given(**strategies)`` with the suite's settings: bounded, derandomized, no deadline.
    ``examples``: a function of ``--conformance-examples`` giving this sweep's count."""
    def decorate(fn):
        test = settings(max_examples=examples(OPTIONS.examples) if examples else OPTIONS.examples, deadline=None, derandomize=OPTIONS.seed == 0,
                        database=None, report_multiple_bugs=False, print_blob=False,
                        phases=(Phase.explicit, Phase.generate, Phase.shrink),
                        suppress_health_check=list(HealthCheck))(given(**strategies)(fn))
        return seed(OPTIONS.seed)(test) if OPTIONS.seed else test
    return decorate


def structures_of(kinds=MODEL_KINDS, min_cuts: int = 0) -> list[Structure]:
    pool = structures() + transformer_structures()  # ViTs (BL-2.8) only where kinds ask for them
    found = [s for s in pool if s.kind in kinds and len(s.graph.valid_cuts()) >= min_cuts]
    return found or [s for s in DEFAULT_STRUCTURES + DEFAULT_VIT_STRUCTURES
                     if s.kind in kinds and len(s.graph.valid_cuts()) >= min_cuts]


@st.composite
def graph_structures(draw, kinds=MODEL_KINDS, min_cuts=0):
    return draw(st.sampled_from(structures_of(kinds, min_cuts)), label="structure")


@st.composite
def graphs(draw, kinds=MODEL_KINDS):
    return draw(graph_structures(kinds), label="structure").graph


def _boundary_first(values):
    """Distinct values in the given order (the first is what hypothesis tries first)."""
    return list(dict.fromkeys(values))


@st.composite
def partitions(draw, graph, min_modules=1, max_modules=None):
    """K from min_modules up: K = 3 first (a tail between two linked modules), then K = N
    (every valid cut), K = 2 and K = 1, then the others; head kind conv first."""
    valid = graph.valid_cuts()
    lo = min(min_modules - 1, len(valid))
    hi = len(valid) if max_modules is None else min(max_modules - 1, len(valid))
    order = _boundary_first([n for n in (2, len(valid), 1, 0, *range(len(valid) + 1)) if lo <= n <= hi])
    n = draw(st.sampled_from(order), label="cuts_count")
    cuts = draw(st.lists(st.sampled_from(valid), min_size=n, max_size=n, unique=True), label="cuts")
    head = draw(st.sampled_from(HEADS), label="head")
    return make_partition(graph, sorted(cuts), head, hidden=3 if head == "conv" else None)


def module_sizes(graph, partition):
    edges = (0, *partition.cuts, len(graph.units))
    return [b - a for a, b in zip(edges[:-1], edges[1:])]


@st.composite
def methods(draw, kind, graph, partition, cross_module=False):
    if kind == "bp":
        return Method("bp")
    K = partition.K
    weights = draw(st.tuples(*[st.sampled_from(LOSS_WEIGHTS)] * K) | st.none(), label="loss_weights")
    if kind == "greedy":
        return Method("greedy", loss_weights=weights)
    sizes = module_sizes(graph, partition)
    longest = min(sizes[:-1]) if K > 1 else 1
    if cross_module:  # BL-3.5: reach past the previous module, the shortest such tail first
        P = draw(st.integers(longest + 1, max(longest + 1, partition.cuts[-1])), label="link_length")
    else:  # BL-3.4: P = |M_{k-1}| of the smallest previous module first, then 0 (greedy), then between
        P = draw(st.sampled_from(_boundary_first([longest, 0, *range(1, longest)])), label="link_length")
    beta = draw(st.sampled_from(BETAS), label="beta")
    return Method("backlink", link_length=P, beta=beta, loss_weights=weights, allow_cross_module=cross_module)


@st.composite
def schedules(draw, kinds=("cosine", "step", "constant")):
    """Cosine W = 1, T = 2 first: with 4 steps, t = 0 (warmup), W, T and T + 1 all occur."""
    kind = draw(st.sampled_from(kinds), label="lr_schedule")
    if kind == "step":
        return LRSchedule("step", step_size=draw(st.sampled_from((1, 2)), label="step_size"),
                          gamma=draw(st.sampled_from((0.5, 0.1)), label="gamma"))
    if kind == "cosine":
        warmup = draw(st.sampled_from((1, 0, 2)), label="warmup")
        return LRSchedule("cosine", warmup=warmup, total=warmup + draw(st.sampled_from((1, 2, 3)), label="decay_steps"))
    return LRSchedule()


@st.composite
def optimizers(draw, momentum=(0.9, 0.0), weight_decay=(0.05, 0.0), schedule_kinds=("cosine", "step", "constant")):
    m = draw(st.sampled_from(momentum), label="momentum")
    nesterov = m > 0 and draw(st.sampled_from((True, False)), label="nesterov")
    return Optimizer(lr=draw(st.sampled_from((0.1, 0.05, 0.2)), label="lr"), momentum=m, nesterov=nesterov,
                     weight_decay=draw(st.sampled_from(weight_decay), label="weight_decay"),
                     schedule=draw(schedules(schedule_kinds), label="schedule"))


@st.composite
def problem_structures(draw, method, dtype, schedule="synchronous", kinds=MODEL_KINDS, optimizer=None,
                       cross_module=False):
    """(structure, problem): BP problems carry heads too (BL-3.1: they must be ignored)."""
    structure = draw(graph_structures(kinds, min_cuts=2 if cross_module else 0), label="structure")
    graph = structure.graph
    partition = draw(partitions(graph, min_modules=3 if cross_module else 1), label="partition")
    m = draw(methods(method, graph, partition, cross_module), label="method")
    opt = draw(optimizer, label="optimizer") if optimizer is not None else Optimizer()
    return structure, Problem(graph, partition, m, opt, schedule, dtype)


@st.composite
def problems(draw, method, dtype, schedule="synchronous", kinds=MODEL_KINDS, optimizer=None,
             cross_module=False):
    return draw(problem_structures(method, dtype, schedule, kinds, optimizer, cross_module), label="problem")[1]


@st.composite
def cases(draw, method, dtype, steps=1, schedule="synchronous", kinds=MODEL_KINDS, optimizer=None,
          cross_module=False) -> Case:
    structure, problem = draw(problem_structures(method, dtype, schedule, kinds, optimizer, cross_module),
                              label="problem")
    return make_case(problem, seed=draw(st.integers(0, 2**16), label="seed"), batch_size=structure.batch,
                     steps=steps, first_id=0 if schedule == "pipelined" else 10)


# ---------------------------------------------------------------- fixed smoke cases

#: momentum, Nesterov, decay and a warmed-up cosine: every optimizer feature at once.
SMOKE_OPTIMIZER = Optimizer(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05,
                            schedule=LRSchedule("cosine", warmup=2, total=6))


def smoke_graph():
    """ResNet-8 at layer granularity on 8x8x2 images: 8 units, cuts only between blocks."""
    return resnet(depth=8, input_shape=(8, 8, 2), widths=(3, 4, 4), num_classes=3, granularity="layer")


def smoke_problem(method="backlink", dtype="float64", optimizer=None, schedule="synchronous", head="linear"):
    """Modules of 3, 2 and 3 units; BackLink P=2 (a tail inside a block, and all of module 2),
    beta 0.5, unequal loss weights."""
    graph = smoke_graph()
    partition = make_partition(graph, (3, 5), head, hidden=3 if head == "conv" else None)
    m = {"bp": Method("bp"), "greedy": Method("greedy", loss_weights=(0.5, 2.0, 1.5)),
         "backlink": Method("backlink", link_length=2, beta=0.5, loss_weights=(0.5, 2.0, 1.5))}[method]
    if method == "bp" and head == "linear":
        partition = Partition()
    return Problem(graph, partition, m, optimizer or Optimizer(), schedule, dtype)


def smoke_case(method="backlink", dtype="float64", steps=1, optimizer=None, schedule="synchronous",
               seed=1, head="linear") -> Case:
    return make_case(smoke_problem(method, dtype, optimizer, schedule, head), seed=seed, batch_size=5,
                     steps=steps, first_id=0 if schedule == "pipelined" else 10)


# ---------------------------------------------------------------- fixed boundary cases

def _kn_graph():
    return DEFAULT_STRUCTURES[1].graph  # 4 units, all valid cuts


def _degenerate():
    return DEFAULT_STRUCTURES[-1]


#: name -> (clause, what it pins down, problem factory(dtype), batch size). Quick fixed
#: cases at the boundaries of a clause; each runs 2 steps with SMOKE_OPTIMIZER unless the
#: factory sets its own optimizer.
BOUNDARY_CASES = {
    "k1-greedy": ("BL-3.3", "K = 1: greedy is one module, its loss weight w_1 still scales g",
                  lambda d: Problem(smoke_graph(), Partition(), Method("greedy", loss_weights=(1.5,)),
                                    SMOKE_OPTIMIZER, dtype=d), 5),
    "k1-backlink": ("BL-3.4", "K = 1: BackLink has no previous module, no tail, whatever P",
                    lambda d: Problem(smoke_graph(), Partition(), Method("backlink", link_length=2, beta=0.5,
                                                                         loss_weights=(2.0,)),
                                      SMOKE_OPTIMIZER, dtype=d), 5),
    "kN-backlink-P1": ("BL-3.4", "K = N: one unit per module, P = 1 = |M_{k-1}|, MLP heads",
                       lambda d: Problem(_kn_graph(), make_partition(_kn_graph(), (1, 2, 3), "conv", hidden=3),
                                         Method("backlink", link_length=1, beta=2.0,
                                                loss_weights=(0.5, 2.0, 1.0, 1.5)), SMOKE_OPTIMIZER, dtype=d), 6),
    "beta-zero": ("BL-3.7", "beta = 0: the tail terms vanish (a falsy beta is not 1)",
                  lambda d: Problem(smoke_graph(), make_partition(smoke_graph(), (3, 5)),
                                    Method("backlink", link_length=2, beta=0.0, loss_weights=(0.5, 2.0, 1.5)),
                                    SMOKE_OPTIMIZER, dtype=d), 5),
    "bp-bn-heads-decay": ("BL-3.1", "BP with batch-norm heads, momentum and weight decay: heads untouched",
                          lambda d: Problem(smoke_graph(), make_partition(smoke_graph(), (3, 5), "conv", hidden=3),
                                            Method("bp"), SMOKE_OPTIMIZER, dtype=d), 5),
    "m1-batchnorm": ("BL-2.5.2", "M = 1 in every batch norm (trunk and conv heads): max(M - 1, 1)",
                     lambda d: Problem(_degenerate().graph, make_partition(_degenerate().graph, (1, 2), "conv",
                                                                           hidden=3),
                                       Method("backlink", link_length=1, beta=0.5, loss_weights=(0.5, 2.0, 1.5)),
                                       SMOKE_OPTIMIZER, dtype=d), 1),
    "cross-module": ("BL-3.5", "a tail across a whole module into the one before, beta != 1",
                     lambda d: Problem(smoke_graph(), make_partition(smoke_graph(), (3, 5), "conv", hidden=3),
                                       Method("backlink", link_length=3, beta=0.5, loss_weights=(0.5, 2.0, 1.5),
                                              allow_cross_module=True), SMOKE_OPTIMIZER, dtype=d), 5),
}


def boundary_case(name: str, dtype: str = "float64", steps: int = 2, seed: int = 3) -> Case:
    _, _, factory, batch = BOUNDARY_CASES[name]
    return make_case(factory(dtype), seed=seed, batch_size=batch, steps=steps, first_id=10)


# ---------------------------------------------------------------- transformers (BL-2.7, BL-2.8)

#: ViTs at block grain (a unit per pre-norm block) and at half-block grain (attention, MLP).
TRANSFORMER_KINDS = ("vit-block", "vit-layer")


def _vit(kind, side, channels, patch, depth, width, heads, ratio, classes):
    return vit(input_shape=(side, side, channels), patch=patch, depth=depth, width=width, heads=heads,
               mlp_ratio=ratio, num_classes=classes, granularity=kind.split("-")[1])


#: Two fixed ViT structures for the default run (a compiling backend compiles each once):
#: half-block units, 4 tokens in 2 heads, cuts between halves; block units, 9 tokens, 1 head.
#: Width >= 4: layer norm over 2 or 3 features is as ill-conditioned in float32 as batch
#: norm over a few values (two nearly equal features have a variance near 0).
DEFAULT_VIT_STRUCTURES = (
    Structure("vit-layer", _vit("vit-layer", 8, 2, 4, 2, 4, 2, 2, 3), 5),
    Structure("vit-block", _vit("vit-block", 6, 1, 2, 3, 6, 1, 1, 4), 4),
)


def _random_vit(rng: np.random.Generator, kind: str) -> Structure:
    """Drawn sizes: 4x4 to 8x8 images in 1 to 16 tokens, depth 1-3, width 4 or 6 in 1-2 heads."""
    side = int(rng.choice((4, 6, 8)))
    patch = int(rng.choice([p for p in (2, 4, side) if side % p == 0]))
    heads = int(rng.integers(1, 3))
    width = int(rng.choice((4, 6))) if heads == 1 else 2 * int(rng.integers(2, 4))
    return Structure(kind, _vit(kind, side, int(rng.integers(1, 4)), patch, int(rng.integers(1, 4)), width, heads,
                                int(rng.integers(1, 3)), int(rng.integers(2, 5))), int(rng.integers(4, 11)))


def transformer_examples(n: int) -> int:
    """Examples per transformer sweep: a quarter of ``--conformance-examples``, at least 2."""
    return max(2, n // 4)


@lru_cache(maxsize=None)
def _vit_structures(run_seed: int, count: int) -> tuple[Structure, ...]:
    rng = np.random.default_rng([run_seed, 23])
    fixed = DEFAULT_VIT_STRUCTURES[:count] if run_seed == 0 else ()
    extra = [_random_vit(rng, TRANSFORMER_KINDS[i % 2]) for i in range(count - len(fixed))]
    return tuple(fixed) + tuple(extra)


def transformer_structures() -> tuple[Structure, ...]:
    """This run's ViT structures: the 2 default ones (seed 0) or 2 drawn ones (other seeds),
    one more drawn per 8 examples above 8 (depth, width, heads, patch, grain, classes, batch)."""
    return _vit_structures(OPTIONS.seed, 2 + max(0, math.ceil((OPTIONS.examples - 8) / 8)))


@st.composite
def adamw_optimizers(draw, eps=(1e-6, 1e-3)):
    """BL-4.7: AdamW with drawn betas, eps, decoupled weight decay and LR schedule.

    eps >= 1e-6: AdamW divides by the gradient's RMS, so a gradient that is 0 in exact
    arithmetic (the attention key bias: softmax ignores a per-query shift) but rounding
    noise in practice moves its parameter by lr * noise / eps; two conforming backends'
    noises differ. float32 sweeps pass ``eps=(1e-3,)`` (float32 noise is 1e-9 and up)."""
    return Optimizer(kind="adamw", lr=draw(st.sampled_from((0.01, 0.05)), label="lr"),
                     betas=draw(st.sampled_from(((0.5, 0.9), (0.9, 0.999))), label="betas"),
                     eps=draw(st.sampled_from(eps), label="eps"),
                     weight_decay=draw(st.sampled_from((0.1, 0.0)), label="weight_decay"),
                     schedule=draw(schedules(), label="schedule"))


#: every AdamW feature at once: decay, warmup then cosine (run past its end: lr 0 from t = 5)
SMOKE_ADAMW = Optimizer(kind="adamw", lr=0.05, betas=(0.8, 0.95), eps=1e-3, weight_decay=0.1,
                        schedule=LRSchedule("cosine", warmup=1, total=5))


def transformer_smoke_case(method="backlink", dtype="float64", steps=1, optimizer=None, schedule="synchronous",
                           seed=2) -> Case:
    """The first default ViT (6 half-block units on 8x8x2 images, 4 tokens of width 4 in 2
    heads); modules of 2, 2 and 2 units (a cut between the halves of block 2), P = 1, beta 0.5."""
    graph = DEFAULT_VIT_STRUCTURES[0].graph
    partition = make_partition(graph, (2, 4)) if method != "bp" else Partition()
    m = {"bp": Method("bp"), "greedy": Method("greedy", loss_weights=(0.5, 2.0, 1.5)),
         "backlink": Method("backlink", link_length=1, beta=0.5, loss_weights=(0.5, 2.0, 1.5))}[method]
    problem = Problem(graph, partition, m, optimizer or Optimizer(), schedule, dtype)
    return make_case(problem, seed=seed, batch_size=5, steps=steps, first_id=0 if schedule == "pipelined" else 10)
