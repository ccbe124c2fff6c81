"""The built-in inference server for DEFAULT deployments (rule A2: score.py + runtime.yaml).

- `validate_artifact(dir)` lists an artifact's problems without running anything;
- `load_scorer(dir)` imports score.py and loads the model; `create_app(scorer)` serves it (ASGI);
- `python -m dockyard.inference --artifact-dir DIR --port N` (or `--fd 3`) runs the server;
- `environments.ensure_environment(dir, cache_dir)` gives the Python that has the artifact's
  requirements.txt installed.

Importing this package loads only the validation code (and PyYAML): the server's imports are
paid by those who serve.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dockyard.inference.artifact import Problem, errors, validate_artifact

if TYPE_CHECKING:
    from dockyard.inference.environments import ensure_environment
    from dockyard.inference.scoring import Scorer, ScoreFileError, load_scorer
    from dockyard.inference.server import create_app

__all__ = [
    "Problem",
    "Scorer",
    "ScoreFileError",
    "create_app",
    "ensure_environment",
    "errors",
    "load_scorer",
    "validate_artifact",
]

_LAZY = {
    "Scorer": "dockyard.inference.scoring",
    "ScoreFileError": "dockyard.inference.scoring",
    "load_scorer": "dockyard.inference.scoring",
    "create_app": "dockyard.inference.server",
    "ensure_environment": "dockyard.inference.environments",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dockyard.inference' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
