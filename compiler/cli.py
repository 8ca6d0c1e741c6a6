"""``lvs-compile``: check lvs.cf files and emit what they configure.

Exit status: 0 no errors (warnings allowed), 1 errors (or warnings with
``--werror``), 2 usage or I/O problem.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Sequence

from . import Result, __version__, compile_file
from .diagnostics import Severity, render_json, render_sarif, render_text, summary_line
from .model import Dialect

EXIT_OK, EXIT_ERRORS, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lvs-compile",
        description="Check piranha lvs.cf files and emit the IPVS rules, JSON model or "
        "canonical lvs.cf they describe.",
    )
    p.add_argument("--version", action="version", version=f"lvs-compile {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--dialect",
            choices=[d.value for d in Dialect],
            default=Dialect.EXTENDED.value,
            help="piranha: accept exactly what piranha 0.8.6 accepts; extended (default): "
            "a superset whose extensions are reported as notes",
        )
        sp.add_argument(
            "--werror", action="store_true", help="treat warnings as errors (exit status 1)"
        )

    c = sub.add_parser("check", help="report diagnostics for one or more files")
    common(c)
    c.add_argument("--format", choices=["text", "json", "sarif"], default="text")
    c.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    c.add_argument("files", nargs="+", metavar="FILE")

    e = sub.add_parser("emit", help="print what a file configures, if it has no errors")
    common(e)
    from .emit import TARGETS, _load

    _load()
    e.add_argument("--target", "-t", choices=sorted(TARGETS), required=True)
    e.add_argument("file", metavar="FILE")
    return p


def _fails(result: Result, werror: bool) -> bool:
    worst = {Severity.ERROR} | ({Severity.WARNING} if werror else set())
    return any(d.severity in worst for d in result.diagnostics)


def _load_all(files: Sequence[str], dialect: Dialect) -> list[Result] | None:
    results = []
    for f in files:
        try:
            results.append(compile_file(f, dialect))
        except OSError as err:
            print(f"lvs-compile: cannot read {f}: {err.strerror or err}", file=sys.stderr)
            return None
    return results


def _check(args: argparse.Namespace) -> int:
    results = _load_all(args.files, Dialect(args.dialect))
    if results is None:
        return EXIT_USAGE
    diags = [d for r in results for d in r.diagnostics]
    if args.quiet:
        diags = [d for d in diags if d.severity is Severity.ERROR]
    if args.format == "json":
        sys.stdout.write(render_json(diags))
    elif args.format == "sarif":
        sys.stdout.write(render_sarif(diags, __version__))
    else:
        sources = {r.source.name: r.source for r in results}
        if diags:
            sys.stdout.write(render_text(diags, sources))
        if not args.quiet:
            names = ", ".join(r.source.name for r in results)
            print(f"{names}: {summary_line(diags)}")
    return EXIT_ERRORS if any(_fails(r, args.werror) for r in results) else EXIT_OK


def _emit(args: argparse.Namespace) -> int:
    from .emit import NOTES, TARGETS, EmitError

    results = _load_all([args.file], Dialect(args.dialect))
    if results is None:
        return EXIT_USAGE
    result = results[0]
    if _fails(result, args.werror):
        shown = [d for d in result.diagnostics if d.severity is not Severity.NOTE]
        sys.stderr.write(render_text(shown, {result.source.name: result.source}))
        print(f"lvs-compile: {args.file} has errors; nothing emitted", file=sys.stderr)
        return EXIT_ERRORS
    try:
        text = TARGETS[args.target](result.config)
    except EmitError as err:
        sys.stderr.write(err.render())
        print(f"lvs-compile: {args.file}: nothing emitted", file=sys.stderr)
        return EXIT_ERRORS
    for note in NOTES.get(args.target, lambda _config: [])(result.config):
        print(note, file=sys.stderr)
    sys.stdout.write(text)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    # lvs.cf is bytes to piranha: undecodable bytes travel as surrogates and must
    # reach the terminal as the original bytes, whatever the locale's encoding
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="surrogateescape")
    args = _parser().parse_args(argv)
    # One compile per run, and everything it builds lives until the end: the cyclic
    # garbage collector would only rescan the model (0.2 s on a 600,000-line file).
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _check(args) if args.command == "check" else _emit(args)
    except BrokenPipeError:
        return EXIT_OK
    finally:
        if collecting:
            gc.enable()


def run() -> None:
    """Console-script entry: run, flush, and exit without tearing the model down
    object by object (freeing a large model costs more than the emit itself)."""
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        pass
    os._exit(code)


if __name__ == "__main__":
    run()
