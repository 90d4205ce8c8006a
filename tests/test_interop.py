"""skscratch.interop.torch: the PyTorch twin of an SK-ResNeXt, and weights copied both ways.

The twin is checked in float64 (so that any difference is a real one, not rounding): the same
outputs, input gradients, parameter gradients and updated running statistics as skscratch, on
either backend, for the presets the benchmarks use.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch)")

from skscratch.backends import BACKENDS  # noqa: E402
from skscratch.interop.torch import (  # noqa: E402
    TorchSKResNeXt,
    from_torch,
    state_dict_from_torch,
    state_dict_to_torch,
    to_torch,
)
from skscratch.losses import softmax_cross_entropy  # noqa: E402
from skscratch.models import PRESETS, SKNetConfig, SKResNeXt  # noqa: E402

# The paper networks' ImageNet stem (7x7 stride-2 convolution, max pool) on a small network.
# and the ablations: the branches summed without attention, one branch (ResNeXt's block), other
# kernel sizes and dilations per branch.
CONFIGS = PRESETS | {
    "tiny, ImageNet stem": SKNetConfig(
        stem=8, mids=(8, 16), outs=(16, 32), depths=(1, 1), groups=4, L=8, strides=(1, 2),
        stem_type="imagenet",
    ),
    "tiny, summed branches": dataclasses.replace(PRESETS["tiny"], attention=False),
    "tiny, one branch": dataclasses.replace(PRESETS["tiny"], branches=1),
    "tiny, 3x3 and 5x5": dataclasses.replace(
        PRESETS["tiny"], kernel_sizes=(3, 5), dilations=(1, 1)
    ),
    "tiny, 5x5 and 3x3 summed": dataclasses.replace(
        PRESETS["tiny"], kernel_sizes=(5, 3), dilations=(1, 3), attention=False
    ),
}  # fmt: skip


def _model(preset: str, seed: int = 0, backend: str | None = None) -> SKResNeXt:
    model = SKResNeXt(CONFIGS[preset], seed=seed, backend=backend).astype(np.float64)
    # Every block starts as its shortcut (bn3's scale is 0); give the residual paths weight.
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        if name.endswith("bn3.weight"):
            p.data = rng.uniform(0.5, 1.5, p.data.shape)
    return model


def assert_close(ours, theirs, rtol, name=""):
    """Equal to rtol, entries near zero measured against the largest: a sum of many products
    rounds to about eps times its terms, whatever its own size."""
    scale = np.abs(theirs).max()
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol * scale, err_msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "preset",
    ["tiny", "default", "bench535k", "tiny, ImageNet stem", "tiny, summed branches",
     "tiny, one branch", "tiny, 3x3 and 5x5", "tiny, 5x5 and 3x3 summed"],
)  # fmt: skip
def test_twin_computes_the_same_outputs_gradients_and_statistics(preset, backend):
    model = _model(preset, backend=backend)
    net = to_torch(model)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 3, 32, 32))
    y = rng.integers(0, 10, 3)

    logits = model.forward(x)
    loss, dlogits = softmax_cross_entropy(logits, y)
    dx = model.backward(dlogits)
    xt = torch.tensor(x, requires_grad=True)
    out = net(xt)
    loss_t = torch.nn.functional.cross_entropy(out, torch.from_numpy(y))
    loss_t.backward()

    # float64 throughout: the two differ by the rounding of their sums only (the fast backend's
    # batch norm takes the variance as E[x^2] - E[x]^2, which rounds a little more).
    assert_close(logits, out.detach().numpy(), rtol=1e-10)
    assert loss == pytest.approx(loss_t.item(), rel=1e-12)
    assert_close(dx, xt.grad.numpy(), rtol=1e-9)
    theirs = dict(net.named_parameters())
    assert set(theirs) == {name for name, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        assert_close(p.grad, theirs[name].grad.numpy(), rtol=1e-8, name=name)
    torch_state = net.state_dict()
    for name, value in model.state_dict().items():  # includes the updated running statistics
        assert_close(value, torch_state[name].numpy(), rtol=1e-12, name=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_mode_uses_the_same_running_statistics(backend):
    model = _model("tiny", backend=backend)
    model.forward(np.random.default_rng(2).standard_normal((4, 3, 32, 32)))  # update them
    model.eval()
    net = to_torch(model)
    assert not net.training
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32))
    with torch.no_grad():
        out = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.forward(x), out, rtol=1e-10, atol=1e-12)


def test_weights_go_to_torch_and_back_unchanged():
    model = SKResNeXt(PRESETS["tiny"], seed=4)
    net = to_torch(model)
    assert next(net.parameters()).dtype == torch.float32
    back = from_torch(net)
    assert back.config == model.config
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert theirs[name].dtype == ours[name].dtype
        np.testing.assert_array_equal(theirs[name], ours[name])


def test_training_continues_in_torch_and_comes_back():
    """A step taken in PyTorch changes the weights that come back, to exactly PyTorch's."""
    net = to_torch(SKResNeXt(PRESETS["tiny"], seed=5))
    before = state_dict_from_torch(net.state_dict())
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x = torch.from_numpy(np.random.default_rng(6).standard_normal((4, 3, 32, 32), np.float32))
    torch.nn.functional.cross_entropy(net(x), torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    model = from_torch(net)
    after = model.state_dict()
    assert not np.array_equal(after["fc.weight"], before["fc.weight"])
    for name, value in net.state_dict().items():
        if not name.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(after[name], value.numpy())


def test_num_batches_tracked_is_dropped_and_restored():
    net = TorchSKResNeXt(PRESETS["tiny"])
    state = state_dict_from_torch(net.state_dict())
    assert not any(k.endswith("num_batches_tracked") for k in state)
    restored = state_dict_to_torch(state, net.state_dict())
    assert restored.keys() == net.state_dict().keys()
    net.load_state_dict(restored)  # strict: nothing missing, nothing left over


def test_a_state_of_another_network_is_refused_by_name():
    net = TorchSKResNeXt(PRESETS["tiny"])
    state = SKResNeXt(PRESETS["tiny"]).state_dict()
    del state["fc.bias"]
    state["extra.weight"] = np.zeros(1, np.float32)
    with pytest.raises(ValueError, match=r"missing \['fc.bias'\], unexpected \['extra.weight'\]"):
        state_dict_to_torch(state, net.state_dict())


def test_from_torch_refuses_other_modules():
    with pytest.raises(TypeError, match="TorchSKResNeXt, got Linear"):
        from_torch(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_label_smoothing_is_torchs(smoothing):
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((6, 10)) * 3
    y = rng.integers(0, 10, 6)
    loss, dlogits = softmax_cross_entropy(logits, y, smoothing=smoothing)
    z = torch.tensor(logits, requires_grad=True)
    theirs = torch.nn.functional.cross_entropy(z, torch.from_numpy(y), label_smoothing=smoothing)
    theirs.backward()
    assert loss == pytest.approx(theirs.item(), rel=1e-12)
    np.testing.assert_allclose(dlogits, z.grad.numpy(), rtol=1e-10, atol=1e-14)
