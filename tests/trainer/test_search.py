"""The mask search: AMA and loss against hand computations, learning, resume, cancel, baselines."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.data import open_dataset
from trainer.generator import BaseSpec
from trainer.masks import decode_mask
from trainer.objective import AdamMovingAverage, MomentMatching
from trainer.search import SearchCancelled, config_from, learning_rate, search
from trainer.stats import Moments

SPEC = BaseSpec(width=0.125)


@pytest.fixture(scope="module")
def emoji64(emoji_google_dir, tmp_path_factory) -> Path:
    """64 real emoji images: enough for moments, small enough for a 2-core CPU."""
    d = tmp_path_factory.mktemp("emoji64")
    for p in sorted(emoji_google_dir.glob("*.png"))[:64]:
        shutil.copy(p, d / p.name)
    return d


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def quick(**kw):
    base = dict(features="random", iterations=6, batch_size=4, lr=5e-3, ama=False, layer_norm=True,
                bn_batches=2, preview_every=0, checkpoint_every_s=0.0)
    return config_from("paper", **{**base, **kw})


def test_ama_update_matches_hand_computation():
    rng = np.random.default_rng(0)
    lr, b1, b2, eps = 1e-2, 0.5, 0.999, 1e-8
    ama = AdamMovingAverage(5, lr, (b1, b2), eps)
    v, m, u = np.zeros(5), np.zeros(5), np.zeros(5)
    for t in range(1, 8):
        target = rng.normal(size=5)
        got = ama.update(torch.tensor(target, dtype=torch.float32)).numpy()
        g = v - target
        m = b1 * m + (1 - b1) * g
        u = b2 * u + (1 - b2) * g * g
        v = v - lr * (m / (1 - b1 ** t)) / (np.sqrt(u / (1 - b2 ** t)) + eps)
        np.testing.assert_allclose(got, v, rtol=1e-5, atol=1e-7)


def _moments(rng, shapes):
    return Moments([torch.tensor(rng.normal(size=int(np.prod(s)))) for s in shapes],
                   [torch.tensor(rng.uniform(0.5, 2, size=int(np.prod(s)))) for s in shapes], n=100)


def _real_sample(rng, shapes, n=40):
    """Real features per layer [n, F_l] and their Moments as the search caches them."""
    from trainer.stats import RunningMoments

    real = [rng.normal(1.0, 2.0, size=(n, int(np.prod(s)))) for s in shapes]
    rm = RunningMoments()
    for i in range(0, n, 16):  # streamed in batches, as real_moments does
        rm.update([torch.tensor(r[i:i + 16]) for r in real])
    return real, rm.result()


def test_paper_loss_is_eq3_summed_over_all_features():
    """Eq. 3: sum_j ||mu_r^j - mu_f^j||^2 + ||sigma_r^j - sigma_f^j||^2, as the released code's one
    dot product over the concatenated features, with unbiased variances on both sides."""
    rng = np.random.default_rng(1)
    shapes = [(2, 3, 3), (4, 1, 1), (5, 2, 2)]
    real, moments = _real_sample(rng, shapes)
    feats = [torch.tensor(rng.normal(size=(6, *s)), dtype=torch.float32) for s in shapes]
    cfg = config_from("paper")
    obj = MomentMatching(moments, ama=False, layer_norm=cfg.layer_norm, var_weight=cfg.var_weight,
                         reduction=cfg.reduction, unbiased=cfg.unbiased_var)
    loss, plain = obj(feats)
    fake = np.concatenate([f.numpy().reshape(6, -1).astype(np.float64) for f in feats], axis=1)
    r = np.concatenate(real, axis=1)
    d_mu = r.mean(0) - fake.mean(0)
    d_var = r.var(0, ddof=1) - fake.var(0, ddof=1)
    ref = d_mu @ d_mu + d_var @ d_var
    assert plain == pytest.approx(ref, rel=1e-5)
    assert float(loss) == pytest.approx(ref, rel=1e-5)
    assert obj.record["name"] == "eq3" and obj.record["reduction"] == "sum"
    # a per-layer mean (the old reduction) would weight layer l by 1/F_l: not the same loss
    per_layer_mean = sum(np.mean((rr.mean(0) - ff.mean(0)) ** 2) + np.mean((rr.var(0, ddof=1) - ff.var(0, ddof=1)) ** 2)
                         for rr, ff in zip(real, [f.numpy().reshape(6, -1) for f in feats]))
    assert abs(per_layer_mean - ref) > 0.1 * ref


def test_project_objective_is_layer_normalised_mean():
    rng = np.random.default_rng(1)
    shapes = [(2, 3, 3), (4, 1, 1)]
    real = _moments(rng, shapes)
    feats = [torch.tensor(rng.normal(size=(6, *s)), dtype=torch.float32) for s in shapes]
    for layer_norm, var_weight in ((False, 1.0), (True, 1.0), (True, 0.25), (False, 0.0)):
        obj = MomentMatching(real, ama=False, layer_norm=layer_norm, var_weight=var_weight,
                             reduction="layer-mean", unbiased=False)
        loss, plain = obj(feats)
        ref = 0.0
        for f, mu_r, var_r in zip(feats, real.mean, real.var):
            f = f.numpy().reshape(6, -1).astype(np.float64)
            mu_r, var_r = mu_r.numpy(), var_r.numpy()
            s2 = np.mean(mu_r ** 2 + var_r) if layer_norm else 1.0
            ref += np.mean((mu_r - f.mean(0)) ** 2) / s2 + var_weight * np.mean((var_r - f.var(0)) ** 2) / s2 ** 2
        assert plain == pytest.approx(ref, rel=1e-5)
        assert float(loss) == pytest.approx(ref, rel=1e-5)
    assert config_from("demo").reduction == "layer-mean" and config_from("demo").layer_norm
    assert MomentMatching(real, ama=False, layer_norm=True, reduction="layer-mean").record["name"] == "layer-normalised"


def test_ama_surrogate_gradient_uses_the_moving_average():
    """With AMA (Eq. 3 summed), d S / d x_b = -2 v_mu / B - 2 v_var 2 (x_b - mu) / (B - 1)."""
    rng = np.random.default_rng(2)
    real = _moments(rng, [(3, 2, 2)])
    obj = MomentMatching(real, ama=True, ama_lr=0.1)
    f = torch.tensor(rng.normal(size=(5, 3, 2, 2)), dtype=torch.float32, requires_grad=True)
    s, _ = obj([f])
    s.backward()
    v_mu, v_var = obj.ama[0].v.numpy(), obj.ama[1].v.numpy()
    x = f.detach().numpy().reshape(5, -1)
    ref = -2 * v_mu / 5 - 2 * v_var * 2 * (x - x.mean(0)) / 4
    np.testing.assert_allclose(f.grad.numpy().reshape(5, -1), ref, rtol=1e-4, atol=1e-8)
    # and after one update from zero v moved toward d = mu_r - mu_f by about lr
    d = real.mean[0].numpy() - x.mean(0)
    np.testing.assert_allclose(v_mu, 0.1 * np.sign(d), rtol=1e-3)


def test_learning_rate_schedule():
    cfg = config_from("paper", iterations=100, lr=1.0, warmup=10)
    assert learning_rate(cfg, 0) == pytest.approx(0.1)
    assert learning_rate(cfg, 9) == pytest.approx(1.0)
    assert learning_rate(cfg, 10) == pytest.approx(1.0)
    assert learning_rate(cfg, 55) == pytest.approx(0.5)
    assert learning_rate(cfg, 100) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.slow
def test_loss_falls_on_real_images(emoji64, cache):
    ds = open_dataset(emoji64, cache_dir=cache)
    res = search(SPEC, quick(iterations=14), ds, cache_dir=cache)
    losses = [l for _, l in res.losses]
    assert len(losses) == 14
    assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3]), losses
    mf = decode_mask(res.data)
    assert mf.meta["features"].startswith("random")  # the unit-test extractor says so
    assert json.loads(mf.meta["metrics"])["final_loss"] == pytest.approx(losses[-1])
    assert mf.info()["kept_fraction"] == pytest.approx(0.1, abs=0.005)


@pytest.mark.slow
@pytest.mark.parametrize("pruning,extra", [
    ("local", {}), ("global", {}),
    ("gradual", dict(ama=True, gradual_steps=4)),  # AMA state and the pruning schedule resume too
])
def test_resume_equals_uninterrupted(emoji64, cache, tmp_path, pruning, extra):
    ds = open_dataset(emoji64, cache_dir=cache)
    cfg = quick(pruning=pruning, iterations=5, **extra)
    full = search(SPEC, cfg, ds, cache_dir=cache, checkpoint=tmp_path / "a.ckpt")
    ckpt = tmp_path / "b.ckpt"
    seen = []
    with pytest.raises(SearchCancelled):
        search(SPEC, cfg, ds, cache_dir=cache, checkpoint=ckpt,
               progress=lambda p: seen.append(p.iteration), cancel=lambda: len(seen) >= 3)
    assert seen == [1, 2, 3] and ckpt.exists()
    resumed = search(SPEC, cfg, ds, cache_dir=cache, checkpoint=ckpt, resume=True)
    assert resumed.losses == full.losses
    a, b = decode_mask(full.data), decode_mask(resumed.data)
    assert {k: v.tobytes() for k, v in a.packed.items()} == {k: v.tobytes() for k, v in b.packed.items()}
    assert {k: v.tobytes() for k, v in a.bn.items()} == {k: v.tobytes() for k, v in b.bn.items()}
    strip = lambda m: {k: v for k, v in m.meta.items() if k != "created"}  # noqa: E731
    assert strip(a) == strip(b)
    # a checkpoint made with other settings is refused, not silently mixed
    with pytest.raises(ValueError, match="other settings"):
        search(SPEC, quick(pruning=pruning, iterations=5, lr=1e-3), ds, cache_dir=cache,
               checkpoint=ckpt, resume=True)


@pytest.mark.slow
def test_cancel_stops_within_one_iteration(emoji64, cache):
    ds = open_dataset(emoji64, cache_dir=cache)
    seen = []
    with pytest.raises(SearchCancelled):
        search(SPEC, quick(iterations=50), ds, cache_dir=cache,
               progress=lambda p: seen.append(p.iteration), cancel=lambda: bool(seen))
    assert seen == [1]


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"SLT_HOME": str(home), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-m", "trainer", *args], capture_output=True, text=True,
                          env=env, cwd=Path(__file__).parents[2], timeout=600)


@pytest.mark.slow
def test_cli_baselines_end_to_end(emoji64, tmp_path):
    home = tmp_path / "home"
    small = ["--width", "0.125", "--features", "random", "--batch-size", "4", "--bn-batches", "2"]
    r = _cli(home, "search", "--pruning", "random", "--k", "0.2", "--seed", "3",
             "--dataset", str(emoji64), "--out", str(tmp_path / "rand.safetensors"), "--width", "0.125")
    assert r.returncode == 0, r.stderr
    info = json.loads(_cli(home, "inspect", str(tmp_path / "rand.safetensors")).stdout)
    assert info["pruning"] == "random" and info["kept_fraction"] == pytest.approx(0.2, abs=0.01)
    assert info["dataset_sha256"] == open_dataset(emoji64, cache_dir=tmp_path / "c").dataset_sha256

    r = _cli(home, "train-dense", "--dataset", str(emoji64), "--out", str(tmp_path / "dense.safetensors"),
             "--iterations", "2", *small)
    assert r.returncode == 0, r.stderr
    r = _cli(home, "search", "--from-weights", str(tmp_path / "dense.safetensors"), "--dataset",
             str(emoji64), "--out", str(tmp_path / "pruned.safetensors"), "--iterations", "2", *small)
    assert r.returncode == 0, r.stderr
    # the pruned trained model is a ticket on the trained weights: usable with them, and only them
    r = _cli(home, "generate", "--mask", str(tmp_path / "pruned.safetensors"), "--n", "4",
             "--out", str(tmp_path / "pruned.png"))
    assert r.returncode == 2 and "--base-weights" in r.stderr and "Traceback" not in r.stderr
    r = _cli(home, "generate", "--mask", str(tmp_path / "pruned.safetensors"), "--base-weights",
             str(tmp_path / "dense.safetensors"), "--n", "4", "--out", str(tmp_path / "pruned.png"))
    assert r.returncode == 0, r.stderr
    from trainer.search import read_weights, weights_generator
    from trainer.ticket import build_ticket, generate
    pruned = decode_mask((tmp_path / "pruned.safetensors").read_bytes())
    dense = weights_generator(tmp_path / "dense.safetensors")
    ticket = build_ticket(pruned, base=dense)
    _, trained = read_weights(tmp_path / "dense.safetensors")
    for name, m in pruned.masks().items():  # the ticket is the trained weights times the mask
        torch.testing.assert_close(dict(ticket.named_parameters())[name], trained[name] * m)
    grid = np.asarray(Image.open(tmp_path / "pruned.png"))
    np.testing.assert_array_equal(grid[2:66, 2:66], generate(ticket, 0, 1)[0])
    r = _cli(home, "finetune", "--mask", str(tmp_path / "rand.safetensors"), "--dataset", str(emoji64),
             "--out", str(tmp_path / "ft.safetensors"), "--iterations", "2", *small)
    assert r.returncode == 0, r.stderr
    _, ft = read_weights(tmp_path / "ft.safetensors")
    m = decode_mask((tmp_path / "rand.safetensors").read_bytes()).masks()
    for name, mask in m.items():  # fine-tuning never revives a pruned weight
        assert (ft[name][~mask] == 0).all(), name
    r = _cli(home, "generate", "--weights", str(tmp_path / "ft.safetensors"), "--n", "4",
             "--out", str(tmp_path / "ft.png"))
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "ft.png").size[0] > 128


@pytest.mark.slow
def test_cli_generate_is_deterministic_across_processes_and_n(tmp_path):
    from trainer.search import SearchConfig, random_mask
    (tmp_path / "m.safetensors").write_bytes(random_mask(SPEC, SearchConfig(k=0.1, seed=1, bn_batches=2), "0" * 64))
    outs = []
    for n in (5, 2):
        d = tmp_path / f"out{n}"
        r = _cli(tmp_path, "generate", "--mask", str(tmp_path / "m.safetensors"), "--n", str(n),
                 "--seed", "9", "--out", str(d) + "/")
        assert r.returncode == 0, r.stderr
        outs.append([np.asarray(Image.open(d / f"{i:04d}.png")) for i in range(n)])
    for i in range(2):
        np.testing.assert_array_equal(outs[0][i], outs[1][i])
    assert not np.array_equal(outs[0][0], outs[0][1])
    r = _cli(tmp_path, "generate", "--mask", str(tmp_path / "m.safetensors"), "--n", "4",
             "--out", str(tmp_path / "grid.png"))
    assert r.returncode == 0 and Image.open(tmp_path / "grid.png").size == (2 * 66 + 2, 2 * 66 + 2)


def test_cli_errors_are_clear(tmp_path):
    r = _cli(tmp_path, "inspect", str(tmp_path / "missing.safetensors"))
    assert r.returncode == 2 and "no mask file" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "bad.safetensors").write_bytes(b"garbage-garbage-garbage")
    r = _cli(tmp_path, "inspect", str(tmp_path / "bad.safetensors"))
    assert r.returncode == 2 and "not a mask file" in r.stderr and "Traceback" not in r.stderr
    r = _cli(tmp_path, "search", "--k", "1.5", "--pruning", "random", "--dataset", str(tmp_path),
             "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "KEPT" in r.stderr and "Traceback" not in r.stderr
    for bad, message in ((["--n", "0"], "between 1 and"), (["--n", "-3"], "between 1 and"),
                         (["--device", "bogus"], "auto, cpu, cuda")):
        r = _cli(tmp_path, "generate", "--mask", str(tmp_path / "bad.safetensors"), "--out",
                 str(tmp_path / "g.png"), *bad)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_cli_moment_weights_reach_the_config(tmp_path):
    from trainer.cli import _config, build_parser

    a = build_parser().parse_args(["search", "--dataset", "d", "--out", "o", "--preset", "demo",
                                   "--var-weight", "0.25", "--ama", "--ama-lr", "0.003"])
    cfg = _config(a)
    assert (cfg.var_weight, cfg.ama, cfg.ama_lr, cfg.lr) == (0.25, True, 0.003, 1e-2)  # demo's lr kept
    assert _config(build_parser().parse_args(["search", "--dataset", "d", "--out", "o", "--no-ama"])).ama is False
    r = _cli(tmp_path, "search", "--var-weight", "-1", "--pruning", "random", "--dataset", str(tmp_path),
             "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "var_weight" in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.slow
def test_dense_baseline_trains_batchnorm_affine_as_gfmn(emoji64, cache):
    """The dense baseline trains every parameter, BatchNorm affine included (its init: 1 and 0)."""
    from trainer.generator import build_base
    from trainer.search import read_weights, train_dense

    ds = open_dataset(emoji64, cache_dir=cache)
    res = train_dense(SPEC, quick(iterations=3, lr=1e-2), ds, cache_dir=cache)
    path = Path(cache) / "dense.safetensors"
    path.write_bytes(res.data)
    _, trained = read_weights(path)
    init = dict(build_base(BaseSpec(width=0.125, init="xavier_uniform")).named_parameters())
    bn = [n for n in init if ".bn" in n or n.startswith("bn_")]
    assert bn and all(n.endswith((".weight", ".bias")) for n in bn)
    for name in bn:
        assert not torch.equal(trained[name], init[name]), f"{name} did not train"
    assert not torch.equal(trained["output.weight"], init["output.weight"])


@pytest.mark.slow
def test_dense_and_finetune_runs_give_snapshots_mid_run(emoji64, cache):
    """The reproduce suite scores snapshots of dense and fine-tuning runs (`select_every`, the
    dense rate's choice) as it does a search's: a copy in eval mode that generates, the run
    itself untouched, a fine-tuned ticket's pruned weights still zero."""
    from trainer.generator import latents
    from trainer.search import finetune, random_mask, train_dense

    ds = open_dataset(emoji64, cache_dir=cache)
    seen = []

    def progress(p):
        if p.iteration == 2:
            seen.append(p.snapshot())

    train_dense(SPEC, quick(iterations=3, lr=1e-2), ds, cache_dir=cache, progress=progress)
    assert len(seen) == 1 and not seen[0].training
    with torch.no_grad():
        x = seen[0](latents(0, 0, 2, SPEC.nz))
    assert x.shape == (2, 3, 64, 64) and torch.isfinite(x).all()

    mask = decode_mask(random_mask(SPEC, quick(k=0.3), ds.dataset_sha256))
    seen.clear()
    finetune(mask, quick(iterations=3, lr=1e-2), ds, cache_dir=cache, progress=progress)
    named = dict(seen[0].named_parameters())
    for name, keep in mask.masks().items():
        assert torch.all(named[name][~keep] == 0), name
        assert torch.any(named[name][keep] != 0), name


def test_paper_preset_is_eq3_as_released_and_never_swaps_vgg19():
    paper, none = config_from("paper"), config_from(None)
    for cfg in (paper, none):
        assert (cfg.reduction, cfg.layer_norm, cfg.var_weight, cfg.unbiased_var) == ("sum", False, 1.0, True)
        assert (cfg.ama, cfg.ama_lr, cfg.lr, cfg.batch_size, cfg.features) == (True, 1e-5, 5e-5, 64, "vgg19")
        assert (cfg.bias_score_range, cfg.global_threshold) == (1.0, "separate")
    demo = config_from("demo")
    assert (demo.reduction, demo.layer_norm, demo.bias_score_range, demo.global_threshold) == (
        "layer-mean", True, 0.1, "joint")


def test_cli_paper_preset_without_vgg19_is_a_clear_error(emoji64, tmp_path):
    """No VGG19 weights: the paper's recipe stops and says how to provide them; nothing is written."""
    env_home = tmp_path / "home"
    r = subprocess.run([sys.executable, "-m", "trainer", "search", "--dataset", str(emoji64), "--out",
                        str(tmp_path / "m.safetensors"), "--width", "0.125", "--iterations", "2"],
                       capture_output=True, text=True, cwd=Path(__file__).parents[2], timeout=600,
                       env={"SLT_HOME": str(env_home), "PATH": "/usr/bin:/bin",
                            "SLT_VGG19_WEIGHTS": str(tmp_path / "no-vgg19.pth")})
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "SLT_VGG19_WEIGHTS" in r.stderr and "--features vgg16-keras" in r.stderr
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.slow
def test_masks_record_objective_and_precision(emoji64, cache):
    ds = open_dataset(emoji64, cache_dir=cache)
    res = search(SPEC, quick(iterations=2, reduction="sum", layer_norm=False, unbiased_var=True), ds,
                 cache_dir=cache)
    meta = decode_mask(res.data).meta
    assert json.loads(meta["objective"]) == {"name": "eq3", "reduction": "sum", "layer_norm": False,
                                             "var_weight": 1.0, "variance": "unbiased", "ama": False,
                                             "ama_lr": None}
    assert meta["search_precision"] == "fp32"  # CPU never autocasts
    demo = search(SPEC, config_from("demo", features="random", iterations=2, batch_size=4, bn_batches=2,
                                    preview_every=0), ds, cache_dir=cache)
    assert json.loads(decode_mask(demo.data).meta["objective"])["name"] == "layer-normalised"


def test_cli_base_defaults_to_the_served_base(monkeypatch):
    """The CLI's base options default to SLT_BASE, as the service reads it; explicit ones win."""
    from trainer.cli import _spec, build_parser
    from trainer.settings import get_settings

    monkeypatch.setenv("SLT_BASE", "width=0.25,seed=3")
    get_settings.cache_clear()
    try:
        a = build_parser().parse_args(["search", "--dataset", "d", "--out", "o"])
        assert _spec(a) == BaseSpec(width=0.25, seed=3)
        a = build_parser().parse_args(["search", "--dataset", "d", "--out", "o", "--width", "0.5"])
        assert _spec(a) == BaseSpec(width=0.5, seed=3)
        monkeypatch.delenv("SLT_BASE")
        get_settings.cache_clear()
        assert _spec(build_parser().parse_args(["search", "--dataset", "d", "--out", "o"])) == BaseSpec()
    finally:
        get_settings.cache_clear()


def test_cli_objective_and_precision_flags_reach_the_config():
    from trainer.cli import _config, build_parser

    a = build_parser().parse_args(["search", "--dataset", "d", "--out", "o", "--preset", "demo",
                                   "--reduction", "sum", "--no-layer-norm", "--unbiased-var",
                                   "--bias-score-range", "1", "--global-threshold", "separate", "--no-amp"])
    cfg = _config(a)
    assert (cfg.reduction, cfg.layer_norm, cfg.unbiased_var, cfg.bias_score_range, cfg.global_threshold,
            cfg.amp) == ("sum", False, True, 1.0, "separate", False)
    assert _config(build_parser().parse_args(["search", "--dataset", "d", "--out", "o", "--amp"])).amp is True


def test_a_stored_config_from_before_eq3_resumes_the_search_it_started():
    """Job records written before the paper objective became Eq. 3 meant a per-layer mean."""
    from dataclasses import asdict

    from trainer.search import config_from_record

    old = asdict(config_from("fast"))
    for key in ("reduction", "unbiased_var", "bias_score_range", "global_threshold"):
        old.pop(key)
    cfg = config_from_record(old)
    assert (cfg.reduction, cfg.unbiased_var, cfg.bias_score_range, cfg.global_threshold) == (
        "layer-mean", False, 0.1, "joint")
    assert config_from_record(asdict(config_from("paper"))) == config_from("paper")


def test_batch_moments_match_torch_in_value_and_gradient():
    """The objective's fused moments against torch's own mean/var (values) and gradcheck
    (the hand-written backward), biased and unbiased."""
    from trainer.objective import batch_moments

    f = torch.randn(6, 40, dtype=torch.float64, requires_grad=True)
    for corr in (0, 1):
        mu, var = batch_moments(f, corr)
        assert torch.allclose(mu, f.mean(0)) and torch.allclose(var, f.var(0, correction=corr))
        assert torch.autograd.gradcheck(lambda x, c=corr: batch_moments(x, c), (f,))
        g_mu, g_var = torch.randn(40, dtype=torch.float64), torch.randn(40, dtype=torch.float64)
        ours = torch.autograd.grad((mu * g_mu).sum() + (var * g_var).sum(), f)[0]
        ref = torch.autograd.grad((f.mean(0) * g_mu).sum() + (f.var(0, correction=corr) * g_var).sum(), f)[0]
        assert torch.allclose(ours, ref)
