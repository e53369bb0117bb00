"""One way to configure a stage: a dataclass of settings, from which the stage's command line is generated.

Every stage (``extract``, ``train``, ``embed``, ...) declares its settings as dataclass fields made with
:func:`option`. The field's name gives the flag (``output_dir`` -> ``--output-dir``; ``--output_dir`` is accepted
too, and the help shows one), its annotation the conversion (``int``, ``float``, ``str``, ``Path``, ``X | None``,
``tuple[str, ...]``, ``Literal[...]`` for choices), its default the default, and the dataclass's
``__post_init__`` the validation, so that the command line and a library call (the pipeline composing stages)
check the same things in one place. :class:`SettingsParser` turns the dataclasses into an argparse parser and
the command line back into dataclass instances, the way ``transformers.HfArgumentParser`` does, with one-line
errors, an optional ``--config`` YAML/JSON file of the same names and named ``--preset`` values.

A composing command (``giga-ssl pipeline``) puts each stage's dataclasses under a namespace (``nested``):
``--train.max-steps``, ``train: {max_steps: ...}`` in its config file. Two marks in a field's metadata serve it:
``managed`` (the composing command sets the field itself, so it has no flag there) and ``affects_results=False``
(the field changes how a stage runs, not what it makes: left out of the fingerprints that decide what to redo).

Why not a library (tried 2026-12-03 on two nested dataclasses): jsonargparse 4.53 imports in 0.07 s and nests
dataclasses with config files, but refuses dash spellings under a namespace (``--train.max-steps``: unrecognised),
prints usage and a tip around each error (4-6 lines) and takes help texts from docstrings (docstring_parser);
tyro 1.0 imports in 0.1 s and takes both spellings, but reports an error in an 11-line box and reads no config
file. Either would mean rewriting the 19 settings dataclasses (help, exclusive switches, negatable and positional
fields) and every command's error handling; this module is ~390 lines.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, NoReturn

# The keys option(**cli) takes: how the flag is made, then the marks a composing command reads.
_FLAG_KEYS = {"metavar", "positional", "flag", "aliases", "exclusive", "nargs", "type", "required"}
_OPTION_KEYS = _FLAG_KEYS | {"negatable", "choices", "switch_help", "managed", "affects_results"}


def option(default: Any = dataclasses.MISSING, help: str = "", **cli: Any) -> Any:
    """A settings field. ``cli`` tunes its flag: ``metavar``; ``flag`` (the flag's name when the field's own
    does not read well, e.g. ``"--no-pretrained"`` for ``pretrained=True``); ``aliases`` (more flags);
    ``positional=True`` (a positional argument, ``nargs="*"`` for tuples); ``exclusive`` (a mapping flag ->
    value: mutually exclusive switches that set this field, e.g. ``{"--aug": "augmented"}``); ``required=True``
    (the command line must give it; a library caller may leave it for a composing stage to fill; a field without
    a default is required too); ``negatable=True`` (a bool with both ``--x`` and ``--no-x``, for a default that a
    composing command changes); ``choices`` (the allowed values when they live in a constant rather than a
    ``Literal`` annotation); ``switch_help`` (with ``exclusive``: the help of each switch but the default one,
    which gets ``help``); ``managed=True`` (a composing command sets it: no flag under its namespace there);
    ``affects_results=False`` (changes how a stage runs, not what it makes: no part of a fingerprint)."""
    unknown = set(cli) - _OPTION_KEYS
    if unknown:
        raise TypeError(f"option() got unknown keyword(s): {', '.join(sorted(unknown))}")
    metadata = {"help": help, **cli}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple (immutable) for a sequence default")
    return dataclasses.field(default=default, metadata=metadata)


def flag_of(name: str) -> str:
    """The flag users type for a settings field: ``max_steps`` -> ``--max-steps``."""
    return "--" + name.replace("_", "-")


def fail(prog: str, message: str, code: int = 2) -> int:
    """Report a user error as one line (no traceback) and return the exit code."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code


