"""Fast CPU convolutions of the official STOP variant's pixel-space prompter (`variant="official"`).

The released prompter is a stack of "same" Conv3d with (3, 11, 11) kernels over [B, C, T, 224, 224] frames (about
74 GMAC per 12-frame video, more than the ViT-B/32 itself). `PlaneFFTConv3d` computes the same function through
2-D real FFTs over (H, W) only: every input plane is transformed once, the kernel's (kh, kw) taps become one complex
number per frequency, and the few temporal taps and the channel mixing are `kt` accumulated batched matmuls per
frequency (`out[co, t] = sum_ci sum_dt K[co, ci, dt] X[ci, t + dt - kt // 2]`, complex numbers as interleaved real
pairs). For the prompter stack that is a few GFLOP instead of 74 GMAC. Gradients flow through `torch.fft` and the matmul like through the direct convolution.

This file only depends on torch: `modeling_stop.py` imports it relatively, so `save_pretrained` copies it.
"""

from __future__ import annotations

import contextlib
import math
import threading

import torch
from torch import nn


def fast_fft_length(n: int) -> int:
    """Smallest m >= n whose prime factors are 2, 3 and 5."""
    while True:
        m = n
        for f in (2, 3, 5):
            while m % f == 0:
                m //= f
        if m == 1:
            return n
        n += 1


def shifted_dft_matrix(length: int, taps: int, rows: int, device, dtype=torch.complex64) -> torch.Tensor:
    """[rows, taps] with entry (u, a) = exp(2 pi i u (a - taps // 2) / length): multiplying a spectrum by
    `sum_a w[a] E[u, a]` is the correlation with the centred kernel w (output i reads x[i + a - taps // 2])."""
    u = torch.arange(rows, dtype=torch.float64)
    a = torch.arange(taps, dtype=torch.float64) - taps // 2
    angle = (2 * math.pi / length) * torch.outer(u, a).remainder(length)
    return torch.polar(torch.ones_like(angle), angle).to(device=device, dtype=dtype)


_THREAD = threading.local()

# In the reused buffers, the FFTs run one frame's planes (`PlaneFFTConv3d`) or one channel's volume (`FFTConv3d`)
# per call and the per-frequency products one block of frequencies at a time (all temporal taps while the block is in
# cache). On CPU a single call over the whole [T * B * C, 240, 240] stack, or a tap's pass over all frequencies, is up
# to 2x slower once its operands outgrow the cache, and torch's FFTs allocate (and page-fault in) temporaries the
# size of their whole input (`benchmarks/results/blocked_fft_ab_cpu.json`); every plane, volume and frequency is
# computed as in the single call: the same values up to float32 rounding (bit for bit in the A/B runs with 2
# threads; with one thread a 3-D FFT per volume differs from the batched call by ~2e-7). With autograd the single calls remain (no
# `out=` there). A switch for A/B measurements (`benchmarks/blocked_fft_ab.py`); `FFTConv3d` uses its buffers only
# when it is on.
_BLOCKED = True
_FREQUENCY_BLOCK = 4096


@contextlib.contextmanager
def reused_buffers():
    """Inside this context and outside autograd, `PlaneFFTConv3d` computes its large intermediates (and its output)
    in flat buffers kept per thread between calls, instead of allocating ~100-200 MB afresh every call (on glibc
    the allocator hands such blocks back to the system and page-faults them in again: ~10% of an official CPU
    forward). A convolution's output is then a view of those buffers, valid until the next such convolution in
    this thread: the caller must consume it first (`STOPOfficialSpatialPrompter.forward` does, before it returns).
    """
    previous = getattr(_THREAD, "active", False)
    _THREAD.active = True
    try:
        yield
    finally:
        _THREAD.active = previous


