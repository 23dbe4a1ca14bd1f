"""`python -m tests.trainers.slow_checkpoint <rlhfkit arguments>`: the rlhfkit CLI, except that
writing checkpoints/step-<RLHFKIT_TEST_STALL_STEP> stalls after its first file, with a marker file
saying so, so that a test can SIGKILL the run deterministically in the middle of the write."""

import os
import sys
import time
from pathlib import Path

import rlhfkit.run.checkpoint as checkpoint
from rlhfkit.cli import main

STALL_STEP = int(os.environ["RLHFKIT_TEST_STALL_STEP"])
MARKER = Path(os.environ["RLHFKIT_TEST_STALL_MARKER"])
_save_file = checkpoint.save_file


def stalling_save_file(tensors, filename, *args, **kwargs):
    _save_file(tensors, filename, *args, **kwargs)
    if Path(filename).parent.name.startswith(f".tmp-step-{STALL_STEP}-"):
        MARKER.write_text(str(filename))
        time.sleep(600)  # the test kills us here


checkpoint.save_file = stalling_save_file

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
