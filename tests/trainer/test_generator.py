"""The GFMN generator and its seeded random base: size, exact reproducibility, init statistics."""
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from trainer.generator import BaseSpec, Generator, base_sha256, build_base, latents, prunable_names
from trainer.init import _log, normal, uniform

# sha256 of the default base (GFMN, nz 100, width 1, signed Kaiming constant, seed 0): if this
# changes, every stored mask in the world stops matching. Change it only with a format bump.
GOLDEN_DEFAULT_BASE = "cd98f6ee401be3b3deaee8a54124f8bf95b91a1fce18df7eb16fabc491704f9f"

SHA_SCRIPT = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
from trainer.generator import BaseSpec, build_base, base_sha256
print(base_sha256(build_base(BaseSpec())))
"""


def test_parameter_count_matches_paper():
    g = Generator(nz=100, width=1.0)
    assert sum(p.numel() for p in g.parameters()) == 11_745_539
    # first layer has no bias; every other conv has one
    assert g.input.bias is None and all(m.bias is not None for m in g.blocks[0].modules()
                                        if isinstance(m, torch.nn.Conv2d))


def test_shapes_and_the_tanh_output():
    """[B,3,64,64]; the last op is tanh of the output conv of BN-ReLU (DESIGN.md's end block)."""
    g = build_base(BaseSpec(width=0.125)).eval()
    seen = {}
    g.bn_out.register_forward_hook(lambda m, i, o: seen.update(h=o))
    x = g(latents(0, 0, 3, 100))
    assert x.shape == (3, 3, 64, 64)
    expected = torch.tanh(torch.nn.functional.conv2d(seen["h"].relu(), g.output.weight, g.output.bias,
                                                     padding=1))
    torch.testing.assert_close(x, expected)
    assert x.std() > 0.01 and not torch.equal(x[0], x[1])  # images depend on their latents


@pytest.mark.parametrize("threads", [1, 2])
def test_golden_base_sha_in_fresh_processes(threads):
    out = subprocess.run([sys.executable, "-c", SHA_SCRIPT, str(threads)], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == GOLDEN_DEFAULT_BASE


def test_base_sha_depends_on_every_part_of_the_spec():
    small = BaseSpec(width=0.125)
    ref = base_sha256(build_base(small))
    assert base_sha256(build_base(small)) == ref
    for other in (BaseSpec(width=0.125, seed=1), BaseSpec(width=0.125, init="kaiming_normal"),
                  BaseSpec(width=0.125, nz=64), BaseSpec(width=0.25)):
        assert base_sha256(build_base(other)) != ref


def test_signed_constant_values_and_balance():
    g = build_base(BaseSpec(width=0.25))
    w = g.blocks[1].conv1.weight  # [64,128? ...] conv weight
    fan = w.shape[1] * w.shape[2] * w.shape[3]
    c = np.float32(math.sqrt(2.0 / fan))
    vals = set(np.unique(w.numpy()).tolist())
    assert vals == {float(-c), float(c)}
    assert abs((w > 0).float().mean().item() - 0.5) < 0.01


def test_kaiming_normal_statistics():
    g = build_base(BaseSpec(width=0.25, init="kaiming_normal"))
    w = g.blocks[0].conv1.weight.double()
    fan = w.shape[1] * 9
    assert abs(w.mean().item()) < 0.02 * math.sqrt(2 / fan)
    assert abs(w.std().item() / math.sqrt(2.0 / fan) - 1) < 0.02


def test_exact_transforms_against_numpy():
    ss = np.random.SeedSequence(5)
    u = uniform(ss, 1000)
    raw = np.random.PCG64(np.random.SeedSequence(5)).random_raw(1000)
    np.testing.assert_array_equal(u, (raw >> 11) / 2.0**53)
    x = np.geomspace(1e-300, 1.0, 5000)
    np.testing.assert_allclose(_log(x), np.log(x), rtol=2e-15, atol=1e-15)
    z = normal(np.random.SeedSequence(3), 200_000)
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    # a Kolmogorov-Smirnov check against the normal CDF
    from scipy import stats
    assert stats.kstest(z, "norm").pvalue > 1e-3


def test_latents_depend_only_on_seed_and_index():
    a = latents(7, 0, 10, 100)
    b = latents(7, 4, 3, 100)
    torch.testing.assert_close(a[4:7], b, rtol=0, atol=0)
    assert not torch.equal(latents(8, 0, 1, 100), a[:1])


def test_prunable_names_cover_convs_only():
    names = prunable_names(Generator(width=0.125))
    assert "input.weight" in names and "input.bias" not in names
    assert "output.bias" in names and not any(".bn" in n or n.startswith("bn_") for n in names)


def test_width_rounds_channels_down_as_the_released_code():
    """ResnetG computes int(c * channel_multiplier): at width 1.4 that is 1433 (round: 1434)."""
    g = Generator(nz=100, width=1.4)
    assert [g.input.out_channels] + [b.conv1.out_channels for b in g.blocks] == [
        int(c * 1.4) for c in (1024, 512, 256, 128, 64)] == [1433, 716, 358, 179, 89]
    assert Generator(width=0.25).input.out_channels == 256  # the served bases are unchanged
