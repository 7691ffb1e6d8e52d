"""The frozen CLIP linears' CPU GEMM choice (`modeling_stop.prompting_paper.frozen_linear`): oneDNN outside autograd
where it is the faster GEMM, the same values as `nn.Linear` up to float32 rounding, `F.linear` with autograd."""

import pytest
import torch

import modeling_stop.prompting_paper as paper

ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def test_backend_choice_follows_the_environment_and_rejects_unknown_names(monkeypatch):
    monkeypatch.setenv("STOP_CPU_LINEAR", "mkl")
    assert paper._cpu_linear_backend() == "mkl"
    monkeypatch.setenv("STOP_CPU_LINEAR", "onednn")
    assert paper._cpu_linear_backend() == ("onednn" if ONEDNN else "mkl")
    monkeypatch.setenv("STOP_CPU_LINEAR", "cublas")
    with pytest.raises(ValueError, match="STOP_CPU_LINEAR must be auto, onednn or mkl"):
        paper._cpu_linear_backend()
    monkeypatch.setenv("STOP_CPU_LINEAR", "auto")
    assert paper._cpu_linear_backend() in ("onednn", "mkl")


@pytest.mark.skipif(not ONEDNN, reason="this torch build has no oneDNN linear")
def test_onednn_linear_gives_nn_linear_values_and_autograd_keeps_f_linear(monkeypatch):
    monkeypatch.setattr(paper, "CPU_LINEAR_BACKEND", "onednn")
    torch.manual_seed(0)
    linear = torch.nn.Linear(24, 40)
    x = torch.randn(2, 3, 7, 24)[:, :, :5]  # N-D and not contiguous, as the blocks' query rows
    with torch.no_grad():
        torch.testing.assert_close(paper.frozen_linear(linear, x), linear(x), atol=1e-5, rtol=1e-5)
    calls = []
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *a: calls.append(a) or linear(a[0]))
    with torch.inference_mode():
        paper.frozen_linear(linear, x)
    assert len(calls) == 1
    x.requires_grad_(True)
    out = paper.frozen_linear(linear, x)  # trainable weights: nn.Linear, so the weights get their gradients
    out.sum().backward()
    assert len(calls) == 1 and x.grad is not None and linear.weight.grad is not None
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert paper.frozen_linear(linear, x).dtype == torch.bfloat16  # autocast keeps its own linear
    assert len(calls) == 1


@pytest.mark.skipif(not ONEDNN, reason="this torch build has no oneDNN linear")
def test_frozen_onednn_linear_under_autograd_gives_nn_linear_values_and_input_gradients(monkeypatch):
    monkeypatch.setattr(paper, "CPU_LINEAR_BACKEND", "onednn")
    torch.manual_seed(0)
    linear = torch.nn.Linear(24, 40).requires_grad_(False)  # frozen, as the CLIP layers
    x = torch.randn(2, 3, 7, 24)[:, :, :5].requires_grad_(True)
    g = torch.randn(2, 3, 5, 40)
    out = paper.frozen_linear(linear, x)
    assert out.grad_fn is not None and "FrozenOneDNNLinear" in type(out.grad_fn).__name__
    (grad,) = torch.autograd.grad(out, x, g)
    x_ref = x.detach().clone().requires_grad_(True)
    expected = linear(x_ref)
    (grad_ref,) = torch.autograd.grad(expected, x_ref, g)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad, grad_ref, atol=1e-5, rtol=1e-5)
    assert linear.weight.grad is None
