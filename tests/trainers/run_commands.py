"""`python -m tests.trainers.run_commands <rlhfkit arguments> [--then <rlhfkit arguments> ...]`: several
rlhfkit commands one after the other in one process, so that a multi-process test (torchrun) pays the
start-up and imports once for several runs. Exits with the first non-zero exit code."""

import sys

from rlhfkit.cli import main


def split(argv: list[str]) -> list[list[str]]:
    commands, current = [], []
    for arg in argv:
        if arg == "--then":
            commands.append(current)
            current = []
        else:
            current.append(arg)
    return [*commands, current]


if __name__ == "__main__":
    for command in split(sys.argv[1:]):
        code = main(command)
        if code:
            sys.exit(code)
