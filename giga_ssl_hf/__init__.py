"""giga-ssl-hf: Giga-SSL slide-level self-supervised learning for whole-slide images, on Hugging Face.

Importing the package changes nothing outside it (no environment variable, no import hook, no registration)
and stays light: the public classes load on first access. :func:`register_auto_classes` makes
``AutoConfig`` / ``AutoModel`` / ``AutoModelForSequenceClassification`` build the Giga-SSL classes; a saved
folder also carries the model code (``auto_map``) and loads with ``trust_remote_code=True`` where this
package is not installed.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public name -> module that defines it, imported on first access.
_LAZY_ATTRIBUTES = {
    "GigaSSLConfig": ".models.gigassl",
    "GigaSSLContrastiveOutput": ".models.gigassl",
    "GigaSSLForContrastivePretraining": ".models.gigassl",
    "GigaSSLForSlideClassification": ".models.gigassl",
    "GigaSSLSlideClassifierOutput": ".models.gigassl",
    "GigaSSLModel": ".models.gigassl",
    "GigaSSLModelOutput": ".models.gigassl",
    "GigaSSLPreTrainedModel": ".models.gigassl",
    "load_embeddings": ".contracts.slide_embeddings",
    "register_auto_classes": ".models.gigassl",
}


def __getattr__(name: str):
    if name in _LAZY_ATTRIBUTES:
        return getattr(importlib.import_module(_LAZY_ATTRIBUTES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY_ATTRIBUTES)
