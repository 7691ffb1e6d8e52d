"""The official variant's FFT convolutions compute the direct convolutions' function (values and gradients)."""

import torch

from modeling_stop.modeling_stop import FFTConv3d
from modeling_stop.prompting_official import PlaneFFTConv3d, fast_fft_length, reused_buffers


def _pair(cls, c_in, c_out, kernel):
    torch.manual_seed(0)
    padding = tuple(k // 2 for k in kernel)
    fast = cls(c_in, c_out, kernel, padding=padding)
    direct = torch.nn.Conv3d(c_in, c_out, kernel, padding=padding)
    direct.load_state_dict(fast.state_dict())
    return fast, direct


def test_fast_fft_length_is_the_next_5_smooth_length():
    assert [fast_fft_length(n) for n in (1, 7, 11, 229, 241)] == [1, 8, 12, 240, 243]


def test_plane_fft_conv3d_equals_the_direct_convolution_values_and_gradients():
    fast, direct = _pair(PlaneFFTConv3d, 3, 4, (3, 5, 7))
    x = torch.randn(2, 3, 5, 13, 10, requires_grad=True)
    y_fast, y = fast(x), direct(x)
    assert y_fast.shape == y.shape == (2, 4, 5, 13, 10)
    torch.testing.assert_close(y_fast, y, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(y)
    grads_fast = torch.autograd.grad(y_fast, (x, fast.weight, fast.bias), g)
    grads = torch.autograd.grad(y, (x, direct.weight, direct.bias), g)
    for a, b in zip(grads_fast, grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_plane_fft_conv3d_stack_reads_its_own_permuted_output():
    torch.manual_seed(1)
    first, first_direct = _pair(PlaneFFTConv3d, 2, 3, (3, 3, 3))
    second, second_direct = _pair(PlaneFFTConv3d, 3, 2, (1, 5, 3))
    x = torch.randn(1, 2, 4, 9, 8).transpose(1, 2).contiguous().transpose(1, 2)  # a non-contiguous input
    torch.testing.assert_close(second(first(x)), second_direct(first_direct(x)), atol=1e-5, rtol=1e-5)


def test_plane_fft_conv3d_eval_cache_follows_weight_updates():
    fast, direct = _pair(PlaneFFTConv3d, 2, 2, (3, 3, 3))
    x = torch.randn(1, 2, 3, 6, 6)
    with torch.no_grad():
        before = fast(x)
        torch.testing.assert_close(fast(x), before)  # served from the cached kernel spectrum
        fast.weight.mul_(2.0)
        direct.weight.mul_(2.0)
        torch.testing.assert_close(fast(x), direct(x), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(fast(x), before)


def test_fft_conv3d_eval_cache_follows_weight_updates():
    fast, direct = _pair(FFTConv3d, 1, 2, (3, 5, 3))
    x = torch.randn(1, 1, 4, 7, 9)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), direct(x), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        fast.weight.add_(0.5)
        direct.weight.add_(0.5)
        torch.testing.assert_close(fast(x), direct(x), atol=1e-5, rtol=1e-5)


def test_cached_prompts_follow_parameter_updates_and_match_autograd_mode():
    from tests.tiny import tiny_stop

    model = tiny_stop(variant="official").eval()
    pixels = torch.randn(1, model.config.num_frames, 3, 32, 32)
    ids = torch.tensor([[model.config.text_config.bos_token_id, 5, 6, model.config.text_config.eos_token_id]])
    with torch.no_grad():
        first = model.get_video_features(pixel_values=pixels)
        torch.testing.assert_close(model.get_video_features(pixel_values=pixels), first, rtol=0, atol=0)
        text = model.get_text_features(input_ids=ids)
        model.prompt_generator.embedding.weight.mul_(1.5)  # an in-place update, as an optimizer step makes
        changed = model.get_video_features(pixel_values=pixels)
        changed_text = model.get_text_features(input_ids=ids)
    assert not torch.allclose(changed, first) and not torch.allclose(changed_text, text)
    torch.testing.assert_close(changed, model.get_video_features(pixel_values=pixels), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(changed_text, model.get_text_features(input_ids=ids), rtol=1e-5, atol=1e-6)


def test_reused_buffers_give_the_same_values_and_the_prompter_returns_no_view_of_them():
    fast, direct = _pair(PlaneFFTConv3d, 3, 4, (3, 5, 7))
    x, y = torch.randn(2, 3, 5, 13, 10), torch.randn(2, 3, 5, 13, 10)
    with torch.no_grad():
        expected = direct(x)
        with reused_buffers():
            first = fast(x)
            torch.testing.assert_close(first, expected, atol=1e-5, rtol=1e-5)
            fast(y)  # the next call in this thread writes its output over the previous one
            torch.testing.assert_close(first, direct(y), atol=1e-5, rtol=1e-5)
    with reused_buffers():  # with autograd: fresh tensors, gradients as without the context
        x.requires_grad_(True)
        out = fast(x)
        fast(y)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()

    from tests.tiny import tiny_stop

    model = tiny_stop(variant="official").eval()
    a, b = torch.randn(2, 1, model.config.num_frames, 3, 32, 32)
    allocated = model.get_video_features(pixel_values=a).detach()  # with autograd: no reused buffers
    for mode in (torch.inference_mode, torch.no_grad):
        with mode():
            feature_a = model.get_video_features(pixel_values=a)
            prompted_a = model.spatial_prompter(a)[0]
            kept = prompted_a.clone()
            model.spatial_prompter(b)
            torch.testing.assert_close(prompted_a, kept, rtol=0, atol=0)  # not overwritten by the next call
            torch.testing.assert_close(model.get_video_features(pixel_values=a), feature_a, rtol=0, atol=0)
        torch.testing.assert_close(feature_a, allocated, rtol=1e-5, atol=1e-6)


def test_blocked_ffts_and_products_give_the_single_calls_values(monkeypatch):
    import modeling_stop.prompting_official as prompting

    fast, direct = _pair(PlaneFFTConv3d, 3, 4, (3, 5, 7))
    x = torch.randn(2, 3, 5, 13, 10)
    monkeypatch.setattr(prompting, "_FREQUENCY_BLOCK", 7)  # 16 x 6 = 96 frequencies: 14 blocks, the last partial
    outputs = {}
    with torch.no_grad(), reused_buffers():
        for blocked in (False, True):
            monkeypatch.setattr(prompting, "_BLOCKED", blocked)
            outputs[blocked] = fast(x).clone()
        expected = direct(x)
    # bit for bit on the CPUs measured; the check allows float32 rounding (another FFT or BLAS build may differ)
    torch.testing.assert_close(outputs[True], outputs[False], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(outputs[True], expected, atol=1e-5, rtol=1e-5)


def test_fft_conv3d_in_reused_buffers_gives_the_same_values_and_a_fresh_output(monkeypatch):
    import modeling_stop.prompting_official as prompting

    for c_in, c_out in ((1, 3), (3, 1), (2, 2)):
        fast, direct = _pair(FFTConv3d, c_in, c_out, (3, 5, 3))
        x, y = torch.randn(2, c_in, 4, 9, 11), torch.randn(2, c_in, 4, 9, 11)
        with torch.no_grad():
            plain = fast(x)
            with reused_buffers():
                first = fast(x)
                fast(y)  # writes the same buffers: the first output is not a view of them
                monkeypatch.setattr(prompting, "_BLOCKED", False)  # the A/B baseline: no buffers
                unbuffered = fast(x)
                monkeypatch.setattr(prompting, "_BLOCKED", True)
        assert torch.equal(unbuffered, plain)
        # per-volume FFT calls: the batched call's values up to float32 rounding (bit for bit with 2 threads here)
        torch.testing.assert_close(first, plain, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(first, direct(x), atol=1e-5, rtol=1e-5)
