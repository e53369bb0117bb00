"""The settings -> command line generator every stage uses (giga_ssl_hf/settings.py)."""

import json
from dataclasses import dataclass, replace
from typing import Literal

import pytest

from giga_ssl_hf.settings import SettingsParser, flag_of, option, run_main, settings_values


@dataclass
class Inputs:
    """inputs"""

    paths: tuple[str, ...] = option((), "files", positional=True)
    out: str | None = option(None, "output folder", required=True)


@dataclass
class Knobs:
    """knobs"""

    max_steps: int = option(10, "steps")
    rate: float | None = option(None, "rate; default: derived")
    mode: Literal["fast", "slow"] = option("fast", "how")
    pretrained: bool = option(True, "use weights")
    verbose: bool = option(False, "say more")
    standardize: bool = option(False, "standardise", negatable=True)
    passes: str = option("both", "which passes", exclusive={"--both": "both", "--aug": "augmented"})
    seed: int = option(0, "seed")

    def __post_init__(self):
        if self.max_steps < 1:
            raise ValueError(f"{flag_of('max_steps')} must be at least 1, got {self.max_steps}")


def parser(**kwargs) -> SettingsParser:
    return SettingsParser(Inputs, Knobs, prog="giga-ssl test", **kwargs)


def test_flags_types_and_defaults():
    inputs, knobs = parser().parse(["a.svs", "b.svs", "--out", "o", "--max-steps", "3", "--rate", "0.5"])
    assert inputs == Inputs(paths=("a.svs", "b.svs"), out="o")
    assert (knobs.max_steps, knobs.rate, knobs.mode, knobs.pretrained, knobs.passes) == (
        3,
        0.5,
        "fast",
        True,
        "both",
    )
    _, knobs = parser().parse(["--out", "o", "--mode", "slow", "--no-pretrained", "--verbose", "--aug"])
    assert (knobs.mode, knobs.pretrained, knobs.verbose, knobs.passes) == ("slow", False, True, "augmented")
    _, knobs = parser().parse(["--out", "o", "--standardize"])
    assert (
        knobs.standardize is True
        and parser().parse(["--out", "o", "--no-standardize"])[1].standardize is False
    )


