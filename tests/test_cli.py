"""The `giga-ssl` dispatcher: top-level help, every subcommand's --help, unknown commands."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from giga_ssl_hf.cli import SUBCOMMANDS, main

# The options a user looks for first in each subcommand's --help.
KEY_OPTIONS = {
    "extract": ["--out", "--encoder", "--target-mpp", "--tile-size", "--n-aug", "--device", "--coords-from",
                "--tissue-geojson", "--weights"],
    "encoders": ["usage: giga-ssl encoders"],
    "import-h5": ["--patches-dir", "--out", "--patch-size-level0", "--encoder"],
    "export-h5": ["FEATURES_DIR", "--out", "--layout", "--overwrite"],
    "train": ["--config", "--features", "--output-dir", "--max-steps", "--batch-size", "--n-tiles",
              "--resume-from-checkpoint", "--init-from", "--allow-encoder-mismatch"],
    "embed": ["--model", "--features", "--out", "--tile-sampling", "--n-views", "--npy", "--allow-encoder-mismatch"],
    "evaluate": ["--embeddings", "--labels", "--splits", "--folds", "--train-sizes", "--out", "--save-probe",
                 "--task", "--retrieval", "--patient-column"],
    "heatmap": ["--model", "--features", "--probe", "--out", "--slides-dir", "--slide-ids", "--method",
                "--max-tiles-per-pass", "--overwrite", "--geojson", "--slide-embedding"],
    "search": ["--embeddings", "--query", "--query-embeddings", "-k", "--labels", "--backend"],
    "push-model": ["--repo-id", "--dry-run", "--private"],
    "push-embeddings": ["--repo-id", "--dry-run", "--private"],
    "download": ["REPO_OR_PATH", "--out", "--npy"],
    "convert": ["checkpoint", "--out"],
    "pipeline": ["slides", "--out", "--labels", "--config", "--train.max-steps", "--embed.n-views", "--evaluate.folds",
                 "--extract.no-pretrained"],
    "demo": ["--out", "--slides-per-class", "--train.max-steps", "--train.batch-size", "--embed.n-views",
             "--evaluate.folds"],
}  # fmt: skip


def test_top_level_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: giga-ssl COMMAND" in out
    for name, (_, summary) in SUBCOMMANDS.items():
        assert f"  {name} " in out, name
        assert summary in out


def test_no_command_prints_usage_and_fails(capsys):
    assert main([]) == 2
    assert "commands:" in capsys.readouterr().out


def test_unknown_command_exits_2(capsys):
    assert main(["no-such-stage"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'no-such-stage'" in err
    assert "extract" in err  # the usage follows, with the real commands


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_subcommand_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert f"usage: giga-ssl {command}" in out
    for option in KEY_OPTIONS.get(command, []):
        assert option in out, f"`giga-ssl {command} --help` does not mention {option}"


def test_every_subcommand_has_key_options_listed():
    # A new subcommand should say here which options its --help must explain.
    assert set(KEY_OPTIONS) == set(SUBCOMMANDS)


@pytest.mark.slow  # ~5 s: importing giga_ssl_hf loads torch and transformers
def test_console_script_help():
    script = Path(sys.executable).with_name("giga-ssl")
    if not script.exists():
        pytest.skip(f"console script not installed beside {sys.executable}")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for name in SUBCOMMANDS:
        assert name in result.stdout


# Libraries that take seconds to import: a subcommand's --help must not wait for them (the speed itself is
# measured in benchmarks/bench_cli_startup.py).
HEAVY_MODULES = ("torch", "datasets", "timm", "accelerate", "sklearn", "matplotlib", "openslide", "h5py")


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_subcommand_help_imports_no_heavy_library(command):
    probe = (
        "import sys\n"
        "from giga_ssl_hf.cli import main\n"
        "try:\n"
        f"    main([{command!r}, '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print([m for m in {HEAVY_MODULES!r} if m in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout[-300:]


def test_importing_the_package_changes_nothing_global_and_registration_is_explicit():
    probe = (
        "import os, sys\n"
        "environ, finders = dict(os.environ), list(sys.meta_path)\n"
        "import giga_ssl_hf\n"
        "print(os.environ == environ, sys.meta_path == finders)\n"
        "print(not any(m in sys.modules for m in ('torch', 'transformers')))\n"
        "from transformers import AutoConfig, AutoModel\n"
        "try:\n"
        "    AutoConfig.for_model('gigassl')\n"
        "except ValueError:\n"
        "    print('unregistered')\n"
        "giga_ssl_hf.register_auto_classes()\n"
        "giga_ssl_hf.register_auto_classes()  # again: harmless\n"
        "model = AutoModel.from_config(AutoConfig.for_model('gigassl', feature_dim=8, hidden_dim=16))\n"
        "print(type(model).__name__, giga_ssl_hf.GigaSSLModel is type(model))\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env
    )
    assert result.stdout.split() == ["True", "True", "True", "unregistered", "GigaSSLModel", "True"]


@pytest.mark.parametrize(("inherited", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_commands_start_with_passive_openmp_waiting_unless_the_environment_says(inherited, expected):
    probe = (
        "import os, sys\n"
        "from giga_ssl_hf.cli import main\n"
        "main(['encoders'])\n"
        "print(os.environ.get('OMP_WAIT_POLICY'))\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    env.update({"OMP_WAIT_POLICY": inherited} if inherited else {})
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env
    )
    assert result.stdout.split()[-1] == expected
