"""A saved linear probe exported as a ``GigaSSLForSlideClassification`` model folder (``--export-classifier``).

The folder holds the slide encoder the probe's embeddings came from, the probe as the model's linear head
(with its standardisation as buffers), the model code (``trust_remote_code=True``: it loads without this
package), ``classifier_summary.json`` (the probe's description and the evaluation's AUCs) and a card made
from it naming the task, classes, training slides and AUCs; ``giga-ssl push-model`` publishes it as is. The model scores a slide embedding exactly as the probe does: for two classes the
head's rows are ``[0, coef]`` and ``[0, intercept]``, so the softmax is ``predict_proba`` and
``logits[:, 1] - logits[:, 0]`` the probe's decision value (log-odds).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np

from giga_ssl_hf.evaluation.results import ProbeResult
from giga_ssl_hf.evaluation.saved_probe import SavedProbe

logger = logging.getLogger(__name__)


def classifier_encoder(embeddings_metadata: dict, encoder: str | None) -> str:
    """The slide encoder of the exported model: ``encoder`` if given, else the model that made the embeddings
    (recorded in their metadata). Checked from the files, before any work: its weights must be those that made
    the embeddings (their sha256, recorded by ``giga-ssl embed``), and the embeddings not hybrid nor of several
    top-site fractions."""
    from giga_ssl_hf.contracts.slide_embeddings import pooled_top_site_fraction
    from giga_ssl_hf.weight_files import model_folder, weights_sha256

    name = encoder or embeddings_metadata.get("model")
    if not name:
        raise ValueError(
            "the embeddings record no model: give the slide encoder with --classifier-encoder MODEL"
        )
    if embeddings_metadata.get("concat_mean_pool"):
        raise ValueError(
            "--export-classifier: the embeddings are hybrid (--concat-mean-pool) and a "
            "GigaSSLForSlideClassification scores the encoder's embedding only: export from plain embeddings"
        )
    pooled_top_site_fraction(embeddings_metadata, "--export-classifier")
    recorded, found = embeddings_metadata.get("model_sha256"), weights_sha256(model_folder(name))
    if recorded is None:
        logger.warning("the embeddings record no hash of their model's weights: %s is trusted to be it", name)
    elif recorded != found:
        raise ValueError(
            f"--export-classifier: the embeddings come from other weights (sha256 {recorded[:12]}) than the "
            f"encoder {name} ({(found or 'none')[:12]}): give the model that made them with --classifier-encoder"
        )
    return str(name)


def classifier_from_probe(probe: SavedProbe, encoder):
    """A ``GigaSSLForSlideClassification`` with ``encoder``'s weights (a ``GigaSSLModel``) and the probe as head."""
    if probe.embedding_dim != encoder.config.hidden_dim:
        raise ValueError(
            f"the probe takes {probe.embedding_dim}-d embeddings but the encoder makes "
            f"{encoder.config.hidden_dim}-d ones: not the encoder of the probe's embeddings"
        )
    from giga_ssl_hf.contracts.slide_embeddings import pooled_top_site_fraction

    model = classifier_of_encoder(encoder, probe.classes)
    fraction = pooled_top_site_fraction(probe.embeddings_metadata, "--export-classifier")
    if fraction is not None:  # embedded at a fraction of its own: the classifier pools so too
        model.config.top_site_fraction = fraction
    load_probe_head(model, probe)
    return model.eval()


def classifier_of_encoder(encoder, classes: list[str]):
    """A ``GigaSSLForSlideClassification`` with ``encoder``'s weights, ``classes`` as labels, a fresh head."""
    from giga_ssl_hf.models.gigassl import GigaSSLForSlideClassification

    config = copy.deepcopy(encoder.config)
    config.architectures, config.auto_map = None, None  # saving writes the classifier's own
    config.id2label = dict(enumerate(classes))
    config.label2id = {label: index for index, label in config.id2label.items()}
    model = GigaSSLForSlideClassification(config)
    model.gigassl.load_state_dict(encoder.state_dict())
    return model.to(next(encoder.parameters()).device)


