"""Hypothesis strategies and fixed smoke cases: every problem the suite draws comes from here.

Sizes are bounded so that one example runs in milliseconds: 6x6 or 8x8 images,
widths 2-6, batches of 4-10, at most four modules. Batch norm always sees at least 16
values per channel: with fewer, float32 batch statistics are too ill-conditioned to
compare with float64 at the float32 tolerances. Every draw is labelled, so a failing
example prints as a readable case. Settings come from the plugin's options
(``--conformance-examples``, ``--conformance-seed``).
"""
from __future__ import annotations

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from backlink.reference.models import make_partition, mlp, resnet, small_cnn, vit
from backlink.spec import LRSchedule, Method, Optimizer, Partition, Problem

from .oracle import Case, make_case
from .plugin import OPTIONS

__all__ = ["MODEL_KINDS", "TRANSFORMER_KINDS", "transformer_graphs", "transformer_examples",
           "adamw_optimizers", "transformer_smoke_case", "sweep", "graphs", "partitions", "methods", "optimizers", "problems",
           "cases", "smoke_graph", "smoke_problem", "smoke_case", "SMOKE_OPTIMIZER"]

MODEL_KINDS = ("mlp", "cnn", "resnet-block", "resnet-layer")
BN_KINDS = ("cnn", "resnet-block", "resnet-layer")
COEFFICIENTS = (1.0, 0.5, 2.0, 0.25, 1.5)


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


@st.composite
def graphs(draw, kinds=MODEL_KINDS):
    kind = draw(st.sampled_from(kinds), label="model")
    if kind in TRANSFORMER_KINDS:
        return draw(transformer_graphs(kind), label="transformer")
    classes = draw(st.integers(2, 4), label="num_classes")
    if kind == "mlp":
        dim = draw(st.integers(2, 6), label="input_dim")
        hidden = draw(st.lists(st.integers(2, 6), min_size=1, max_size=4), label="hidden")
        return mlp(input_shape=(dim,), hidden=tuple(hidden), num_classes=classes)
    side = draw(st.sampled_from((6, 8)), label="image_side")
    shape = (side, side, draw(st.integers(1, 3), label="channels"))
    if kind == "cnn":
        widths = draw(st.lists(st.integers(2, 6), min_size=1, max_size=3), label="widths")
        return small_cnn(input_shape=shape, widths=tuple(widths), num_classes=classes)
    widths = draw(st.tuples(*[st.integers(2, 5)] * 3), label="widths")
    return resnet(depth=8, input_shape=shape, widths=widths, num_classes=classes,
                  granularity=kind.split("-")[1])


@st.composite
def partitions(draw, graph, min_modules=2, max_modules=4):
    valid = graph.valid_cuts()
    n = draw(st.integers(min(min_modules - 1, len(valid)), min(max_modules - 1, len(valid))),
             label="cuts_count")
    cuts = draw(st.lists(st.sampled_from(valid), min_size=n, max_size=n, unique=True), label="cuts")
    head = draw(st.sampled_from(("linear", "linear", "conv")), label="head")
    return make_partition(graph, sorted(cuts), head, hidden=3 if head == "conv" else None)


def module_sizes(graph, partition):
    edges = (0, *partition.cuts, len(graph.units))
    return [b - a for a, b in zip(edges[:-1], edges[1:])]


