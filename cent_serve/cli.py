"""The `cent` command line: subcommands are registered by their modules."""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    """The whole `cent` parser with every subcommand registered; `main` and the deploy tests use it."""
    parser = argparse.ArgumentParser(prog="cent", description="cent-serve: LLM serving on emulated CENT devices")
    sub = parser.add_subparsers(dest="command", required=True)
    from cent_serve.model import cli as model_cli
    model_cli.register(sub)
    from cent_serve.timing import cli as timing_cli
    timing_cli.register(sub)
    from cent_serve import serve_cli
    serve_cli.register(sub)
    from cent_serve.bench import cli as bench_cli
    bench_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as exc:
        print(f"cent {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