def buffer_fn(blocked_only: bool = False):
    """`buffer(name, shape, dtype)`: a view of this thread's reused flat buffer `name` (grown when too small) inside
    `reused_buffers()` and outside autograd (and, with `blocked_only`, while `_BLOCKED` is on); None otherwise (the
    caller allocates as usual)."""
    if not getattr(_THREAD, "active", False) or torch.is_grad_enabled() or (blocked_only and not _BLOCKED):
        return lambda name, shape, dtype: None
    workspace = _THREAD.__dict__.setdefault("buffers", {})  # kept for the thread's lifetime

    def buffer(name, shape, dtype):
        numel = math.prod(shape)
        flat = workspace.get((name, dtype))
        if flat is None or flat.numel() < numel:
            with torch.inference_mode(False):  # a normal tensor: usable in and outside inference mode
                flat = workspace[(name, dtype)] = torch.empty(numel, dtype=dtype)
        return flat[:numel].view(shape)

    return buffer


class PlaneFFTConv3d(nn.Conv3d):
    """A stride-1, "same"-padded Conv3d (odd kernel, zero padding) computed through 2-D real FFTs over its last two
    axes on CPU; elsewhere, or for any other configuration, the direct convolution. Parameters and state-dict keys
    are those of `nn.Conv3d`; outputs equal the direct convolution up to float32 rounding (relative 1e-6).

    The output is [B, C_out, T, H, W] stored as [T, B, C_out, H, W] (a permuted view): the next convolution of a
    stack reads its planes without a transpose. Outside autograd the kernel's spectrum is cached per weight
    version."""

    def _buffer_fn(self):
        return buffer_fn()

    def _fft_applies(self, x: torch.Tensor) -> bool:
        kernel = self.kernel_size
        return (
            x.device.type == "cpu"
            and x.dim() == 5
            and self.groups == 1
            and self.padding_mode == "zeros"
            and all(s == 1 for s in self.stride)
            and all(d == 1 for d in self.dilation)
            and all(k % 2 == 1 for k in kernel)
            and tuple(self.padding) == tuple(k // 2 for k in kernel)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._fft_applies(x):
            return super().forward(x)
        with torch.autocast("cpu", enabled=False):
            return self._fft_forward(x.float()).to(x.dtype)

    def _lengths(self, height: int, width: int) -> tuple[int, int]:
        # A circular correlation of length >= n + k // 2 leaves the "same" window free of wrap-around.
        return fast_fft_length(height + self.kernel_size[1] // 2), fast_fft_length(width + self.kernel_size[2] // 2)

    def kernel_spectrum(self, length_h: int, length_w: int) -> torch.Tensor:
        """The weight's spectrum K, per temporal tap, as the real matrix of the complex product `X @ K` on
        interleaved (real, imaginary) pairs: kt tensors [L_h * (L_w // 2 + 1), C_in * 2, C_out * 2], cached when no gradient
        is needed. (A real batched matmul: on CPU, torch's complex `bmm` of these small matrices is several times
        slower.)"""
        weight = self.weight
        needs_grad = torch.is_grad_enabled()  # cached spectra only outside autograd (inference tensors are not saved)
        key = (length_h, length_w, weight._version, weight.data_ptr(), weight.device, weight.dtype)
        cached = getattr(self, "_spectrum_cache", None)
        if not needs_grad and cached is not None and cached[0] == key:
            return cached[1]
        c_out, c_in, kt, kh, kw = weight.shape
        e_h = shifted_dft_matrix(length_h, kh, length_h, weight.device)  # [L_h, kh]
        e_w = shifted_dft_matrix(length_w, kw, length_w // 2 + 1, weight.device)  # [L_w', kw]
        # sum_b w[..., a, b] e_w[v, b] -> [C_out, C_in, kt, kh, L_w'], then sum_a e_h[u, a] (.)[a, ...]
        along_w = weight.float().to(torch.complex64) @ e_w.t()
        along_w = along_w.permute(2, 3, 4, 1, 0).reshape(kt, kh, -1)  # [kt, kh, L_w' * C_in * C_out]
        spectrum = (e_h @ along_w).view(kt, length_h * (length_w // 2 + 1), c_in, c_out)
        # rows (ci, re | im), columns (co, re | im): y_re = x_re K_re - x_im K_im, y_im = x_re K_im + x_im K_re, i.e.
        # row (ci, re) holds K[ci] as (re, im) pairs and row (ci, im) holds i K[ci]
        spectrum = torch.stack([torch.view_as_real(spectrum), torch.view_as_real(spectrum * 1j)], dim=3)
        spectrum = spectrum.view(kt, length_h * (length_w // 2 + 1), 2 * c_in, 2 * c_out).unbind(0)
        if not needs_grad:
            self._spectrum_cache = (key, spectrum)
        return spectrum

    def _fft_forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c_in, t, h, w = x.shape
        c_out, kt = self.out_channels, self.kernel_size[0]
        length_h, length_w = self._lengths(h, w)
        freqs = length_h * (length_w // 2 + 1)
        pad = kt // 2
        buffer = self._buffer_fn()
        frames_in = x.permute(2, 0, 1, 3, 4)  # [T, B, C_in, H, W]
        planes = buffer("planes", (t, b, c_in, length_h, length_w // 2 + 1), torch.complex64)
        if planes is None or not _BLOCKED:
            planes = torch.fft.rfft2(frames_in, s=(length_h, length_w), out=planes)  # [T, B, C_in, L_h, L_w']
        else:  # one frame's planes per call (see `_BLOCKED`)
            for frame, spectrum in zip(frames_in.unbind(0), planes.unbind(0)):
                torch.fft.rfft2(frame, s=(length_h, length_w), out=spectrum)
        # Frequencies first, [F, T + kt - 1, B, C_in], zero-padded in time for the temporal taps: every frequency
        # holds one [(T + kt - 1) * B, C_in] matrix, and the frames dt .. dt + T - 1 are its rows from dt * B on.
        spectra = buffer("spectra", (freqs, t + 2 * pad, b, c_in), torch.complex64)
        if spectra is None:
            spectra = planes.new_empty(freqs, t + 2 * pad, b, c_in)
        spectra[:, :pad] = 0
        spectra[:, pad + t :] = 0
        spectra[:, pad : pad + t] = planes.flatten(3).permute(3, 0, 1, 2)
        spectra = torch.view_as_real(spectra).view(freqs, (t + 2 * pad) * b, 2 * c_in)
        kernel = self.kernel_spectrum(length_h, length_w)  # kt x [F, 2 C_in, 2 C_out]
        products = buffer("products", (freqs, t * b, 2 * c_out), torch.float32)
        if products is None or not _BLOCKED:
            products = torch.bmm(spectra[:, : t * b], kernel[0], out=products)
            for dt in range(1, kt):
                products.baddbmm_(spectra[:, dt * b : (dt + t) * b], kernel[dt])
        else:  # all temporal taps of a block of frequencies while its products are in cache (see `_BLOCKED`)
            for start in range(0, freqs, _FREQUENCY_BLOCK):
                rows = slice(start, start + _FREQUENCY_BLOCK)
                block, inputs = products[rows], spectra[rows]
                torch.bmm(inputs[:, : t * b], kernel[0][rows], out=block)
                for dt in range(1, kt):
                    block.baddbmm_(inputs[:, dt * b : (dt + t) * b], kernel[dt][rows])
        out = torch.view_as_complex(products.view(length_h, length_w // 2 + 1, t, b, c_out, 2))
        if self.bias is not None:  # a constant over the plane is its zero frequency times the plane size
            out[0, 0] += self.bias.to(out.dtype) * (length_h * length_w)
        frames = buffer("frames", (t, b, c_out, length_h, length_w), torch.float32)
        frames = None if frames is None else frames.permute(3, 4, 0, 1, 2)  # [L_h, L_w, T, B, C_out]
        if frames is None or not _BLOCKED:
            frames = torch.fft.irfft2(out, s=(length_h, length_w), dim=(0, 1), out=frames)
        else:  # one frame's planes per call (see `_BLOCKED`)
            for i in range(t):
                torch.fft.irfft2(out[:, :, i], s=(length_h, length_w), dim=(0, 1), out=frames[:, :, i])
        return frames[:h, :w].permute(3, 4, 2, 0, 1)  # [B, C_out, T, H, W]


def plane_fft_same_conv3d(in_channels: int, out_channels: int, kernel) -> PlaneFFTConv3d:
    return PlaneFFTConv3d(in_channels, out_channels, tuple(kernel), padding=tuple(k // 2 for k in kernel))


__all__ = [
    "PlaneFFTConv3d",
    "buffer_fn",
    "fast_fft_length",
    "plane_fft_same_conv3d",
    "reused_buffers",
    "shifted_dft_matrix",
]
