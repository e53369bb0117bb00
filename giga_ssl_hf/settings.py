"""One way to configure a stage: a dataclass of settings, from which the stage's command line is generated.

Every stage (``extract``, ``train``, ``embed``, ...) declares its settings as dataclass fields made with
:func:`option`. The field's name gives the flag (``output_dir`` -> ``--output-dir``; ``--output_dir`` is accepted
too, and the help shows one), its annotation the conversion (``int``, ``float``, ``str``, ``Path``, ``X | None``,
``tuple[str, ...]``, ``Literal[...]`` for choices), its default the default, and the dataclass's
``__post_init__`` the validation, so that the command line and a library call (the pipeline composing stages)
check the same things in one place. :class:`SettingsParser` turns the dataclasses into an argparse parser and
the command line back into dataclass instances, the way ``transformers.HfArgumentParser`` does, with one-line
errors and an optional ``--config`` YAML/JSON file of the same names.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import types
import typing
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, Literal, NoReturn

_ARGPARSE_KEYS = (
    "metavar",
    "positional",
    "flag",
    "aliases",
    "exclusive",
    "nargs",
    "type",
    "required",
    "negatable",
    "choices",
    "switch_help",
)


def option(default: Any = dataclasses.MISSING, help: str = "", **cli: Any) -> Any:
    """A settings field. ``cli`` tunes its flag: ``metavar``; ``flag`` (the flag's name when the field's own
    does not read well, e.g. ``"--no-pretrained"`` for ``pretrained=True``); ``aliases`` (more flags);
    ``positional=True`` (a positional argument, ``nargs="*"`` for tuples); ``exclusive`` (a mapping flag ->
    value: mutually exclusive switches that set this field, e.g. ``{"--aug": "augmented"}``); ``required=True``
    (the command line must give it; a library caller may leave it for a composing stage to fill; a field without
    a default is required too); ``negatable=True`` (a bool with both ``--x`` and ``--no-x``, for a default that a
    composing command changes); ``choices`` (the allowed values when they live in a constant rather than a
    ``Literal`` annotation); ``switch_help`` (with ``exclusive``: the help of each switch but the default one,
    which gets ``help``)."""
    unknown = set(cli) - set(_ARGPARSE_KEYS)
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
        config_file: bool = False,
        exclude: Collection[str] = (),
        defaults: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        """``exclude``: fields left off the command line, ``"name"`` or ``"Class.name"`` (a composing command sets
        them itself; they keep their defaults in :meth:`parse`'s instances); ``defaults``: other defaults than
        the dataclasses' (the demo's)."""
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(**kwargs)
        self.settings = settings
        self.config_file = config_file
        self.exclude = frozenset(exclude)
        self.field_actions: dict[str, argparse.Action] = {}
        seen: dict[str, type] = {}
        for cls in settings:
            title = (cls.__doc__ or "").strip().splitlines()[0] if len(settings) > 1 and cls.__doc__ else None
            target = self.add_argument_group(title) if title else self
            for item in dataclasses.fields(cls):
                if not item.init or self._excluded(cls, item.name):
                    continue
                if item.name in seen:
                    raise TypeError(
                        f"{item.name!r} is a field of both {seen[item.name].__name__} and {cls.__name__}"
                    )
                seen[item.name] = cls
                self._add_field(target, item, typing.get_type_hints(cls)[item.name])
        self.set_defaults(**(defaults or {}))
        if config_file:
            self.add_argument(
                "--config",
                metavar="FILE",
                help="YAML or JSON file of these options (their names with underscores); flags given on the "
                "command line override it",
            )

    def _excluded(self, cls: type, name: str) -> bool:
        return name in self.exclude or f"{cls.__name__}.{name}" in self.exclude

    def error(self, message: str) -> NoReturn:
        """A malformed command line raises ValueError, which :func:`run_main` reports as one line with exit
        status 2 (argparse would print the usage and exit the interpreter, even when called in-process)."""
        raise ValueError(f"{message} (see --help)")

    def _add_field(self, target, item: dataclasses.Field, annotation) -> None:
        meta = dict(item.metadata)
        # argparse %-formats help strings; the default is appended by the formatter
        kwargs: dict[str, Any] = {"help": meta.get("help", "").replace("%", "%%"), "dest": item.name}
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
                    flag, action="store_const", const=value, dest=item.name, help=help_text.replace("%", "%%")
                )
            self.set_defaults(**{item.name: default})
            return
        if meta.get("positional"):
            kwargs.pop("dest")
            nargs = meta.get("nargs", "*" if is_sequence else None)
            target.add_argument(item.name, nargs=nargs, type=base, default=default, **kwargs)
            return
        flag = meta.get("flag", flag_of(item.name))
        aliases = [*meta.get("aliases", ()), "--" + item.name]
        if base is bool and meta.get("negatable"):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif base is bool:
            if meta.get("flag") is None and default is True:
                flag = "--no-" + item.name.replace("_", "-")
                kwargs["help"] = "turn off: " + kwargs["help"]
            # the underscore spelling becomes the optional-value flag below, not an alias
            aliases = [*meta.get("aliases", ()), *(["--no_" + item.name] if default is True else [])]
            if "--" + item.name not in (flag, *aliases):
                # transformers' HfArgumentParser spelling, which train took before: --name [true|false]
                target.add_argument(
                    "--" + item.name, type=_as_bool, nargs="?", const=True, dest=item.name,
                    default=argparse.SUPPRESS, help=argparse.SUPPRESS,
                )  # fmt: skip
            kwargs["action"] = "store_false" if default is True else "store_true"
        else:
            kwargs["type"] = meta.get("type", base)
            if is_sequence:
                kwargs["nargs"] = meta.get("nargs", "+")
            if choices:
                kwargs["choices"] = choices
        required = bool(meta.get("required")) or item.default is dataclasses.MISSING
        aliases = sorted(set(aliases) - {flag})
        self.field_actions[item.name] = target.add_argument(
            flag, *aliases, default=default, required=required, **kwargs
        )

    def parse(self, argv: list[str] | None = None) -> tuple:
        """The settings instances from ``argv`` (and ``--config``). A malformed command line, a bad config file
        and a setting that fails validation all raise ValueError (:func:`run_main` reports it in one line)."""
        if self.config_file:
            # --config alone first: the full parse would refuse required options that the file gives
            config_only = argparse.ArgumentParser(prog=self.prog, add_help=False, exit_on_error=False)
            config_only.add_argument("--config")
            try:
                known, _ = config_only.parse_known_args(argv)
            except argparse.ArgumentError as error:
                raise ValueError(f"{error} (see --help)") from None
            if known.config:
                values = {
                    name: self._checked(name, value)
                    for name, value in read_config_file(known.config, self.settings).items()
                }
                self.set_defaults(**values)
                for name in values:
                    if name in self.field_actions:
                        self.field_actions[name].required = False  # given by the file
        namespace = vars(self.parse_args(argv))
        return tuple(
            cls(
                **{
                    f.name: _immutable(namespace[f.name])
                    for f in dataclasses.fields(cls)
                    if f.name in namespace and not self._excluded(cls, f.name)
                }
            )
            for cls in self.settings
        )

    def _checked(self, name: str, value: Any) -> Any:
        """A value from the config file, converted and checked as the same value on the command line would be."""
        action = self.field_actions.get(name)
        if action is None or value is None:
            return value
        if isinstance(value, str) and callable(action.type):
            try:
                value = action.type(value)
            except (TypeError, ValueError) as error:
                raise ValueError(f"{name}: {value!r} in the config file: {error}") from None
        if action.choices is not None and value not in action.choices:
            raise ValueError(
                f"{name}: {value!r} in the config file is not one of {', '.join(map(str, action.choices))}"
            )
        return value


def _as_bool(text: str) -> bool:
    """``true`` / ``false`` (and yes/no, 1/0) as HfArgumentParser reads them."""
    lowered = text.lower()
    if lowered in ("true", "yes", "y", "1"):
        return True
    if lowered in ("false", "no", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


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


def read_config_file(path: str | Path, settings: tuple[type, ...]) -> dict:
    """Option values from a YAML or JSON file; an unknown name is an error (a typo would otherwise be ignored)."""
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
    known = {f.name for cls in settings for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown option(s) in {path}: {', '.join(unknown)}")
    return values
