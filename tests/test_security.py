"""Security by inspection: the source tree never unpickles, never saves pickled weights, never runs a
model's own code unless the user set model.trust_remote_code, never evaluates strings, and imports
reward plugins only from the `module:function` the user names. Each rule parses src/ (AST, so
comments and docstrings do not count) and reports file:line of every violation."""

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlhfkit.config import ModelConfig

SRC = Path(__file__).parents[1] / "src" / "rlhfkit"
CONFIGS = Path(__file__).parents[1] / "configs"
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "marshal", "shelve", "cloudpickle"}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def modules() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(SRC.rglob("*.py")):
        yield path, ast.parse(path.read_text(), filename=str(path))


def calls(tree: ast.AST) -> Iterator[ast.Call]:
    yield from (node for node in ast.walk(tree) if isinstance(node, ast.Call))


def dotted(node: ast.AST) -> str:
    """`torch.load` for Attribute(Name('torch'), 'load'); '' for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = dotted(node.value)
        return f"{inner}.{node.attr}" if inner else f"?.{node.attr}"
    return ""


def keyword(call: ast.Call, name: str):
    """The keyword's value node, or None when the call does not pass it."""
    return next((k.value for k in call.keywords if k.arg == name), None)


def is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(SRC.parent)}:{node.lineno}"


def violations(rule) -> list[str]:
    return [where(path, node) for path, tree in modules() for node in rule(tree)]


def pickle_imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] in UNSAFE_MODULES for a in node.names):
            yield node
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            yield node


def unsafe_torch_load(tree):
    # torch.load unpickles unless weights_only=True (and torch.save always pickles).
    for call in calls(tree):
        name = dotted(call.func)
        if name.endswith("torch.load") and not is_true(keyword(call, "weights_only")):
            yield call
        if (
            name.endswith("torch.save")
            or name in ("np.load", "numpy.load")
            and is_true(keyword(call, "allow_pickle"))
        ):
            yield call


def remote_code_on(tree):
    for call in calls(tree):
        if is_true(keyword(call, "trust_remote_code")):
            yield call


def auto_without_remote_code_flag(tree):
    # Every Auto*.from_pretrained says what it does about remote code (the user's flag or False).
    for call in calls(tree):
        name = dotted(call.func)
        if (
            name.endswith(".from_pretrained")
            and name.split(".")[-2].startswith("Auto")
            and keyword(call, "trust_remote_code") is None
        ):
            yield call


def string_evaluation(tree):
    for call in calls(tree):
        if isinstance(call.func, ast.Name) and call.func.id in ("eval", "exec", "compile", "__import__"):
            yield call


def unsafe_yaml(tree):
    for call in calls(tree):
        name = dotted(call.func)
        if name in ("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all"):
            yield call
        if name in ("yaml.load", "yaml.load_all"):
            loader = keyword(call, "Loader") or (call.args[1] if len(call.args) > 1 else None)
            if dotted(loader) not in ("yaml.SafeLoader", "yaml.CSafeLoader", "SafeLoader", "CSafeLoader"):
                yield call


def pickled_weight_saving(tree):
    for call in calls(tree):
        value = keyword(call, "safe_serialization")
        if value is not None and not is_true(value):
            yield call
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and node.value.endswith(PICKLE_SUFFIXES)
        ):
            yield node


def dynamic_imports_outside_reward_plugins(tree):
    for call in calls(tree):
        if dotted(call.func) in ("importlib.import_module", "import_module"):
            yield call
        if dotted(call.func).endswith("entry_points"):
            yield call


RULES = {
    "pickle-family import": pickle_imports,
    "torch.load without weights_only=True / torch.save / np.load(allow_pickle=True)": unsafe_torch_load,
    "trust_remote_code=True literal": remote_code_on,
    "Auto*.from_pretrained without an explicit trust_remote_code": auto_without_remote_code_flag,
    "eval/exec/compile/__import__": string_evaluation,
    "yaml load without SafeLoader": unsafe_yaml,
    "pickled weights (safe_serialization off, .bin/.pt/.pkl names)": pickled_weight_saving,
}


@pytest.mark.parametrize("rule", list(RULES), ids=list(RULES))
def test_source_tree_has_no(rule):
    found = violations(RULES[rule])
    assert not found, f"{rule}: {', '.join(found)}"


def test_modules_are_imported_dynamically_only_for_the_user_named_reward_function():
    # rewards/function.py imports the `module:function` the user named in ppo.reward. Nothing else
    # imports by name at run time.
    files = {found.rsplit(":", 1)[0] for found in violations(dynamic_imports_outside_reward_plugins)}
    assert files == {"rlhfkit/rewards/function.py"}, files


def test_the_rules_catch_what_they_are_for():
    # Each rule fires on a one-line example of what it forbids (so a broken rule cannot pass silently).
    examples = {
        "pickle-family import": "import pickle",
        "torch.load without weights_only=True / torch.save / np.load(allow_pickle=True)": "torch.load(f)",
        "trust_remote_code=True literal": "AutoModel.from_pretrained(x, trust_remote_code=True)",
        "Auto*.from_pretrained without an explicit trust_remote_code": "AutoTokenizer.from_pretrained(x)",
        "eval/exec/compile/__import__": "eval(text)",
        "yaml load without SafeLoader": "yaml.load(text, Loader=yaml.Loader)",
        "pickled weights (safe_serialization off, .bin/.pt/.pkl names)": "m.save_pretrained(d, "
        "safe_serialization=False)",
    }
    for rule, code in examples.items():
        assert list(RULES[rule](ast.parse(code))), rule
    assert not list(unsafe_torch_load(ast.parse("torch.load(f, weights_only=True)")))
    assert not list(unsafe_yaml(ast.parse("yaml.load(t, Loader=yaml.SafeLoader)")))
    assert not list(string_evaluation(ast.parse("model.eval()")))


def test_remote_code_is_off_by_default_and_in_no_shipped_recipe():
    assert ModelConfig().trust_remote_code is False
    for recipe in sorted(CONFIGS.rglob("*.yaml")):
        assert "trust_remote_code: true" not in recipe.read_text().lower(), recipe


def test_reward_spec_is_either_a_folder_or_an_explicit_module_function(tmp_path):
    from rlhfkit.errors import RlhfkitError
    from rlhfkit.rewards import load_reward

    # Without `module:function` nothing is imported: the spec is read as a folder.
    with pytest.raises(RlhfkitError, match="model path does not exist|no final"):
        load_reward(str(tmp_path / "rlhfkit.tasks"), normalize=False)
    reward = load_reward("rlhfkit.tasks:gold_scores", normalize=False)
    assert reward(["Human: Repeat the word cat 2 times.\n\nAssistant:"], ["cat cat"]).shape == (1,)
