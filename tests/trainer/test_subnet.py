"""Edge-popup selection against a numpy reference, and the straight-through gradient."""
import numpy as np
import pytest
import torch

from trainer.generator import BaseSpec, build_base, latents
from trainer.subnet import MASKED_LAYERS, Pruner, gradual_keep, init_scores, masked_layers, n_keep

SPEC = BaseSpec(width=0.125)


def masked(seed=0):
    g = build_base(SPEC, **MASKED_LAYERS)
    init_scores(g, seed)
    return g


def numpy_topk(abs_scores: np.ndarray, kept: int) -> np.ndarray:
    """Reference: a full argsort, as the released code sorts every layer."""
    flat = abs_scores.reshape(-1)
    m = np.zeros(flat.size, bool)
    m[np.argsort(flat, kind="stable")[flat.size - kept:]] = True
    return m.reshape(abs_scores.shape)


def all_scores(g):
    return {f"{n}.{p}": getattr(l, f"{p}_scores").detach().abs().numpy()
            for n, l in masked_layers(g) for p in ("weight", "bias")
            if getattr(l, f"{p}_scores", None) is not None}


@pytest.mark.parametrize("k", [0.1, 0.5, 0.03])
def test_local_keeps_topk_per_layer(k):
    g = masked()
    masks = Pruner(g, k, "local").binary_masks()
    for name, s in all_scores(g).items():
        kept = s.size - int(np.floor((1 - k) * s.size + 1e-9))
        np.testing.assert_array_equal(masks[name].numpy(), numpy_topk(s, kept), err_msg=name)


def test_global_joint_keeps_exactly_k_of_all():
    g = masked()
    k = 0.1
    masks = Pruner(g, k, "global", global_threshold="joint").binary_masks()
    scores = all_scores(g)
    flat = np.concatenate([s.reshape(-1) for s in scores.values()])
    ref = numpy_topk(flat, n_keep(flat.size, k))
    got = np.concatenate([masks[n].numpy().reshape(-1) for n in scores])
    np.testing.assert_array_equal(got, ref)
    assert got.sum() == flat.size - int(np.floor(0.9 * flat.size + 1e-9))
    per_layer = [masks[n].float().mean().item() for n in scores]
    assert max(per_layer) - min(per_layer) > 0.0  # layers differ: a single global ranking


def released_global(scores: dict[str, np.ndarray], k: float) -> dict[str, np.ndarray]:
    """Reference from the released code's global EP (net_utils.py): one threshold over all weight
    |scores| and another over all bias |scores|; n_prune = ceil((1-k) N), thr = sort(|s|)[n_prune-1],
    keep |s| > thr."""
    out = {}
    for kind in ("weight", "bias"):
        names = [n for n in scores if n.endswith("." + kind)]
        flat = np.concatenate([scores[n].reshape(-1) for n in names])
        n_prune = int(np.ceil((1 - k) * flat.size))
        thr = np.sort(flat)[n_prune - 1]
        out.update({n: scores[n] > thr for n in names})
    return out


@pytest.mark.parametrize("k", [0.1, 0.3])
def test_global_ranks_weights_and_biases_apart_as_released(k):
    g = masked(seed=5)
    scores = all_scores(g)
    bias = np.concatenate([s.reshape(-1) for n, s in scores.items() if n.endswith(".bias")])
    weight = np.concatenate([s.reshape(-1) for n, s in scores.items() if n.endswith(".weight")])
    assert bias.max() > 0.5 and weight.max() <= 0.1  # bias scores U(-1, 1), weight scores U(-0.1, 0.1)
    masks = Pruner(g, k, "global").binary_masks()
    for name, ref in released_global(scores, k).items():
        np.testing.assert_array_equal(masks[name].numpy(), ref, err_msg=name)
    kept_bias = sum(masks[n].sum().item() for n in scores if n.endswith(".bias"))
    assert kept_bias == pytest.approx(k * bias.size, abs=1)  # not every bias, as one joint threshold would keep


def test_global_separate_keeps_exactly_k_of_each_group_under_ties():
    g = quantised(step=1e-2)
    scores = all_scores(g)
    masks = Pruner(g, 0.1, "global").binary_masks()
    for kind in ("weight", "bias"):
        names = [n for n in scores if n.endswith("." + kind)]
        total = sum(scores[n].size for n in names)
        kept = sum(int(masks[n].sum()) for n in names)
        assert kept == total - int(np.ceil(0.9 * total - 1e-9)), kind


def quantised(seed=0, step=1e-3):
    """Scores rounded to a coarse grid, so thousands tie at every threshold (as float32 scores
    do, more rarely, at millions of weights)."""
    g = masked(seed)
    with torch.no_grad():
        for _, l in masked_layers(g):
            for s in (l.weight_scores, l.bias_scores):
                if s is not None:
                    s.copy_((s / step).round() * step)
    return g


@pytest.mark.parametrize("k", [0.1, 0.37])
def test_ties_keep_exactly_k_like_a_stable_sort(k):
    g = quantised()
    scores = all_scores(g)
    assert len(np.unique(scores["blocks.0.conv1.weight"])) < 200  # the test really has ties
    local = Pruner(g, k, "local").binary_masks()
    for name, s in scores.items():
        np.testing.assert_array_equal(local[name].numpy(), numpy_topk(s, n_keep(s.size, k)), err_msg=name)
    glob = Pruner(g, k, "global", global_threshold="joint").binary_masks()
    flat = np.concatenate([s.reshape(-1) for s in scores.values()])
    got = np.concatenate([glob[n].numpy().reshape(-1) for n in scores])
    np.testing.assert_array_equal(got, numpy_topk(flat, n_keep(flat.size, k)))


