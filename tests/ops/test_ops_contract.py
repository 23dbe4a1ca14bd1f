"""`rlhfkit.ops` is pure tensor math: it imports torch and the stdlib's math/typing only, and
every public function documents its shapes and has a naive reference beside it."""

import ast
import inspect
from pathlib import Path

import pytest

import rlhfkit.ops as ops

OPS_DIR = Path(ops.__file__).parent
ALLOWED_TOP_LEVEL = {"torch", "math", "typing", "__future__"}
OPS_FILES = sorted(OPS_DIR.glob("*.py"))


def _imported_modules(path: Path):
    """(module name, is_relative) for every import statement in the file, at any depth."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, False
        elif isinstance(node, ast.ImportFrom):
            yield node.module or "", node.level > 0
            if node.level > 1:
                yield "<beyond rlhfkit.ops>", False


def test_ops_files_found():
    names = {p.name for p in OPS_FILES}
    assert {"__init__.py", "logprobs.py", "kl.py", "gae.py", "losses.py"} <= names


@pytest.mark.parametrize("path", OPS_FILES, ids=lambda p: p.name)
def test_ops_imports_only_torch_and_stdlib_math(path):
    for module, relative in _imported_modules(path):
        if relative:
            continue  # `from .logprobs import ...`: a sibling inside rlhfkit.ops
        top = module.split(".")[0]
        if top == "rlhfkit":
            assert module.startswith("rlhfkit.ops"), f"{path.name} imports {module}"
            continue
        assert top in ALLOWED_TOP_LEVEL, f"{path.name} imports {module!r}; rlhfkit.ops may import only torch"


# Public functions without a *_reference sibling, and why.
NO_REFERENCE = {
    "kl_estimate": "a dispatcher over kl_k1/k2/k3, each with a reference",
    "sequence_kl": "is masked_sum(dim=-1), checked against masked_sum_reference",
    "gae": None,  # reference is gae_reference (checked below like the others)
}


@pytest.mark.parametrize("name", [n for n in ops.__all__ if callable(getattr(ops, n))])
def test_public_functions_document_shapes_and_have_references(name):
    fn = getattr(ops, name)
    doc = inspect.getdoc(fn) or ""
    assert "Shapes" in doc, f"{name}'s docstring must state tensor shapes"
    module = inspect.getmodule(fn)
    if NO_REFERENCE.get(name) is None:
        assert hasattr(module, f"{name}_reference"), f"{name} needs a naive {name}_reference beside it"
