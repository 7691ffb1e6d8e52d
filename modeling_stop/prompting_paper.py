"""STOP as the paper draws it (`variant="paper"`, `paper_version=2`): the intra-frame and inter-frame prompting
block repeated inside the video encoder, on transformer tokens.

At every layer of `STOPConfig.paper_prompt_layers`, before the frozen block runs:

1. `STOPPaperLayerSpatialPrompter`: the discriminative region r_t of frame t (top-`spatial_top_k` patches of
   `alpha * A_t + (1 - alpha) * M_t`, A_t the frozen CLS-to-patch attention, M_t a temporal-dynamics Conv3d over
   frames t-1, t, t+1) and a prompt p_t from (h_{t-1}, h_t, h_{t+1}) added to the patches inside r_t;
2. `STOPPaperTokenTemporalPrompter`: attention over the region tokens of all the video's frames, a temporal
   Conv3d-ReLU-Conv3d over the (time, row, column) token volume, then a Linear with the gap's variation injected
   produces the prompt tokens inserted between frames i and i+1. Their count follows the video: from the gap's
   variation ranked among the video's own gaps (`insertion_calibration="relative"`). Counts are integers, so the
   prompt tokens are also scaled by the variation relative to the video's largest one, through which the
   spatial prompter receives the variation's gradient.

`encode_paper_video` runs the whole video tower: deep local prompts with a per-frame identity, global-local
attention in which the tokens inserted after frame i are seen by frame i and frame i+1.

This file only depends on torch: `modeling_stop.py` imports it relatively, so `save_pretrained` copies it.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def _cpu_linear_backend() -> str:
    """The GEMM behind the frozen CLIP layers' linears outside autograd on CPU (float32): "onednn" or "mkl".

    `STOP_CPU_LINEAR=onednn|mkl` chooses; by default ("auto") oneDNN on AMD CPUs with AVX-512, where torch's MKL
    sgemm (the `F.linear` of every stock module) takes its generic code path: [600, 768] @ [768, 3072] ran at 174
    GFLOP/s through MKL and 380 through oneDNN on a 2-core AMD EPYC (AVX-512), the same values up to float32
    rounding (`benchmarks/results/cpu_linear_backends.json`). MKL elsewhere (not measured to be slower there). With
    autograd the frozen layers use it too (their input's gradient is a GEMM of the same kind); trainable linears
    never."""
    choice = os.environ.get("STOP_CPU_LINEAR", "auto").lower()
    available = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    if choice not in ("auto", "onednn", "mkl"):
        raise ValueError(f"STOP_CPU_LINEAR must be auto, onednn or mkl, got {choice!r}")
    if choice != "auto":
        return choice if available else "mkl"
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read(1 << 16)
    except OSError:
        return "mkl"
    amd, avx512 = "AuthenticAMD" in info, " avx512f" in info
    return "onednn" if available and amd and avx512 else "mkl"


CPU_LINEAR_BACKEND = _cpu_linear_backend()


class _FrozenOneDNNLinear(torch.autograd.Function):
    """y = x W^T + b through oneDNN for a frozen (W, b): the backward is the input's gradient only, grad W (oneDNN
    again, on the transposed view of W)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(weight)
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        grad_x = torch.ops.mkldnn._linear_pointwise(grad.contiguous(), weight.t(), None, "none", [], "")
        return grad_x, None, None


def frozen_linear(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`linear(x)` for the frozen CLIP layers' projections: for float32 on CPU, without autocast, through oneDNN when
    `CPU_LINEAR_BACKEND` says so; with autograd only while the layer's weights are frozen (then the gradient reaches
    the input through oneDNN too), else `linear(x)`."""
    weight, bias = linear.weight, linear.bias
    if (
        CPU_LINEAR_BACKEND == "onednn"
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
    ):
        if not torch.is_grad_enabled():
            return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
        if not weight.requires_grad and (bias is None or not bias.requires_grad):
            return _FrozenOneDNNLinear.apply(x, weight, bias)
    return linear(x)


def frozen_mlp(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A frozen `CLIPMLP` (fc1, activation, fc2) with `frozen_linear`."""
    return frozen_linear(mlp.fc2, mlp.activation_fn(frozen_linear(mlp.fc1, x)))


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    return x.unflatten(-1, (num_heads, -1)).transpose(-3, -2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-3, -2).flatten(-2)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None):
    """`F.scaled_dot_product_attention` over [..., H, L, hd] with any number of leading dims, run as 4-D (on CPU the
    fused kernel takes 4-D inputs only; 5-D ones fall back to the much slower unfused path)."""
    if q.dim() == 4:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    lead = q.shape[:-3]
    if attn_mask is not None:
        attn_mask = attn_mask.expand(*lead, *attn_mask.shape[-3:]).reshape(-1, *attn_mask.shape[-3:])
    out = F.scaled_dot_product_attention(
        q.reshape(-1, *q.shape[-3:]), k.reshape(-1, *k.shape[-3:]), v.reshape(-1, *v.shape[-3:]), attn_mask=attn_mask
    )
    return out.view(*lead, *out.shape[-3:])


