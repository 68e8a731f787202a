"""The `cent` command line: subcommands are registered by their modules."""
from __future__ import annotations

import argparse
import os
import select
import sys
import textwrap

from cent_serve import __version__
from cent_serve.vllm_hints import VLLM_FLAG_HINTS, VLLM_SWITCH_PREFIXES, VLLM_SWITCHES


class _WholeFlags:
    """Mixed into every parser's help formatter: a flag's help breaks at spaces only (textwrap's default
    also breaks after a hyphen: `cent bench run --help` printed "before --max-" over "prompt-tokens)")."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(self._whitespace_matcher.sub(" ", text).strip(), width, break_on_hyphens=False)


class _Parser(argparse.ArgumentParser):
    """argparse's parser (every subcommand's too: subparsers take their parent's class) whose
    errors are one line naming the (sub)command and where its help is, not the whole usage, and whose
    help never splits a flag's name (`_WholeFlags`)."""

    def __init__(self, *args, formatter_class=argparse.HelpFormatter, **kwargs):
        formatter_class = type(f"_WholeFlags{formatter_class.__name__}", (_WholeFlags, formatter_class), {})
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The whole `cent` parser with every subcommand registered; `main` and the deploy tests use it."""
    parser = _Parser(prog="cent", description="cent-serve: LLM serving on emulated CENT devices")
    parser.add_argument("--version", action="version", version=f"cent-serve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    from cent_serve.model import cli as model_cli
    model_cli.register(sub)
    from cent_serve import simulate_cli
    simulate_cli.register(sub)
    from cent_serve import sweep
    sweep.register(sub)
    from cent_serve import serve_cli
    serve_cli.register(sub)
    from cent_serve.bench import cli as bench_cli
    bench_cli.register(sub)
    from cent_serve.model import tokenizer_export
    tokenizer_export.register(sub)
    _name_by_choices(parser)
    return parser


def _name_by_choices(parser: argparse.ArgumentParser) -> None:
    """Every subcommand slot, here and below, named by its choices (`{run,sweep,paper,compare}`, as its usage
    shows them): a missing one's error named it by its dest ('required: bench_command')."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            action.metavar = action.metavar or "{" + ",".join(action.choices) + "}"
            for child in dict.fromkeys(action.choices.values()):  # an alias maps to the same parser
                _name_by_choices(child)


def _error(command: str, message: str) -> None:
    """One line on stderr: a user's mistake gets no traceback."""
    print(f"cent {command}: error: {' '.join(str(message).split())}", file=sys.stderr)


def _stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has left (the broken pipe was ours, not a socket's)."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poll.poll(0))
    except (OSError, ValueError, AttributeError):  # no fileno, or no poll on this platform
        return False


UNKNOWN_FLAG_HINTS = {
    ("simulate", "--trace"): "cent simulate is the closed form of one workload; to replay a trace use cent bench run "
                             "--trace FILE (or cent bench compare for CENT vs GPUs)",
    # "what if the device had X?" over several values is cent sweep's (docs: README, "What if the device had X?")
    ("simulate", "--vary"): "cent simulate evaluates one config (--sweep: its mappings); cent sweep --vary "
                            "FIELD=V1,V2,... evaluates every value (the paper's workload, or a trace with --trace)",
    ("bench compare", "--vary"): "cent bench compare replays one CENT config: run it once a value with --set "
                                 "FIELD=VALUE, or cent sweep --vary FIELD=V1,V2,... --trace FILE for CENT alone",
    ("bench run", "--vary"): "cent bench run replays one config: cent sweep --vary FIELD=V1,V2,... --trace FILE "
                             "replays it at every value",
    # set by a --config file or --set, numerics off and GPUs are refused by run_generate
    ("generate", "--numerics"): "cent generate always runs the reference model's real math; cent simulate or "
                                "cent serve --numerics off time a model without it",
    ("generate", "--hardware"): "cent generate runs the reference model on this machine; --hardware applies to "
                                "simulate, serve and bench",
}
"""(command, flag) -> what to do instead, added to the error for a flag the command does not take."""


def _positional(unknown: list[str]) -> str | None:
    """The first word argparse left over that no flag before it takes as its value: `vllm serve`'s
    positional model, after vLLM's flags too (`--dtype half MODEL`). argparse leaves an unknown flag and
    the words after it over apart, in order, not knowing which it takes: a flag is taken to take the word
    after it unless that is a flag, it is `--flag=value`, or it is one of `VLLM_SWITCHES` or starts with one
    of `VLLM_SWITCH_PREFIXES` (most of vLLM's flags take one value)."""
    i = 0
    while i < len(unknown):
        word = unknown[i]
        if not word.startswith("-"):
            return word
        takes = "=" not in word and word not in VLLM_SWITCHES and not word.startswith(VLLM_SWITCH_PREFIXES)
        i += 2 if takes and i + 1 < len(unknown) and not unknown[i + 1].startswith("-") else 1
    return None


def _commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()):
    """(the words that name a command, its parser) for every command and subcommand under `parser`."""
    yield words, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _commands(child, (*words, name))


