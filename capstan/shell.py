"""The ``capstan`` command: a cliff App and the only place errors become exit codes.

Exit codes: 0 success; 64 usage error; 65 invalid input or unknown name;
69 hypervisor or external tool missing or failed; 70 internal error;
74 local I/O error; 75 network or remote failure; 78 invalid configuration;
124 guest timeout; 130 interrupted; 134 guest crashed or aborted;
141 output pipe closed (e.g. piped into head).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import re
import sys
from typing import Any

from cliff.app import App
from cliff.commandmanager import CommandManager
from cliff.help import HelpExit

from capstan import __version__
from capstan.core.cells import Paragraphs
from capstan.core.config import Config, load, own_entry_points
from capstan.core.errors import CapstanError, UsageError
from capstan.core.secrets import RedactingFilter

__all__ = ["CapstanApp", "main"]

EXIT_USAGE = 64
EXIT_BACKEND = 69
EXIT_INTERNAL = 70
EXIT_IO = 74
EXIT_REMOTE = 75
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
_DEBUG_VERBOSITY = 2  # -vv: libraries log too
_GROUP_HELP = 2  # words in "package help", before the command it asks about
# optional backend library (top-level module) -> (extra that installs it, its name)
_EXTRAS = {"libvirt": ("libvirt", "libvirt-python"), "boto3": ("aws", "boto3"),
           "botocore": ("aws", "boto3"), "s3transfer": ("aws", "boto3"),
           "pyVmomi": ("vsphere", "pyvmomi"), "pyVim": ("vsphere", "pyvmomi"),
           "google": ("gce", "google-cloud-compute"),
           "openstack": ("openstack", "openstacksdk")}
#: control characters, and the bidirectional marks that reorder what a terminal shows
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]+")


class _CommandManager(CommandManager):
    """Commands from pycapstan's own entry points, imported only when used."""

    def load_commands(self, namespace: str) -> None:
        self.group_list.append(namespace)
        for ep in own_entry_points(namespace):
            self.commands[ep.name.replace("_", " ")] = ep


