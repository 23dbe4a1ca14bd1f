import os
from pathlib import Path

import pytest

# Tests never touch the user's cache: the tiny model is built once per session into a temp cache.
_CACHE = Path(os.environ.get("RLHFKIT_TEST_CACHE", "/tmp/rlhfkit-test-cache"))
os.environ["RLHFKIT_CACHE"] = str(_CACHE)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    from rlhfkit.models.assets import tiny_model_dir

    return tiny_model_dir(seed=0)
