"""`giga-ssl extract`'s settings: what determines the features (:class:`ExtractionConfig`, recorded in
``OUT/extract_config.json``) and how a run goes (:class:`ExtractionRun`). The command line is generated from
them (:mod:`giga_ssl_hf.features.extract`); their validation serves the command line and library callers alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from giga_ssl_hf.contracts import TILE_DECODERS
from giga_ssl_hf.contracts.extraction_folder import AUGMENTED, EXHAUSTIVE
from giga_ssl_hf.contracts.tile_sampling import AUGMENTATION_SAMPLINGS, AugmentationSampling
from giga_ssl_hf.features.encoder_presets import PRESETS, resolve_encoder_name
from giga_ssl_hf.features.sharding import parse_shard
from giga_ssl_hf.settings import flag_of, option

BOTH_PASSES = (EXHAUSTIVE, AUGMENTED)
# Without a preset (another timm name, an hf-hub: id) the tiles are those of the paper's ResNet18.
DEFAULT_TILE_SIZE, DEFAULT_TARGET_MPP = 224, 1.0


@dataclass
class ExtractionConfig:
    """features: the settings that determine them (recorded in OUT/extract_config.json; a rerun must match)"""

    encoder: str = option(
        "resnet18-layer3",
        "a preset ('giga-ssl encoders' lists them: 'resnet18-layer3' is the paper's 256-d ResNet18, 'uni', "
        "'virchow2', 'h-optimus-0', ...), any other timm model name, or an hf-hub: id",
    )
    pretrained: bool = option(
        True, "the pretrained weights; off: random initialisation, no download (for tests)"
    )
    weights: str | None = option(
        None,
        "local weights file (.safetensors, or a .pth/.pth.tar/.bin such as the original MoCo checkpoint; for "
        "the transformers presets phikon / phikon-v2 a local copy of the Hub repo); default: the Hub weights "
        "through the HF cache (HF_HUB_OFFLINE=1: the cache alone)",
    )
    tile_size: int | None = option(
        None,
        f"tile side in px given to the encoder (default: the preset's input size, else {DEFAULT_TILE_SIZE})",
    )
    target_mpp: float | None = option(
        None,
        "µm per px of the tiles (default: the preset's, 1.0 for resnet18-layer3 as in the paper: level 1 of "
        f"a 40x slide; else {DEFAULT_TARGET_MPP})",
    )
    min_tissue: float = option(0.5, "keep tiles with at least this tissue fraction")
    mask_mpp: float = option(8.0, "resolution of the tissue mask, µm per px")
    saturation_threshold: float | None = option(
        None, "tissue = HSV saturation above this (default: Otsu's threshold)"
    )
    min_saturation: float = option(0.05, "lower bound of the Otsu threshold, so blank slides stay blank")
    n_aug: int = option(50, "augmented views per slide")
    n_tiles_per_aug: int = option(256, "tiles sampled with replacement per view")
    tile_sampling: AugmentationSampling = option(
        "random",
        "tiles of each augmentation: random (drawn with replacement, the paper), window (the "
        "--n-tiles-per-aug tiles nearest a random tile, contiguous, for train --tile-sampling window) or all "
        "(every tissue tile: n_aug x the exhaustive pass's storage)",
    )
    seed: int = option(0, "global seed; each slide's draws derive from it and the slide id", managed=True)
    dtype: Literal["float16", "float32"] = option("float16", "stored feature dtype")
    precision: Literal["auto", "bf16", "fp32"] = option(
        "auto", "bf16 autocast on CUDA and on CPUs with AMX when auto"
    )
    coords_from: str | None = option(
        None,
        "tile exactly the patches of TRIDENT / CLAM patch-coordinate h5 files in DIR (<slide_id>_patches.h5 "
        "or <slide_id>.h5: coords + patch_size_level0, or patch_size + patch_level) instead of the tissue mask",
        metavar="DIR",
    )
    tissue_geojson: str | None = option(
        None,
        "tissue polygons from DIR/<slide_id>.geojson (level-0 px, as QuPath and TRIDENT export them) "
        "instead of the Otsu mask; --min-tissue applies to them",
        metavar="DIR",
    )

    def __post_init__(self):
        self.encoder = resolve_encoder_name(self.encoder)
        preset = PRESETS.get(self.encoder)
        if self.tile_size is None:
            self.tile_size = preset.input_size if preset else DEFAULT_TILE_SIZE
        if self.target_mpp is None:
            self.target_mpp = preset.target_mpp if preset else DEFAULT_TARGET_MPP
        if self.tile_sampling not in AUGMENTATION_SAMPLINGS:
            raise ValueError(
                f"tile_sampling must be one of {AUGMENTATION_SAMPLINGS}, got {self.tile_sampling!r}"
            )
        if self.coords_from is not None and self.tissue_geojson is not None:
            raise ValueError(
                f"{flag_of('coords_from')} and {flag_of('tissue_geojson')} are exclusive "
                "(coordinates already say where tissue is)"
            )
        # Absolute, so that the recorded settings name the same folder from any working directory.
        if self.coords_from is not None:
            self.coords_from = str(Path(self.coords_from).resolve())
        if self.tissue_geojson is not None:
            self.tissue_geojson = str(Path(self.tissue_geojson).resolve())

    def check_tile_sources(self) -> None:
        """Raise unless the folders of patch coordinates / tissue polygons exist (checked when extracting, not
        when an extraction folder's recorded settings are read back)."""
        for name in ("coords_from", "tissue_geojson"):
            folder = getattr(self, name)
            if folder is not None and not Path(folder).is_dir():
                raise ValueError(f"{flag_of(name)}: not a folder: {folder}")


@dataclass
class ExtractionRun:
    """run: which slides, where to, which passes, and how (none of it changes the features)"""

    inputs: tuple[str, ...] = option(
        (), "slide files, or folders of slides (see --recursive)", positional=True, metavar="SLIDE_OR_DIR"
    )
    out: Path | None = option(None, "output folder (created; reruns resume in it)", metavar="OUT")
    slides_csv: Path | None = option(
        None,
        "CSV of slides: a 'path' column (relative to the CSV's folder), optional 'slide_id' (default: the file "
        "stem) and 'mpp' (that slide's level-0 µm/px, as --mpp for it alone)",
    )
    recursive: bool = option(False, "list folders with all their subfolders (slide ids must stay unique)")
    shard_spec: str | None = option(
        None,
        "run share I of N of the slides (0-based; for job arrays without a launcher: Slurm "
        "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT); the last share to finish assembles the Datasets",
        flag="--shard",
        metavar="I/N",
    )
    assemble: Path | None = option(
        None,
        "only (re)build the manifest and Datasets of DIR from its committed slides, then exit",
        metavar="DIR",
    )
    passes: tuple[str, ...] = option(
        BOTH_PASSES,
        "run both passes: exhaustive (every tissue tile once) and augmented (default)",
        exclusive={"--both": BOTH_PASSES, "--no-aug": (EXHAUSTIVE,), "--aug": (AUGMENTED,)},
        switch_help={"--no-aug": "the exhaustive pass only", "--aug": "the augmented pass only"},
    )
    mpp: float | None = option(None, "level-0 µm per px for slides whose metadata has no pixel size")
    override_mpp: bool = option(False, "use --mpp for every slide, even those that record a pixel size")
    device: str = option("auto", "cuda, cpu, cuda:1, ...; auto: cuda when available")
    batch_size: int = option(64, "tiles per encoder call")
    num_readers: int = option(
        1, "background threads reading tiles while the encoder runs (0: none)", flag="--readers", metavar="N"
    )
    decode: str = option(
        "auto",
        "tile reader: 'gpu' decodes the JPEG tiles of SVS / tiled TIFFs with nvjpeg and resizes them on the "
        "GPU; 'cpu-raw' the same with libjpeg-turbo on the CPU; 'openslide' reads regions with OpenSlide; "
        "'auto' is gpu on a CUDA device when the slide's tiles are JPEG, else openslide",
        choices=TILE_DECODERS,
    )
    thumbnails: bool = option(False, "write OUT/thumbnails/<slide_id>.png (tissue outline + kept tiles)")
    overwrite: bool = option(False, "redo slides already extracted in --out")
    progress: bool = option(True, "progress bars")
    shard: tuple[int, int] | None = field(init=False, default=None)  # (I, N): shard_spec parsed

    def __post_init__(self):
        self.inputs = tuple(self.inputs)
        self.shard = parse_shard(self.shard_spec) if self.shard_spec is not None else None
        if self.assemble is not None:
            return
        if self.out is None or not (self.inputs or self.slides_csv):
            raise ValueError("give slides (SLIDE_OR_DIR or --slides-csv) and --out, or --assemble DIR")
        if self.override_mpp and self.mpp is None and self.slides_csv is None:
            raise ValueError("--override-mpp needs --mpp (or a --slides-csv with an mpp column)")
