"""giga-ssl-hf: Giga-SSL slide-level self-supervised learning for whole-slide images, on Hugging Face.

Importing the package registers :class:`GigaSSLConfig` / :class:`GigaSSLModel` with ``AutoConfig`` /
``AutoModel``, and marks them for ``register_for_auto_class`` so that a saved folder carries the model code
(``auto_map``) and loads with ``trust_remote_code=True`` where this package is not installed.
"""

from transformers import AutoConfig, AutoModel

from .models.gigassl import (
    GigaSSLConfig,
    GigaSSLContrastiveOutput,
    GigaSSLForContrastivePretraining,
    GigaSSLModel,
    GigaSSLModelOutput,
    GigaSSLPreTrainedModel,
)

__version__ = "0.1.0"

AutoConfig.register(GigaSSLConfig.model_type, GigaSSLConfig, exist_ok=True)
AutoModel.register(GigaSSLConfig, GigaSSLModel, exist_ok=True)
GigaSSLConfig.register_for_auto_class()
GigaSSLModel.register_for_auto_class("AutoModel")


def __getattr__(name: str):
    # Heavier stage APIs load on first use so that `import giga_ssl_hf` stays light.
    if name == "load_embeddings":
        from .evaluation.data import load_embeddings

        return load_embeddings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "GigaSSLConfig",
    "GigaSSLContrastiveOutput",
    "GigaSSLForContrastivePretraining",
    "GigaSSLModel",
    "GigaSSLModelOutput",
    "GigaSSLPreTrainedModel",
    "load_embeddings",
]
