"""BL-4.7: AdamW as a pure function, against torch.optim.AdamW and against its own definition."""
import numpy as np
import pytest

from backlink.reference.optim import adamw, check_optimizer, init_state, lr_at, step
from backlink.spec import LRSchedule, Optimizer, SpecError

R = np.random.default_rng(3)
PARAMS = {"w": R.standard_normal((3, 4)), "b": R.standard_normal(4)}
DECAY = frozenset({"w"})


def run(opt, grads_per_step, params=PARAMS):
    state, p = init_state(params, opt), dict(params)
    for t, grads in enumerate(grads_per_step):
        p, state = step(p, grads, state, opt, t, DECAY)
    return p, state


def test_matches_torch_adamw_with_decay_groups_and_cosine_warmup():
    torch = pytest.importorskip("torch")
    sched = LRSchedule("cosine", warmup=2, total=6)
    opt = Optimizer(kind="adamw", lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1, schedule=sched)
    grads = [{k: R.standard_normal(v.shape) for k, v in PARAMS.items()} for _ in range(7)]
    want, _ = run(opt, grads)
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in PARAMS.items()}
    topt = torch.optim.AdamW([{"params": [tp["w"]], "weight_decay": 0.1}, {"params": [tp["b"]], "weight_decay": 0.0}],
                             lr=0.05, betas=(0.8, 0.95), eps=1e-6)
    lam = torch.optim.lr_scheduler.LambdaLR(topt, lambda t: lr_at(1.0, sched, t))
    for g in grads:
        for k in tp:
            tp[k].grad = torch.tensor(g[k])
        topt.step()
        lam.step()
    for k in PARAMS:
        np.testing.assert_allclose(tp[k].detach().numpy(), want[k], rtol=1e-12, atol=1e-14, err_msg=k)


def test_first_step_is_sign_like_and_decay_is_decoupled():
    """n = 1: m_hat = g and v_hat = g^2, so the step is lr * g / (|g| + eps); decay scales theta."""
    opt = Optimizer(kind="adamw", lr=0.1, eps=1e-8, weight_decay=0.5)
    g = {k: R.standard_normal(v.shape) for k, v in PARAMS.items()}
    p, state = adamw(PARAMS, g, init_state(PARAMS, opt), opt, 0, DECAY)
    for k in PARAMS:
        theta = PARAMS[k] * (1 - 0.1 * 0.5) if k in DECAY else PARAMS[k]
        np.testing.assert_allclose(p[k], theta - 0.1 * g[k] / (np.abs(g[k]) + 1e-8), rtol=1e-12)
        assert state[k][2] == 1


def test_bias_correction_counts_each_parameters_own_updates():
    """BL-4.7.1: a parameter without a gradient keeps its moments and its count."""
    opt = Optimizer(kind="adamw", lr=0.1)
    g = {k: R.standard_normal(v.shape) for k, v in PARAMS.items()}
    _, state = run(opt, [g, {"w": g["w"]}, g])
    assert state["w"][2] == 3 and state["b"][2] == 2


@pytest.mark.parametrize("fields,name", [(dict(kind="adam"), "optimizer.kind"),
                                         (dict(kind="adamw", betas=(1.0, 0.9)), "optimizer.betas"),
                                         (dict(kind="adamw", betas=(0.9,)), "optimizer.betas"),
                                         (dict(kind="adamw", eps=0.0), "optimizer.eps"),
                                         (dict(kind="adamw", momentum=0.9), "optimizer.momentum"),
                                         (dict(kind="adamw", weight_decay=-1.0), "optimizer.weight_decay")])
def test_errors_name_the_field(fields, name):
    with pytest.raises(SpecError, match=name.replace(".", r"\.")):
        check_optimizer(Optimizer(**fields))