def _frozen_residual(layer, adapter, adapter_scale, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
    """The rest of a frozen CLIP layer after its attention, on tokens x [..., D] and their attention output
    [..., H, L, hd]: `x + out_proj(attention)`, then `+ MLP(ln_2(.)) + scale * adapter(.)`."""
    x = x + frozen_linear(layer.self_attn.out_proj, _merge_heads(attended))
    return x + frozen_mlp(layer.mlp, layer.layer_norm2(x)) + adapter_scale * adapter(x)


def _to_volume(x: torch.Tensor, grid: int) -> torch.Tensor:
    """[B, T, N, C] -> [B, C, T, g, g] for 3D convolutions over (time, rows, columns)."""
    b, t, _, c = x.shape
    return x.permute(0, 3, 1, 2).reshape(b, c, t, grid, grid)


def _from_volume(x: torch.Tensor) -> torch.Tensor:
    """[B, C, T, g, g] -> [B, T, N, C]."""
    return x.flatten(3).permute(0, 2, 3, 1)


class TokenConv3d(nn.Conv3d):
    """A stride-1 "same" Conv3d over small token volumes [B, C, T, g, g], computed as one Conv2d over the frames with
    the `kernel_size[0]` time-shifted copies stacked as channels (same parameters and function; on CPU several
    times faster than the direct 3D convolution at these sizes)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        kt, pad = self.kernel_size[0], self.padding[0]
        padded = F.pad(x, (0, 0, 0, 0, pad, pad))
        stacked = torch.stack([padded[:, :, i : i + t] for i in range(kt)], dim=1)  # [B, kt, C, T, h, w]
        stacked = stacked.permute(0, 3, 1, 2, 4, 5).reshape(b * t, kt * c, h, w)
        # channels_last: oneDNN's NCHW kernel for these few-pixel, many-channel maps is ~100x slower on CPU
        stacked = stacked.contiguous(memory_format=torch.channels_last)
        weight = self.weight.transpose(1, 2).reshape(self.out_channels, kt * c, *self.kernel_size[1:])
        out = F.conv2d(stacked, weight, self.bias, padding=self.padding[1:])
        return out.view(b, t, self.out_channels, h, w).transpose(1, 2)


def first_layer_cls_attention(layer, tokens: torch.Tensor) -> torch.Tensor:
    """A frozen block's CLS-to-patch attention on tokens [B, T, 1 + N, D] (CLS first), mean over heads, renormalised
    over the patches: [B, T, N]."""
    attn = layer.self_attn
    h = layer.layer_norm1(tokens)
    q = _split_heads(frozen_linear(attn.q_proj, h[:, :, :1]), attn.num_heads)  # [B, T, H, 1, hd]
    k = _split_heads(frozen_linear(attn.k_proj, h[:, :, 1:]), attn.num_heads)  # [B, T, H, N, hd]
    return (q @ k.transpose(-1, -2) * attn.scale).softmax(-1).mean(2)[:, :, 0]


# ------------------------------------------------------------------------------------------------ per-frame identity
class STOPFrameIdentity(nn.Module):
    """Per-frame identity of the local prompts, for any frame count: a table of `frame_identity_rows` embeddings
    over the video's relative time, linearly interpolated at each valid frame's relative position
    `j / (n - 1)` (j its index among the video's n valid frames). A model trained on 8 frames runs on 4 or 16;
    padded frames do not move the valid frames' positions."""

    def __init__(self, rows: int, width: int):
        super().__init__()
        self.position_embeddings = nn.Parameter(torch.empty(rows, width))
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.normal_(self.position_embeddings, std=0.02)  # small distinct rows: frames differ from the first step

    def forward(self, video_mask: torch.Tensor) -> torch.Tensor:
        """video_mask [B, T] -> identity embeddings [B, T, D] (zero on padded frames)."""
        valid = video_mask.bool()
        index = (valid.long().cumsum(-1) - 1).clamp_min(0).to(self.position_embeddings.dtype)  # [B, T]
        count = valid.sum(-1, keepdim=True).to(self.position_embeddings.dtype)
        rows = self.position_embeddings.shape[0]
        position = index / (count - 1).clamp_min(1) * (rows - 1)  # in [0, rows - 1]
        low = position.floor().long().clamp(max=rows - 1)
        high = (low + 1).clamp(max=rows - 1)
        frac = (position - low.to(position.dtype)).unsqueeze(-1)
        embedding = self.position_embeddings[low] * (1 - frac) + self.position_embeddings[high] * frac
        return embedding * valid.unsqueeze(-1).to(embedding.dtype)


# ------------------------------------------------------------------------------------------------ intra-frame
class STOPPaperLayerSpatialPrompter(nn.Module):
    """Intra-frame spatial prompting of one layer (paper, Fig. 2), on the patch tokens entering that layer.

    Tokens are first reduced to `paper_hidden_dim` channels (the prompter's cost then stays a few percent of the
    frozen block); M_t is a Conv3d over frames (t-1, t, t+1) of the reduced tokens, softmaxed over the frame's
    patches; the prompter is Conv3d-ReLU-Conv3d-Linear-ReLU-Linear-Dropout on the same volume; p_t is added to
    the patches of r_t weighted by their fused score (mean 1 over the frame, so both score branches learn),
    times `spatial_prompt_scale`.
    """

    def __init__(self, config):
        super().__init__()
        width, hidden = config.vision_config.hidden_size, config.paper_hidden_dim
        self.reduce = nn.Linear(width, hidden)
        self.dynamics = TokenConv3d(hidden, 1)
        self.conv = nn.Sequential(TokenConv3d(hidden, hidden), nn.ReLU(), TokenConv3d(hidden, hidden))
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, width))
        self.dropout = nn.Dropout(config.paper_dropout)
        self.grid, self.top_k, self.alpha = config.grid_size, config.spatial_top_k, config.attention_alpha
        self.scale = config.spatial_prompt_scale

    def region(self, volume: torch.Tensor, cls_attention: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused score W_t [B, T, N] and the top-k region [B, T, N] (bool)."""
        b, _, t = volume.shape[:3]
        dynamics = self.dynamics(volume).flatten(2).view(b, t, -1).softmax(-1)  # M_t
        score = self.alpha * cls_attention.to(dynamics.dtype) + (1 - self.alpha) * dynamics  # W_t
        region = torch.zeros_like(score, dtype=torch.bool).scatter_(-1, score.topk(self.top_k, dim=-1).indices, True)
        return score, region

    def forward(self, patches, cls_attention, valid, region=None):
        """patches [B, T, N, D]; cls_attention [B, T, N]; valid [B, 1, T, 1, 1] (padded frames read as the convs'
        zero padding); `region` [B, T, N] reuses given regions instead of recomputing them.
        Returns prompted patches and the region."""
        volume = _to_volume(self.reduce(patches), self.grid) * valid
        score, computed = self.region(volume, cls_attention.detach())
        if region is None:
            region = computed
        hidden = self.conv[2](self.conv[1](self.conv[0](volume)) * valid)
        prompt = self.dropout(self.mlp(_from_volume(hidden)))  # p_t [B, T, N, D]
        weight = region.to(score.dtype) * score * score.shape[-1]  # position mapping
        return patches + self.scale * weight.unsqueeze(-1) * prompt, region


# ------------------------------------------------------------------------------------------------ inter-frame
def gap_variation(patches: torch.Tensor, region: torch.Tensor | None, beta: float, gap_valid: torch.Tensor):
    """W_i = 1 - cos(f_i, f_{i+1}) of region-weighted frame descriptors (the region's patches count 1 + beta):
    low frame similarity, high variation. [B, T, N, D] -> [B, T - 1] (0 on gaps touching a padded frame)."""
    weights = torch.ones_like(patches[..., 0])
    if region is not None:
        weights = weights + beta * region.to(patches.dtype)
    frames = (patches * weights.unsqueeze(-1)).sum(2) / weights.sum(2, keepdim=True)
    return (1 - F.cosine_similarity(frames[:, :-1], frames[:, 1:], dim=-1)) * gap_valid


def normalised_variation(variation: torch.Tensor, gap_valid: torch.Tensor) -> torch.Tensor:
    """Each gap's variation relative to the video's largest valid gap: [B, T - 1] in [0, 1], batch-independent."""
    largest = variation.masked_fill(~gap_valid, 0).amax(-1, keepdim=True)
    return torch.where(largest > 0, variation / largest.clamp_min(torch.finfo(variation.dtype).tiny), 0.0) * gap_valid


def ranked_variation(variation: torch.Tensor, gap_valid: torch.Tensor) -> torch.Tensor:
    """Min-max position of each gap's variation among the video's valid gaps: [B, T - 1] in [0, 1] (the least
    changing gap 0, the most changing 1; 1 everywhere when the gaps do not differ)."""
    low = variation.masked_fill(~gap_valid, float("inf")).amin(-1, keepdim=True)
    high = variation.masked_fill(~gap_valid, float("-inf")).amax(-1, keepdim=True)
    span = high - low
    ranked = torch.where(span > 0, (variation - low) / span.clamp_min(torch.finfo(variation.dtype).tiny), 1.0)
    return ranked * gap_valid


def insertion_counts(variation, gap_valid, calibration: str, scale: float, bound: int) -> torch.Tensor:
    """Tokens inserted after each frame [B, T - 1] (0 on gaps touching a padded frame). `relative`:
    `max(1, ceil(bound * r_i))` with r_i the gap's min-max position among the video's gaps (its least changing gap
    gets 1 token, its most changing gap `bound`, linearly between); `absolute`: `ceil(scale * W_i)` bounded."""
    variation = variation.detach()
    if calibration == "relative":
        counts = torch.ceil(bound * ranked_variation(variation, gap_valid)).clamp(1, bound)
    else:
        counts = torch.ceil(scale * variation).clamp(0, bound)
    return counts.long() * gap_valid


class STOPPaperTokenTemporalPrompter(nn.Module):
    """Token-level inter-frame prompter of one layer (paper, Fig. 2).

    On the spatially prompted patch tokens reduced to `paper_hidden_dim` channels: multi-head attention over the
    region tokens of all the video's frames (padded frames masked out), written back at their positions; a
    Conv3d-ReLU-Conv3d over (time, rows, columns); per frame a region-weighted mean m_i; gap i reads
    `[m_i, m_{i+1} - m_i, W_i]` (the signed change, so order matters) through a Linear to `max_inserted_tokens`
    tokens of the vision width, dropout, then scaled by the normalised variation of the gap
    (`paper_variation_scaling`).
    """

    def __init__(self, config):
        super().__init__()
        width, hidden = config.vision_config.hidden_size, config.paper_hidden_dim
        self.max_tokens, self.grid, self.beta = config.max_inserted_tokens, config.grid_size, config.region_beta
        self.top_k = config.spatial_top_k
        self.reduce = nn.Linear(width, hidden)
        self.attention = nn.MultiheadAttention(hidden, max(1, hidden // 32), batch_first=True)
        self.conv = nn.Sequential(TokenConv3d(hidden, hidden), nn.ReLU(), TokenConv3d(hidden, hidden))
        self.proj = nn.Linear(2 * hidden + 1, self.max_tokens * width)
        self.dropout = nn.Dropout(config.paper_dropout)
        self.variation_scaling = config.paper_variation_scaling

    def forward(self, patches, region, valid_frames, relative):
        """patches [B, T, N, D]; region [B, T, N] bool; valid_frames [B, T] bool; relative [B, T - 1] the normalised
        variation -> prompt tokens [B, T - 1, K, D]."""
        b, t, _, d = patches.shape
        x = self.reduce(patches)  # [B, T, N, c]
        # every frame has exactly spatial_top_k region patches: their indices, in patch order
        index = region.to(x.dtype).topk(self.top_k, dim=-1).indices.sort(-1).values  # [B, T, k]
        gathered = x.gather(2, index.unsqueeze(-1).expand(-1, -1, -1, x.shape[-1]))  # region tokens [B, T, k, c]
        tokens = gathered.flatten(1, 2)
        padding = ~valid_frames.unsqueeze(-1).expand(-1, -1, index.shape[-1]).flatten(1)
        tokens = tokens + self.attention(tokens, tokens, tokens, key_padding_mask=padding, need_weights=False)[0]
        x = x.scatter(2, index.unsqueeze(-1).expand(-1, -1, -1, x.shape[-1]), tokens.view_as(gathered))
        keep = valid_frames.to(x.dtype)[:, None, :, None, None]
        volume = _to_volume(x, self.grid) * keep
        y = _from_volume(self.conv[2](self.conv[1](self.conv[0](volume)) * keep))  # [B, T, N, c]
        weights = 1 + self.beta * region.to(y.dtype)
        frames = (y * weights.unsqueeze(-1)).sum(2) / weights.sum(2, keepdim=True)  # m_i [B, T, c]
        gaps = torch.cat([frames[:, :-1], frames[:, 1:] - frames[:, :-1], relative.unsqueeze(-1).to(y.dtype)], dim=-1)
        prompts = self.dropout(self.proj(gaps)).view(b, t - 1, self.max_tokens, d)
        if self.variation_scaling:
            prompts = prompts * relative[..., None, None].to(prompts.dtype)
        return prompts


class STOPPaperFrameTemporalPrompter(nn.Module):
    """Ablation of the token-level prompter (`paper_temporal_prompter="frames"`): the first layout's prompter on
    pooled frame descriptors, `[f_i, f_{i+1} - f_i]` through a Linear, attention over the gaps, Conv1d-ReLU-Conv1d
    over time and a Linear with W injected."""

    def __init__(self, config):
        super().__init__()
        width, hidden = config.vision_config.hidden_size, config.paper_hidden_dim
        self.max_tokens, self.beta = config.max_inserted_tokens, config.region_beta
        self.proj_in = nn.Linear(2 * width, hidden)
        self.attention = nn.MultiheadAttention(hidden, max(1, hidden // 32), batch_first=True)
        self.conv = nn.Sequential(
            nn.Conv1d(hidden, hidden, 3, padding=1), nn.ReLU(), nn.Conv1d(hidden, hidden, 3, padding=1)
        )
        self.proj = nn.Linear(hidden + 1, self.max_tokens * width)
        self.dropout = nn.Dropout(config.paper_dropout)
        self.variation_scaling = config.paper_variation_scaling

    def forward(self, patches, region, valid_frames, relative):
        b, t, _, d = patches.shape
        weights = 1 + self.beta * region.to(patches.dtype)
        frames = (patches * weights.unsqueeze(-1)).sum(2) / weights.sum(2, keepdim=True)
        gap_valid = valid_frames[:, :-1] & valid_frames[:, 1:]
        x = self.proj_in(torch.cat([frames[:, :-1], frames[:, 1:] - frames[:, :-1]], dim=-1))
        padding = ~gap_valid & gap_valid.any(-1, keepdim=True)
        x = x + self.attention(x, x, x, key_padding_mask=padding, need_weights=False)[0]
        keep = gap_valid.unsqueeze(1).to(x.dtype)
        x = x + self.conv[2](self.conv[1](self.conv[0](x.transpose(1, 2) * keep)) * keep).transpose(1, 2)
        prompts = self.dropout(self.proj(torch.cat([x, relative.unsqueeze(-1).to(x.dtype)], dim=-1)))
        prompts = prompts.view(b, t - 1, self.max_tokens, d)
        if self.variation_scaling:
            prompts = prompts * relative[..., None, None].to(prompts.dtype)
        return prompts


# ------------------------------------------------------------------------------------------------ attention
def paper_global_local_block(layer, adapter, adapter_scale, global_tokens, frame_tokens, frame_valid, layout):
    """One frozen CLIP vision layer with global-local attention, for the paper layout.

    frame_tokens [B, T, S, D] in the order [CLS, N patches, K inserted slots, P local prompts]; frame_valid
    [B, T, S] bool. Frame t's tokens attend to [the video's global tokens; frame t's tokens; with
    `layout.neighbours`, the K tokens inserted after frame t - 1], so the tokens inserted between two frames are seen
    by both. Global tokens attend to everything valid.

    Only the first `layout.queries` tokens of each frame are computed past the keys and values (queries, attention
    output, MLP): the later ones are overwritten before the next layer reads them (every layer's local prompts, the
    slots of the next prompt layer, the patches after the last layer), so the frozen block spends its cost on the
    tokens that carry on. Returns the global tokens [B, G, D], the first `layout.queries` tokens of every frame
    [B, T, queries, D] and, with `layout.cls_attention`, each frame's CLS-to-patch attention (mean over heads,
    renormalised over the patches) [B, T, N], the next prompt layer's A_t, at no extra projection cost.
    """
    frames, num_global = frame_tokens.shape[1], global_tokens.shape[1]
    attn = layer.self_attn
    heads, slots, queries = attn.num_heads, layout.slots, layout.queries

    hg, hf = layer.layer_norm1(global_tokens), layer.layer_norm1(frame_tokens)
    qg, kg, vg = (
        _split_heads(frozen_linear(p, hg), heads) for p in (attn.q_proj, attn.k_proj, attn.v_proj)
    )  # [B,H,G,hd]
    kf, vf = (_split_heads(frozen_linear(p, hf), heads) for p in (attn.k_proj, attn.v_proj))  # [B,T,H,S,hd]
    qf = _split_heads(frozen_linear(attn.q_proj, hf[:, :, :queries]), heads)  # [B,T,H,queries,hd]

    always = frame_valid.new_ones(frame_valid.shape[0], frames, num_global)
    key_parts_k = [kg.unsqueeze(1).expand(-1, frames, -1, -1, -1), kf]
    key_parts_v = [vg.unsqueeze(1).expand(-1, frames, -1, -1, -1), vf]
    mask_parts = [always, frame_valid]
    if layout.neighbours and slots:
        inserted = slice(layout.slot_start, layout.slot_start + slots)

        def previous(x):  # the inserted slots of frame t - 1, for frame t (frame 0 has none)
            return F.pad(x[:, :-1, ..., inserted, :], (0, 0, 0, 0, 0, 0, 1, 0))

        key_parts_k.append(previous(kf))
        key_parts_v.append(previous(vf))
        mask_parts.append(F.pad(frame_valid[:, :-1, inserted], (0, 0, 1, 0)))
    frame_mask = torch.cat(mask_parts, dim=2)[:, :, None, None]
    out_f = _attention(qf, torch.cat(key_parts_k, 3), torch.cat(key_parts_v, 3), attn_mask=frame_mask)

    video_mask_ = torch.cat([always[:, 0], frame_valid.flatten(1)], dim=1)[:, None, None]
    kv = (
        torch.cat([kg, kf.transpose(1, 2).flatten(2, 3)], dim=2),
        torch.cat([vg, vf.transpose(1, 2).flatten(2, 3)], dim=2),
    )
    out_g = F.scaled_dot_product_attention(qg, *kv, attn_mask=video_mask_)

    cls_attention = None
    if layout.cls_attention:
        patches = slice(1, 1 + layout.num_patches)
        scores = qf[..., :1, :] @ kf[..., patches, :].transpose(-1, -2) * attn.scale  # [B, T, H, 1, N]
        cls_attention = scores.float().softmax(-1).mean(2)[:, :, 0].to(frame_tokens.dtype)

    return (
        _frozen_residual(layer, adapter, adapter_scale, global_tokens, out_g),
        _frozen_residual(layer, adapter, adapter_scale, frame_tokens[:, :, :queries], out_f),
        cls_attention,
    )


class _Layout:
    """Where things sit in a frame's token sequence [CLS, patches, slots, local prompts], how many of its leading
    tokens the block must compute (`queries`, all of them by default), and what else it must return."""

    def __init__(self, num_patches, slots, neighbours, cls_attention=False, queries=None, num_local=0):
        self.num_patches, self.slots, self.slot_start = num_patches, slots, 1 + num_patches
        self.neighbours, self.cls_attention = neighbours, cls_attention
        self.queries = 1 + num_patches + slots + num_local if queries is None else queries


# ------------------------------------------------------------------------------------------------ the video tower
class STOPPaperSpatialPrompting(nn.Module):
    """One `STOPPaperLayerSpatialPrompter` per layer of `paper_prompt_layers`. With `paper_region_source="first"`,
    the later layers reuse the first prompt layer's regions instead of recomputing them."""

    def __init__(self, config):
        super().__init__()
        self.layers = nn.ModuleList(STOPPaperLayerSpatialPrompter(config) for _ in config.paper_layers)
        self.reuse_first_region = config.paper_region_source == "first"

    def forward(self, j, patches, cls_attention, video_mask, first_region=None):
        valid = video_mask.to(patches.dtype)[:, None, :, None, None]
        reuse = first_region if self.reuse_first_region else None
        return self.layers[j](patches, cls_attention, valid, region=reuse)