def _vllm_hint(parser: argparse.ArgumentParser, command: str, flag: str) -> str:
    """The hint for vLLM's `flag` given to `cent command`: the flag it names is "here" when the command
    takes it, else named with the commands that do (cent serve has no --rate: cent bench run has)."""
    hint = VLLM_FLAG_HINTS[flag]
    needs = hint.split()[0]
    takes = {" ".join(words): sub._option_string_actions for words, sub in _commands(parser) if words}
    if needs.startswith("-") and needs not in takes.get(command, {needs: None}):
        # the commands that run something, not their groups (cent bench's run, not cent bench)
        where = ", ".join(f"cent {c}" for c, flags in takes.items() if needs in flags)
        hint = hint.replace(" here", f" of {where} (cent {command} takes no {needs})", 1)
    return f"vLLM's {flag} is {hint}"


def main(argv: list[str] | None = None) -> int:
    """Run one `cent` command. A user's mistake (ValueError: the config, the input, what cannot
    run; OSError: a file or address) ends in one line on stderr and exit code 2, not a traceback."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    # an error is named by the subcommand it was given to ("cent bench compare"), not by `cent` or `cent bench`
    command = " ".join(filter(None, (args.command, getattr(args, "bench_command", None), getattr(args, "action", None))))
    if unknown:
        hints = [UNKNOWN_FLAG_HINTS[command, flag] if (command, flag) in UNKNOWN_FLAG_HINTS
                 else _vllm_hint(parser, command, flag)
                 for flag in dict.fromkeys(u.split("=")[0] for u in unknown)
                 if (command, flag) in UNKNOWN_FLAG_HINTS or flag in VLLM_FLAG_HINTS]
        model = _positional(unknown)
        if model and hasattr(args, "model") and args.model is None:  # `vllm serve MODEL`'s positional model
            hints.insert(0, f"give the model as --model {model} (a preset or a checkpoint directory)")
        _error(command, f"unrecognized arguments: {' '.join(unknown)} (see cent {command} --help)"
               + "".join(f"; {hint}" for hint in hints))
        return 2
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers below, not at exit
        return code
    except ValueError as exc:
        _error(command, str(exc))
        return 2
    except OSError as exc:
        if isinstance(exc, BrokenPipeError) and _stdout_gone():  # `cent simulate ... | head`: the reader left
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            return 141  # silent, as `cat` or `git log` under `| head`, with the code a shell reports for SIGPIPE
        where = f" {exc.filename!r}" if exc.filename else ""
        _error(command, f"{exc.strerror or exc}{where}: check the path or address and that you may use it")
        return 2
    except KeyboardInterrupt:
        _error(command, "interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
