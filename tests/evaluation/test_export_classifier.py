"""A saved probe exported as GigaSSLForSlideClassification: loads as remote code without the package and scores
as the saved probe does."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from giga_ssl_hf.contracts.slide_embeddings import load_embeddings
from giga_ssl_hf.contracts.tile_features import TileArrays, load_tile_dataset
from giga_ssl_hf.evaluation.evaluate_command import main
from giga_ssl_hf.evaluation.saved_probe import SavedProbe
from giga_ssl_hf.inference.embed import EmbedSettings, embed_to_folder
from giga_ssl_hf.inference.views import slide_views

from .synthetic import PATCH, write_labels, write_tile_cohort

N_TILES = 8  # tiles per view of the embeddings


@pytest.fixture
def exported(tmp_path, tiny_config):
    """(tmp_path, embeddings, features folder): a tiny encoder's embeddings, evaluated with --save-probe
    --export-classifier (standardised probe)."""
    from giga_ssl_hf import GigaSSLModel

    torch.manual_seed(0)
    GigaSSLModel(tiny_config(n_tiles=N_TILES)).save_pretrained(tmp_path / "encoder")
    labels = write_tile_cohort(tmp_path / "exhaustive", 24, 5, arrangement=False, feature_dim=8)
    embed_to_folder(
        EmbedSettings(
            model=str(tmp_path / "encoder"),
            features=str(tmp_path / "exhaustive"),
            out=str(tmp_path / "emb"),
            tile_sampling="chunks",
            device="cpu",
        )
    )
    argv = [
        "--embeddings",
        str(tmp_path / "emb"),
        "--labels",
        str(write_labels(tmp_path / "tumour.csv", labels)),
    ]
    argv += ["--folds", "3", "--standardize", "--save-probe", str(tmp_path / "probe")]
    assert main([*argv, "--export-classifier", str(tmp_path / "classifier")]) == 0
    return tmp_path


def _remote_scores(tmp_path, inputs: dict) -> dict:
    """Run the exported folder as remote code in a subprocess where ``giga_ssl_hf`` cannot be imported."""
    torch.save(inputs, tmp_path / "inputs.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["giga_ssl_hf"] = None  # the editable install is on sys.path: make any import of it fail
        import torch
        from transformers import AutoModelForSequenceClassification
        model = AutoModelForSequenceClassification.from_pretrained(
            {str(tmp_path / "classifier")!r}, trust_remote_code=True
        ).eval()
        assert type(model).__name__ == "GigaSSLForSlideClassification", type(model)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        with torch.no_grad():
            from_embeddings = model(slide_embedding=inputs["embeddings"]).logits
            from_views = model(**inputs["views"], labels=inputs["labels"])
        loaded = sorted(name for name, module in sys.modules.items() if name.startswith("giga_ssl_hf") and module)
        assert not loaded, loaded
        torch.save({{"from_embeddings": from_embeddings, "from_views": from_views.logits, "loss": from_views.loss,
                    "id2label": model.config.id2label}}, {str(tmp_path / "out.pt")!r})
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    env.pop("PYTHONPATH", None)  # -I ignores it too; the worktree must not be where the code comes from
    subprocess.run([sys.executable, "-I", "-c", script], check=True, cwd=tmp_path, env=env, timeout=300)
    return torch.load(tmp_path / "out.pt")


def _views_of(tmp_path, slide_rows: list[int]) -> dict:
    """The chunk views ``giga-ssl embed`` drew for these slides, as model inputs ``(B, V, N, ...)``."""
    dataset = load_tile_dataset(tmp_path / "exhaustive")
    arrays = TileArrays.from_dataset(dataset)
    features, coords, masks = [], [], []
    for row in slide_rows:
        tiles, tile_coords = arrays.row(row)
        index, mask = slide_views(
            len(tiles), tile_coords // PATCH, dataset[row]["slide_id"], "chunks", 0, N_TILES, 0
        )
        features.append(torch.from_numpy(np.asarray(tiles[index], dtype=np.float32)))
        coords.append(torch.from_numpy(tile_coords[index]))
        masks.append(torch.from_numpy(mask))
    patch = torch.full((len(slide_rows),), PATCH)
    return {
        "tile_features": torch.stack(features),
        "tile_coords": torch.stack(coords),
        "tile_mask": torch.stack(masks),
        "patch_size_level0": patch,
    }


@pytest.mark.slow
def test_exported_classifier_scores_as_the_saved_probe_without_the_package(exported):
    tmp_path = exported
    probe = SavedProbe.load(tmp_path / "probe")
    ids, embeddings = load_embeddings(str(tmp_path / "emb"))
    rows = [0, 1, 2]  # all slides have 25 tiles: views stack without padding
    inputs = {
        "embeddings": torch.from_numpy(embeddings),
        "views": _views_of(tmp_path, rows),
        "labels": torch.tensor([probe.classes.index("ab"[r % 2]) for r in rows]),
    }
    remote = _remote_scores(tmp_path, inputs)
    assert remote["id2label"] == {0: "a", 1: "b"}
    expected = probe.predict_proba(embeddings)
    from_embeddings = torch.softmax(remote["from_embeddings"].double(), dim=1).numpy()
    assert np.abs(from_embeddings - expected).max() <= 1e-5
    log_odds = (remote["from_embeddings"][:, 1] - remote["from_embeddings"][:, 0]).double().numpy()
    assert np.abs(log_odds - probe.log_odds(embeddings, "b")).max() <= 1e-5
    # From the tiles: the same views as the embeddings, averaged and normalised inside the model.
    from_views = torch.softmax(remote["from_views"].double(), dim=1).numpy()
    assert np.abs(from_views - expected[rows]).max() <= 1e-5
    assert remote["loss"].ndim == 0 and torch.isfinite(remote["loss"])


@pytest.mark.slow
def test_the_classifier_folder_and_its_card(exported):
    tmp_path = exported
    config = json.loads((tmp_path / "classifier" / "config.json").read_text())
    assert config["architectures"] == ["GigaSSLForSlideClassification"]
    assert config["auto_map"]["AutoModelForSequenceClassification"].endswith(".GigaSSLForSlideClassification")
    assert config["label2id"] == {"a": 0, "b": 1}
    assert (tmp_path / "classifier" / "modeling_gigassl_classification.py").is_file()
    card = (tmp_path / "classifier" / "README.md").read_text()
    assert "**tumour** (classes: a, b)" in card
    assert "| Training slides | 24 |" in card
    assert "| 3-fold CV, full (16 slides) |" in card
    summary = json.loads((tmp_path / "classifier" / "classifier_summary.json").read_text())
    assert summary["probe"]["task"] == "tumour" and summary["results"][0]["auc_mean"] >= 0


@pytest.mark.slow
def test_push_model_publishes_the_classifier_whole(exported):
    from giga_ssl_hf.cli import main as cli_main
    from giga_ssl_hf.models.gigassl import GigaSSLForSlideClassification

    tmp_path = exported
    argv = ["push-model", str(tmp_path / "classifier"), "--repo-id", "lab/tumour-classifier"]
    assert cli_main([*argv, "--dry-run", str(tmp_path / "hub")]) == 0
    hub = tmp_path / "hub"
    assert {"config.json", "model.safetensors", "classifier_summary.json", "README.md"} <= {
        p.name for p in hub.iterdir()
    }
    assert (hub / "modeling_gigassl_classification.py").is_file()
    card = (hub / "README.md").read_text()
    assert 'from_pretrained("lab/tumour-classifier", trust_remote_code=True)' in card
    assert "| 3-fold CV, full (16 slides) |" in card
    published = GigaSSLForSlideClassification.from_pretrained(hub).eval()
    exported_model = GigaSSLForSlideClassification.from_pretrained(tmp_path / "classifier").eval()
    embedding = torch.nn.functional.normalize(torch.randn(2, 16), dim=1)
    with torch.no_grad():
        assert torch.equal(
            published(slide_embedding=embedding).logits, exported_model(slide_embedding=embedding).logits
        )


def test_export_needs_save_probe_and_refuses_a_foreign_folder(binary_task, tmp_path, capsys):
    folder, labels_csv, *_ = binary_task
    argv = ["--embeddings", str(folder), "--labels", str(labels_csv), "--folds", "3"]
    assert main([*argv, "--export-classifier", str(tmp_path / "c")]) == 2
    assert "--save-probe" in capsys.readouterr().err
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("mine")
    assert main([*argv, "--save-probe", str(tmp_path / "p"), "--export-classifier", str(tmp_path / "c")]) == 2
    assert "not a model folder" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()  # refused before the evaluation wrote anything


@pytest.mark.slow
def test_an_encoder_of_other_weights_is_refused_before_any_work(exported, tiny_config, capsys):
    from giga_ssl_hf import GigaSSLModel

    tmp_path = exported
    torch.manual_seed(1)
    GigaSSLModel(tiny_config(n_tiles=N_TILES)).save_pretrained(tmp_path / "other")
    argv = ["--embeddings", str(tmp_path / "emb"), "--labels", str(tmp_path / "tumour.csv"), "--folds", "3"]
    argv += ["--save-probe", str(tmp_path / "probe2"), "--export-classifier", str(tmp_path / "classifier2")]
    assert main([*argv, "--classifier-encoder", str(tmp_path / "other")]) == 2
    assert "other weights" in capsys.readouterr().err
    assert not (tmp_path / "probe2").exists() and not (tmp_path / "classifier2").exists()


def test_a_three_class_standardised_probe_becomes_the_head(tiny_config):
    from giga_ssl_hf import GigaSSLModel
    from giga_ssl_hf.evaluation.export_classifier import classifier_from_probe
    from giga_ssl_hf.evaluation.saved_probe import fit_saved_probe

    from .synthetic import planted

    ids, x, labels = planted(90, n_classes=3, dim=16)
    x /= np.linalg.norm(x, axis=1, keepdims=True)  # slide embeddings are L2-normalised
    probe = fit_saved_probe(ids, x, labels, standardize=True)
    model = classifier_from_probe(probe, GigaSSLModel(tiny_config()))
    assert model.config.id2label == {0: "class_0", 1: "class_1", 2: "class_2"}
    with torch.no_grad():
        logits = model(slide_embedding=torch.from_numpy(x)).logits.double()
    assert np.abs(torch.softmax(logits, dim=1).numpy() - probe.predict_proba(x)).max() <= 1e-5
    with pytest.raises(ValueError, match="16-d embeddings but the encoder makes 32-d"):
        classifier_from_probe(probe, GigaSSLModel(tiny_config(hidden_dim=32)))


def test_a_probe_of_one_top_site_fraction_exports_at_it_and_several_are_refused(tmp_path, tiny_config):
    """Embeddings pooled at a fraction of their own (embed --top-site-fractions 0.25): the classifier pools at it,
    scoring whole slides as the probe scores their embeddings; embeddings of several fractions cannot be
    exported (one classifier pools at one)."""
    from giga_ssl_hf import GigaSSLModel
    from giga_ssl_hf.contracts import read_metadata
    from giga_ssl_hf.evaluation.export_classifier import classifier_encoder, classifier_from_probe
    from giga_ssl_hf.evaluation.saved_probe import fit_saved_probe

    torch.manual_seed(0)
    GigaSSLModel(tiny_config(slide_pooling="top")).save_pretrained(tmp_path / "encoder")
    labels = write_tile_cohort(tmp_path / "exhaustive", 24, 5, arrangement=False, feature_dim=8)
    for name, fractions in (("one", (0.25,)), ("two", (0.03, 0.25))):
        embed_to_folder(
            EmbedSettings(
                model=str(tmp_path / "encoder"), features=str(tmp_path / "exhaustive"), out=str(tmp_path / name),
                tile_sampling="all", device="cpu", top_site_fractions=fractions,
            )
        )  # fmt: skip
    with pytest.raises(ValueError, match=r"one block per top-site fraction \(\[0.03, 0.25\]\)"):
        classifier_encoder(read_metadata(tmp_path / "two"), None)
    ids, x = load_embeddings(tmp_path / "one")
    metadata = read_metadata(tmp_path / "one")
    probe = fit_saved_probe(ids, x, labels, standardize=True, embeddings_metadata=metadata)
    encoder = GigaSSLModel.from_pretrained(classifier_encoder(metadata, None))
    model = classifier_from_probe(probe, encoder)
    assert model.config.top_site_fraction == 0.25 and encoder.config.top_site_fraction == 0.03
    arrays = TileArrays.from_dataset(load_tile_dataset(tmp_path / "exhaustive"))
    for row in (0, 1):
        features, coords = arrays.row(row)
        with torch.no_grad():
            logits = model(
                tile_features=torch.from_numpy(np.asarray(features, dtype=np.float32))[None],
                tile_coords=torch.from_numpy(np.asarray(coords))[None],
                patch_size_level0=PATCH,
            ).logits.double()
        expected = probe.predict_proba(x[row : row + 1])
        assert np.abs(torch.softmax(logits, dim=1).numpy() - expected).max() <= 1e-5
