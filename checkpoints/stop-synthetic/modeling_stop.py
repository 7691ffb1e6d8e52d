"""STOP: spatial-temporal dynamic prompting of a frozen CLIP for video (CVPR 2025).

`STOPModel` wraps a stock `CLIPModel` (kept frozen, its own forward untouched) and adds small prompt
modules, each one idea:

- `STOPPromptGenerator` / `STOPLinearPromptGenerator`: the input-independent deep prompts of every layer
  (the "shared latent space" of DGL) for both towers;
- `STOPAdapter`: the per-block residual adapter of both towers;
- global-local attention (`global_local_block`): frames attend to their own tokens plus the video's global
  prompts, the global prompts attend to everything;
- `STOPOfficialSpatialPrompter` / `STOPOfficialTemporalPrompter`: the released code's intra-frame (pixel space)
  and inter-frame prompts (`variant="official"`);
- `prompting_paper.py`: the paper's per-layer intra-frame and inter-frame prompting (`variant="paper"`);
  `STOPPaperSpatialPrompter` / `STOPPaperTemporalPrompter` here are its first layout (`paper_version=1`).
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import CLIPModel, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.utils import ModelOutput

from .configuration_stop import STOPConfig
from .prompting_official import buffer_fn, fast_fft_length, plane_fft_same_conv3d, reused_buffers
from .prompting_paper import (  # the attention head helpers are shared with the paper variant's blocks
    STOPFrameIdentity,
    STOPPaperSpatialPrompting,
    STOPPaperTemporalPrompting,
    _attention,
    _frozen_residual,
    _split_heads,
    encode_paper_video,
    frozen_linear,
)


@dataclass
class STOPOutput(ModelOutput):
    """
    Output of [`STOPModel`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): symmetric InfoNCE over the text-video similarity,
            returned when `return_loss=True`.
        logits_per_text (`torch.FloatTensor` of shape `(num_texts, num_videos)`): scaled cosine similarities
            (the authors' similarity matrix).
        logits_per_video (`torch.FloatTensor` of shape `(num_videos, num_texts)`): its transpose.
        text_embeds (`torch.FloatTensor` of shape `(num_texts, projection_dim)`): normalised text embeddings.
        video_embeds (`torch.FloatTensor` of shape `(num_videos, projection_dim)`): normalised video embeddings.
        spatial_mask (`torch.BoolTensor` of shape `(num_videos, num_frames, grid, grid)`, *optional*): regions
            selected by the spatial prompt (official mask layout: a period-`grid` pixel lattice, see the config;
            paper variant: patches).
        frame_weights (`torch.FloatTensor` of shape `(num_videos, num_frames)`, *optional*): normalised frame
            weights of the official inter-frame prompt.
        frame_variation (`torch.FloatTensor` of shape `(num_videos, num_frames - 1)`, *optional*): paper variant:
            variation of each gap between consecutive frames (with per-layer prompting: the mean over the prompt
            layers).
        inserted_tokens (`torch.LongTensor` of shape `(num_videos, num_frames - 1)`, *optional*): paper variant:
            prompt tokens inserted after each frame (with per-layer prompting: summed over the prompt layers).
        spatial_mask_per_layer (`torch.BoolTensor` of shape `(num_videos, prompt_layers, num_frames, grid, grid)`,
            *optional*): paper variant, `paper_version=2`: the regions of every layer of `config.paper_layers`
            (`spatial_mask` is the first of them).
        inserted_tokens_per_layer (`torch.LongTensor` of shape `(num_videos, prompt_layers, num_frames - 1)`,
            *optional*): paper variant, `paper_version=2`: tokens inserted after each frame at each prompt layer.
        frame_variation_per_layer (`torch.FloatTensor` of shape `(num_videos, prompt_layers, num_frames - 1)`,
            *optional*): paper variant, `paper_version=2`: each prompt layer's gap variation (`frame_variation` is
            their mean).
        prompt_video_embeds (`torch.FloatTensor` of shape `(num_videos, projection_dim)`, *optional*): models with a
            temporal head: the normalised video embedding of STOP's prompted backbone alone, before the gated head is
            added (`video_embeds` is the sum of the two).
    """

    loss: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    logits_per_video: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    video_embeds: torch.FloatTensor | None = None
    spatial_mask: torch.BoolTensor | None = None
    frame_weights: torch.FloatTensor | None = None
    frame_variation: torch.FloatTensor | None = None
    inserted_tokens: torch.LongTensor | None = None
    spatial_mask_per_layer: torch.BoolTensor | None = None
    inserted_tokens_per_layer: torch.LongTensor | None = None
    frame_variation_per_layer: torch.FloatTensor | None = None
    prompt_video_embeds: torch.FloatTensor | None = None


@dataclass
class STOPVideoEncoding(ModelOutput):
    """Unnormalised projected video features plus the diagnostics of the prompt modules (`prompt_video_features`:
    with a temporal head, the prompted backbone's own feature before the gated head is added)."""

    video_features: torch.FloatTensor | None = None
    prompt_video_features: torch.FloatTensor | None = None
    spatial_mask: torch.BoolTensor | None = None
    frame_weights: torch.FloatTensor | None = None
    frame_variation: torch.FloatTensor | None = None
    inserted_tokens: torch.LongTensor | None = None
    spatial_mask_per_layer: torch.BoolTensor | None = None
    inserted_tokens_per_layer: torch.LongTensor | None = None
    frame_variation_per_layer: torch.FloatTensor | None = None


@dataclass
class STOPTemporalPrompts(ModelOutput):
    """What a temporal prompter contributes: an offset to every frame's local prompts (official) and/or prompt
    tokens inserted after each frame with their slot mask (paper), plus diagnostics."""

    local_offset: torch.FloatTensor | None = None
    inserted: torch.FloatTensor | None = None
    inserted_mask: torch.BoolTensor | None = None
    frame_weights: torch.FloatTensor | None = None
    frame_variation: torch.FloatTensor | None = None
    inserted_tokens: torch.LongTensor | None = None


def contrastive_loss(logits: torch.Tensor) -> torch.Tensor:
    """One direction of InfoNCE, as transformers' CLIP: cross-entropy of row i against column i."""
    return F.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device))