class CapstanApp(App):
    """Build and run OSv unikernels."""

    def __init__(self) -> None:
        super().__init__(
            description="Build and run OSv unikernels (pycapstan).",
            version=__version__,
            command_manager=_CommandManager("capstan.cli"),
            deferred_help=True,
        )
        self._config: Config | None = None

    def build_option_parser(self, description: str | None, version: str | None,
                            argparse_kwargs: dict[str, Any] | None = None
                            ) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = super().build_option_parser(
            description, version, argparse_kwargs)
        parser.add_argument("-u", "--repo-url", "--repo_url", dest="repo_url",
                            help="S3/HTTP repository URL (Capstan's -u)")
        parser.add_argument("-r", "--release-tag", "--release_tag", dest="release_tag",
                            help="GitHub release: any, latest or a tag")
        parser.add_argument("--s3", action="store_true",
                            help="take packages and loaders from the S3/HTTP repository")
        parse = parser.parse_known_args

        def globals_first(args: Any = None, namespace: Any = None) -> Any:
            """Global options only before the command: `runtime init -r R` keeps its -r."""
            args = list(args or [])
            split = _command_start(args)
            ns, extra = parse(args[:split], namespace)
            return ns, [*extra, *args[split:]]

        parser.parse_known_args = globals_first  # type: ignore[method-assign]
        return parser

    def configure_logging(self) -> None:
        super().configure_logging()
        # Credentials never reach a log, whatever the level (botocore's -vv included).
        for handler in logging.getLogger().handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())
        # Libraries' chatter is for -vv (DEBUG) only.
        if self.options.verbose_level < _DEBUG_VERBOSITY:
            # qemu.qmp logs a failed connect as an ERROR; we raise (or expect) it ourselves
            logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)
            # urllib3 narrates each retry; the final error is reported once, by us
            for chatty in ("urllib3", "botocore", "boto3", "s3transfer"):
                logging.getLogger(chatty).setLevel(logging.ERROR)

    @property
    def config(self) -> Config:
        """The effective configuration, resolved once."""
        if self._config is None:
            self._config = load({"repo_url": self.options.repo_url,
                                 "release_tag": self.options.release_tag})
        return self._config

    def run(self, argv: list[str]) -> int:
        return int(super().run(argv or ["--help"]))

    def print_help_if_requested(self) -> None:
        """``capstan --help``: options and one line per command, nothing slow."""
        if not (self.deferred_help and self.options.deferred_help):
            return
        self.parser.print_help(self.stdout)
        self.stdout.write("\nCommands:\n")
        for name, ep in sorted(self.command_manager):
            doc = (ep.load().__doc__ or "").strip().splitlines()
            self.stdout.write(f"  {name:<16} {doc[0].rstrip('.') if doc else ''}\n")
        self.stdout.write("\nSee 'capstan help COMMAND' for a command's options.\n")
        raise HelpExit()

    def run_subcommand(self, argv: list[str]) -> int:
        argv = _group_help(argv, {name for name, _ in self.command_manager})
        try:
            factory, name, sub_argv = self.command_manager.find_command(argv)
        except ValueError:
            return self._unknown(argv)
        # Named at construction, a cliff command scans every installed distribution's
        # entry points for hooks (``capstan.cli.<name>``); pycapstan registers none.
        cmd = factory(self, self.options)
        cmd.cmd_name = name
        # cliff's epilog names the plugin distribution of a command, scanning every
        # installed distribution (~60 ms); ours are all pycapstan's own.
        cmd.get_epilog = lambda: cmd._epilog or ""  # type: ignore[method-assign]
        if hasattr(cmd, "produce_output"):  # a Lister or ShowOne (imported only then)
            from cliff.lister import Lister

            cmd.take_action = _printable_cells(  # type: ignore[method-assign]
                cmd.take_action, isinstance(cmd, Lister))
        parser = cmd.get_parser(f"{self.NAME} {name}")
        parser.error = _usage_error(name)  # type: ignore[method-assign]
        gc.enable()  # paused for start-up by capstan.__main__
        try:
            parsed = parser.parse_args(sub_argv)
            return int(cmd.run(parsed) or 0)
        except SystemExit as exc:  # --help
            return 0 if exc.code in (0, None) else EXIT_USAGE
        except KeyboardInterrupt:
            self.stderr.write("capstan: interrupted\n")
            return EXIT_INTERRUPTED
        except Exception as err:
            return self._failure(err)

    def _failure(self, err: Exception) -> int:
        """Report *err*, raised by a command, in one line; the exit code it maps to."""
        if isinstance(err, CapstanError):
            return self._fail(err, err.exit_code)
        if isinstance(err, BrokenPipeError):  # output piped into e.g. head: stop quietly
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_BROKEN_PIPE
        if isinstance(err, ImportError):
            failure, code = _import_failure(err)
        elif isinstance(err, OSError):
            failure, code = _os_failure(err)
        else:  # a bug: say so in one line, trace with --debug
            failure, code = err, EXIT_INTERNAL
        return self._fail(failure, code, internal=code == EXIT_INTERNAL)

    def _groups(self) -> set[str]:
        """The words that start multi-word commands (``package``, ``image``, ...)."""
        return {name.split()[0] for name, _ in self.command_manager if " " in name}

    def _unknown(self, argv: list[str]) -> int:
        """Name the unknown command as typed, its group included (Capstan's
        ``'package update' is not a capstan command``)."""
        words = argv[:2] if argv[0] in self._groups() and len(argv) > 1 else argv[:1]
        typed = one_line(" ".join(words))
        if words == argv[:1] and argv[0] in self._groups():
            self.stderr.write(f"capstan: '{typed}' needs a command; see "
                              f"'capstan {typed} help'\n")
        else:
            self.stderr.write(f"capstan: '{typed}' is not a capstan command; "
                              "see 'capstan --help'\n")
        return EXIT_USAGE

    def _fail(self, err: BaseException, code: int, internal: bool = False) -> int:
        if self.options.debug:
            self.LOG.error("traceback:", exc_info=err)
        prefix = "internal error: " if internal else ""
        message = str(err) or type(err).__name__
        self.stderr.write(f"capstan: {prefix}{one_line(message)}\n")
        return code


