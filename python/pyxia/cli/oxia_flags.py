"""Oxia's command-line conventions, shared by every ``pyxia`` command.

- Global logging flags, accepted before the command (``pyxia -l debug server``) and after it
  (``pyxia server -l debug``) as Oxia's persistent flags are: ``-l/--log-level
  debug|info|warn|error`` (any case; ``warning`` too), ``-j/--log-json`` (JSON lines with an
  ISO-8601 time) and pyxia's ``--log-format logfmt|json``. The last one given wins; logging is
  configured as soon as one is read (:func:`add_global_flags`).
- :data:`GO_DURATION`: a click type reading Go durations (``1h``, ``30s``, ``500ms``, ``1h30m``)
  or plain seconds, wherever Oxia takes a duration.
- :func:`bool_flag`: a boolean flag written as Go writes them: ``--x`` (true), ``--x=false``,
  ``--x false``; ``--no-x`` is kept as pyxia's spelling.
- :func:`refused`: an Oxia flag pyxia does not take, refused with one line naming pyxia's
  equivalent (hidden from ``--help``).
- :func:`apply_options_file`: an Oxia options file (``--sconfig``) fills the parameters that the
  command line did not set (the command line wins).
- :func:`log_start`: the version and the effective configuration, logged once the process is
  up, just before its ready line (a start that fails prints its one line and nothing else).

Invariants: nothing here opens a port or a file other than the options file it is given; a
bad value is a usage error (one line, exit status 2), never a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from pyxia import logs
from pyxia.config import ConfigError, FileKey, load_options_file, parse_go_duration
from pyxia.version import __version__

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("pyxia.cli")

LOG_LEVELS = {"debug": "debug", "info": "info", "warn": "warning", "warning": "warning"}
LOG_LEVELS["error"] = "error"
_META = "pyxia.logging"


class GoDuration(click.ParamType[float, Any]):
    """A Go duration (``time.ParseDuration``) or a number of seconds, as seconds (float)."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if value < 0:
                self.fail(f"{value!r} is negative", param, ctx)
            return float(value)
        try:
            return parse_go_duration(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


GO_DURATION = GoDuration()


def bool_flag(
    name: str, *, default: bool, help: str, hidden_negation: bool = True
) -> Callable[[F], F]:
    """``--name`` (true), ``--name=false``/``--name false`` as Go's flags, and ``--no-name``."""
    dest = name.lstrip("-").replace("-", "_")

    def negation(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value:
            ctx.meta[f"pyxia.negated.{dest}"] = True

    def apply(f: F) -> F:
        f = click.option(
            f"--no-{name.lstrip('-')}",
            f"no_{dest}",
            is_flag=True,
            default=False,
            hidden=hidden_negation,
            expose_value=False,
            callback=negation,
            help=f"Same as --{name.lstrip('-')}=false.",
        )(f)
        return click.option(
            name,
            dest,
            type=click.BOOL,
            is_flag=False,
            flag_value=True,
            default=default,
            show_default=True,
            help=help,
            metavar="[true|false]",
        )(f)

    return apply


def bool_value(ctx: click.Context | None, kw: Mapping[str, Any], dest: str) -> bool:
    """The value of a :func:`bool_flag` (``--no-x`` wins)."""
    if ctx is not None and ctx.meta.get(f"pyxia.negated.{dest}"):
        return False
    return bool(kw[dest])


def refused_option(*names: str, equivalent: str, takes_value: bool = True) -> click.Option:
    """Oxia's flag ``names``, which pyxia does not take: using it is a usage error that names
    pyxia's ``equivalent``. Hidden from ``--help``."""

    def refuse(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is None or value is False:
            return
        if ctx.get_parameter_source(param.name or "") != ParameterSource.COMMANDLINE:
            return
        raise click.UsageError(
            f"{'/'.join(names)} (Oxia's) is not supported by pyxia: {equivalent}", ctx
        )

    kwargs: dict[str, Any] = {
        "hidden": True,
        "expose_value": False,
        "callback": refuse,
        "default": None,
    }
    if not takes_value:
        kwargs.update(is_flag=False, flag_value="true", type=str)
    return click.Option(list(names), **kwargs)


def refused(*names: str, equivalent: str, takes_value: bool = True) -> Callable[[F], F]:
    """:func:`refused_option` as a decorator."""

    def apply(f: F) -> F:
        option = refused_option(*names, equivalent=equivalent, takes_value=takes_value)
        f.__dict__.setdefault("__click_params__", []).append(option)
        return f

    return apply


# -- logging -------------------------------------------------------------------------------------


def _settings(ctx: click.Context) -> dict[str, str]:
    return ctx.meta.setdefault(_META, {"level": "info", "format": "logfmt"})  # type: ignore[no-any-return]


def _configure(ctx: click.Context) -> None:
    s = _settings(ctx)
    logs.setup(s["level"], s["format"])


def _on_level(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if value is None:
        return
    level = LOG_LEVELS.get(str(value).lower())
    if level is None:
        raise click.BadParameter(
            f"{value!r} is not one of debug, info, warn, error", ctx=ctx, param=param
        )
    _settings(ctx)["level"] = level
    _configure(ctx)


def _on_json(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if value:
        _settings(ctx)["format"] = "json"
        _configure(ctx)


def _on_format(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if value is not None:
        _settings(ctx)["format"] = value
        _configure(ctx)


def global_flags() -> list[click.Option]:
    """Fresh ``-l/--log-level``, ``-j/--log-json`` and ``--log-format`` options."""
    return [
        click.Option(
            ["-l", "--log-level"],
            default=None,
            expose_value=False,
            callback=_on_level,
            metavar="[debug|info|warn|error]",
            help="Logging level [default: info].",
        ),
        click.Option(
            ["-j", "--log-json"],
            is_flag=True,
            default=False,
            expose_value=False,
            callback=_on_json,
            help="Print logs in JSON format (ISO-8601 time), as --log-format json.",
        ),
        click.Option(
            ["--log-format"],
            type=click.Choice(["logfmt", "json"]),
            default=None,
            expose_value=False,
            callback=_on_format,
            help="Log line format [default: logfmt].",
        ),
        refused_option(
            "--profile",
            takes_value=False,
            equivalent="there is no pprof endpoint; profile a running process with py-spy "
            "(py-spy record --pid PID, or py-spy top --pid PID)",
        ),
        refused_option(
            "--profile-bind-address",
            equivalent="there is no pprof endpoint; profile a running process with py-spy",
        ),
    ]


def add_global_flags(command: click.Command) -> None:
    """The logging flags on ``command`` and, for a group, on every command below it."""
    taken = {opt for p in command.params for opt in getattr(p, "opts", ())}
    command.params.extend(o for o in global_flags() if not any(opt in taken for opt in o.opts))
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            add_global_flags(sub)


def setup_logging() -> None:
    """Configures logging from the global flags read so far (defaults when none)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        logs.setup()
        return
    _configure(ctx)


# -- options files -------------------------------------------------------------------------------


def options_file_flag(what: str) -> Callable[[F], F]:
    return click.option(
        "--sconfig",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None,
        help=f"{what} options file (YAML, Oxia's keys; docs/configuration.md); flags given "
        "on the command line win over it.",
    )


def apply_options_file(
    ctx: click.Context,
    kw: dict[str, Any],
    path: Path | None,
    keys: dict[str, FileKey],
    translate: Callable[[str, Any], tuple[str, Any]] | None = None,
) -> None:
    """Fills ``kw`` from the options file at ``path``, except what the command line set.
    ``translate`` maps a file's parameter that the command names otherwise. A bad file is a
    usage error."""
    if path is None:
        return
    try:
        values, warnings = load_options_file(path, keys)
    except ConfigError as e:
        raise click.UsageError(str(e), ctx) from None
    for w in warnings:
        log.warning(w)
    params = {p.name: p for p in ctx.command.params if p.name}
    for name, value in values.items():
        if name == "log_level":
            level = LOG_LEVELS.get(str(value).lower())
            if level is None:
                raise click.UsageError(
                    f"{path}: observability.log.level {value!r} is not one "
                    "of debug, info, warn, error",
                    ctx,
                )
            if ctx.get_parameter_source("log_level") != ParameterSource.COMMANDLINE:
                _settings(ctx)["level"] = level
                _configure(ctx)
            continue
        if name == "metrics_enabled":
            if value is False and ctx.get_parameter_source("metrics_addr") != (
                ParameterSource.COMMANDLINE
            ):
                kw["metrics_addr"] = ""
            continue
        if translate is not None:
            name, value = translate(name, value)
        param = params.get(name)
        if param is None:
            raise click.UsageError(f"{path}: sets {name}, which this command does not take", ctx)
        if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE:
            continue
        if name == "metrics_addr" and kw.get("metrics_addr") == "":
            continue  # observability.metric.enabled: false
        try:
            kw[name] = param.type_cast_value(ctx, value)
        except click.BadParameter as e:
            raise click.UsageError(f"{path}: {name}: {e.message}", ctx) from None


def log_start(command: str, settings: Mapping[str, Any]) -> None:
    """The version and the effective configuration, once when started (secrets are never in
    it: only the paths of the files that hold them)."""
    shown = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in sorted(settings.items())
        if not k.startswith("_")
    }
    log.info(
        "pyxia %s %s: effective configuration",
        __version__,
        command,
        extra={"version": __version__, "config": shown},
    )