def clip_loss(similarity: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (transformers' `clip_loss`): (CE(sim, diag) + CE(sim.T, diag)) / 2 over a square
    similarity matrix."""
    return (contrastive_loss(similarity) + contrastive_loss(similarity.t())) / 2


def check_video_inputs(values: torch.Tensor, video_mask: torch.Tensor | None, max_frames: int, name: str) -> None:
    """Reject what would otherwise flow on silently: more frames than the position tables hold, a `video_mask` of
    the wrong shape or with values other than 0/1, a video whose every frame is padding, non-finite values. Errors
    name the video (its index in the batch)."""
    batch, frames = values.shape[:2]
    if frames > max_frames:
        raise ValueError(
            f"{name} has {frames} frames per video but STOPConfig.max_frames is {max_frames} (the size of the frame "
            f"position tables): sample at most {max_frames} frames (processor num_frames) or build the model with "
            f"max_frames >= {frames}"
        )
    if video_mask is not None:
        if tuple(video_mask.shape) != (batch, frames):
            raise ValueError(
                f"video_mask must be [batch, frames] = {(batch, frames)} to match {name} of shape "
                f"{tuple(values.shape)}, got {tuple(video_mask.shape)}"
            )
        if video_mask.dtype != torch.bool and bool(((video_mask != 0) & (video_mask != 1)).any()):
            raise ValueError("video_mask must hold 1 (real frame) or 0 (padding) only")
        empty = ~video_mask.bool().any(dim=-1)
        if bool(empty.any()):
            raise ValueError(
                f"video_mask marks every frame of video {_indices(empty)} (index in the batch) as padding: a video "
                "needs at least one real frame; drop it from the batch or fix its mask"
            )
    if values.is_floating_point():
        bad = ~torch.isfinite(values).flatten(1).all(dim=-1)
        if bool(bad.any()):
            raise ValueError(
                f"{name} of video {_indices(bad)} (index in the batch) contain NaN or infinite values; check how "
                "those frames were decoded and normalised"
            )


def _indices(flags: torch.Tensor) -> str:
    return ", ".join(str(i) for i in flags.nonzero().flatten().tolist())


# ----------------------------------------------------------------------------------------------------------
# Building blocks shared by both variants
# ----------------------------------------------------------------------------------------------------------


class STOPAdapter(nn.Module):
    """Bottleneck adapter on the residual stream after attention (`LoRA` in the authors' code)."""

    def __init__(self, hidden_size: int, adapter_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, adapter_dim)
        self.act = nn.PReLU()
        self.fc2 = nn.Linear(adapter_dim, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class STOPMLP(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.act = ACT2FN["quick_gelu"]
        self.fc2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class STOPPromptBlock(nn.Module):
    """Pre-LN transformer block (no mask, QuickGELU MLP 4x) shared by the prompts of every layer."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = STOPMLP(width, 4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class STOPPromptGenerator(nn.Module):
    """Transformer "shared latent space": one table row per prompt token, one chunk of width D per layer."""

    def __init__(self, config: STOPConfig):
        super().__init__()
        vision, text = config.vision_config, config.text_config
        self.num_layers = config.prompt_layers
        self.width = vision.hidden_size
        self.num_text = config.num_text_prompts
        self.num_local = config.num_local_prompts
        # The official table owns one row per frame prompt (tying the model to num_frames); the paper variant
        # shares the local prompts across frames so one model runs on any frame count.
        self.num_frames = None if config.frame_shared_prompts else config.num_frames
        num_rows = self.num_text + self.num_local * (self.num_frames or 1)
        self.embedding = nn.Embedding(num_rows, self.num_layers * self.width)
        self.block = STOPPromptBlock(self.width, vision.num_attention_heads)
        self.text_mlp = STOPMLP(self.width, 2 * self.width, text.hidden_size)

    def forward(self, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns text prompts [layers, num_text, Dt] and local visual prompts [layers, T, num_local, D]."""
        if self.num_frames is not None and num_frames != self.num_frames:
            raise ValueError(
                f"This STOP model's transformer prompt generator was built for num_frames={self.num_frames} "
                f"(its table has one row per frame prompt) but the video has {num_frames} frames. Sample "
                f"{self.num_frames} frames (processor num_frames) or use variant='paper' / prompt_generator='linear'."
            )
        rows = self.embedding.weight.shape[0]
        # Row r holds token r of every layer: [rows, layers * D] -> [layers, rows, D].
        tokens = self.embedding.weight.view(rows, self.num_layers, self.width).transpose(0, 1)
        tokens = self.block(tokens)
        text = self.text_mlp(tokens[:, : self.num_text])
        visual = tokens[:, self.num_text :].reshape(self.num_layers, -1, self.num_local, self.width)
        return text, visual.expand(-1, num_frames, -1, -1)


class STOPLinearPromptGenerator(nn.Module):
    """Linear "shared latent space": frame-shared visual prompts, linear maps to text prefix/postfix prompts."""

    def __init__(self, config: STOPConfig):
        super().__init__()
        vision, text = config.vision_config, config.text_config
        self.num_layers = config.prompt_layers
        self.width = vision.hidden_size
        self.num_local = config.num_local_prompts
        if config.num_text_prompts != 2 * config.num_local_prompts:
            raise ValueError(
                "STOPConfig: the linear prompt generator maps each local prompt to one prefix and one postfix text "
                f"prompt, so num_text_prompts must be 2 * num_local_prompts ({2 * config.num_local_prompts}), "
                f"got {config.num_text_prompts}"
            )
        self.visual_prompts = nn.Parameter(torch.empty(1, self.num_local, self.num_layers * self.width))
        self.prefix_proj = nn.Linear(self.width, text.hidden_size)
        self.postfix_proj = nn.Linear(self.width, text.hidden_size)
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.normal_(self.visual_prompts, std=0.02)

    def forward(self, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.visual_prompts.view(self.num_local, self.num_layers, self.width).transpose(0, 1)
        text = torch.cat([self.prefix_proj(tokens), self.postfix_proj(tokens)], dim=1)
        visual = tokens.unsqueeze(1).expand(-1, num_frames, -1, -1)
        return text, visual


def global_local_block(layer, adapter, adapter_scale, global_tokens, frame_tokens, frame_valid=None, queries=None):
    """One frozen CLIP vision layer with global-local attention.

    global_tokens [B, G, D]; frame_tokens [B, T, S, D]. Frame tokens attend to [their video's global tokens;
    their own frame]; global tokens attend to [themselves; every frame token of their video]. The same
    frozen q/k/v/out projections and MLP serve both, then `x + MLP(ln_2(x)) + scale * adapter(x)`.
    `frame_valid` [B, T, S] (bool, optional) removes padded tokens (padded frames, empty inserted-prompt
    slots) from every key set. Only the first `queries` tokens of every frame (all by default) are computed past
    their keys and values: returns the global tokens [B, G, D] and those frame tokens [B, T, queries, D] (the video
    tower puts the tokens whose outputs no later layer reads, the local prompts that the next layer overwrites,
    last).
    """
    batch, frames, seq, dim = frame_tokens.shape
    num_global = global_tokens.shape[1]
    attn = layer.self_attn
    heads = attn.num_heads
    queries = seq if queries is None else queries

    hg, hf = layer.layer_norm1(global_tokens), layer.layer_norm1(frame_tokens)
    qg, kg, vg = (
        _split_heads(frozen_linear(p, hg), heads) for p in (attn.q_proj, attn.k_proj, attn.v_proj)
    )  # [B,H,G,hd]
    kf, vf = (_split_heads(frozen_linear(p, hf), heads) for p in (attn.k_proj, attn.v_proj))  # [B,T,H,S,hd]
    qf = _split_heads(frozen_linear(attn.q_proj, hf[:, :, :queries]), heads)  # [B,T,H,queries,hd]

    def frame_keys(g, f):  # [B,T,H,G+S,hd]
        return torch.cat([g.unsqueeze(1).expand(-1, frames, -1, -1, -1), f], dim=3)

    frame_mask = video_mask_ = None
    if frame_valid is not None:
        always = frame_valid.new_ones(batch, num_global)
        frame_mask = torch.cat([always.unsqueeze(1).expand(-1, frames, -1), frame_valid], dim=2)[:, :, None, None]
        video_mask_ = torch.cat([always, frame_valid.flatten(1)], dim=1)[:, None, None]
    out_f = _attention(qf, frame_keys(kg, kf), frame_keys(vg, vf), attn_mask=frame_mask)

    def video_keys(g, f):  # [B,H,G+T*S,hd]
        return torch.cat([g, f.transpose(1, 2).flatten(2, 3)], dim=2)

    out_g = F.scaled_dot_product_attention(qg, video_keys(kg, kf), video_keys(vg, vf), attn_mask=video_mask_)

    return (
        _frozen_residual(layer, adapter, adapter_scale, global_tokens, out_g),
        _frozen_residual(layer, adapter, adapter_scale, frame_tokens[:, :, :queries], out_f),
    )


def causal_text_block(layer, adapter, adapter_scale, hidden_states):
    """One frozen CLIP text layer (causal self-attention) with the residual adapter."""
    attn = layer.self_attn
    h = layer.layer_norm1(hidden_states)
    q, k, v = (_split_heads(frozen_linear(p, h), attn.num_heads) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return _frozen_residual(layer, adapter, adapter_scale, hidden_states, attended)


# ----------------------------------------------------------------------------------------------------------
# The official STOP modules (variant="official")
# ----------------------------------------------------------------------------------------------------------


def _same_conv3d(in_channels: int, out_channels: int, kernel) -> nn.Conv3d:
    return nn.Conv3d(in_channels, out_channels, tuple(kernel), padding=tuple(k // 2 for k in kernel))


class FFTConv3d(nn.Conv3d):
    """A "same"-padded stride-1 Conv3d computed through real FFTs on CPU (float32), the same function up to float
    rounding. The official inter-frame convolutions have large kernels ((3, 15, 25), (5, 11, 11)) over few channels
    and [T, N, D] token volumes: directly, their backward pass alone took half of a CPU training step."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return super().forward(x)
        size, pads = x.shape[2:], [k // 2 for k in self.kernel_size]
        # A circular convolution of length >= n + k // 2 per axis leaves the "same" window free of wrap-around.
        lengths = [fast_fft_length(n + p) for n, p in zip(size, pads)]
        dims = (2, 3, 4)
        b, c_in = x.shape[:2]
        half = [*lengths[:2], lengths[2] // 2 + 1]
        # Inside `reused_buffers()` and outside autograd the spectra and the full output are written into buffers
        # kept per thread, one channel's volume per FFT call (as in `PlaneFFTConv3d`: the same values up to float32
        # rounding, without the page faults of large temporaries); the returned tensor is always a fresh one.
        buffer = buffer_fn(blocked_only=True)
        with torch.autocast("cpu", enabled=False):
            spectrum = buffer("fft3_spectrum", (b, c_in, *half), torch.complex64)
            if spectrum is None:
                spectrum = torch.fft.rfftn(x.float(), s=lengths, dim=dims)
            else:  # one volume per call: torch's multi-dimensional FFT allocates temporaries of its whole input
                for volume, out in zip(x.float().flatten(0, 1), spectrum.flatten(0, 1)):
                    torch.fft.rfftn(volume, s=lengths, out=out)
            kernel = self.kernel_spectrum(lengths)  # [C_out, C_in, *half]
            # out[b, o] = sum_c spectrum[b, c] * kernel[o, c], as broadcast products over the few input channels
            # (the same operations with and without the buffers; faster here than einsum's complex matmul)
            product = buffer("fft3_product", (b, self.out_channels, *half), torch.complex64)
            if product is None:
                product = spectrum[:, :1] * kernel[None, :, 0]
                for c in range(1, c_in):
                    product = product + spectrum[:, c : c + 1] * kernel[None, :, c]
            else:
                torch.mul(spectrum[:, :1], kernel[None, :, 0], out=product)
                if c_in > 1:
                    term = buffer("fft3_term", product.shape, torch.complex64)
                    for c in range(1, c_in):
                        product.add_(torch.mul(spectrum[:, c : c + 1], kernel[None, :, c], out=term))
            full = buffer("fft3_full", (b, self.out_channels, *lengths), torch.float32)
            if full is None:
                full = torch.fft.irfftn(product, s=lengths, dim=dims)
            else:
                for volume, out in zip(product.flatten(0, 1), full.flatten(0, 1)):
                    torch.fft.irfftn(volume, s=lengths, out=out)
            out = full[:, :, pads[0] : pads[0] + size[0], pads[1] : pads[1] + size[1], pads[2] : pads[2] + size[2]]
            if self.bias is not None:
                out = out + self.bias.float().view(1, -1, 1, 1, 1)
            else:
                out = out.clone()  # never a view of the reused buffers
        return out.to(x.dtype)

    def kernel_spectrum(self, lengths) -> torch.Tensor:
        """rfftn of the flipped weight (correlation = flipped convolution), cached when no gradient is needed."""
        weight, dims = self.weight, (2, 3, 4)
        needs_grad = torch.is_grad_enabled()  # cached spectra only outside autograd (inference tensors are not saved)
        key = (tuple(lengths), weight._version, weight.data_ptr(), weight.device, weight.dtype)
        cached = getattr(self, "_spectrum_cache", None)
        if not needs_grad and cached is not None and cached[0] == key:
            return cached[1]
        kernel = torch.fft.rfftn(weight.float().flip(dims), s=lengths, dim=dims)
        if not needs_grad:
            self._spectrum_cache = (key, kernel)
        return kernel


def _fft_same_conv3d(in_channels: int, out_channels: int, kernel) -> FFTConv3d:
    return FFTConv3d(in_channels, out_channels, tuple(kernel), padding=tuple(k // 2 for k in kernel))


def pool_to_grid(pixels: torch.Tensor, grid: int, layout: str) -> torch.Tensor:
    """[B, T, H, W] -> [B, T, grid, grid] by averaging; `official` = period-grid lattice, `patch` = ViT patches."""
    b, t, h, w = pixels.shape
    p = h // grid
    if layout == "official":
        return pixels.reshape(b, t, p, grid, p, grid).mean(dim=(2, 4))
    return pixels.reshape(b, t, grid, p, grid, p).mean(dim=(3, 5))


def grid_to_pixels(cells: torch.Tensor, patch: int, layout: str) -> torch.Tensor:
    """Inverse layout of `pool_to_grid`: [B, T, grid, grid] -> [B, T, grid * patch, grid * patch]."""
    b, t, g, _ = cells.shape
    if layout == "official":
        return cells[:, :, None, :, None, :].expand(b, t, patch, g, patch, g).reshape(b, t, g * patch, g * patch)
    return cells[:, :, :, None, :, None].expand(b, t, g, patch, g, patch).reshape(b, t, g * patch, g * patch)


def top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Cells strictly greater than the (k+1)-th largest score of their frame: [B, T, g, g] -> bool."""
    flat = scores.flatten(2)
    threshold = flat.topk(k + 1, dim=-1).values[..., -1:]
    return (flat > threshold).view_as(scores)


def _lattice_sums(x: torch.Tensor, dim: int, period: int, pad: int) -> torch.Tensor:
    """Along `dim` (length n = periods * period), with `pad` zeros on each side: S[r] = sum_a x_pad[a * period + r]
    over the n / period lattice points a, for r in [0, period + 2 * pad)."""
    dim = dim % x.dim()
    periods = x.shape[dim] // period
    extra = -(-2 * pad // period)  # whole periods the padding spans
    widths = [0, 0] * (x.dim() - 1 - dim) + [pad, (periods + extra) * period - x.shape[dim] - pad]
    x = F.pad(x, widths).unflatten(dim, (periods + extra, period))
    sums = torch.cat([x.narrow(dim, shift, periods).sum(dim) for shift in range(extra + 1)], dim=dim)
    return sums.narrow(dim, 0, period + 2 * pad)


class STOPOfficialSpatialPrompter(nn.Module):
    """Intra-frame spatial prompt in pixel space, as released: `x + s * p + s * p * mask`."""

    stage = "pixels"

    def __init__(self, config: STOPConfig):
        super().__init__()
        c1, c2, c3 = config.prompter_channels
        k = config.prompter_kernel
        # On CPU through 2-D FFTs over (H, W) (`PlaneFFTConv3d`): ~20x fewer operations than the direct 3D conv.
        self.conv = nn.Sequential(
            plane_fft_same_conv3d(3, c1, k),
            plane_fft_same_conv3d(c1, c1, k),
            nn.PReLU(),
            plane_fft_same_conv3d(c1, c2, k),
            nn.PReLU(),
            plane_fft_same_conv3d(c2, c3, k),
        )
        self.mlp = nn.Sequential(
            nn.Linear(c3, config.prompter_mlp_dim), nn.PReLU(), nn.Linear(config.prompter_mlp_dim, 3)
        )
        self.dropout = nn.Dropout(config.prompter_dropout)
        # Receives no gradient through the hard top-k: it keeps its initial weights (as in the released code).
        self.region_score = _same_conv3d(3, 1, config.region_kernel)
        self.grid, self.patch = config.grid_size, config.patch_size
        self.top_k, self.layout, self.scale = config.spatial_top_k, config.mask_layout, config.spatial_prompt_scale

    def region_mask(self, video: torch.Tensor) -> torch.Tensor:
        """Top-k cells of the pooled region score; video [B, 3, T, H, W] -> bool [B, T, g, g]."""
        with torch.no_grad():  # behind the hard top-k: no gradient reaches the region conv
            if self.layout == "official":
                with torch.autocast(video.device.type, enabled=False):  # a small conv now: float32 costs nothing
                    cells = self.pooled_region_score(video.float())
            else:
                cells = pool_to_grid(self.region_score(video).squeeze(1), self.grid, self.layout)
        return top_k_mask(cells, self.top_k)

    def pooled_region_score(self, video: torch.Tensor) -> torch.Tensor:
        """`pool_to_grid(region_score(video), layout="official")` without the full-resolution convolution.

        The official cell (i, j) averages the conv output over the lattice {(a * g + i, b * g + j)}. The conv is
        linear, so that mean is the conv of the lattice sums `S[r, s] = sum_(a, b) x[a * g + r, b * g + s]` of the
        zero-padded input (r, s in [-k // 2, g + k // 2)), evaluated on the g x g grid: a conv over a
        [T, g + k - 1, g + k - 1] volume instead of [T, H, W] (about (H / g)^2 fewer multiply-adds)."""
        conv = self.region_score
        _, kh, kw = conv.kernel_size
        g = self.grid
        sums = _lattice_sums(_lattice_sums(video, 3, g, kh // 2), 4, g, kw // 2)  # [B, 3, T, g+kh-1, g+kw-1]
        cells = F.conv3d(sums, conv.weight, None, padding=(conv.kernel_size[0] // 2, 0, 0)).squeeze(1)
        count = (video.shape[3] // g) * (video.shape[4] // g)
        return cells / count + conv.bias  # [B, T, g, g]

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        video = pixel_values.transpose(1, 2)  # [B, 3, T, H, W]
        if video.device.type != "cpu":
            video = video.contiguous(memory_format=torch.channels_last_3d)
        with reused_buffers():  # the stack's output (a view of the reused buffers) is consumed by pixel_mlp here
            prompt = self.dropout(self.conv(video)).transpose(1, 2)  # [B, T, C, H, W]
            prompt = self.dropout(self.dropout(self.pixel_mlp(prompt)))  # [B, T, 3, H, W]
        mask = self.region_mask(video)
        mask_px = grid_to_pixels(mask, self.patch, self.layout).unsqueeze(2).to(prompt.dtype)
        return pixel_values + self.scale * prompt + self.scale * prompt * mask_px, mask

    def pixel_mlp(self, features: torch.Tensor) -> torch.Tensor:
        """`self.mlp` over the channels of every pixel, channels first: [B, T, C, H, W] -> [B, T, 3, H, W]."""
        fc1, act, fc2 = self.mlp
        b, t, c, h, w = features.shape
        if features.device.type != "cpu":
            x = features.reshape(b * t, c, h * w)
            x = act(torch.baddbmm(fc1.bias[:, None], fc1.weight.expand(b * t, -1, -1), x))
            x = torch.baddbmm(fc2.bias[:, None], fc2.weight.expand(b * t, -1, -1), x)
            return x.view(b, t, -1, h, w)
        # On CPU one frame at a time: its [C, H * W] planes and the hidden layer stay in cache (the batched
        # `baddbmm` above, with its expanded bias and the copy of the permuted input, took ~4x as long).
        frames = [frame.reshape(c, h * w) for video in features.unbind(0) for frame in video.unbind(0)]
        out = [fc2.bias[:, None].addmm(fc2.weight, act(fc1.bias[:, None].addmm(fc1.weight, f))) for f in frames]
        return torch.stack(out).view(b, t, -1, h, w)


class STOPOfficialTemporalPrompter(nn.Module):
    """Inter-frame prompt from the layer-0 patch tokens, added to every frame's local prompts at every layer."""

    def __init__(self, config: STOPConfig):
        super().__init__()
        vision = config.vision_config
        num_patches = config.grid_size**2
        self.attention = nn.MultiheadAttention(vision.hidden_size, vision.num_attention_heads, batch_first=True)
        self.inter_conv = nn.Sequential(
            _fft_same_conv3d(1, config.inter_channels, config.inter_kernel),
            nn.PReLU(),
            _fft_same_conv3d(config.inter_channels, 1, config.inter_kernel),
        )
        self.inter_mlp = nn.Sequential(
            nn.Linear(num_patches, config.inter_mlp_dim),
            nn.PReLU(),
            nn.Linear(config.inter_mlp_dim, config.num_local_prompts),
        )
        self.frame_weight = _fft_same_conv3d(1, 1, config.frame_weight_kernel)
        self.normalization, self.scale = config.frame_weight_norm, config.temporal_prompt_scale

    def normalize(self, weights: torch.Tensor) -> torch.Tensor:
        dims = None if self.normalization == "batch" else -1
        low = weights.amin(dim=dims, keepdim=dims is not None)
        span = weights.amax(dim=dims, keepdim=dims is not None) - low
        return torch.where(span > 0, (weights - low) / span.clamp_min(torch.finfo(weights.dtype).tiny), 0.0)

    def forward(self, tokens: torch.Tensor, region_mask: torch.Tensor | None, video_mask=None) -> STOPTemporalPrompts:
        """tokens [B, T, 1 + N, D] after ln_pre; region_mask [B, T, g, g] -> offsets [B, T, P, D], weights [B, T].
        As released, padded frames are not masked out."""
        b, t, _, d = tokens.shape
        patches = tokens[:, :, 1:].reshape(b, -1, d)
        mixed = self.attention(patches, patches, patches, need_weights=False)[0].view(b, 1, t, -1, d)
        with reused_buffers():  # the FFT convolutions' intermediates (their outputs are fresh tensors)
            weights = self.frame_weight(mixed).squeeze(1)  # [B, T, N, D]
            prompt = self.inter_conv(mixed).squeeze(1)  # [B, T, N, D]
        if region_mask is not None:
            weights = weights + weights * region_mask.flatten(2).unsqueeze(-1).to(weights.dtype)
        weights = self.normalize(weights.mean(dim=(2, 3)))
        prompt = self.inter_mlp(prompt.transpose(-1, -2)).transpose(-1, -2)  # [B, T, P, D]
        prompt = prompt + prompt * weights[:, :, None, None]
        return STOPTemporalPrompts(local_offset=self.scale * prompt, frame_weights=weights)


# ----------------------------------------------------------------------------------------------------------
# The paper's STOP modules (variant="paper"): token space, any geometry and frame count, batch-independent
# ----------------------------------------------------------------------------------------------------------


def cls_patch_attention(layer, tokens: torch.Tensor) -> torch.Tensor:
    """The frozen block's CLS-to-patch attention on tokens [B, T, 1 + N, D], averaged over heads: [B, T, N]."""
    attn = layer.self_attn
    h = layer.layer_norm1(tokens)
    q = _split_heads(frozen_linear(attn.q_proj, h[:, :, :1]), attn.num_heads)  # [B, T, H, 1, hd]
    k = _split_heads(frozen_linear(attn.k_proj, h), attn.num_heads)  # [B, T, H, 1 + N, hd]
    weights = (q @ k.transpose(-1, -2) * attn.scale).softmax(-1).mean(2)[:, :, 0, 1:]
    return weights / weights.sum(-1, keepdim=True)


def _to_grid(patches: torch.Tensor, grid: int) -> torch.Tensor:
    """[B, T, N, D] -> [B, D, T, g, g] for 3D convolutions over (time, rows, cols)."""
    b, t, _, d = patches.shape
    return patches.permute(0, 3, 1, 2).reshape(b, d, t, grid, grid)


class STOPPaperSpatialPrompter(nn.Module):
    """Intra-frame spatial prompting on patch tokens (paper, Fig. 2).

    The discriminative region of frame t is the top-k patches of `alpha * A_t + (1 - alpha) * M_t`, A_t the
    frozen CLS-to-patch attention and M_t a temporal-dynamics score (a Conv3d over frames t-1, t, t+1). An
    intra-frame prompter on (h_{t-1}, h_t, h_{t+1}) produces p_t, added to the selected patches weighted by
    their fused score (so both score branches receive gradients).
    """

    stage = "tokens"

    def __init__(self, config: STOPConfig):
        super().__init__()
        width, hidden = config.vision_config.hidden_size, config.paper_hidden_dim
        self.dynamics = nn.Conv3d(width, 1, 3, padding=1)
        self.conv = nn.Sequential(
            nn.Conv3d(width, hidden, 3, padding=1), nn.ReLU(), nn.Conv3d(hidden, hidden, 3, padding=1)
        )
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, width))
        self.dropout = nn.Dropout(config.paper_dropout)
        self.grid, self.top_k, self.alpha = config.grid_size, config.spatial_top_k, config.attention_alpha

    def forward(self, tokens: torch.Tensor, cls_attention: torch.Tensor, video_mask: torch.Tensor):
        """tokens [B, T, 1 + N, D] -> prompted tokens, region mask [B, T, g, g]."""
        b, t, _, _ = tokens.shape
        patches = tokens[:, :, 1:]
        # Padded frames read as the convolutions' zero padding, so padding never changes a video's output.
        valid = video_mask.to(patches.dtype)[:, None, :, None, None]  # [B, 1, T, 1, 1]
        grid = _to_grid(patches, self.grid) * valid
        dynamics = self.dynamics(grid).flatten(2).view(b, t, -1).softmax(-1)  # M_t
        score = self.alpha * cls_attention.to(dynamics.dtype) + (1 - self.alpha) * dynamics  # W_t
        region = torch.zeros_like(score, dtype=torch.bool).scatter_(-1, score.topk(self.top_k, dim=-1).indices, True)
        hidden = self.conv[2](self.conv[1](self.conv[0](grid)) * valid)
        prompt = self.dropout(self.mlp(hidden.flatten(3).permute(0, 2, 3, 1)))  # p_t [B, T, N, D]
        weight = region.to(score.dtype) * score * score.shape[-1]  # position mapping; mean score 1
        patches = patches + weight.unsqueeze(-1) * prompt
        return torch.cat([tokens[:, :, :1], patches], dim=2), region.view(b, t, self.grid, self.grid)


class STOPPaperTemporalPrompter(nn.Module):
    """Inter-frame prompting with dynamic insertion (paper, Fig. 2).

    Frame i's descriptor weighs its discriminative patches by `1 + beta`; the variation of gap i is
    `W_i = 1 - cos(f_i, f_{i+1})`. An inter-frame prompter (attention over the gaps, Conv-ReLU-Conv over time,
    a Linear with W injected, dropout) turns the SIGNED change `f_{i+1} - f_i` into up to `max_inserted_tokens`
    prompt tokens, of which the first `ceil(insertion_scale * W_i)` are inserted after frame i.
    """

    def __init__(self, config: STOPConfig):
        super().__init__()
        width, hidden = config.vision_config.hidden_size, config.paper_hidden_dim
        self.max_tokens, self.scale, self.beta = config.max_inserted_tokens, config.insertion_scale, config.region_beta
        self.proj_in = nn.Linear(2 * width, hidden)
        self.attention = nn.MultiheadAttention(hidden, max(1, hidden // 32), batch_first=True)
        self.conv = nn.Sequential(
            nn.Conv1d(hidden, hidden, 3, padding=1), nn.ReLU(), nn.Conv1d(hidden, hidden, 3, padding=1)
        )
        self.proj_out = nn.Linear(hidden + 1, self.max_tokens * width)
        self.dropout = nn.Dropout(config.paper_dropout)

    def forward(
        self, tokens: torch.Tensor, region: torch.Tensor | None, video_mask: torch.Tensor
    ) -> STOPTemporalPrompts:
        """tokens [B, T, 1 + N, D] (spatially prompted), region [B, T, g, g], video_mask [B, T] -> prompt tokens
        [B, T, K, D] inserted after each frame with their slot mask [B, T, K]."""
        b, t, _, d = tokens.shape
        if t == 1:  # a single frame has no gap to prompt
            empty = tokens.new_zeros(b, 0)
            return STOPTemporalPrompts(
                inserted=tokens.new_zeros(b, 1, self.max_tokens, d),
                inserted_mask=torch.zeros(b, 1, self.max_tokens, dtype=torch.bool, device=tokens.device),
                frame_variation=empty,
                inserted_tokens=empty.long(),
            )
        weights = torch.ones_like(tokens[:, :, 1:, 0])
        if region is not None:
            weights = weights + self.beta * region.flatten(2).to(tokens.dtype)  # [B, T, N]
        frames = (tokens[:, :, 1:] * weights.unsqueeze(-1)).sum(2) / weights.sum(2, keepdim=True)  # f_i
        valid = video_mask.bool()
        gap_valid = valid[:, :-1] & valid[:, 1:]
        variation = (1 - F.cosine_similarity(frames[:, :-1], frames[:, 1:], dim=-1)) * gap_valid
        counts = torch.ceil(self.scale * variation.detach()).clamp(max=self.max_tokens).long() * gap_valid

        x = self.proj_in(torch.cat([frames[:, :-1], frames[:, 1:] - frames[:, :-1]], dim=-1))  # [B, T-1, c]
        # A video whose gaps are all padding attends to itself only (its slots are empty anyway).
        padding = ~gap_valid & gap_valid.any(-1, keepdim=True)
        x = x + self.attention(x, x, x, key_padding_mask=padding, need_weights=False)[0]
        keep = gap_valid.unsqueeze(1).to(x.dtype)  # [B, 1, T-1]: padded gaps read as the convs' zero padding
        h = x.transpose(1, 2) * keep
        x = x + self.conv[2](self.conv[1](self.conv[0](h)) * keep).transpose(1, 2)
        prompts = self.dropout(self.proj_out(torch.cat([x, variation.unsqueeze(-1)], dim=-1)))
        prompts = prompts.view(b, t - 1, self.max_tokens, d)
        slots = torch.arange(self.max_tokens, device=tokens.device) < counts.unsqueeze(-1)
        # The last frame has no gap after it: an empty slot group keeps the layout [B, T, K, D].
        prompts = F.pad(prompts, (0, 0, 0, 0, 0, 1))
        slots = F.pad(slots, (0, 0, 0, 1))
        return STOPTemporalPrompts(
            inserted=prompts, inserted_mask=slots, frame_variation=variation, inserted_tokens=counts
        )


# ----------------------------------------------------------------------------------------------------------
# Order-aware temporal head (CLIP4Clip seqTransf)
# ----------------------------------------------------------------------------------------------------------


class STOPTemporalHead(nn.Module):
    """CLIP4Clip's sequential transformer over per-frame features: positions, N layers, residual, masked mean."""

    def __init__(self, config: STOPConfig):
        super().__init__()
        dim = config.projection_dim
        self.position_embeddings = nn.Embedding(config.max_frames, dim)
        layer = nn.TransformerEncoderLayer(
            dim, max(1, dim // 64), 4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, config.temporal_head_layers, enable_nested_tensor=False)

    def forward(self, frame_features: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        """frame_features [B, T, E] (projected, unnormalised), video_mask [B, T] -> [B, E]."""
        t = frame_features.shape[1]
        positions = self.position_embeddings.weight[:t].to(frame_features.dtype)
        x = frame_features + self.encoder(frame_features + positions, src_key_padding_mask=~video_mask.bool())
        return masked_mean(F.normalize(x, dim=-1), video_mask)


def masked_mean(frames: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
    weights = video_mask.to(frames.dtype).unsqueeze(-1)
    return (frames * weights).sum(1) / weights.sum(1).clamp_min(1.0)


# ----------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------


def copy_referenced_code(config: STOPConfig, folder: str | os.PathLike) -> list[str]:
    """Copy into `folder` every module of this package that `config` names (`auto_map`, `custom_pipelines`), with the
    files it imports relatively. Returns the files copied."""
    from transformers.dynamic_module_utils import get_relative_import_files

    package = os.path.dirname(os.path.abspath(__file__))
    references = list((getattr(config, "auto_map", None) or {}).values())
    references += [entry.get("impl", "") for entry in (getattr(config, "custom_pipelines", None) or {}).values()]
    copied = []
    for reference in references:
        for name in reference if isinstance(reference, (list, tuple)) else [reference]:
            if not name or "--" in name:  # empty, or code in another Hub repository
                continue
            source = os.path.join(package, name.split(".")[0] + ".py")
            if not os.path.isfile(source):
                continue
            for path in [source, *get_relative_import_files(source)]:
                target = os.path.join(folder, os.path.basename(path))
                if not (os.path.isfile(target) and os.path.samefile(path, target)):
                    shutil.copyfile(path, target)
                    copied.append(target)
    return copied


class STOPPreTrainedModel(PreTrainedModel):
    config_class = STOPConfig
    config: STOPConfig
    base_model_prefix = "stop"
    main_input_name = "pixel_values"
    input_modalities = ("video", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["CLIPEncoderLayer"]

    def freeze_backbone(self) -> None:
        """Freeze what a STOP model never trains: the CLIP of every [`STOPModel`] in this model. Called when a model
        is built and again after `from_pretrained` (loading creates the parameters anew, trainable)."""
        for module in self.modules():
            if isinstance(module, STOPModel):
                module.clip.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        (loaded[0] if isinstance(loaded, tuple) else loaded).freeze_backbone()
        return loaded

    def save_pretrained(self, save_directory, *args, push_to_hub: bool = False, **kwargs):
        """`PreTrainedModel.save_pretrained`, plus what the folder's config references: the STOP pipelines
        (`custom_pipelines` and `pipelines.py`), so the folder serves them in a fresh process (with its processor
        saved beside it)."""
        from .pipelines import pipelines_for

        self.config.custom_pipelines = pipelines_for([self.__class__.__name__])
        if push_to_hub:  # `push_to_hub` saves through this method into a temporary folder, then uploads all of it
            hub_kwargs = {k: kwargs.pop(k) for k in ("commit_message", "create_pr", "token", "private") if k in kwargs}
            repo_id = kwargs.pop("repo_id", os.path.basename(os.path.normpath(save_directory)))
            self.save_pretrained(save_directory, *args, **kwargs)
            return self.push_to_hub(repo_id, **hub_kwargs)
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if self.should_save_on_this_rank(kwargs.get("is_main_process", True)):
            copy_referenced_code(self.config, save_directory)
        return result

    def _init_weights(self, module):
        # Children are initialised before their parents, so a parent may override its children's defaults.
        if isinstance(module, STOPModel):
            vision = self.config.vision_config
            # The authors' xavier-style bound for the global prompts.
            bound = math.sqrt(6.0 / (3 * vision.patch_size**2 + vision.hidden_size))
            if module.global_prompts is not None:
                nn.init.uniform_(module.global_prompts, -bound, bound)
            if module.frame_positions is not None:
                nn.init.zeros_(module.frame_positions.weight)  # starts as the order-blind model
            if module.temporal_gate is not None:
                nn.init.zeros_(module.temporal_gate)  # an untrained head leaves STOP's feature unchanged
        elif isinstance(module, STOPTemporalHead):
            nn.init.normal_(module.position_embeddings.weight, std=0.02)
        elif isinstance(module, nn.MultiheadAttention):
            module._reset_parameters()
        elif isinstance(module, (STOPLinearPromptGenerator, STOPFrameIdentity)):
            module.reset_parameters()
        elif isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv3d, nn.LayerNorm, nn.PReLU, nn.Embedding)):
            module.reset_parameters()  # PyTorch defaults; the prompt table is N(0, 1) as in the released code


class STOPModel(STOPPreTrainedModel):
    r"""
    STOP over a frozen `CLIPModel` (`model.clip`). Only the prompt modules are trainable.

    Example:

    ```python
    >>> model = STOPModel.from_pretrained("checkpoints/stop-synthetic")
    >>> out = model(input_ids=..., pixel_values=...)  # pixel_values [B, T, 3, H, W]
    >>> out.logits_per_text  # [num_texts, num_videos]
    ```
    """

    # A classification folder also stores its class text embeddings; loading it as a plain STOPModel ignores them.
    _keys_to_ignore_on_load_unexpected = [r"class_embeds"]

    def __init__(self, config: STOPConfig):
        super().__init__(config)
        self.clip = CLIPModel._from_config(config.to_clip_config())
        self.clip.requires_grad_(False)  # frozen; `from_pretrained` freezes it again after loading
        vision, text = config.vision_config, config.text_config
        if config.prompt_layers < max(vision.num_hidden_layers, text.num_hidden_layers):
            raise ValueError(
                f"STOPConfig.num_prompt_layers ({config.prompt_layers}) must cover every layer of both towers "
                f"({vision.num_hidden_layers} vision, {text.num_hidden_layers} text)"
            )

        self.prompt_generator = None
        self.global_prompts = None
        self.vision_adapters = self.text_adapters = None
        self.spatial_prompter = self.temporal_prompter = None
        if config.use_dgl_prompts:
            generator = STOPPromptGenerator if config.prompt_generator == "transformer" else STOPLinearPromptGenerator
            self.prompt_generator = generator(config)
            self.global_prompts = nn.Parameter(torch.empty(1, config.num_global_prompts, vision.hidden_size))
            self.vision_adapters = nn.ModuleList(
                STOPAdapter(vision.hidden_size, config.adapter_dim) for _ in range(vision.num_hidden_layers)
            )
            self.text_adapters = nn.ModuleList(
                STOPAdapter(text.hidden_size, config.adapter_dim) for _ in range(text.num_hidden_layers)
            )
        official = config.variant == "official"
        spatial_cls, temporal_cls = STOPOfficialSpatialPrompter, STOPOfficialTemporalPrompter
        if not official:
            spatial_cls, temporal_cls = STOPPaperSpatialPrompter, STOPPaperTemporalPrompter
            if config.uses_paper_layers:
                spatial_cls, temporal_cls = STOPPaperSpatialPrompting, STOPPaperTemporalPrompting
        if config.use_spatial_prompt:
            self.spatial_prompter = spatial_cls(config)
        if config.use_temporal_prompt:
            self.temporal_prompter = temporal_cls(config)
        self.frame_identity = None
        if config.uses_paper_layers and config.paper_frame_identity:
            self.frame_identity = STOPFrameIdentity(config.frame_identity_rows, vision.hidden_size)
        self.frame_positions = None
        if config.frame_position_embeddings and config.use_dgl_prompts:
            self.frame_positions = nn.Embedding(config.max_frames, vision.hidden_size)
        self.temporal_head = STOPTemporalHead(config) if config.temporal_head == "seqTransf" else None
        self.temporal_gate = None
        if self.temporal_head is not None and config.use_dgl_prompts:
            self.temporal_gate = nn.Parameter(torch.zeros(()))
        # The released code lets padded frames take part in attention; the paper variant masks them out.
        self.mask_padded_frames = not official
        self.gradient_checkpointing = False  # vision blocks; set by `gradient_checkpointing_enable()`
        self.post_init()

    @classmethod
    def from_clip(cls, clip: str | os.PathLike | CLIPModel, **stop_kwargs) -> STOPModel:
        """Build a STOP model around a pretrained `CLIPModel` (Hub id, local folder or instance); CLIP stays frozen."""
        if not isinstance(clip, CLIPModel):
            clip = CLIPModel.from_pretrained(clip)
        cfg = clip.config
        config = STOPConfig(
            text_config=cfg.text_config.to_dict(),
            vision_config=cfg.vision_config.to_dict(),
            projection_dim=cfg.projection_dim,
            logit_scale_init_value=cfg.logit_scale_init_value,
            **stop_kwargs,
        )
        model = cls(config)
        model.clip.load_state_dict(clip.state_dict())
        return model

    # ---------------------------------------------------------------------------------------------- towers
    def _prompts(self, num_frames: int):
        """The generator's (text, visual) prompts. They depend on the parameters only: outside autograd they are
        computed once and reused until a parameter of the generator changes (or the autocast setting does)."""
        if torch.is_grad_enabled():
            return self.prompt_generator(num_frames)
        device_type = self.global_prompts.device.type
        key = (
            num_frames,
            torch.is_autocast_enabled(device_type),
            torch.get_autocast_dtype(device_type),
            tuple((p.data_ptr(), p._version, p.device, p.dtype) for p in self.prompt_generator.parameters()),
        )
        cached = getattr(self, "_prompts_cache", None)
        if cached is None or cached[0] != key:
            cached = (key, self.prompt_generator(num_frames))
            self._prompts_cache = cached
        return cached[1]

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Projected, unnormalised text features [N, E]. As in the released code, padding is handled by the causal
        mask alone (`attention_mask` is accepted for API compatibility and not used)."""
        text_model = self.clip.text_model
        eot = self._eot_positions(input_ids)
        if self.prompt_generator is None:
            hidden = text_model(input_ids=input_ids).last_hidden_state
        else:
            text_prompts, _ = self._prompts(self.config.num_frames)
            half = self.config.num_text_prompts // 2
            hidden = text_model.embeddings(input_ids=input_ids)
            hidden = self._with_text_prompts(hidden, text_prompts[0], words=slice(1, None))
            for i, layer in enumerate(text_model.encoder.layers):
                if i > 0:  # deep prompts: overwrite the prompt positions with layer i's prompts
                    hidden = self._with_text_prompts(hidden, text_prompts[i], words=slice(1 + half, -half))
                hidden = causal_text_block(layer, self.text_adapters[i], self.config.adapter_scale, hidden)
            hidden = text_model.final_layer_norm(hidden)
            eot = eot + half
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), eot]
        return self.clip.text_projection(pooled)

    def _with_text_prompts(self, hidden: torch.Tensor, prompts: torch.Tensor, words: slice) -> torch.Tensor:
        """[SOT, prefix prompts, words, postfix prompts]; prompts get no positional embedding."""
        half = self.config.num_text_prompts // 2
        prompts = prompts.to(hidden.dtype).unsqueeze(0).expand(hidden.shape[0], -1, -1)
        return torch.cat([hidden[:, :1], prompts[:, :half], hidden[:, words], prompts[:, half:]], dim=1)

    def _eot_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        eos = self.config.text_config.eos_token_id
        if isinstance(eos, int) and bool((input_ids == eos).any(dim=-1).all()):
            return (input_ids == eos).int().argmax(dim=-1)
        return input_ids.argmax(dim=-1)  # CLIP's convention: EOT has the largest id

    def encode_video(self, pixel_values: torch.Tensor, video_mask: torch.Tensor | None = None) -> STOPVideoEncoding:
        """Video tower with diagnostics; `get_video_features` returns only the features."""
        if pixel_values.dim() != 5:
            raise ValueError(
                f"pixel_values must be [batch, frames, 3, height, width], got shape {tuple(pixel_values.shape)}"
            )
        check_video_inputs(pixel_values, video_mask, self.config.max_frames, "pixel_values")
        b, t = pixel_values.shape[:2]
        if video_mask is None:
            video_mask = torch.ones(b, t, dtype=torch.long, device=pixel_values.device)
        if self.prompt_generator is None:  # frozen CLIP per frame, then mean pooling or the temporal head
            return STOPVideoEncoding(
                video_features=self.pool_frame_features(self.get_frame_features(pixel_values), video_mask)
            )
        if self.config.uses_paper_layers:  # the paper's prompting block in every prompt layer
            return STOPVideoEncoding(**encode_paper_video(self, pixel_values, video_mask))

        vision = self.clip.vision_model
        head_frames = None
        if self.temporal_head is not None and self.config.temporal_head_input == "frozen":
            with torch.no_grad():
                head_frames = self.get_frame_features(pixel_values)
        spatial = self.spatial_prompter
        spatial_mask = None
        if spatial is not None and spatial.stage == "pixels":
            pixel_values, spatial_mask = spatial(pixel_values)
        tokens = vision.pre_layrnorm(vision.embeddings(pixel_values.flatten(0, 1)))
        tokens = tokens.view(b, t, *tokens.shape[1:])  # [B, T, 1 + N, D]
        if spatial is not None and spatial.stage == "tokens":
            with torch.no_grad():
                attention = cls_patch_attention(vision.encoder.layers[0], tokens)
            tokens, spatial_mask = spatial(tokens, attention, video_mask)

        _, local = self._prompts(t)  # [L, T, P, D]
        local = local.to(tokens.dtype).unsqueeze(1).expand(-1, b, -1, -1, -1)  # [L, B, T, P, D]
        if self.frame_positions is not None:
            local = local + self.frame_positions.weight[:t, None].to(tokens.dtype)
        temporal = STOPTemporalPrompts()
        if self.temporal_prompter is not None:
            temporal = self.temporal_prompter(tokens, spatial_mask, video_mask)
            if temporal.local_offset is not None:
                local = local + temporal.local_offset.to(tokens.dtype)

        global_tokens = self.global_prompts.to(tokens.dtype).expand(b, -1, -1)
        # a frame's tokens: [CLS, patches, inserted prompts, this layer's local prompts]; the first three carry on
        carried, carried_valid = tokens, None
        valid = video_mask.bool().unsqueeze(-1)
        if self.mask_padded_frames:
            carried_valid = valid.expand(-1, -1, tokens.shape[2])
        if temporal.inserted is not None:  # prompt tokens inserted after each frame, carried through all layers
            carried = torch.cat([carried, temporal.inserted.to(tokens.dtype)], dim=2)
            carried_valid = torch.cat([carried_valid, temporal.inserted_mask], dim=2)
        last = len(vision.encoder.layers) - 1
        frame_valid = None
        if carried_valid is not None:
            frame_valid = torch.cat([carried_valid, valid.expand(-1, -1, local.shape[-2])], dim=2)
        for i, layer in enumerate(vision.encoder.layers):
            # deep prompts: every layer reads its own local prompts, and no later layer reads their outputs (nor,
            # after the last layer, the patches' and inserted prompts')
            frame_tokens = torch.cat([carried, local[i]], dim=2)
            block = (
                layer,
                self.vision_adapters[i],
                self.config.adapter_scale,
                global_tokens,
                frame_tokens,
                frame_valid,
                1 if i == last else carried.shape[2],
            )
            if self.gradient_checkpointing and self.training:  # non-reentrant: else a frozen block passes no grad
                global_tokens, carried = checkpoint(global_local_block, *block, use_reentrant=False)
            else:
                global_tokens, carried = global_local_block(*block)
        features = prompt_features = self.clip.visual_projection(vision.post_layernorm(global_tokens[:, 0]))
        if self.temporal_head is not None:
            frames = head_frames
            if frames is None:
                frames = self.clip.visual_projection(vision.post_layernorm(carried[:, :, 0]))
            features = features + self.temporal_gate * self.temporal_head(frames, video_mask)
        return STOPVideoEncoding(
            video_features=features,
            prompt_video_features=prompt_features if self.temporal_head is not None else None,
            spatial_mask=spatial_mask,
            frame_weights=temporal.frame_weights,
            frame_variation=temporal.frame_variation,
            inserted_tokens=temporal.inserted_tokens,
        )

    @property
    def uses_frozen_frame_features(self) -> bool:
        """True when every trainable module sits after the frozen per-frame CLIP features, so training may cache
        `get_frame_features` once per video and train on `pool_frame_features` alone."""
        return self.prompt_generator is None

    def get_frame_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Frozen CLIP image features of every frame, projected and unnormalised: [B, T, E]."""
        b, t = pixel_values.shape[:2]
        return self.clip.get_image_features(pixel_values=pixel_values.flatten(0, 1)).pooler_output.view(b, t, -1)

    def pool_frame_features(self, frame_features: torch.Tensor, video_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Video features from per-frame features [B, T, E]: the temporal head, or the mean of the normalised frame
        features over valid frames (CLIP4Clip meanP)."""
        if video_mask is None:
            video_mask = torch.ones(frame_features.shape[:2], dtype=torch.long, device=frame_features.device)
        if self.temporal_head is not None:
            return self.temporal_head(frame_features, video_mask)
        return masked_mean(F.normalize(frame_features, dim=-1), video_mask)

    def get_video_features(self, pixel_values: torch.Tensor, video_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Projected, unnormalised video features [B, E]."""
        return self.encode_video(pixel_values, video_mask).video_features

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        video_mask: torch.Tensor | None = None,
        return_loss: bool = False,
        frame_features: torch.Tensor | None = None,
        frame_indices: torch.Tensor | None = None,
    ) -> STOPOutput:
        r"""
        frame_features (`torch.FloatTensor` of shape `(batch, frames, projection_dim)`, *optional*): cached
            `get_frame_features` output used instead of `pixel_values` when `uses_frozen_frame_features` (the
            training fast path: the frozen backbone runs once per video, not once per step).
        frame_indices (`torch.LongTensor` of shape `(batch, frames)`, *optional*): the processor's
            `return_frame_indices=True` output; accepted so that `model(**processor(...))` works, not used.
        """
        text_embeds = video_embeds = logits_per_text = logits_per_video = loss = None
        encoding = STOPVideoEncoding()
        if frame_features is not None:
            if not self.uses_frozen_frame_features:
                raise ValueError("frame_features can stand in for pixel_values only when no prompt enters the backbone")
            if frame_features.dim() != 3:
                raise ValueError(
                    f"frame_features must be [batch, frames, projection_dim], got {tuple(frame_features.shape)}"
                )
            check_video_inputs(frame_features, video_mask, self.config.max_frames, "frame_features")
            video_embeds = F.normalize(self.pool_frame_features(frame_features, video_mask), dim=-1)
        elif pixel_values is not None:
            encoding = self.encode_video(pixel_values, video_mask)
            video_embeds = F.normalize(encoding.video_features, dim=-1)
        if input_ids is not None:
            text_embeds = F.normalize(self.get_text_features(input_ids, attention_mask), dim=-1)
        if text_embeds is not None and video_embeds is not None:
            logits_per_text = self.clip.logit_scale.exp() * text_embeds @ video_embeds.t()
            logits_per_video = logits_per_text.t()
            if return_loss:
                if logits_per_text.shape[0] != logits_per_text.shape[1]:
                    raise ValueError(
                        "return_loss=True pairs text i with video i: got "
                        f"{logits_per_text.shape[0]} texts for {logits_per_text.shape[1]} videos"
                    )
                loss = clip_loss(logits_per_text)
        elif return_loss:
            raise ValueError("return_loss=True needs both input_ids and pixel_values")
        return STOPOutput(
            loss=loss,
            logits_per_text=logits_per_text,
            logits_per_video=logits_per_video,
            text_embeds=text_embeds,
            video_embeds=video_embeds,
            spatial_mask=encoding.spatial_mask,
            frame_weights=encoding.frame_weights,
            frame_variation=encoding.frame_variation,
            inserted_tokens=encoding.inserted_tokens,
            spatial_mask_per_layer=encoding.spatial_mask_per_layer,
            inserted_tokens_per_layer=encoding.inserted_tokens_per_layer,
            frame_variation_per_layer=encoding.frame_variation_per_layer,
            prompt_video_embeds=(
                None if encoding.prompt_video_features is None else F.normalize(encoding.prompt_video_features, dim=-1)
            ),
        )


STOPConfig.register_for_auto_class()
STOPModel.register_for_auto_class("AutoModel")

__all__ = ["STOPModel", "STOPPreTrainedModel", "STOPOutput", "clip_loss", "contrastive_loss"]
