"""The Giga-SSL model (shipped to the Hub as remote code: configuration, modeling, sparse ops).

The modeling classes load on first access: the configuration alone is what a settings check needs.
:func:`register_auto_classes` adds the classes to transformers' ``AutoConfig`` / ``AutoModel`` /
``AutoModelForSequenceClassification``; the shipped files themselves call ``register_for_auto_class``, so a
saved folder always carries its code (``auto_map``) whichever way the classes were reached.
"""

import importlib

from .configuration_gigassl import GigaSSLConfig

_MODELING_NAMES = (
    "GigaSSLContrastiveOutput",
    "GigaSSLForContrastivePretraining",
    "GigaSSLModel",
    "GigaSSLModelOutput",
    "GigaSSLPreTrainedModel",
    "nt_xent_loss",
)
_CLASSIFICATION_NAMES = ("GigaSSLForSlideClassification", "GigaSSLSlideClassifierOutput")


def __getattr__(name: str):
    if name in _MODELING_NAMES:
        return getattr(importlib.import_module(".modeling_gigassl", __name__), name)
    if name in _CLASSIFICATION_NAMES:
        return getattr(importlib.import_module(".modeling_gigassl_classification", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register_auto_classes() -> None:
    """Make ``AutoConfig`` / ``AutoModel`` / ``AutoModelForSequenceClassification`` build the Giga-SSL classes.

    After this, ``AutoModel.from_pretrained`` loads a Giga-SSL folder with this package's code, without
    ``trust_remote_code``. Calling it again is harmless. Not done on import: it imports torch and transformers
    (seconds), and registering changes transformers' global state, which an import should not.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    from .modeling_gigassl import GigaSSLModel
    from .modeling_gigassl_classification import GigaSSLForSlideClassification

    AutoConfig.register(GigaSSLConfig.model_type, GigaSSLConfig, exist_ok=True)
    AutoModel.register(GigaSSLConfig, GigaSSLModel, exist_ok=True)
    AutoModelForSequenceClassification.register(GigaSSLConfig, GigaSSLForSlideClassification, exist_ok=True)


__all__ = ["GigaSSLConfig", "register_auto_classes", *_MODELING_NAMES, *_CLASSIFICATION_NAMES]