@st.composite
def methods(draw, kind, graph, partition, cross_module=False):
    if kind == "bp":
        return Method("bp")
    K = partition.K
    weights = draw(st.none() | st.tuples(*[st.sampled_from(COEFFICIENTS)] * K), label="loss_weights")
    if kind == "greedy":
        return Method("greedy", loss_weights=weights)
    sizes = module_sizes(graph, partition)
    longest = min(sizes[:-1]) if K > 1 else 1
    if cross_module:  # BL-3.5: reach past the previous module
        P = draw(st.integers(longest + 1, max(longest + 1, partition.cuts[-1])), label="link_length")
    else:  # mostly P >= 1; P = 0 (BL-3.4.3: greedy) about one time in four
        P = -(-draw(st.integers(0, 3 * longest), label="link_length") // 3)
    beta = draw(st.sampled_from(COEFFICIENTS), label="beta")
    return Method("backlink", link_length=P, beta=beta, loss_weights=weights, allow_cross_module=cross_module)


@st.composite
def schedules(draw, kinds=("constant", "step", "cosine")):
    kind = draw(st.sampled_from(kinds), label="lr_schedule")
    if kind == "step":
        return LRSchedule("step", step_size=draw(st.integers(1, 2), label="step_size"),
                          gamma=draw(st.sampled_from((0.5, 0.1)), label="gamma"))
    if kind == "cosine":
        warmup = draw(st.integers(0, 2), label="warmup")
        return LRSchedule("cosine", warmup=warmup, total=warmup + draw(st.integers(1, 4), label="decay_steps"))
    return LRSchedule()


@st.composite
def optimizers(draw, momentum=(0.0, 0.9), weight_decay=(0.0, 0.05), schedule_kinds=("constant", "step", "cosine")):
    m = draw(st.sampled_from(momentum), label="momentum")
    nesterov = m > 0 and draw(st.booleans(), label="nesterov")
    return Optimizer(lr=draw(st.sampled_from((0.05, 0.1, 0.2)), label="lr"), momentum=m, nesterov=nesterov,
                     weight_decay=draw(st.sampled_from(weight_decay), label="weight_decay"),
                     schedule=draw(schedules(schedule_kinds), label="schedule"))


@st.composite
def problems(draw, method, dtype, schedule="synchronous", kinds=MODEL_KINDS, optimizer=None,
             cross_module=False):
    graph = draw(graphs(kinds), label="graph")
    if cross_module and len(graph.valid_cuts()) < 2:
        graph = smoke_graph()
    partition = draw(partitions(graph, min_modules=3 if cross_module else 2), label="partition")
    m = draw(methods(method, graph, partition, cross_module), label="method")
    opt = draw(optimizer, label="optimizer") if optimizer is not None else Optimizer()
    return Problem(graph, partition, m, opt, schedule, dtype)


@st.composite
def cases(draw, method, dtype, steps=1, schedule="synchronous", kinds=MODEL_KINDS, optimizer=None,
          cross_module=False) -> Case:
    problem = draw(problems(method, dtype, schedule, kinds, optimizer, cross_module), label="problem")
    return make_case(problem, seed=draw(st.integers(0, 2**16), label="seed"),
                     batch_size=draw(st.integers(4, 10), label="batch_size"), steps=steps,
                     first_id=0 if schedule == "pipelined" else 10)


# ---------------------------------------------------------------- fixed smoke cases

#: momentum, Nesterov, decay and a warmed-up cosine: every optimizer feature at once.
SMOKE_OPTIMIZER = Optimizer(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05,
                            schedule=LRSchedule("cosine", warmup=2, total=6))


def smoke_graph():
    """ResNet-8 at layer granularity on 8x8x2 images: 8 units, cuts only between blocks."""
    return resnet(depth=8, input_shape=(8, 8, 2), widths=(3, 4, 4), num_classes=3, granularity="layer")


def smoke_problem(method="backlink", dtype="float64", optimizer=None, schedule="synchronous"):
    """Modules of 3, 2 and 3 units; BackLink P=2 (a tail inside a block), beta 0.5, unequal weights."""
    graph = smoke_graph()
    partition = make_partition(graph, (3, 5)) if method != "bp" else Partition()
    m = {"bp": Method("bp"), "greedy": Method("greedy", loss_weights=(0.5, 2.0, 1.5)),
         "backlink": Method("backlink", link_length=2, beta=0.5, loss_weights=(0.5, 2.0, 1.5))}[method]
    return Problem(graph, partition, m, optimizer or Optimizer(), schedule, dtype)


def smoke_case(method="backlink", dtype="float64", steps=1, optimizer=None, schedule="synchronous",
               seed=1) -> Case:
    return make_case(smoke_problem(method, dtype, optimizer, schedule), seed=seed, batch_size=5,
                     steps=steps, first_id=0 if schedule == "pipelined" else 10)


# ---------------------------------------------------------------- transformers (BL-2.7, BL-2.8)

#: ViTs at block grain (a unit per pre-norm block) and at half-block grain (attention, MLP).
TRANSFORMER_KINDS = ("vit-block", "vit-layer")


def transformer_examples(n: int) -> int:
    """Examples per transformer sweep: a quarter of ``--conformance-examples``, at least 2."""
    return max(2, n // 4)


@st.composite
def transformer_graphs(draw, kind="vit-block"):
    """Tiny ViTs: 4x4 to 8x8 images in 1 to 16 tokens, depth 1-3, width 4 or 6 in 1-2 heads.
    Width >= 4: layer norm over 2 or 3 features is as ill-conditioned in float32 as batch
    norm over a few values (two nearly equal features have a variance near 0)."""
    side = draw(st.sampled_from((4, 6, 8)), label="image_side")
    patch = draw(st.sampled_from([p for p in (2, 4, side) if side % p == 0]), label="patch")
    heads = draw(st.integers(1, 2), label="heads")
    return vit(input_shape=(side, side, draw(st.integers(1, 3), label="channels")), patch=patch,
               depth=draw(st.integers(1, 3), label="depth"), width=draw(st.sampled_from((4, 6)), label="width"),
               heads=heads, mlp_ratio=draw(st.integers(1, 2), label="mlp_ratio"),
               num_classes=draw(st.integers(2, 4), label="num_classes"), granularity=kind.split("-")[1])


@st.composite
def adamw_optimizers(draw, eps=(1e-6, 1e-3)):
    """BL-4.7: AdamW with drawn betas, eps, decoupled weight decay and LR schedule.

    eps >= 1e-6: AdamW divides by the gradient's RMS, so a gradient that is 0 in exact
    arithmetic (the attention key bias: softmax ignores a per-query shift) but rounding
    noise in practice moves its parameter by lr * noise / eps; two conforming backends'
    noises differ. float32 sweeps pass ``eps=(1e-3,)`` (float32 noise is 1e-9 and up)."""
    return Optimizer(kind="adamw", lr=draw(st.sampled_from((0.01, 0.05)), label="lr"),
                     betas=draw(st.sampled_from(((0.9, 0.999), (0.5, 0.9))), label="betas"),
                     eps=draw(st.sampled_from(eps), label="eps"),
                     weight_decay=draw(st.sampled_from((0.0, 0.1)), label="weight_decay"),
                     schedule=draw(schedules(), label="schedule"))


#: every AdamW feature at once: decay, warmup then cosine (run past its end: lr 0 from t = 5)
SMOKE_ADAMW = Optimizer(kind="adamw", lr=0.05, betas=(0.8, 0.95), eps=1e-3, weight_decay=0.1,
                        schedule=LRSchedule("cosine", warmup=1, total=5))


def transformer_smoke_case(method="backlink", dtype="float64", steps=1, optimizer=None, schedule="synchronous",
                           seed=2) -> Case:
    """A two-block ViT at half-block grain (6 units) on 8x8x2 images, 4 tokens of width 4 in
    2 heads; modules of 2, 2 and 2 units (a cut between the halves of block 2), P = 1, beta 0.5."""
    graph = vit(input_shape=(8, 8, 2), patch=4, depth=2, width=4, heads=2, mlp_ratio=2, num_classes=3,
                granularity="layer")
    partition = make_partition(graph, (2, 4)) if method != "bp" else Partition()
    m = {"bp": Method("bp"), "greedy": Method("greedy", loss_weights=(0.5, 2.0, 1.5)),
         "backlink": Method("backlink", link_length=1, beta=0.5, loss_weights=(0.5, 2.0, 1.5))}[method]
    problem = Problem(graph, partition, m, optimizer or Optimizer(), schedule, dtype)
    return make_case(problem, seed=seed, batch_size=5, steps=steps, first_id=0 if schedule == "pipelined" else 10)
