"""`python -m tests.trainers.run_commands <rlhfkit arguments> [--then <rlhfkit arguments> ...]`: several
rlhfkit commands one after the other in one process, so that a multi-process test (torchrun) pays the
start-up and imports once for several runs. Exits with the first non-zero exit code.

A command that begins with `--stop-after-checkpoint=N` stops on every process right after its stage saved
checkpoints/step-N (no final/, the later steps never run), as a run killed then would: a later command
can --resume it in the same torchrun."""

import sys
from contextlib import contextmanager

import rlhfkit.commands  # noqa: F401  (imports every stage module, so that all can be patched)
import rlhfkit.trainers
from rlhfkit.cli import main
from rlhfkit.trainers import checkpoints

STOP = "--stop-after-checkpoint="


class Stopped(BaseException):
    """Raised past every `except Exception` of the stage, as a kill would end it."""


def split(argv: list[str]) -> list[list[str]]:
    commands, current = [], []
    for arg in argv:
        if arg == "--then":
            commands.append(current)
            current = []
        else:
            current.append(arg)
    return [*commands, current]


@contextmanager
def stop_after_checkpoint(step: int | None):
    """Every stage module's `save_training_state` (imported by name) saves, then raises Stopped at `step`."""
    save = checkpoints.save_training_state

    def save_then_stop(ctx, done, *args, **kwargs):
        save(ctx, done, *args, **kwargs)
        if done == step:
            raise Stopped

    stages = [m for name, m in sys.modules.items() if name.startswith(rlhfkit.trainers.__name__ + ".")]
    patched = [m for m in stages if getattr(m, "save_training_state", None) is save]
    for module in patched:
        module.save_training_state = save_then_stop
    try:
        yield
    except Stopped:
        print(f"run_commands: stopped after checkpoints/step-{step}", flush=True)
    finally:
        for module in patched:
            module.save_training_state = save


def run(command: list[str]) -> int:
    stop = int(command.pop(0)[len(STOP) :]) if command and command[0].startswith(STOP) else None
    with stop_after_checkpoint(stop):
        return main(command)
    return 0  # stopped after the checkpoint


if __name__ == "__main__":
    for command in split(sys.argv[1:]):
        code = run(command)
        if code:
            sys.exit(code)