class STOPPaperTemporalPrompting(nn.Module):
    """One inter-frame prompter per layer of `paper_prompt_layers` (`paper_temporal_prompter`: token-level or the
    pooled-frame ablation), with the variation and the dynamic counts of each layer."""

    def __init__(self, config):
        super().__init__()
        cls = (
            STOPPaperTokenTemporalPrompter
            if config.paper_temporal_prompter == "tokens"
            else STOPPaperFrameTemporalPrompter
        )
        self.layers = nn.ModuleList(cls(config) for _ in config.paper_layers)
        self.calibration, self.insertion_scale = config.insertion_calibration, config.insertion_scale
        self.max_tokens, self.beta, self.top_k = config.max_inserted_tokens, config.region_beta, config.spatial_top_k

    def forward(self, j, patches, region, cls_attention, video_mask):
        """patches [B, T, N, D] (spatially prompted), region [B, T, N] or None -> prompt tokens [B, T - 1, K, D],
        counts [B, T - 1] and variation [B, T - 1]."""
        valid_frames = video_mask.bool()
        gap_valid = valid_frames[:, :-1] & valid_frames[:, 1:]
        if region is None:  # temporal prompting alone: the region is the frozen attention's top-k
            region = torch.zeros_like(cls_attention, dtype=torch.bool)
            region.scatter_(-1, cls_attention.topk(self.top_k, dim=-1).indices, True)
        variation = gap_variation(patches, region, self.beta, gap_valid)
        relative = normalised_variation(variation, gap_valid)
        counts = insertion_counts(variation, gap_valid, self.calibration, self.insertion_scale, self.max_tokens)
        prompts = self.layers[j](patches, region, valid_frames, relative)
        return prompts, counts, variation


