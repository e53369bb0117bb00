"""The tile encoder of an extraction, ready to run: built from :class:`ExtractionConfig`, with an offline
machine answered in seconds (weights from the local cache only) and unavailable weights named with the fixes."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from giga_ssl_hf.features.encoders import EncoderRunner
    from giga_ssl_hf.features.extraction_settings import ExtractionConfig

logger = logging.getLogger(__name__)


def _hub_reachable(timeout: float = 3.0) -> bool:
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection(
            (url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout
        ).close()
    except OSError:
        return False
    return True


def build_runner(config: ExtractionConfig, device: str) -> EncoderRunner:
    """The tile encoder of ``config`` on ``device``; unavailable weights raise a ValueError naming the fixes.

    When the Hub cannot be reached, weights are looked up in the local cache only, so that an offline
    machine fails in seconds instead of retrying downloads.
    """
    from huggingface_hub import constants

    from giga_ssl_hf.features.encoder_presets import PRESETS, WeightsUnavailableError, download_preset_weights
    from giga_ssl_hf.weight_files import check_weights_file

    if config.weights is not None and Path(config.weights).is_file():
        check_weights_file(config.weights)  # a wrong or truncated file, before torch is imported
    downloads = config.pretrained and config.weights is None
    offline_before = constants.HF_HUB_OFFLINE
    if downloads and not offline_before and not _hub_reachable():
        logger.info(
            "the Hub (%s) is unreachable: pretrained weights come from the local cache only",
            constants.ENDPOINT,
        )
        constants.HF_HUB_OFFLINE = True
    try:
        if downloads and config.encoder in PRESETS:
            # Before torch is imported: a refusal then takes a second and little memory.
            download_preset_weights(PRESETS[config.encoder])
        from giga_ssl_hf.features.encoders import build_tile_encoder

        encoder = build_tile_encoder(config.encoder, pretrained=config.pretrained, weights=config.weights)
    except (OSError, WeightsUnavailableError) as error:
        if not downloads:
            raise
        gated = (
            " (a gated model: accept its terms on the Hub, then hf auth login)"
            if "gated" in str(error)
            else ""
        )
        raise ValueError(
            f"the pretrained weights of encoder {config.encoder!r} are not in the Hugging Face cache and cannot "
            f"be downloaded{gated}; pass --weights FILE (a local .safetensors or .pth), or --no-pretrained "
            "for random weights (tests only), or run once with network access"
        ) from error
    finally:
        constants.HF_HUB_OFFLINE = offline_before
    from giga_ssl_hf.features.encoders import EncoderRunner

    return EncoderRunner(encoder, device=device, precision=config.precision)
