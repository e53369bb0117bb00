"""The Giga-SSL model (shipped to the Hub as remote code: configuration, modeling, sparse ops).

The configuration loads eagerly (light); the modeling classes load on first access, so that registering the
configuration with ``AutoConfig`` never imports the modeling code while transformers is mid-import.
"""

import importlib
import sys

from .configuration_gigassl import GigaSSLConfig

# Not part of the shipped code: what ``register_for_auto_class`` sets (calling it would import transformers'
# auto classes, whose import is what registers these classes with them: giga_ssl_hf/__init__.py).
GigaSSLConfig._auto_class = "AutoConfig"

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


def register_with_imported_auto_classes() -> None:
    """Register with ``AutoConfig`` / ``AutoModel`` where transformers has imported them (no import here).

    Called when this package is imported and by ``giga_ssl_hf``'s hook on the auto modules' import. The
    modeling code is imported only once ``AutoModel`` exists, i.e. once transformers' modeling is loaded.
    """
    configuration_auto = sys.modules.get("transformers.models.auto.configuration_auto")
    if configuration_auto is not None and hasattr(configuration_auto, "AutoConfig"):
        configuration_auto.AutoConfig.register(GigaSSLConfig.model_type, GigaSSLConfig, exist_ok=True)
    modeling_auto = sys.modules.get("transformers.models.auto.modeling_auto")
    if modeling_auto is not None and hasattr(modeling_auto, "AutoModel"):
        from .modeling_gigassl import GigaSSLModel
        from .modeling_gigassl_classification import GigaSSLForSlideClassification

        modeling_auto.AutoModel.register(GigaSSLConfig, GigaSSLModel, exist_ok=True)
        modeling_auto.AutoModelForSequenceClassification.register(
            GigaSSLConfig, GigaSSLForSlideClassification, exist_ok=True
        )


register_with_imported_auto_classes()

__all__ = ["GigaSSLConfig", *_MODELING_NAMES, *_CLASSIFICATION_NAMES]
