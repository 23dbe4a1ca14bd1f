"""One-line messages for what goes wrong inside from_pretrained."""

from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError, safe_open

# What a damaged or foreign weights file raises inside from_pretrained: safetensors' own error for
# a truncated header, ValueError/RuntimeError for shapes that do not fit, OSError for missing files.
LOAD_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, RuntimeError, SafetensorError)


def load_error(e: BaseException, location: str | Path | None = None) -> str:
    """One line for a from_pretrained failure: its type and first line, and for a damaged
    safetensors file (whose error does not say which) the file's name."""
    if "trust_remote_code" in str(e):
        return (
            "it ships its own Python code, which runs only with model.trust_remote_code=true: set it "
            "only for code you trust"
        )
    first = (str(e).splitlines() or [""])[0][:200]
    text = f"{type(e).__name__}: {first}" if first else type(e).__name__
    if isinstance(e, SafetensorError) and location is not None:
        damaged = [p.name for p in sorted(Path(location).glob("*.safetensors")) if not _safetensors_ok(p)]
        if damaged:
            text = f"{', '.join(damaged)} is damaged or truncated; {text}"
    return text


def _safetensors_ok(path: Path) -> bool:
    try:
        with safe_open(str(path), framework="pt"):
            return True
    except (SafetensorError, OSError):
        return False