def encode_paper_video(model, pixel_values: torch.Tensor, video_mask: torch.Tensor) -> dict:
    """The paper variant's video tower (`paper_version=2`) of a `STOPModel` (its `spatial_prompter` /
    `temporal_prompter` are `STOPPaperSpatialPrompting` / `STOPPaperTemporalPrompting` or None, `frame_identity` a
    `STOPFrameIdentity` or None). Returns the fields of a `STOPVideoEncoding` as a dict."""
    config = model.config
    spatial, temporal = model.spatial_prompter, model.temporal_prompter
    layers = list(config.paper_layers)
    vision = model.clip.vision_model
    b, t = pixel_values.shape[:2]
    tokens = vision.pre_layrnorm(vision.embeddings(pixel_values.flatten(0, 1)))
    tokens = tokens.view(b, t, *tokens.shape[1:])  # [B, T, 1 + N, D]
    num_local, num_patches, width = config.num_local_prompts, tokens.shape[2] - 1, tokens.shape[-1]
    slots = config.max_inserted_tokens if temporal is not None and t > 1 else 0

    _, local = model._prompts(t)  # [L, T, P, D]
    local = local.to(tokens.dtype).unsqueeze(1).expand(-1, b, -1, -1, -1)  # [L, B, T, P, D]
    if model.frame_identity is not None:
        local = local + model.frame_identity(video_mask).to(tokens.dtype)[None, :, :, None]
    if model.frame_positions is not None:  # `frame_position_embeddings`: absolute frame positions
        local = local + model.frame_positions.weight[:t, None].to(tokens.dtype)

    # a frame's tokens: [CLS, patches, inserted slots, local prompts]; the slots start empty
    cls_token, layer_patches = tokens[:, :, :1], tokens[:, :, 1:]
    slot_tokens = tokens.new_zeros(b, t, slots, width)
    valid = video_mask.bool().unsqueeze(-1)

    def frame_mask(slot_valid):  # [B, T, S]: the frame's valid tokens, with the slots filled so far
        return torch.cat([valid.expand(-1, -1, 1 + num_patches), slot_valid, valid.expand(-1, -1, num_local)], dim=2)

    frame_valid = frame_mask(valid.new_zeros(b, t, slots))  # the slots start empty
    global_tokens = model.global_prompts.to(tokens.dtype).expand(b, -1, -1)

    cls_attention = None
    if 0 in layers:
        with torch.no_grad():
            cls_attention = first_layer_cls_attention(vision.encoder.layers[0], tokens)
    regions, counts, variations = [], [], []
    last = len(vision.encoder.layers) - 1
    for i, layer in enumerate(vision.encoder.layers):
        if i in layers:
            j = layers.index(i)
            region = None
            if spatial is not None:
                layer_patches, region = spatial(
                    j, layer_patches, cls_attention, video_mask, regions[0] if regions else None
                )
                regions.append(region)
            if slots:  # this layer's inserted tokens replace the previous prompt layer's in the slots
                prompts, count, variation = temporal(j, layer_patches, region, cls_attention, video_mask)
                slot_tokens = F.pad(prompts.to(tokens.dtype), (0, 0, 0, 0, 0, 1))  # frame T - 1 has no gap after it
                slot_valid = F.pad(torch.arange(slots, device=tokens.device) < count.unsqueeze(-1), (0, 0, 0, 1))
                frame_valid = frame_mask(slot_valid)
                counts.append(count)
                variations.append(variation)
        # deep prompts: every layer reads its own local prompts
        frame_tokens = torch.cat([cls_token, layer_patches, slot_tokens, local[i]], dim=2)
        # the tokens whose outputs a later layer reads: CLS, the patches but after the last layer, and the slots
        # where the next layer does not insert new ones
        carry_slots = slots and i < last and i + 1 not in layers
        queries = 1 if i == last else 1 + num_patches + (slots if carry_slots else 0)
        layout = _Layout(num_patches, slots, config.paper_neighbour_attention, i + 1 in layers, queries)
        block = (
            layer,
            model.vision_adapters[i],
            config.adapter_scale,
            global_tokens,
            frame_tokens,
            frame_valid,
            layout,
        )
        if model.gradient_checkpointing and model.training:  # non-reentrant: else a frozen block passes no grad
            global_tokens, frame_out, cls_attention = checkpoint(paper_global_local_block, *block, use_reentrant=False)
        else:
            global_tokens, frame_out, cls_attention = paper_global_local_block(*block)
        cls_token, layer_patches = frame_out[:, :, :1], frame_out[:, :, 1 : 1 + num_patches]
        if carry_slots:
            slot_tokens = frame_out[:, :, 1 + num_patches :]

    features = prompt_features = model.clip.visual_projection(vision.post_layernorm(global_tokens[:, 0]))
    if model.temporal_head is not None:
        if model.config.temporal_head_input == "frozen":  # the frozen CLIP's frame features, as the head was trained
            with torch.no_grad():
                frames = model.get_frame_features(pixel_values)
        else:
            frames = model.clip.visual_projection(vision.post_layernorm(cls_token[:, :, 0]))
        features = features + model.temporal_gate * model.temporal_head(frames, video_mask)
    out = dict(video_features=features)
    if model.temporal_head is not None:
        out["prompt_video_features"] = prompt_features
    if regions:
        grid = config.grid_size
        out["spatial_mask_per_layer"] = torch.stack(regions, 1).view(b, len(regions), t, grid, grid)
        out["spatial_mask"] = out["spatial_mask_per_layer"][:, 0]
    if counts:
        out["inserted_tokens_per_layer"] = torch.stack(counts, 1)
        out["inserted_tokens"] = out["inserted_tokens_per_layer"].sum(1)
        out["frame_variation_per_layer"] = torch.stack(variations, 1)
        out["frame_variation"] = out["frame_variation_per_layer"].mean(1)
    elif temporal is not None:  # a single frame has no gap
        out.update(inserted_tokens=features.new_zeros(b, 0, dtype=torch.long), frame_variation=features.new_zeros(b, 0))
    return out


__all__ = [
    "STOPFrameIdentity",
    "STOPPaperSpatialPrompting",
    "STOPPaperTemporalPrompting",
    "encode_paper_video",
    "paper_global_local_block",
]
