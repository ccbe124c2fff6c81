"""Checks of a DEFAULT artifact (rule A2: `score.py` and `runtime.yaml`), without running it.

The rules are those of Oracle ADS's artifact introspection (oci-api.md §8): `score.py` is valid
Python and defines `load_model()` and `predict()` whose only required argument is `data`;
`runtime.yaml` is valid YAML with `MODEL_ARTIFACT_VERSION` '3.0' and an inference Python version
ADS accepts. The checks read the files only (an AST, not an import), so the control plane can
run them on an upload without executing user code; the inference server repeats the signature
checks on the imported functions, which also catches decorated or re-exported ones.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

SCORE_FILE = "score.py"
RUNTIME_FILE = "runtime.yaml"
PYTHON_VERSION_PATTERN = re.compile(r"^([3])(\.([6-9]|1[0-4]))(\.\d+)?$")

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """One finding about an artifact: which file, what is wrong and what to do about it.

    Errors stop the artifact from being served; warnings are reported and serving goes on.
    """

    file: str
    message: str
    severity: Severity = "error"

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def __str__(self) -> str:
        prefix = "" if self.is_error else "warning: "
        return f"{prefix}{self.file}: {self.message}"


def errors(problems: list[Problem]) -> list[Problem]:
    """The problems that stop an artifact from being served."""
    return [p for p in problems if p.is_error]


def validate_artifact(artifact_dir: Path | str) -> list[Problem]:
    """Every problem of the DEFAULT artifact unpacked at `artifact_dir`, errors and warnings.

    Never raises for a bad artifact: an empty list (or warnings only) means it can be served.
    """
    root = Path(artifact_dir)
    if not root.is_dir():
        return [Problem(str(root), "the artifact directory does not exist")]
    return check_score(root) + check_runtime(root)


# --- score.py -----------------------------------------------------------------------------------


def check_score(root: Path) -> list[Problem]:
    path = root / SCORE_FILE
    if not path.is_file():
        hint = _nested_hint(root, SCORE_FILE)
        return [Problem(SCORE_FILE, f"missing: a DEFAULT artifact needs score.py at the top level of the zip (A2){hint}")]
    try:
        source = path.read_bytes()
        tree = ast.parse(source, filename=SCORE_FILE)
    except SyntaxError as exc:
        where = f"line {exc.lineno}" + (f", column {exc.offset}" if exc.offset else "")
        return [Problem(SCORE_FILE, f"not valid Python ({where}: {exc.msg}); fix the syntax error")]
    except (OSError, ValueError) as exc:  # unreadable, or NUL bytes
        return [Problem(SCORE_FILE, f"cannot be read as Python source ({exc})")]

    functions, other_names = _top_level_names(tree)
    problems: list[Problem] = []
    load_model = functions.get("load_model")
    if load_model is None and "load_model" not in other_names:
        problems.append(Problem(SCORE_FILE, "does not define load_model(); add a function that loads and returns the model"))
    elif load_model is not None:
        required = _required_parameters(load_model.args)
        if required:
            problems.append(
                Problem(SCORE_FILE, f"load_model() must be callable without arguments, but {_names(required)} "
                        f"{'has' if len(required) == 1 else 'have'} no default; give every parameter a default")
            )
    predict = functions.get("predict")
    if predict is None and "predict" not in other_names:
        problems.append(Problem(SCORE_FILE, "does not define predict(); add `def predict(data, model=load_model()):`"))
    elif predict is not None:
        problems += [Problem(SCORE_FILE, m) for m in predict_signature_problems(_required_parameters(predict.args))]
    return problems


def predict_signature_problems(required: list[str]) -> list[str]:
    """The rule "`data` is predict's only required argument", given its required parameters."""
    if required == ["data"]:
        return []
    if not required:
        return ["predict() must take the request as its first argument named `data` (it takes no required argument)"]
    if "data" not in required:
        return [f"predict()'s required argument must be named `data` (found {_names(required)}); rename it to `data`"]
    others = [name for name in required if name != "data"]
    if required[0] != "data":
        return [f"predict()'s first argument must be `data` (found {_names(required)})"]
    return [f"predict()'s only required argument must be `data`; give {_names(others)} a default "
            "(e.g. `model=load_model()`)"]


def _top_level_names(tree: ast.Module) -> tuple[dict[str, ast.FunctionDef | ast.AsyncFunctionDef], set[str]]:
    """Functions defined at module level (including inside top-level if/try blocks), and other
    names bound there (`predict = make_predict()`, `from helpers import predict`), whose
    signatures only the import can tell."""
    functions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
    others: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions[node.name] = node
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                others.update(t.id for t in targets if isinstance(t, ast.Name))
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                others.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, ast.If):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)

    visit(tree.body)
    return functions, others - set(functions)


def _required_parameters(args: ast.arguments) -> list[str]:
    positional = args.posonlyargs + args.args
    without_default = positional[: len(positional) - len(args.defaults)]
    keyword_only = [a for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is None]
    return [a.arg for a in without_default + keyword_only]


def _names(names: list[str]) -> str:
    return ", ".join(f"`{n}`" for n in names)


def _nested_hint(root: Path, name: str) -> str:
    # A4: zipping a folder instead of its files puts everything one level down.
    nested = sorted(p.relative_to(root) for p in root.glob(f"*/{name}"))
    if nested:
        return f"; found {nested[0]} instead: zip the files themselves, not the folder that holds them (A4)"
    return ""


# --- runtime.yaml -------------------------------------------------------------------------------


def check_runtime(root: Path) -> list[Problem]:
    path = root / RUNTIME_FILE
    if not path.is_file():
        hint = _nested_hint(root, RUNTIME_FILE)
        return [Problem(RUNTIME_FILE, "missing: a DEFAULT artifact needs runtime.yaml at the top level of the zip "
                        f"(A2){hint}")]
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        reason = getattr(exc, "problem", None) or str(exc)
        return [Problem(RUNTIME_FILE, f"not valid YAML{where}: {reason}")]
    except (OSError, UnicodeDecodeError) as exc:
        return [Problem(RUNTIME_FILE, f"cannot be read as UTF-8 text ({exc})")]
    if not isinstance(document, dict):
        return [Problem(RUNTIME_FILE, "must be a YAML mapping with MODEL_ARTIFACT_VERSION and MODEL_DEPLOYMENT")]

    problems: list[Problem] = []
    version = document.get("MODEL_ARTIFACT_VERSION")
    # YAML reads an unquoted 3.0 as a float; ADS writes '3.0' quoted. Accept both spellings.
    if version is None:
        problems.append(Problem(RUNTIME_FILE, "MODEL_ARTIFACT_VERSION is missing; set MODEL_ARTIFACT_VERSION: '3.0'"))
    elif str(version) != "3.0":
        problems.append(Problem(RUNTIME_FILE, f"MODEL_ARTIFACT_VERSION is {version!r}; only '3.0' is supported"))

    conda = _mapping_at(document, ["MODEL_DEPLOYMENT", "INFERENCE_CONDA_ENV"], problems)
    if conda is not None:
        problems += _check_python_version(conda.get("INFERENCE_PYTHON_VERSION"))
        if not conda.get("INFERENCE_ENV_PATH"):
            problems.append(
                Problem(RUNTIME_FILE, "MODEL_DEPLOYMENT.INFERENCE_CONDA_ENV.INFERENCE_ENV_PATH is not set; OCI and ADS "
                        "require it (dockyard serves on its own Python and does not need it)", "warning")
            )
    if "MODEL_PROVENANCE" not in document:
        problems.append(
            Problem(RUNTIME_FILE, "MODEL_PROVENANCE is missing; ADS (RuntimeInfo.from_yaml) refuses such a file, "
                    "dockyard does not need it", "warning")
        )
    return problems


def _mapping_at(document: dict[str, Any], keys: list[str], problems: list[Problem]) -> dict[str, Any] | None:
    node: Any = document
    for depth, key in enumerate(keys):
        name = ".".join(keys[: depth + 1])
        value = node.get(key)
        if value is None:
            problems.append(Problem(RUNTIME_FILE, f"{name} is missing; add it with INFERENCE_PYTHON_VERSION "
                                    "and INFERENCE_ENV_PATH under MODEL_DEPLOYMENT.INFERENCE_CONDA_ENV"))
            return None
        if not isinstance(value, dict):
            problems.append(Problem(RUNTIME_FILE, f"{name} must be a mapping, not {type(value).__name__}"))
            return None
        node = value
    return node  # type: ignore[no-any-return]


def _check_python_version(value: Any) -> list[Problem]:
    key = "MODEL_DEPLOYMENT.INFERENCE_CONDA_ENV.INFERENCE_PYTHON_VERSION"
    if value is None or value == "":
        return [Problem(RUNTIME_FILE, f"{key} is missing; set it to the model's Python version, e.g. '3.11'")]
    text = str(value)
    if not PYTHON_VERSION_PATTERN.match(text):
        hint = ""
        if isinstance(value, (int, float)):
            hint = f"; YAML read an unquoted number as {text}: write the version quoted, e.g. '3.10'"
        return [Problem(RUNTIME_FILE, f"{key} is {text!r}; it must be a Python 3 version from 3.6 to 3.14 "
                        f"such as '3.11'{hint}")]
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    declared = ".".join(text.split(".")[:2])
    if declared != running:
        return [Problem(RUNTIME_FILE, f"{key} is {text!r} but dockyard serves the model on Python {running}; "
                        "a model pickled on another version may fail to load", "warning")]
    return []