def _import_failure(err: ImportError) -> tuple[BaseException, int]:
    """What to report of *err*, and its exit code: an optional backend library that is
    not installed is 69 (and names the extra to install), any other a bug."""
    extra = _EXTRAS.get((err.name or "").split(".")[0])
    if extra is None:
        return err, EXIT_INTERNAL
    return ImportError(f"{extra[1]} is not installed: pip install "
                       f"'pycapstan[{extra[0]}]' (or 'pycapstan[all]')"), EXIT_BACKEND


def _os_failure(err: OSError) -> tuple[BaseException, int]:
    """What to report of *err* (not wrapped by the library), and its exit code: a
    network error is 75, anything else local I/O (74)."""
    if _is_requests_error(err):
        return err, EXIT_REMOTE
    if not err.filename and not _cwd_exists():  # a relative path resolved in it
        return OSError("the current directory no longer exists: cd to one that does"), EXIT_IO
    where = f": {err.filename}" if err.filename else ""
    return OSError(f"{err.strerror or err}{where}"), EXIT_IO


def _cwd_exists() -> bool:
    try:
        os.getcwd()
    except FileNotFoundError:
        return False
    return True


def one_line(message: str) -> str:
    """*message* on one line: line breaks and other control characters become spaces."""
    return _CONTROL.sub(" ", message).strip()


def _printable_cells(take_action: Any, rows: bool) -> Any:
    """*take_action* whose string cells have control characters escaped (``\\n``,
    ``\\x1b``): a remote's ``index.yaml`` or a package's title can neither split a
    table's rows nor send escape sequences to the terminal."""

    def escape(cell: object) -> object:
        if not isinstance(cell, str):
            return cell
        if isinstance(cell, Paragraphs):  # its lines stay lines; nothing else passes
            return "\n".join(str(escape(str(line))) for line in cell.splitlines())
        return _CONTROL.sub(lambda m: "".join(repr(c)[1:-1] for c in m.group()), cell)

    def wrapped(parsed_args: argparse.Namespace) -> Any:
        columns, data = take_action(parsed_args)
        if rows:
            return columns, (tuple(map(escape, row)) for row in data)
        return columns, tuple(map(escape, data))

    return wrapped


def _group_help(argv: list[str], commands: set[str]) -> list[str]:
    """``package help [CMD]`` (and ``package h``, ``package --help``) as Capstan
    spells it, in cliff's form ``help package [CMD]``; help on an unknown CMD is
    the unknown command ``package CMD``."""
    groups = {name.split()[0] for name in commands if " " in name}
    if len(argv) < _GROUP_HELP or argv[0] not in groups or \
            argv[1] not in ("help", "h", "--help", "-h"):
        return argv
    if len(argv) > _GROUP_HELP and f"{argv[0]} {argv[2]}" not in commands:
        return [argv[0], *argv[2:]]
    return ["help", argv[0], *argv[2:3]]


def _is_requests_error(err: BaseException) -> bool:
    """Whether *err* is a requests/urllib3 network error (a remote failure)."""
    return any(cls.__module__.split(".")[0] in ("requests", "urllib3")
               for cls in type(err).__mro__)


_VALUED = {"-u", "--repo-url", "--repo_url", "-r", "--release-tag", "--release_tag",
           "--log-file"}


def _command_start(args: list[str]) -> int:
    """Index of the command word: the first argument that is no global option or value."""
    i = 0
    while i < len(args):
        if not args[i].startswith("-"):
            return i
        i += 2 if args[i] in _VALUED else 1
    return i


def _usage_error(command: str) -> Any:
    def error(message: str) -> None:
        raise UsageError(f"{command}: {message} (see 'capstan help {command}')")

    return error


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point. State, sockets and outputs are private to the user
    whatever the caller's umask (another user must not drive root's QEMU)."""
    os.umask(os.umask(0o077) | 0o077)
    return CapstanApp().run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
