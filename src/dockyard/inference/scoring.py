"""Import an artifact's `score.py`, load its model once, and call its `predict`.

The calling convention is that of OCI's DEFAULT server and of ADS's `verify` (oci-api.md §8):
`load_model()` is called once at start; each request calls `predict(data, model=<loaded>)`
when `predict` accepts a `model` argument (or `**kwargs`), else `predict(data)`.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from dockyard.errors import InvalidParameter
from dockyard.inference.artifact import SCORE_FILE, predict_signature_problems


class ScoreFileError(InvalidParameter):
    """score.py cannot be served: it fails to import, lacks a function, or load_model() fails.

    The message names score.py and what to fix; `__cause__` holds the original exception.
    """


@dataclass
class Scorer:
    """A loaded score.py: call it with the request data to get predict()'s result."""

    module: ModuleType
    predict_fn: Callable[..., Any]
    model: Any
    passes_model: bool
    is_async: bool
    load_seconds: float

    def call(self, data: Any) -> Any:
        """predict() with the loaded model; returns a coroutine when predict is `async def`."""
        if self.passes_model:
            return self.predict_fn(data, model=self.model)
        return self.predict_fn(data)


def load_scorer(artifact_dir: Path | str, module_name: str = "score") -> Scorer:
    """Import `score.py` from `artifact_dir` and call its `load_model()` once.

    The artifact directory goes first on `sys.path`, so modules beside score.py import. No
    bytecode is written: the artifact is read-only in a sandbox, and must stay untouched without
    one. Raises `ScoreFileError` naming the failing step.
    """
    root = Path(artifact_dir).resolve()
    path = root / SCORE_FILE
    if not path.is_file():
        raise ScoreFileError(f"{SCORE_FILE}: not found in {root}", rule="A2")
    sys.dont_write_bytecode = True
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ScoreFileError(f"{SCORE_FILE}: cannot be imported from {root}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    started = time.perf_counter()
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(module_name, None)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise ScoreFileError(f"{SCORE_FILE}: importing it raised {_describe(exc)}") from exc

    load_model = getattr(module, "load_model", None)
    predict = getattr(module, "predict", None)
    if not callable(load_model):
        raise ScoreFileError(f"{SCORE_FILE}: does not define load_model(); add a function that loads and returns the model")
    if not callable(predict):
        raise ScoreFileError(f"{SCORE_FILE}: does not define predict(); add `def predict(data, model=load_model()):`")
    parameters = _parameters(predict)
    if parameters is not None:
        required = [
            p.name
            for p in parameters.values()
            if p.default is inspect.Parameter.empty
            and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        ]
        for message in predict_signature_problems(required):
            raise ScoreFileError(f"{SCORE_FILE}: {message}")
    try:
        model = load_model()
    except Exception as exc:
        raise ScoreFileError(f"{SCORE_FILE}: load_model() raised {_describe(exc)}") from exc
    passes_model = parameters is not None and (
        "model" in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    )
    return Scorer(
        module=module,
        predict_fn=predict,
        model=model,
        passes_model=passes_model,
        is_async=inspect.iscoroutinefunction(predict),
        load_seconds=time.perf_counter() - started,
    )


def _parameters(fn: Callable[..., Any]) -> Any:
    """predict's parameters, or None for a callable whose signature Python cannot tell (some
    C extensions): such a predict is called as predict(data)."""
    try:
        return inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