def run_main(
    parser: SettingsParser,
    run: Callable[..., int | None],
    argv: list[str] | None,
    errors: tuple[type[BaseException], ...] = (ValueError, OSError),
) -> int:
    """A stage's ``main``: parse ``argv`` into its settings, call ``run(*settings)`` and turn a user error
    (bad flag, failed validation, missing file) into one line on stderr and exit status 2."""
    try:
        return int(run(*parser.parse(argv)) or 0)
    except errors as error:
        return fail(parser.prog, str(error))


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The help shows one spelling of each flag (``--max-steps``, not its alias ``--max_steps``) and its default."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings:
            return super()._format_action_invocation(action)
        flags = ", ".join(f for f in action.option_strings if "_" not in f) or action.option_strings[0]
        if action.nargs == 0:
            return flags
        return f"{flags} {self._format_args(action, self._get_default_metavar_for_optional(action))}"

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = (
            not any(action.default is empty for empty in (None, False, True, argparse.SUPPRESS))
            and action.default != ()
            and action.option_strings
            and action.nargs != 0
        )
        if shown and "(default: " in text:  # a default the help words itself, changed by a composing command
            return re.sub(r"\(default: [^)]*\)", "(default: %(default)s)", text)
        if shown and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


class SettingsParser(argparse.ArgumentParser):
    """An argparse parser generated from settings dataclasses; :meth:`parse` returns one instance of each."""

    def __init__(
        self,
        *settings: type,
        nested: dict[str, tuple[type, ...]] | None = None,
        config_file: bool = False,
        defaults: dict[str, Any] | None = None,
        run_facts: tuple[str, ...] = (),
        presets: dict[str, dict[str, Any]] | None = None,
        **kwargs: Any,
    ):
        """``settings``: dataclasses of flat flags; ``nested``: namespace -> dataclasses whose flags go under it
        (``--train.max-steps``), less their ``managed`` fields; ``defaults``: other defaults than the
        dataclasses' (the demo's), as a config file gives them (``{"train": {"max_steps": 60}}``); ``run_facts``:
        names that a run's recorded settings hold beside the options (train's ``num_processes``), so that the
        record reloads as a ``--config`` file: read and left aside; ``presets``: named sets of option values
        (``--preset NAME``), below a ``--config`` file and the command line."""
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(**kwargs)
        self.entries = [("", cls) for cls in settings]
        self.entries += [(name + ".", cls) for name, classes in (nested or {}).items() for cls in classes]
        self.config_file = config_file
        self.presets = presets or {}
        self.run_facts = frozenset(run_facts)
        self.field_actions: dict[str, argparse.Action] = {}
        seen: dict[str, type] = {}
        for prefix, cls in self.entries:
            target = self._group(prefix, cls)
            for item in command_line_fields(cls, composed=bool(prefix)):
                dest = prefix + item.name
                if dest in seen:
                    raise TypeError(f"{dest!r} is a field of both {seen[dest].__name__} and {cls.__name__}")
                seen[dest] = cls
                self._add_field(target, item, typing.get_type_hints(cls)[item.name], prefix)
        self.dests = frozenset(seen)
        self.set_defaults(**self._flat_values(defaults or {}, "defaults"))
        if config_file:
            self.add_argument(
                "--config",
                metavar="FILE",
                help="YAML or JSON file of these options (their names with underscores, a mapping per namespace); "
                "flags given on the command line override it",
            )
        if self.presets:
            listed = "; ".join(
                f"{name}: " + " ".join(self._preset_flags(values)) for name, values in self.presets.items()
            )
            self.add_argument(
                "--preset",
                choices=list(self.presets),
                help=f"a named recipe: its options as defaults, under --config and the command line ({listed})",
            )

    def _group(self, prefix: str, cls: type):
        """Where a dataclass's flags go: a titled group when the parser has several (its docstring's first line)."""
        if len(self.entries) == 1 or not cls.__doc__:
            return self
        title = cls.__doc__.strip().splitlines()[0]
        return self.add_argument_group(f"--{prefix}*: {title}" if prefix else title)

    def error(self, message: str) -> NoReturn:
        """A malformed command line raises ValueError, which :func:`run_main` reports as one line with exit
        status 2 (argparse would print the usage and exit the interpreter, even when called in-process)."""
        raise ValueError(f"{message} (see --help)")

    def _add_field(self, target, item: dataclasses.Field, annotation, prefix: str) -> None:
        meta = dict(item.metadata)
        # argparse %-formats help strings; the default is appended by the formatter
        kwargs: dict[str, Any] = {"help": meta.get("help", "").replace("%", "%%"), "dest": prefix + item.name}
        if "metavar" in meta:
            kwargs["metavar"] = meta["metavar"]
        base, is_sequence, choices = _unwrap(annotation)
        choices = meta.get("choices", choices)
        default = item.default if item.default is not dataclasses.MISSING else None
        if meta.get("exclusive"):
            group = target.add_mutually_exclusive_group()
            for flag, value in meta["exclusive"].items():
                help_text = meta["help"] if value == default else meta.get("switch_help", {}).get(flag, "")
                group.add_argument(
                    _under(prefix, flag), action="store_const", const=value, dest=kwargs["dest"],
                    help=help_text.replace("%", "%%"),
                )  # fmt: skip
            self.set_defaults(**{kwargs["dest"]: default})
            return
        if meta.get("positional"):
            if prefix:
                raise TypeError(f"{item.name}: a positional field cannot be nested")
            kwargs.pop("dest")
            nargs = meta.get("nargs", "*" if is_sequence else None)
            target.add_argument(item.name, nargs=nargs, type=base, default=default, **kwargs)
            return
        flags = [meta.get("flag", flag_of(item.name)), *meta.get("aliases", ()), "--" + item.name]
        if base is bool:
            flags = _bool_flags(item.name, default, meta, kwargs)
        else:
            kwargs["type"] = meta.get("type", base)
            if is_sequence:
                kwargs["nargs"] = meta.get("nargs", "+")
            if choices:
                kwargs["choices"] = choices
            else:
                kwargs.setdefault("metavar", item.name.upper())  # not the dest's TRAIN.MAX_STEPS
        required = bool(meta.get("required")) or item.default is dataclasses.MISSING
        flags = list(dict.fromkeys(_under(prefix, flag) for flag in flags))
        self.field_actions[kwargs["dest"]] = target.add_argument(
            *flags, default=default, required=required, **kwargs
        )

    def parse(self, argv: list[str] | None = None) -> tuple:
        """The settings instances from ``argv`` (and ``--config``), in the order of the dataclasses given (the
        nested ones last). A malformed command line, a bad config file and a setting that fails validation all
        raise ValueError (:func:`run_main` reports it in one line)."""
        if self.config_file or self.presets:
            # --preset and --config alone first: the full parse would refuse required options that they give
            first = argparse.ArgumentParser(prog=self.prog, add_help=False, exit_on_error=False)
            first.add_argument("--config")
            if self.presets:
                first.add_argument("--preset", choices=list(self.presets))
            try:
                known, _ = first.parse_known_args(argv)
            except argparse.ArgumentError as error:
                raise ValueError(f"{error} (see --help)") from None
            if getattr(known, "preset", None):
                self._set_file_defaults(self.presets[known.preset], f"preset {known.preset}")
            if known.config and self.config_file:
                recorded = read_config_file(known.config)
                options = {name: value for name, value in recorded.items() if name not in self.run_facts}
                self._set_file_defaults(options, f"{known.config}")
        namespace = vars(self.parse_args(argv))
        return tuple(self._instance(prefix, cls, namespace) for prefix, cls in self.entries)

    def _set_file_defaults(self, options: dict, source: str) -> None:
        """Options of a config file or preset as the parser's defaults, checked as flags are."""
        values = self._flat_values(options, source)
        self.set_defaults(**{dest: self._checked(dest, value) for dest, value in values.items()})
        for dest in values:
            if dest in self.field_actions:
                self.field_actions[dest].required = False  # given by the file

    def _preset_flags(self, values: dict) -> list[str]:
        """A preset's options as the flags that would set them (``--n-tiles 64``, ``--disjoint-views``)."""
        flags = []
        for dest, value in self._flat_values(values, "").items():
            flag = self.field_actions[dest].option_strings[0]
            flags.append(flag if value is True else f"{flag} {value}")
        return flags

    @staticmethod
    def _instance(prefix: str, cls: type, namespace: dict) -> Any:
        """One settings instance; a failed validation under a namespace names it (``train: --max-steps ...``)."""
        values = {
            item.name: _immutable(namespace[prefix + item.name])
            for item in command_line_fields(cls, composed=bool(prefix))
            if prefix + item.name in namespace
        }
        try:
            return cls(**values)
        except ValueError as error:
            if not prefix:
                raise
            raise ValueError(f"{prefix[:-1]}: {error}") from None

    def _flat_values(self, values: dict, source: str) -> dict:
        """``{"train": {"max_steps": 3}}`` as ``{"train.max_steps": 3}``; an unknown name is an error (a typo would
        otherwise be ignored)."""
        flat = {}
        for name, value in values.items():
            if isinstance(value, dict):
                flat.update({f"{name}.{inner}": v for inner, v in self._flat_values(value, "").items()})
            else:
                flat[name] = value
        unknown = sorted(set(flat) - self.dests) if source else []
        if unknown:
            raise ValueError(f"unknown option(s) in {source}: {', '.join(unknown)}")
        return flat

    def _checked(self, dest: str, value: Any) -> Any:
        """A value from the config file, converted and checked as the same value on the command line would be."""
        action = self.field_actions.get(dest)
        if action is None or value is None:
            return value
        if isinstance(value, str) and callable(action.type):
            try:
                value = action.type(value)
            except (TypeError, ValueError) as error:
                raise ValueError(f"{dest}: {value!r} in the config file: {error}") from None
        if action.choices is not None and value not in action.choices:
            raise ValueError(
                f"{dest}: {value!r} in the config file is not one of {', '.join(map(str, action.choices))}"
            )
        return value


