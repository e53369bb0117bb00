"""Giga-SSL model configuration."""

from __future__ import annotations

from transformers import PreTrainedConfig

ENCODER_TYPES = ("sparse_conv", "mlp")
GRID_SIZE_MODES = ("per_slide", "batch")
SLIDE_POOLINGS = ("mean", "max", "top")


class GigaSSLConfig(PreTrainedConfig):
    r"""
    Configuration of a Giga-SSL slide encoder (Lazard et al., CVPRW 2023): tile features and their
    positions on the slide in, one slide embedding out.

    Args:
        feature_dim (`int`, *optional*, defaults to 256):
            Dimension `D` of the input tile features (256 for the paper's ResNet18 cut after `layer3`).
        hidden_dim (`int`, *optional*, defaults to 512):
            Dimension `E` of the slide embedding (output channels of the sparse ResNet18 `layer4`).
        encoder_type (`str`, *optional*, defaults to `"sparse_conv"`):
            `"sparse_conv"`: SparseConvMIL, ResNet18 `layer4` run as a sparse 2-D CNN over the tile grid, then
            averaged over the output sites. `"mlp"`: the successor's light variant, residual MLP blocks on each
            tile, then the mean over tiles (ignores tile positions).
        grid_cell_size (`int`, *optional*, defaults to 224):
            Level-0 pixels per grid cell when `patch_size_level0` is not passed to `forward`, or always when
            `fixed_grid_cell_size` is set.
        fixed_grid_cell_size (`bool`, *optional*, defaults to `False`):
            Ignore `patch_size_level0` and always divide level-0 coordinates by `grid_cell_size`. The original
            Giga-SSL training did this (tiles cut at level 1 of a 40x slide sit 4 cells apart); converted
            original checkpoints set it to reproduce the spacing they were trained with.
        grid_size_mode (`str`, *optional*, defaults to `"per_slide"`):
            `"per_slide"`: each slide's sparse map size comes from its own tiles, so a slide's embedding does
            not depend on its batch mates. `"batch"`: the original's map size taken over the whole batch
            (parity with the original implementation; a batch of one gives the same result in both modes).
        slide_pooling (`str`, *optional*, defaults to `"mean"`):
            How the output sites (tiles, for `"mlp"`) become the slide embedding: `"mean"` (the paper's) or `"max"`
            per channel. A feature of a rare local arrangement (one tissue type next to another along a short
            border) is diluted by the mean over a slide's sites but kept by the maximum. `"top"`: the mean of each
            channel's largest `top_site_fraction` of the sites, less noisy than the single maximum over a whole
            slide and the same as it on a view of few sites.
        top_site_fraction (`float`, *optional*, defaults to 0.03):
            With `slide_pooling="top"`, the share of a slide's output sites whose largest values are averaged per
            channel (at least one site).
        mlp_num_blocks (`int`, *optional*, defaults to 2):
            Number of residual MLP blocks of the `"mlp"` encoder (the first maps `feature_dim` to `hidden_dim`).
        mlp_dropout (`float`, *optional*, defaults to 0.0):
            Dropout probability inside the `"mlp"` encoder's blocks.
        projection_dims (`tuple[int]`, *optional*, defaults to `(512, 512, 256)`):
            Output sizes of the SimCLR projection head's linear layers (Linear-ReLU-BatchNorm1d for all but the
            last, which is a plain Linear).
        temperature (`float`, *optional*, defaults to 0.05):
            NT-Xent temperature.
        n_tiles (`int`, *optional*, defaults to 5):
            Tiles per view, in training and in the default inference ensemble.
        batch_norm_eps (`float`, *optional*, defaults to 1e-5):
            Epsilon of the BatchNorm layers.
        batch_norm_momentum (`float`, *optional*, defaults to 0.1):
            Momentum of the BatchNorm running statistics (torch convention).
        tile_encoder (`dict`, *optional*):
            The tile encoder whose features the model was trained on, as recorded in the tile-feature metadata
            (`name` (preset or timm / Hub id), `source`, `revision` or `weights_sha256`, `feature_dim`,
            `input_size` (px), `mpp` (µm per px), `normalisation`, `pooling`). Set by training; features of
            another encoder are refused at embedding time. `None` when unknown (e.g. converted checkpoints).
    """

    model_type = "gigassl"

    feature_dim: int = 256
    hidden_dim: int = 512
    encoder_type: str = "sparse_conv"
    grid_cell_size: int = 224
    fixed_grid_cell_size: bool = False
    grid_size_mode: str = "per_slide"
    slide_pooling: str = "mean"
    top_site_fraction: float = 0.03
    mlp_num_blocks: int = 2
    mlp_dropout: float = 0.0
    projection_dims: list[int] | tuple[int, ...] = (512, 512, 256)
    temperature: float = 0.05
    n_tiles: int = 5
    batch_norm_eps: float = 1e-5
    batch_norm_momentum: float = 0.1
    tile_encoder: dict | None = None

    def __post_init__(self, **kwargs):
        for name in ("feature_dim", "hidden_dim", "grid_cell_size", "n_tiles"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GigaSSLConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.mlp_num_blocks, int) or self.mlp_num_blocks < 1:
            raise ValueError(
                f"GigaSSLConfig.mlp_num_blocks must be a positive integer, got {self.mlp_num_blocks!r}"
            )
        if not 0 <= self.mlp_dropout < 1:
            raise ValueError(f"GigaSSLConfig.mlp_dropout must be in [0, 1), got {self.mlp_dropout!r}")
        if self.encoder_type not in ENCODER_TYPES:
            raise ValueError(
                f"GigaSSLConfig.encoder_type must be one of {ENCODER_TYPES}, got {self.encoder_type!r}"
            )
        if self.grid_size_mode not in GRID_SIZE_MODES:
            raise ValueError(
                f"GigaSSLConfig.grid_size_mode must be one of {GRID_SIZE_MODES}, got {self.grid_size_mode!r}"
            )
        if self.slide_pooling not in SLIDE_POOLINGS:
            raise ValueError(
                f"GigaSSLConfig.slide_pooling must be one of {SLIDE_POOLINGS}, got {self.slide_pooling!r}"
            )
        if not 0 < self.top_site_fraction <= 1:
            raise ValueError(
                f"GigaSSLConfig.top_site_fraction must be in (0, 1], got {self.top_site_fraction!r}"
            )
        self.top_site_fraction = float(self.top_site_fraction)
        self.projection_dims = list(self.projection_dims)
        if not self.projection_dims or not all(isinstance(d, int) and d > 0 for d in self.projection_dims):
            raise ValueError(
                "GigaSSLConfig.projection_dims must be a non-empty list of positive integers, "
                f"got {self.projection_dims!r}"
            )
        if not self.temperature > 0:
            raise ValueError(f"GigaSSLConfig.temperature must be positive, got {self.temperature!r}")
        if not self.batch_norm_eps > 0:
            raise ValueError(f"GigaSSLConfig.batch_norm_eps must be positive, got {self.batch_norm_eps!r}")
        if not 0 <= self.batch_norm_momentum <= 1:
            raise ValueError(
                f"GigaSSLConfig.batch_norm_momentum must be in [0, 1], got {self.batch_norm_momentum!r}"
            )
        if self.tile_encoder is not None and not isinstance(self.tile_encoder, dict):
            raise ValueError(f"GigaSSLConfig.tile_encoder must be a dict or None, got {self.tile_encoder!r}")
        self.fixed_grid_cell_size = bool(self.fixed_grid_cell_size)
        self.temperature = float(self.temperature)
        super().__post_init__(**kwargs)


# Saving writes `auto_map` with this class for AutoConfig, so a saved folder loads with trust_remote_code=True.
GigaSSLConfig.register_for_auto_class()