def test_underscore_spelling_is_accepted_but_the_help_shows_dashes():
    _, knobs = parser().parse(["--out", "o", "--max_steps", "4", "--no_pretrained"])
    assert (knobs.max_steps, knobs.pretrained) == (4, False)
    text = parser().format_help()
    assert "--max-steps MAX_STEPS" in text and "--max_steps" not in text and "--no_pretrained" not in text
    assert "(default: 10)" in text and "(default: 0)" in text  # a zero default is shown too
    assert "--standardize, --no-standardize" in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--out", "o", "--max-steps", "0"], "--max-steps must be at least 1, got 0"),
        (["--out", "o", "--mode", "medium"], "invalid choice: 'medium'"),
        (["--out", "o", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["--out", "o", "--both", "--aug"], "not allowed with argument"),
        ([], "the following arguments are required: --out"),
    ],
)
def test_every_user_error_is_one_line_with_exit_status_2(argv, message, capsys):
    assert run_main(parser(), lambda *settings: 0, argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("giga-ssl test: error: ") and message in err


def test_config_file_gives_required_values_and_the_command_line_wins(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("out: from-file\nmax_steps: 7\nrate: 0.1\n")
    inputs, knobs = parser(config_file=True).parse(["--config", str(config), "--rate", "0.2"])
    assert (inputs.out, knobs.max_steps, knobs.rate) == ("from-file", 7, 0.2)
    config.write_text("max_stepz: 7\n")
    with pytest.raises(ValueError, match="unknown option.*max_stepz"):
        parser(config_file=True).parse(["--config", str(config)])


def test_a_preset_gives_defaults_under_the_config_file_and_the_command_line(tmp_path, capsys):
    presets = {"long": {"max_steps": 50, "mode": "slow", "verbose": True}}
    _, knobs = parser(presets=presets).parse(["--out", "o", "--preset", "long"])
    assert (knobs.max_steps, knobs.mode, knobs.verbose, knobs.rate) == (50, "slow", True, None)
    config = tmp_path / "run.yaml"
    config.write_text("max_steps: 7\n")
    _, knobs = parser(presets=presets, config_file=True).parse(
        ["--out", "o", "--preset", "long", "--config", str(config), "--mode", "fast"]
    )
    assert (knobs.max_steps, knobs.mode, knobs.verbose) == (7, "fast", True)
    _, knobs = parser(presets=presets).parse(["--out", "o"])  # no preset: the dataclasses' defaults
    assert (knobs.max_steps, knobs.mode, knobs.verbose) == (10, "fast", False)
    assert run_main(parser(presets=presets), lambda *_: 0, ["--out", "o", "--preset", "lon"]) == 2
    assert "--preset" in capsys.readouterr().err
    parser(presets=presets).print_help()
    assert "long: --max-steps 50 --mode slow --verbose" in " ".join(capsys.readouterr().out.split())


@dataclass
class Stage:
    """a stage"""

    max_steps: int = option(5, "the stage's steps")
    out: str | None = option(None, "where the stage writes", managed=True)
    verbose: bool = option(False, "say more", affects_results=False)
    standardize: bool = option(False, "standardise", negatable=True)
    k: int = option(10, "neighbours", flag="-k", aliases=("--k",))


def nested_parser(**kwargs) -> SettingsParser:
    return SettingsParser(
        Inputs, nested={"train": (Knobs,), "embed": (Stage,)}, prog="giga-ssl test", **kwargs
    )


def test_a_composing_command_nests_each_stage_under_its_namespace():
    inputs, knobs, stage = nested_parser().parse(
        ["--out", "o", "--train.max-steps", "3", "--embed.max_steps", "4", "--train.no-pretrained",
         "--train.aug", "--embed.no-standardize", "--embed.k", "2"]
    )  # fmt: skip
    assert (inputs.out, knobs.max_steps, knobs.pretrained, knobs.passes) == ("o", 3, False, "augmented")
    assert (stage.max_steps, stage.standardize, stage.k) == (4, False, 2)
    assert nested_parser().parse(["--out", "o", "--embed.standardize"])[2].standardize is True
    text = nested_parser().format_help()
    assert "--train.max-steps MAX_STEPS" in text and "--embed.standardize, --embed.no-standardize" in text
    with pytest.raises(ValueError, match="unrecognized arguments: --max-steps"):
        nested_parser().parse(["--out", "o", "--max-steps", "3"])
    with pytest.raises(ValueError, match="^train: --max-steps must be at least 1, got 0$"):
        nested_parser().parse(["--out", "o", "--train.max-steps", "0"])


def test_a_composing_command_leaves_managed_fields_off_and_changes_defaults():
    composed = nested_parser(defaults={"train": {"max_steps": 99, "standardize": True}})
    assert "--embed.out" not in composed.format_help() and "(default: 99)" in composed.format_help()
    _, knobs, stage = composed.parse(["--out", "o"])
    assert (knobs.max_steps, knobs.standardize, stage.out) == (99, True, None)
    with pytest.raises(ValueError, match="unrecognized arguments: --embed.out"):
        composed.parse(["--out", "o", "--embed.out", "x"])
    with pytest.raises(ValueError, match="unknown option.*train.max_stepz"):
        nested_parser(defaults={"train": {"max_stepz": 1}})
    # alone, the stage's command has the managed field as a flag
    assert SettingsParser(Stage, prog="x").parse(["--out", "y"])[0].out == "y"


def test_nested_config_file_and_the_values_it_is_written_from(tmp_path):
    config = tmp_path / "run.json"
    inputs, knobs, stage = nested_parser().parse(["--out", "o", "--train.rate", "0.5", "--embed.verbose"])
    written = {"train": settings_values(knobs, composed=True), "embed": settings_values(stage, composed=True)}
    assert "out" not in written["embed"] and written["embed"]["verbose"] is True
    assert "verbose" not in settings_values(stage, composed=True, results_only=True)
    config.write_text(json.dumps(written))
    again = nested_parser(config_file=True).parse(["--out", "o", "--config", str(config), "--embed.k", "3"])
    assert again[1] == knobs and again[2] == replace(stage, k=3)
    config.write_text(json.dumps({"train": {"mode": "medium"}}))
    with pytest.raises(ValueError, match="train.mode: 'medium' in the config file is not one of fast, slow"):
        nested_parser(config_file=True).parse(["--out", "o", "--config", str(config)])
    config.write_text(json.dumps({"embed": {"out": "x"}}))  # managed: not an option of the composing command
    with pytest.raises(ValueError, match="unknown option.*embed.out"):
        nested_parser(config_file=True).parse(["--out", "o", "--config", str(config)])


def test_a_field_in_two_dataclasses_of_one_namespace_is_refused():
    @dataclass
    class Other:
        seed: int = option(1, "another seed")

    with pytest.raises(TypeError, match="'seed' is a field of both Knobs and Other"):
        SettingsParser(Knobs, Other, prog="x")
    assert SettingsParser(Knobs, nested={"other": (Other,)}, prog="x").parse(["--other.seed", "3"])[
        1
    ] == Other(3)


def test_bools_take_no_value():
    """--name true|false (transformers' HfArgumentParser spelling) is not accepted: a bool is a switch."""
    with pytest.raises(ValueError, match="unrecognized arguments: false"):
        SettingsParser(Knobs, prog="x").parse(["--verbose", "false"])
    _, knobs = parser().parse(["--out", "o", "--verbose", "--no_pretrained"])
    assert (knobs.pretrained, knobs.verbose) == (False, True)


def test_config_file_values_are_converted_and_checked_like_flags(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("out: o\nrate: 1e-3\n")  # YAML 1.1 reads 1e-3 as a string
    assert parser(config_file=True).parse(["--config", str(config)])[1].rate == 0.001
    config.write_text("out: o\nmode: medium\n")
    with pytest.raises(ValueError, match="mode: 'medium' in the config file is not one of fast, slow"):
        parser(config_file=True).parse(["--config", str(config)])
    with pytest.raises(ValueError, match="--config: expected one argument"):
        parser(config_file=True).parse(["--config"])


def test_help_words_each_switch_and_the_composed_default():
    @dataclass
    class Passes:
        passes: str = option(
            "both",
            "both passes",
            exclusive={"--both": "both", "--aug": "aug"},
            switch_help={"--aug": "augmented only"},
        )
        folds: int | None = option(None, "k of the k-fold (default: 5).")

    assert "augmented only" in SettingsParser(Passes, prog="x").format_help()
    text = " ".join(SettingsParser(Passes, prog="x", defaults={"folds": 3}).format_help().split())
    assert "k of the k-fold (default: 3)." in text and "(default: 5)" not in text
