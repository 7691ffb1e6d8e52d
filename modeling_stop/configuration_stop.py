"""STOP model configuration."""

import numbers

from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig, PretrainedConfig


def _as_tuple(value, name):
    value = tuple(int(v) for v in value)
    if len(value) != 3 or any(v < 1 or v % 2 == 0 for v in value):
        raise ValueError(f"STOPConfig.{name} must be three odd positive kernel sizes (T, H, W), got {value}")
    return value


class STOPConfig(PretrainedConfig):
    r"""
    Configuration of a [`STOPModel`]: a frozen CLIP (its `text_config` / `vision_config`, exactly as in
    [`CLIPConfig`]) plus the prompt modules that STOP trains. Every size the authors hard-coded for ViT-B/32
    lives here, so any CLIP geometry works.

    Args:
        text_config (`dict` or `CLIPTextConfig`): the CLIP text tower.
        vision_config (`dict` or `CLIPVisionConfig`): the CLIP vision tower.
        projection_dim (`int`, defaults to 512): CLIP's joint embedding size.
        logit_scale_init_value (`float`, defaults to 2.6592): CLIP's initial `logit_scale` (frozen).
        variant (`str`, defaults to `"official"`): `"official"` computes what the authors' released code
            computes (pixel-space spatial prompter, temporal prompts added to the local prompts);
            `"paper"` is the token-space method as the paper describes it.
        num_frames (`int`, defaults to 12): frames per video. The official transformer generator owns
            `num_text_prompts + num_local_prompts * num_frames` rows, so an official model is tied to it.
        max_words (`int`, defaults to 32): text length in tokens (SOT and EOT included).
        prompt_generator (`str`, defaults to `"transformer"`): the "shared latent space" generating the
            text and local visual prompts of every layer: `"transformer"` (embedding table, one pre-LN
            transformer block, MLP to the text width) or `"linear"` (frame-shared visual prompts, linear
            maps to text prefix/postfix prompts).
        num_prompt_layers (`int`, *optional*): layers that get their own deep prompts. Defaults to
            `max(vision layers, text layers)` (12 for ViT-B, as the authors' code); each tower reads the
            first `num_hidden_layers` of them, so ViT-L/14 (24 vision layers) gives every layer of both towers
            its own prompts.
        num_global_prompts (`int`, defaults to 4): video-level prompts, prepended once; the video feature is
            read at global prompt 0.
        num_local_prompts (`int`, defaults to 4): prompts inserted in every frame after its CLS token.
        num_text_prompts (`int`, defaults to 8): text prompts per layer, half before the words, half after.
        use_dgl_prompts (`bool`, defaults to `True`): the prompt generator, global/local prompts, global-local
            attention and adapters. `False` gives the frozen-CLIP baseline (per-frame CLIP, mean pooling over
            valid frames, zero trainable parameters); STOP modules then must be off.
        use_spatial_prompt (`bool`, defaults to `True`): STOP's intra-frame spatial prompting.
        use_temporal_prompt (`bool`, defaults to `True`): STOP's inter-frame temporal prompting.
        adapter_dim (`int`, defaults to 32): bottleneck of the per-block adapter (`LoRA` in the authors' code).
        adapter_scale (`float`, defaults to 0.1): scale of the adapter branch.
        spatial_prompt_scale (`float`, defaults to 0.05): scale of the spatial prompt (official; paper variant with
            `paper_version=2`: of the token prompt added at every prompt layer).
        temporal_prompt_scale (`float`, defaults to 0.05): scale of the inter-frame prompt.
        spatial_top_k (`int`, defaults to 6): regions kept per frame (the authors' `eta`).
        prompter_channels (`tuple`, defaults to `(9, 9, 16)`): channels of the official pixel prompter convs.
        prompter_mlp_dim (`int`, defaults to 16): hidden width of the official prompter's per-pixel MLP.
        prompter_kernel (`tuple`, defaults to `(3, 11, 11)`): kernel of the official prompter convs.
        prompter_dropout (`float`, defaults to 0.5): dropout of the official prompter.
        region_kernel (`tuple`, defaults to `(5, 11, 11)`): kernel of the region-score conv (official).
        inter_channels (`int`, defaults to 9): hidden channels of the official inter-frame convs.
        inter_kernel (`tuple`, defaults to `(3, 15, 25)`): kernel (time, token, width) of the inter-frame convs.
        inter_mlp_dim (`int`, defaults to 16): hidden width of the inter-frame token MLP.
        frame_weight_kernel (`tuple`, defaults to `(5, 11, 11)`): kernel of the official frame-weight conv.
        mask_layout (`str`, defaults to `"official"`): how the official region score is pooled into a g x g
            grid: `"official"` averages pixels sharing (h mod g, w mod g) as the released code does (a
            period-g lattice); `"patch"` averages the pixels of each ViT patch.
        frame_weight_norm (`str`, defaults to `"batch"`): min-max normalisation of the official frame weights
            over the whole batch (as released: a video's output depends on its batch) or per `"video"`.
        attention_alpha (`float`, defaults to 0.5): paper variant: weight of the frozen CLIP's CLS-to-patch
            attention (first block, on the `ln_pre` tokens) against the learned temporal-dynamics score when
            choosing the discriminative patches, `W = alpha * A + (1 - alpha) * M` (both are distributions over
            the patches of a frame). 0.5 trusts the backbone's saliency and the motion cue equally.
        region_beta (`float`, defaults to 1.0): paper variant: the discriminative patches count `1 + beta` times
            in the frame descriptors whose change drives the inter-frame prompts (1.0 doubles them: the selected
            regions dominate without silencing the rest of the frame).
        insertion_scale (`float`, defaults to 8.0): paper variant with `paper_version=1` or
            `insertion_calibration="absolute"`: gap i gets `ceil(insertion_scale * W_i)`
            inserted prompt tokens, W_i = 1 - cos(frame i, frame i + 1) in [0, 2]. Frozen-CLIP frame descriptors
            of consecutive frames have cosine ~0.9-1, so 8 maps a typical change to 1-2 tokens and a cut to the
            bound.
        max_inserted_tokens (`int`, defaults to 4): paper variant: bound per gap (per gap and prompt layer with
            `paper_version=2`, whose slots each prompt layer refills); the total per video is at most
            `(num_frames - 1) * max_inserted_tokens` (times the number of prompt layers with `paper_version=2`);
            empty slots are masked out of attention.
        paper_hidden_dim (`int`, defaults to 32): paper variant: channels of the token-space prompters (their
            cost stays a few percent of the backbone).
        paper_dropout (`float`, defaults to 0.1): paper variant: dropout of the prompters' outputs.
        frame_position_embeddings (`bool`, defaults to `False`): learnable per-frame embeddings (zero-initialised)
            added to each frame's local prompts, giving the prompt modules frame order. Off for the official
            variant's parity.
        max_frames (`int`, defaults to 64): size of the frame position tables (frame position embeddings and the
            temporal head).
        temporal_head (`str`, defaults to `"none"`): `"seqTransf"` adds CLIP4Clip's sequential transformer over
            per-frame features (learnable frame positions, residual, mean over valid frames). On STOP it is added
            to STOP's video feature through a learned gate initialised to zero (an untrained head changes nothing);
            on the frozen-CLIP baseline (`use_dgl_prompts=False`) it replaces mean pooling.
        temporal_head_layers (`int`, defaults to 2): transformer layers of the temporal head.
        paper_version (`int`, defaults to 2): layout of the paper variant. `1`: prompting once on the `ln_pre`
            tokens, a prompter on pooled frame descriptors, frame-shared local prompts, `ceil(insertion_scale * W)`
            tokens in frame i's attention group (the first layout; a saved config without this field means 1, so
            folders saved then keep their outputs). `2`: the block of the paper's figure repeated in every layer of
            `paper_prompt_layers`, with the switches below (which `1` ignores).
        paper_prompt_layers (`list[int]`, *optional*): vision layers that run the intra-frame and inter-frame
            prompting before their block. Defaults to every layer (the paper's "x L"). Measured at ViT-B/32, 12 frames,
            fp32 CPU eval: all 12 layers 1.42x the frozen backbone (`benchmarks/results/speed_cpu_eval_quiet.md`);
            in one loaded run (`speed_paper_cpu_1thread.md`) all 12 layers 1.49x, `[0]` 1.33x, the DGL prompts
            alone 1.16x: layer 0 costs ~0.17x (it opens the inserted slots), every further layer ~0.015x.
        paper_region_source (`str`, defaults to `"layer"`): `"layer"` recomputes the discriminative regions at every
            prompt layer from that layer's tokens (A_t = the CLS-to-patch attention of the previous frozen block,
            computed there at no extra projection cost; the first layer 0 uses layer 0's attention on `ln_pre`);
            `"first"` reuses the first prompt layer's regions.
        paper_temporal_prompter (`str`, defaults to `"tokens"`): `"tokens"`: attention over the frames' region
            tokens, a temporal Conv3d-ReLU-Conv3d over the token volume and a Linear with the variation injected;
            `"frames"`: the first layout's prompter on pooled frame descriptors (ablation).
        paper_neighbour_attention (`bool`, defaults to `True`): the tokens inserted after frame i are also keys of
            frame i + 1 (both neighbouring frames attend to them); `False` keeps them in frame i's group only.
        paper_frame_identity (`bool`, defaults to `True`): per-frame identity of the local prompts: a table of
            `frame_identity_rows` embeddings over relative time, interpolated at each valid frame's relative position,
            so any frame count works at inference.
        frame_identity_rows (`int`, defaults to 8): rows of that table.
        insertion_calibration (`str`, defaults to `"relative"`): how a gap's variation becomes a token count:
            `"relative"`: `max(1, ceil(max_inserted_tokens * r_i))`, r_i = the min-max position of W_i among the
            video's valid gaps (its least changing gap gets 1 token, its most changing gap the bound: counts follow
            the video whatever the backbone's cosine range, and a video's counts depend on it alone); `"absolute"`:
            `ceil(insertion_scale * W_i)` (the first layout; with frozen-CLIP cosines of 0.94-0.999 it gives 1
            everywhere).
        paper_variation_scaling (`bool`, defaults to `True`): the inserted tokens are multiplied by the gap's
            normalised variation `W_i / max_j W_j`: counts are integers (no gradient), this scale carries the
            variation's gradient to the spatial prompter and keeps a barely changing gap's tokens small.
        temporal_head_input (`str`, defaults to `"prompted"`): what the temporal head of a STOP model reads:
            `"prompted"` the per-frame CLS features of the prompted backbone, `"frozen"` the frozen CLIP's per-frame
            features (one extra forward pass of the frozen backbone without gradient; a head trained on cached
            frozen features keeps its meaning when STOP's prompts are trained around it).
    """

    model_type = "stop"
    sub_configs = {"text_config": CLIPTextConfig, "vision_config": CLIPVisionConfig}

    def __init__(
        self,
        text_config=None,
        vision_config=None,
        projection_dim=512,
        logit_scale_init_value=2.6592,
        variant="official",
        num_frames=12,
        max_words=32,
        prompt_generator="transformer",
        num_prompt_layers=None,
        num_global_prompts=4,
        num_local_prompts=4,
        num_text_prompts=8,
        use_dgl_prompts=True,
        use_spatial_prompt=True,
        use_temporal_prompt=True,
        adapter_dim=32,
        adapter_scale=0.1,
        spatial_prompt_scale=0.05,
        temporal_prompt_scale=0.05,
        spatial_top_k=6,
        prompter_channels=(9, 9, 16),
        prompter_mlp_dim=16,
        prompter_kernel=(3, 11, 11),
        prompter_dropout=0.5,
        region_kernel=(5, 11, 11),
        inter_channels=9,
        inter_kernel=(3, 15, 25),
        inter_mlp_dim=16,
        frame_weight_kernel=(5, 11, 11),
        mask_layout="official",
        frame_weight_norm="batch",
        attention_alpha=0.5,
        region_beta=1.0,
        insertion_scale=8.0,
        max_inserted_tokens=4,
        paper_hidden_dim=32,
        paper_dropout=0.1,
        frame_position_embeddings=False,
        max_frames=64,
        temporal_head="none",
        temporal_head_layers=2,
        paper_version=2,
        paper_prompt_layers=None,
        paper_region_source="layer",
        paper_temporal_prompter="tokens",
        paper_neighbour_attention=True,
        paper_frame_identity=True,
        frame_identity_rows=8,
        insertion_calibration="relative",
        paper_variation_scaling=True,
        temporal_head_input="prompted",
        **kwargs,
    ):
        if isinstance(text_config, dict):
            text_config = CLIPTextConfig(**text_config)
        if isinstance(vision_config, dict):
            vision_config = CLIPVisionConfig(**vision_config)
        self.text_config = text_config if text_config is not None else CLIPTextConfig()
        self.vision_config = vision_config if vision_config is not None else CLIPVisionConfig()
        self.projection_dim = projection_dim
        self.logit_scale_init_value = logit_scale_init_value

        self.variant = variant
        self.num_frames = num_frames
        self.max_words = max_words
        self.prompt_generator = prompt_generator
        self.num_prompt_layers = num_prompt_layers
        self.num_global_prompts = num_global_prompts
        self.num_local_prompts = num_local_prompts
        self.num_text_prompts = num_text_prompts
        self.use_dgl_prompts = use_dgl_prompts
        self.use_spatial_prompt = use_spatial_prompt
        self.use_temporal_prompt = use_temporal_prompt
        self.adapter_dim = adapter_dim
        self.adapter_scale = adapter_scale
        self.spatial_prompt_scale = spatial_prompt_scale
        self.temporal_prompt_scale = temporal_prompt_scale
        self.spatial_top_k = spatial_top_k
        self.prompter_channels = list(prompter_channels)
        self.prompter_mlp_dim = prompter_mlp_dim
        self.prompter_kernel = list(_as_tuple(prompter_kernel, "prompter_kernel"))
        self.prompter_dropout = prompter_dropout
        self.region_kernel = list(_as_tuple(region_kernel, "region_kernel"))
        self.inter_channels = inter_channels
        self.inter_kernel = list(_as_tuple(inter_kernel, "inter_kernel"))
        self.inter_mlp_dim = inter_mlp_dim
        self.frame_weight_kernel = list(_as_tuple(frame_weight_kernel, "frame_weight_kernel"))
        self.mask_layout = mask_layout
        self.frame_weight_norm = frame_weight_norm
        self.attention_alpha = attention_alpha
        self.region_beta = region_beta
        self.insertion_scale = insertion_scale
        self.max_inserted_tokens = max_inserted_tokens
        self.paper_hidden_dim = paper_hidden_dim
        self.paper_dropout = paper_dropout
        self.frame_position_embeddings = frame_position_embeddings
        self.max_frames = max_frames
        self.temporal_head = temporal_head
        self.temporal_head_layers = temporal_head_layers
        self.paper_version = paper_version
        self.paper_prompt_layers = None if paper_prompt_layers is None else [int(i) for i in paper_prompt_layers]
        self.paper_region_source = paper_region_source
        self.paper_temporal_prompter = paper_temporal_prompter
        self.paper_neighbour_attention = paper_neighbour_attention
        self.paper_frame_identity = paper_frame_identity
        self.frame_identity_rows = frame_identity_rows
        self.insertion_calibration = insertion_calibration
        self.paper_variation_scaling = paper_variation_scaling
        self.temporal_head_input = temporal_head_input
        super().__init__(**kwargs)
        self._validate()

    def _validate(self):
        choices = {
            "variant": ("official", "paper"),
            "prompt_generator": ("transformer", "linear"),
            "mask_layout": ("official", "patch"),
            "frame_weight_norm": ("batch", "video"),
            "temporal_head": ("none", "seqTransf"),
            "paper_version": (1, 2),
            "paper_region_source": ("layer", "first"),
            "paper_temporal_prompter": ("tokens", "frames"),
            "insertion_calibration": ("relative", "absolute"),
            "temporal_head_input": ("prompted", "frozen"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"STOPConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        # Counts and sizes that must be positive, with the fix the error names.
        minimums = {
            "num_frames": (1, "a video needs at least one frame"),
            "max_frames": (1, "the frame position tables need at least one row"),
            "num_global_prompts": (1, "the video feature is read at global prompt 0"),
            "num_local_prompts": (1, "every frame gets at least one local prompt"),
            "num_text_prompts": (2, "one prefix and one postfix prompt at least"),
            "max_inserted_tokens": (1, "each gap between frames may take at least one prompt token"),
            "adapter_dim": (1, "the adapter bottleneck needs a width"),
            "temporal_head_layers": (1, "the temporal head needs a layer"),
            "max_words": (2, "the start and end tokens"),
        }
        for name, (minimum, reason) in minimums.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
                raise ValueError(f"STOPConfig.{name} must be an integer >= {minimum} ({reason}), got {value!r}")
        if self.num_text_prompts % 2:
            raise ValueError(
                f"STOPConfig.num_text_prompts must be even (prefix + postfix), got {self.num_text_prompts}"
            )
        text_positions = self.text_config.max_position_embeddings
        if self.max_words > text_positions:
            raise ValueError(
                f"STOPConfig.max_words ({self.max_words}) exceeds the text tower's positions "
                f"(text_config.max_position_embeddings = {text_positions}): set max_words <= {text_positions}"
            )
        if not self.use_dgl_prompts and (self.use_spatial_prompt or self.use_temporal_prompt):
            raise ValueError(
                "STOPConfig: use_dgl_prompts=False is the frozen-CLIP baseline; set use_spatial_prompt=False and "
                "use_temporal_prompt=False too"
            )
        if not 0.0 <= self.attention_alpha <= 1.0:
            raise ValueError(f"STOPConfig.attention_alpha must be in [0, 1], got {self.attention_alpha}")
        if self.num_frames > self.max_frames:
            raise ValueError(
                f"STOPConfig.num_frames ({self.num_frames}) exceeds max_frames ({self.max_frames}): set "
                f"max_frames >= {self.num_frames} or sample fewer frames"
            )
        if self.grid_size * self.patch_size != self.image_size:
            raise ValueError(
                f"STOPConfig: vision_config.image_size ({self.image_size}) must be a multiple of patch_size "
                f"({self.patch_size})"
            )
        if not 0 < self.spatial_top_k < self.grid_size**2:
            raise ValueError(
                f"STOPConfig.spatial_top_k must be in [1, {self.grid_size**2 - 1}] for a {self.grid_size}x"
                f"{self.grid_size} grid, got {self.spatial_top_k}"
            )

        layers = self.vision_config.num_hidden_layers
        if self.paper_prompt_layers is not None and (
            not self.paper_prompt_layers or any(not 0 <= i < layers for i in self.paper_prompt_layers)
        ):
            raise ValueError(
                f"STOPConfig.paper_prompt_layers must be a non-empty list of vision layer indices in [0, {layers - 1}], "
                f"got {self.paper_prompt_layers}"
            )
        if self.frame_identity_rows < 2:
            raise ValueError(f"STOPConfig.frame_identity_rows must be at least 2, got {self.frame_identity_rows}")

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        # A config saved before `paper_version` existed describes the first paper layout: keep its computation
        # (the constructor's default is the current layout).
        if "paper_version" not in config_dict:
            config_dict = {**config_dict, "paper_version": 1}
        return super().from_dict(config_dict, **kwargs)

    @property
    def paper_layers(self) -> list[int]:
        """Sorted vision layers that run the paper's prompting (`paper_version=2`)."""
        if self.paper_prompt_layers is None:
            return list(range(self.vision_config.num_hidden_layers))
        return sorted(set(self.paper_prompt_layers))

    @property
    def uses_paper_layers(self) -> bool:
        """Whether the video tower is the per-layer paper layout (`encode_paper_video`)."""
        return self.variant == "paper" and self.paper_version >= 2 and self.use_dgl_prompts

    # Derived geometry (never stored, always read from the CLIP configs).
    @property
    def image_size(self) -> int:
        return int(self.vision_config.image_size)

    @property
    def patch_size(self) -> int:
        return int(self.vision_config.patch_size)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def frame_shared_prompts(self) -> bool:
        """Whether the generator's local prompts are shared by all frames (so the weights do not fix T)."""
        return self.variant == "paper" or self.prompt_generator == "linear"

    @property
    def prompt_layers(self) -> int:
        if self.num_prompt_layers is not None:
            return int(self.num_prompt_layers)
        return max(self.vision_config.num_hidden_layers, self.text_config.num_hidden_layers)

    def to_clip_config(self) -> CLIPConfig:
        return CLIPConfig(
            text_config=self.text_config.to_dict(),
            vision_config=self.vision_config.to_dict(),
            projection_dim=self.projection_dim,
            logit_scale_init_value=self.logit_scale_init_value,
        )
