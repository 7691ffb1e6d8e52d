"""Gradient checkpointing of the vision blocks: same loss and same prompt gradients, less activation memory."""

import pytest
import torch

import modeling_stop.modeling_stop as modeling
import modeling_stop.prompting_paper as prompting_paper

from .test_modeling import _text, _video
from .tiny import tiny_stop


def _loss_and_grads(model, checkpointed: bool):
    if checkpointed:
        model.gradient_checkpointing_enable()
    else:
        model.gradient_checkpointing_disable()
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(123)  # the same dropout masks in both runs (checkpointing replays the RNG state)
    loss = model(input_ids=_text(n=2), pixel_values=_video(), return_loss=True).loss
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_checkpointed_vision_blocks_give_the_prompts_the_same_gradients(variant, monkeypatch):
    model = tiny_stop(variant=variant)
    assert model.supports_gradient_checkpointing
    loss, grads = _loss_and_grads(model, checkpointed=False)

    calls = []
    original = modeling.checkpoint

    def counting_checkpoint(function, *args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return original(function, *args, **kwargs)

    monkeypatch.setattr(modeling, "checkpoint", counting_checkpoint)
    monkeypatch.setattr(prompting_paper, "checkpoint", counting_checkpoint)  # the paper variant's own layer loop
    checkpointed_loss, checkpointed_grads = _loss_and_grads(model, checkpointed=True)

    # Every vision block went through a non-reentrant checkpoint.
    assert calls == [False] * model.config.vision_config.num_hidden_layers
    torch.testing.assert_close(checkpointed_loss, loss, rtol=0, atol=1e-6)
    assert set(checkpointed_grads) == set(grads)
    # The vision-side prompt modules (global prompts, adapters, prompt generator) get gradients at all ...
    for name in ("global_prompts", "vision_adapters.0.fc2.weight"):
        assert name in grads and grads[name].abs().sum() > 0, name
    assert not any(name.startswith("clip.") for name in grads)
    # ... and the same ones.
    for name, grad in grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_checkpointing_is_off_by_default_and_in_eval():
    model = tiny_stop()
    assert model.gradient_checkpointing is False
    model.gradient_checkpointing_enable()
    assert model.gradient_checkpointing is True
    model.eval()
    with torch.no_grad():
        eval_features = model.get_video_features(_video())
    model.gradient_checkpointing_disable()
    with torch.no_grad():
        torch.testing.assert_close(model.get_video_features(_video()), eval_features, rtol=0, atol=0)


def saved_activation_bytes(model, pixel_values, input_ids) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one training forward (activation memory)."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(input_ids=input_ids, pixel_values=pixel_values, return_loss=True).loss.backward()
    return total


def test_checkpointing_keeps_fewer_activations_for_the_backward_pass():
    model = tiny_stop(variant="paper", clip_kwargs={"vision_layers": 4})
    video, text = _video(), _text(n=2)
    model.gradient_checkpointing_disable()
    full = saved_activation_bytes(model, video, text)
    model.gradient_checkpointing_enable()
    checkpointed = saved_activation_bytes(model, video, text)
    assert checkpointed < 0.7 * full, (checkpointed, full)
