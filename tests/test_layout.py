"""The house rules of docs/design.md §3, checked on the source itself: dependencies point one way
with no import cycle, project imports sit at the top of a module, functions stay short, metric
names come from run/metrics.py, and no tracked file names a folder of one particular machine."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "rlhfkit"
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(tree: ast.AST, module: str, is_package: bool) -> list[tuple[ast.AST, str]]:
    """(node, imported rlhfkit module) for every import in the tree, relative ones resolved."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node, a.name) for a in node.names if a.name.startswith("rlhfkit")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            if base.startswith("rlhfkit"):
                found += [(node, f"{base}.{a.name}") for a in node.names] + [(node, base)]
    return found


def _graph() -> dict[str, set[str]]:
    """module -> the rlhfkit modules it imports (anywhere in it), each with its parent packages,
    which Python runs first."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        edges = set()
        for _, target in _imports(ast.parse(path.read_text()), name, path.name == "__init__.py"):
            parts = target.split(".")
            for i in range(2, len(parts) + 1):
                candidate = ".".join(parts[:i])
                if candidate in modules and candidate != name and not name.startswith(candidate + "."):
                    edges.add(candidate)
        graph[name] = edges
    return graph


def test_no_import_cycle():
    graph, state, cycles = _graph(), {}, []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt) :] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_layers_point_one_way():
    """ops imports torch only (tests/ops checks that); tasks and config import no other part; run,
    models, data, rollout, rewards, evaluate never import trainers or the command line."""
    upward = {"rlhfkit.trainers", "rlhfkit.cli", "rlhfkit.commands"}
    for name, edges in _graph().items():
        if name.startswith(("rlhfkit.tasks", "rlhfkit.config")):
            assert not {e for e in edges if not e.startswith(("rlhfkit.tasks", "rlhfkit.errors"))}, name
        if not name.startswith(tuple(upward)):
            bad = {e for e in edges if e.startswith(tuple(upward))}
            assert not bad, f"{name} imports {sorted(bad)}: dependencies must point down (docs/design.md §3)"


def test_project_imports_at_module_top():
    """A project import inside a function hides an edge of the import graph; the only ones allowed
    say why in a comment above them that starts `# start-up:` (a measured start-up cost)."""
    offenders = []
    for name, path in _modules().items():
        lines = path.read_text().splitlines()
        for node, _ in _imports(ast.parse(path.read_text()), name, path.name == "__init__.py"):
            if node.col_offset == 0:
                continue
            comment, at = [], node.lineno - 2
            while at >= 0 and lines[at].strip().startswith("#"):
                comment.insert(0, lines[at].strip())
                at -= 1
            if not (comment and comment[0].startswith("# start-up:")):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not sorted(set(offenders)), f"project imports inside functions: {sorted(set(offenders))}"


def test_functions_are_short():
    long = []
    for path in [*SRC.rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


METRIC_LITERAL = re.compile(
    r"""["'](?:ppo|rm|gold|eval|train|health|heldout|dpo|grpo|rloo|reinforce_pp|rl)/[a-z0-9_]+["']"""
)


def test_metric_names_only_through_constants():
    """A metric key spelled out in a trainer drifts from the one the report and health check read."""
    found = []
    for path in SRC.rglob("*.py"):
        if path == SRC / "run" / "metrics.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if METRIC_LITERAL.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "metric names as string literals (use rlhfkit.run.metrics):\n" + "\n".join(found)


MACHINE_PATH = re.compile(r"(?<![\w.])/(?:work|home/[a-z]|root|tmp)/")


def test_no_machine_specific_paths():
    """Defaults live inside the checkout (an ignored folder) or under $RLHFKIT_CACHE: a path of one
    machine breaks every other one. Result files of past benchmark runs record where they ran."""
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    found = []
    for name in files:
        if name.startswith("benchmarks/results/") or name == "tests/test_layout.py":
            continue
        path = ROOT / name
        if not path.is_file() or path.suffix in {".png", ".gguf", ".safetensors", ".parquet"}:
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if MACHINE_PATH.search(line):
                found.append(f"{name}:{number}: {line.strip()[:100]}")
    assert not found, "machine-specific paths:\n" + "\n".join(found)


def test_train_ppo_reads_as_the_algorithm():
    """The loop is its numbered steps; set-up, diagnostics and plumbing live in named functions."""
    tree = ast.parse((SRC / "trainers" / "ppo.py").read_text())
    loop = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "train_ppo")
    assert loop.end_lineno - loop.lineno + 1 <= 60
    text = ast.get_source_segment((SRC / "trainers" / "ppo.py").read_text(), loop)
    steps = [
        "# 1. rollout",
        "# 2. score",
        "# 3. per-token rewards",
        "# 4.",
        "# 5.",
        "# 6. diagnostics",
        "# 7. health",
    ]
    assert all(step in text for step in steps)
    assert [text.index(step) for step in steps] == sorted(text.index(step) for step in steps)
