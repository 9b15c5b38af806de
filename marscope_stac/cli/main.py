"""The ``marscope`` command line: a thin face over the library.

Every command parses its options, calls one public library function and prints the result.
User errors (:class:`~marscope_stac.core.errors.MarscopeError`) print one line to stderr and exit
with status 2; unexpected errors exit with status 1 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import traceback
import warnings
from typing import Any, TextIO

import click

from marscope_stac.cli.options import as_options
from marscope_stac.core.errors import ConfigError, MarscopeError, on_release
from marscope_stac.core.software import build_version
from marscope_stac.core.text import one_line

__all__ = [
    "cli",
    "main",
]

log = logging.getLogger("marscope_stac")


_ENVIRONMENT_ERRORS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.EISDIR,
    errno.ENOTDIR,
    errno.ENAMETOOLONG,
    errno.EMFILE,
    errno.ENOENT,
    errno.ELOOP,
    errno.ENXIO,
    errno.ENODEV,
    errno.EBUSY,
    errno.ETXTBSY,
}
"""System errors of the environment (disk, permissions, paths): one line and exit 2."""

_OS_FIXES = {
    errno.ENOENT: "check the path (it does not exist)",
    errno.ELOOP: "a symbolic link points back at itself; fix the link",
    errno.ENXIO: "give a regular file",
    errno.ENODEV: "give a regular file",
    errno.ENAMETOOLONG: "give a shorter path",
}
"""What to do about a system error, where it is not the disk or the permissions."""


_LEAF: dict[str, frozenset[str]] = {}
"""The options of the command this process runs (set as it starts)."""


class _Command(click.Command):
    """A command that records its options, so a shared message names only options it has."""

    def invoke(self, ctx: click.Context) -> Any:
        _LEAF["options"] = frozenset(o for p in self.params for o in getattr(p, "opts", ()))
        return super().invoke(ctx)


def _own_options(text: str) -> str:
    """``text`` with "another --out" made "another folder" for a command without ``--out``.

    Library messages name the option most commands take; ``demo`` (``--workdir``) and
    ``catalog build`` (a folder argument) have none of that name.
    """
    options = _LEAF.get("options")
    if options is None or "--out" in options:
        return text
    return text.replace("another --out", "another folder")


class _SubGroup(click.Group):
    """A group of commands under ``marscope`` (their errors are the top group's to say)."""

    command_class = _Command


class _Group(click.Group):
    """Click group that turns library and usage errors into one-line messages and exit codes.

    Exit status: 0 done, 2 a user or environment error (one ``marscope: error:`` line that
    names the problem and the fix, usage errors included), 3 done but incomplete (cells that
    could not be read; running the command again retries only them), 130 interrupted, 1 a
    bug.
    """

    command_class = _Command
    group_class = _SubGroup

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:  # bare `marscope`: the help, as is
            click.echo(exc.format_message())
            rv = 0
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "marscope"
            text = one_line(exc.format_message())
            click.echo(f"marscope: error: {text} (see '{where} --help')", err=True)
            rv = 2
        except click.ClickException as exc:
            click.echo(f"marscope: error: {one_line(exc.format_message())}", err=True)
            rv = 2
        except click.Abort:
            click.echo("marscope: aborted", err=True)
            rv = 1
        code = rv if isinstance(rv, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code

    def invoke(self, ctx: click.Context) -> Any:
        try:
            rv = super().invoke(ctx)
        except click.exceptions.Exit as exc:
            if exc.exit_code == 0:
                _WARNINGS.release()
            else:
                _WARNINGS.drop()
            raise
        except (click.exceptions.Abort, click.ClickException):
            _WARNINGS.drop()
            raise
        except MarscopeError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()  # and still the user error's line and status
            text = _own_options(as_options(exc) if isinstance(exc, ConfigError) else str(exc))
            click.echo(f"marscope: error: {one_line(text)}{_WARNINGS.drop()}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            _WARNINGS.release()
            click.echo("marscope: interrupted", err=True)
            ctx.exit(130)
        except OSError as exc:
            held = _WARNINGS.drop()
            debug = ctx.obj and ctx.obj.get("debug")
            if debug and exc.errno not in _ENVIRONMENT_ERRORS:
                raise
            if exc.errno not in _ENVIRONMENT_ERRORS:  # rasterio's, or another library's
                _unexpected(ctx, exc)
            if debug:
                traceback.print_exc()  # and still the environment error's line and status
            where = f" {exc.filename}" if exc.filename else ""
            fix = _OS_FIXES.get(
                exc.errno or 0,
                "free some space, fix the permissions or choose another folder "
                "(finished work is kept)",
            )
            click.echo(f"marscope: error: cannot use{where}: {exc.strerror}; {fix}{held}", err=True)
            ctx.exit(2)
        except Exception as exc:
            _WARNINGS.drop()
            if ctx.obj and ctx.obj.get("debug"):
                raise
            _unexpected(ctx, exc)
        _WARNINGS.release()
        return rv


def _unexpected(ctx: click.Context, exc: BaseException) -> None:
    """One line for an exception no handler expected.

    A full disk said in text only (libtiff) or a NUL in a path is the user's (exit 2);
    anything else is a bug (exit 1).
    """
    if "No space left on device" in str(exc):  # libtiff / GDAL say it in text only
        click.echo(
            one_line(
                f"marscope: error: the disk is full ({type(exc).__name__}: {exc}); free some "
                "space and run again (finished work is kept)"
            ),
            err=True,
        )
        ctx.exit(2)
    if isinstance(exc, ValueError) and "null byte" in str(exc):  # from os / pathlib
        click.echo("marscope: error: a path or value holds a NUL character; remove it", err=True)
        ctx.exit(2)
    click.echo(
        one_line(
            f"marscope: unexpected error: {type(exc).__name__}: {exc} "
            "(this is a bug; rerun with --debug for the traceback)"
        ),
        err=True,
    )
    ctx.exit(1)


class _Warnings:
    """Warnings as one ``marscope: warning:`` line each, held while a command checks input.

    Held warnings are shown when the work starts (:func:`release_held_warnings`) or the
    command ends well; when it ends in an error they are dropped and counted on the error's
    line, so an error is always one line. ``-v`` / ``--debug`` show them at once.
    """

    def __init__(self) -> None:
        self.held: list[str] | None = None

    def show(
        self,
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        text = f"marscope: warning: {one_line(str(message))}"
        if self.held is not None:
            if text not in self.held:
                self.held.append(text)
        else:
            click.echo(text, err=True)

    def release(self) -> None:
        held, self.held = self.held or [], None
        for text in held:
            click.echo(text, err=True)

    def drop(self) -> str:
        """Forget the held warnings; what to add to an error line about them."""
        held, self.held = self.held or [], None
        n = len(held)
        return f" ({n} warning{'s' if n > 1 else ''} before it; -v shows them)" if n else ""


_WARNINGS = _Warnings()
_show_warning = _WARNINGS.show


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(build_version(), "--version", prog_name="marscope")
@click.option("-v", "--verbose", is_flag=True, help="Log what is being done.")
@click.option("--debug", is_flag=True, help="Log everything and show tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, debug: bool) -> None:
    """Ask a planet a question: vision-language search of Mars imagery, published as STAC."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("marscope_stac").setLevel(level)
    # urllib3 and the model hub's client say each retry; the error that ends them is enough
    logging.getLogger("urllib3.connectionpool").setLevel(logging.DEBUG if debug else logging.ERROR)
    os.environ.setdefault("HF_HUB_VERBOSITY", "debug" if debug else "error")  # read on import
    if not debug:
        warnings.showwarning = _show_warning
    _WARNINGS.held = None if (verbose or debug) else []
    on_release(_WARNINGS.release)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``marscope`` console script."""
    cli.main(args=argv, prog_name="marscope", standalone_mode=True)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