def test_gradual_reaches_k_at_configured_step():
    g = masked()
    p = Pruner(g, 0.1, "gradual", gradual_steps=100)
    def frac():
        ms = p.binary_masks().values()
        return sum(m.sum().item() for m in ms) / sum(m.numel() for m in ms)

    assert frac() == pytest.approx(1.0, abs=1e-3)
    fracs = []
    for t in (25, 50, 90, 100, 150):
        p.set_step(t)
        fracs.append(frac())
    assert fracs == sorted(fracs, reverse=True)
    assert fracs[2] > 0.1005 and fracs[3] == pytest.approx(0.1, abs=2e-3)
    assert gradual_keep(100, 0.1, 100) == 0.1 and gradual_keep(50, 0.1, 100) == pytest.approx(0.1 + 0.9 / 8)


def test_random_mode_is_fixed_and_untrainable():
    g = masked(seed=3)
    p = Pruner(g, 0.2, "random")
    assert p.scores() == []
    m1 = p.binary_masks()
    p.set_step(1000)
    assert all(torch.equal(m1[n], v) for n, v in p.binary_masks().items())
    frac = sum(v.sum().item() for v in m1.values()) / sum(v.numel() for v in m1.values())
    assert frac == pytest.approx(0.2, abs=0.01)
    other = Pruner(masked(seed=4), 0.2, "random").binary_masks()
    assert not torch.equal(other["blocks.0.conv1.weight"], m1["blocks.0.conv1.weight"])


@pytest.mark.parametrize("mode", ["local", "global"])
def test_dense_layers_stay_whole_and_the_rest_holds_total_k(mode):
    """Layer-freeze as in the paper (Table 4): frozen layers keep all their weights, the hidden
    layers are pruned harder so the network as a whole keeps k."""
    g = masked()
    p = Pruner(g, 0.1, mode, dense_layers=["output", "blocks.3.conv2"])
    m = p.binary_masks()
    assert m["output.weight"].all() and m["blocks.3.conv2.weight"].all()
    total = sum(v.numel() for v in m.values())
    assert sum(v.sum().item() for v in m.values()) == pytest.approx(n_keep(total, 0.1), abs=40)
    frozen = sum(m[n].numel() for n in m if n.startswith(("output.", "blocks.3.conv2.")))
    hidden = (n_keep(total, 0.1) - frozen) / (total - frozen)
    assert hidden < 0.1
    if mode == "local":
        assert m["blocks.0.conv1.weight"].float().mean() == pytest.approx(hidden, abs=1e-3)
    assert all(s.requires_grad for s in p.scores())
    assert not g.output.weight_scores.requires_grad
    with pytest.raises(ValueError, match="names no masked layer"):
        Pruner(masked(), 0.1, "local", dense_layers=["nope"])
    with pytest.raises(ValueError, match="dense layers alone"):
        Pruner(masked(), 0.1, "local", dense_layers=["input"])  # the first layer is 56% here


def test_k_is_fraction_kept_and_validated():
    with pytest.raises(ValueError, match="KEPT"):
        Pruner(masked(), 0.0, "local")
    with pytest.raises(ValueError, match="pruning"):
        Pruner(masked(), 0.1, "magnitude")


def test_gradient_reaches_scores_through_abs():
    """d loss / d s = (d loss / d m) * sign(s): a negative score gets the mirrored gradient."""
    g = masked()
    Pruner(g, 0.5, "local")
    layer = g.blocks[1].conv1
    g.train()
    out = g(latents(0, 0, 4, 100))
    out.square().mean().backward()
    gs = layer.weight_scores.grad
    assert gs is not None and gs.abs().sum() > 0
    # independent computation: gradient w.r.t. the effective weight times the weight, times sign(s)
    s = layer.weight_scores.detach()
    g2 = masked()
    Pruner(g2, 0.5, "local")
    l2 = g2.blocks[1].conv1
    m = (l2.masks()[0]).detach()
    w_eff = (l2.weight * m).requires_grad_(True)
    l2.masked_params = lambda: (w_eff, l2.bias * l2.masks()[1].detach())
    g2.train()
    g2(latents(0, 0, 4, 100)).square().mean().backward()
    expected = w_eff.grad * l2.weight * torch.sign(s)
    torch.testing.assert_close(gs, expected, rtol=1e-4, atol=1e-9)
    # and pruned weights get a gradient too (edge-popup lets them come back)
    assert (gs[m == 0] != 0).any()


def test_banded_selection_equals_kthvalue_whatever_the_hint():
    """kth_smallest with a hint (the CPU fast path) returns exactly torch's kthvalue, for good,
    bad and stale hints, heavy ties and several parts (global pruning)."""
    from trainer.subnet import Hint, kth_smallest

    rng = np.random.default_rng(0)
    for trial in range(60):
        n_parts = 1 + trial % 3
        parts = [torch.from_numpy(rng.random(rng.integers(1, 5000)).astype(np.float32)) for _ in range(n_parts)]
        if trial % 4 == 0:  # thousands of ties
            parts = [torch.round(p * 20) / 20 for p in parts]
        flat = torch.cat(parts)
        hint = Hint()
        for step in range(4):  # the hint carries over steps while the values drift
            j = int(rng.integers(1, flat.numel() + 1))
            if step == 2:
                hint.value, hint.width = float(rng.random() * 10 - 5), 0.0  # a wild hint
            got = kth_smallest(parts, j, hint)
            assert float(got) == float(np.sort(flat.numpy(), kind="stable")[j - 1]), (trial, step, j)
            parts = [p + torch.from_numpy(rng.normal(0, 1e-3, p.numel()).astype(np.float32)) for p in parts]
            flat = torch.cat(parts)