class _Negatable(argparse.Action):
    """``--x`` / ``--no-x`` of a bool (argparse's BooleanOptionalAction would spell a nested one ``--no-ns.x``)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any):
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string: str | None = None) -> None:
        negated = option_string.rpartition(".")[2].lstrip("-").startswith(("no-", "no_"))
        setattr(namespace, self.dest, not negated)


def _bool_flags(name: str, default: bool, meta: dict, kwargs: dict) -> list[str]:
    """The flags of a bool field (and its action in ``kwargs``): ``--x`` to turn on, ``--no-x`` to turn off a
    default of True, both with ``negatable``; each with its underscore spelling."""
    if meta.get("negatable"):
        kwargs["action"] = _Negatable
        return [flag_of(name), "--no-" + name.replace("_", "-"), "--" + name, "--no_" + name]
    kwargs["action"] = "store_false" if default is True else "store_true"
    if meta.get("flag") is not None:
        return [meta["flag"], *meta.get("aliases", ())]
    if default is True:
        kwargs["help"] = "turn off: " + kwargs["help"]
        return ["--no-" + name.replace("_", "-"), "--no_" + name]
    return [flag_of(name), "--" + name]


def _under(prefix: str, flag: str) -> str:
    """A flag under a namespace: ``--max-steps`` -> ``--train.max-steps`` (a short ``-k`` -> ``--ns.k``)."""
    return f"--{prefix}{flag.lstrip('-')}" if prefix else flag


def command_line_fields(cls: type, composed: bool = False) -> list[dataclasses.Field]:
    """The fields of a settings dataclass that the command line sets (under a composing command's namespace:
    less those it manages)."""
    return [
        item
        for item in dataclasses.fields(cls)
        if item.init and not (composed and item.metadata.get("managed"))
    ]


def settings_values(*instances: Any, composed: bool = False, results_only: bool = False) -> dict:
    """The values of settings instances by field name, as a ``--config`` file holds them; ``composed``: the fields
    of a composing command's namespace; ``results_only``: less the fields marked ``affects_results=False``."""
    return {
        item.name: getattr(instance, item.name)
        for instance in instances
        for item in command_line_fields(type(instance), composed)
        if not (results_only and item.metadata.get("affects_results") is False)
    }


def _immutable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _unwrap(annotation) -> tuple[Any, bool, tuple | None]:
    """(element type, is a sequence, choices) of a field's annotation."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _unwrap(args[0])
    if origin in (tuple, list):
        element, _, choices = _unwrap(args[0])
        return element, True, choices
    if origin is Literal:
        return type(args[0]), False, tuple(args)
    if annotation in (int, float, str, bool, Path):
        return annotation, False, None
    raise TypeError(f"settings field type not supported on the command line: {annotation!r}")


def read_config_file(path: str | Path) -> dict:
    """Option values from a YAML or JSON file (a mapping; a nested mapping per namespace)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text()
    if path.suffix == ".json":
        values = json.loads(text)
    else:
        import yaml

        values = yaml.safe_load(text)
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of option names to values")
    return values