def load_probe_head(model, probe: SavedProbe) -> None:
    """Copy ``probe`` into ``model``'s head and standardisation buffers (in place)."""
    import torch

    weight, bias = probe.coef, probe.intercept
    if len(probe.classes) == 2:  # sklearn's one decision value d for classes[1]: logits [0, d]
        weight, bias = np.concatenate([np.zeros_like(weight), weight]), np.concatenate([[0.0], bias])
    with torch.no_grad():
        model.classifier.weight.copy_(torch.from_numpy(weight))
        model.classifier.bias.copy_(torch.from_numpy(bias))
        if probe.standardize:
            model.embedding_mean.copy_(torch.from_numpy(probe.scaler_mean))
            model.embedding_scale.copy_(torch.from_numpy(probe.scaler_scale))


def export_classifier(
    probe: SavedProbe,
    out: str | Path,
    encoder: str | None = None,
    results: list[ProbeResult] = (),
    overwrite: bool = False,
    trust_remote_code: bool = False,
) -> Path:
    """Write the probe as a ``GigaSSLForSlideClassification`` folder (weights, code, card) at ``out``."""
    from huggingface_hub.constants import REPOCARD_NAME
    from transformers import AutoModel

    from giga_ssl_hf.contracts import CLASSIFIER_SUMMARY_FILENAME
    from giga_ssl_hf.files import staged_directory, write_json
    from giga_ssl_hf.hub.cards import classifier_card
    from giga_ssl_hf.models.gigassl import register_auto_classes

    out = Path(out)
    check_classifier_target(out, overwrite)
    register_auto_classes()
    metadata = probe.embeddings_metadata
    encoder_model = AutoModel.from_pretrained(
        classifier_encoder(metadata, encoder), trust_remote_code=trust_remote_code
    )
    model = classifier_from_probe(probe, getattr(encoder_model, "gigassl", encoder_model))
    summary = {
        "probe": probe.info,
        "results": [{k: v for k, v in r.to_dict().items() if k != "ids_dropped"} for r in results],
    }
    with staged_directory(out) as tmp:
        model.save_pretrained(tmp)
        write_json(tmp / CLASSIFIER_SUMMARY_FILENAME, summary)
        classifier_card(model.config, out.name, summary).save(tmp / REPOCARD_NAME)
    logger.info("exported the %s probe as a slide classifier to %s", probe.info.get("task"), out)
    return out


def check_export(folders: list[Path], embeddings: str, encoder: str | None, overwrite: bool) -> None:
    """Before the evaluation: the export folders may be written, and the encoder is the embeddings' own."""
    from giga_ssl_hf.contracts import read_metadata
    from giga_ssl_hf.contracts.slide_embeddings import resolve_embeddings_folder

    for folder in folders:
        check_classifier_target(folder, overwrite)
    classifier_encoder(read_metadata(resolve_embeddings_folder(embeddings)), encoder)


def export_classifiers(
    probes: list[SavedProbe], folders: list[Path], encoder: str | None, results: list, overwrite: bool
) -> None:
    """Each task's saved probe exported to its folder, its card with the task's AUCs (of the embeddings)."""
    for probe, folder in zip(probes, folders):
        task = probe.info["task"]
        own = [r for r in results if r.task == task and r.embedding == "embeddings"]
        export_classifier(probe, folder, encoder, own, overwrite)
        print(f"exported the {task} probe as a slide classifier to {folder}")


def check_classifier_target(directory: str | Path, overwrite: bool) -> None:
    """Refuse to replace an exported classifier without ``overwrite``, and any other non-empty folder at all."""
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        if not (directory / "config.json").exists():
            raise FileExistsError(f"{directory} exists and is not a model folder: choose another path")
        if not overwrite:
            raise FileExistsError(f"{directory} already holds a model: pass --overwrite-probe to replace it")
