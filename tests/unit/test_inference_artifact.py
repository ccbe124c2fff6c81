"""validate_artifact: the DEFAULT artifact rules (A2, oci-api.md §8) as tables."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from dockyard.inference import Problem, errors, validate_artifact

RUNNING = f"{sys.version_info.major}.{sys.version_info.minor}"
GOOD_SCORE = "def load_model():\n    return 1\n\ndef predict(data, model=load_model()):\n    return data\n"
GOOD_RUNTIME = textwrap.dedent(
    f"""\
    MODEL_ARTIFACT_VERSION: '3.0'
    MODEL_DEPLOYMENT:
      INFERENCE_CONDA_ENV:
        INFERENCE_ENV_PATH: oci://bucket@namespace/conda/pack
        INFERENCE_PYTHON_VERSION: '{RUNNING}'
    MODEL_PROVENANCE: {{}}
    """
)


def artifact(tmp_path: Path, score: str | None = GOOD_SCORE, runtime: str | None = GOOD_RUNTIME) -> Path:
    if score is not None:
        (tmp_path / "score.py").write_text(score)
    if runtime is not None:
        (tmp_path / "runtime.yaml").write_text(runtime)
    return tmp_path


def messages(problems: list[Problem], severity: str = "error") -> list[str]:
    return [str(p) for p in problems if p.severity == severity]


def test_a_good_artifact_has_no_problem(tmp_path: Path) -> None:
    assert validate_artifact(artifact(tmp_path)) == []


def test_the_bundled_example_is_valid() -> None:
    example = Path(__file__).parents[2] / "src" / "dockyard" / "examples" / "default_model"
    assert validate_artifact(example) == []


def test_missing_files_name_rule_a2(tmp_path: Path) -> None:
    problems = validate_artifact(artifact(tmp_path, score=None, runtime=None))
    assert [p.file for p in problems] == ["score.py", "runtime.yaml"]
    assert all("(A2)" in p.message and p.is_error for p in problems)


def test_a_zipped_folder_is_pointed_out(tmp_path: Path) -> None:
    nested = tmp_path / "model"
    nested.mkdir()
    artifact(nested)
    problems = validate_artifact(tmp_path)
    assert "found model/score.py instead" in problems[0].message and "(A4)" in problems[0].message


def test_a_missing_directory_is_one_problem(tmp_path: Path) -> None:
    assert len(validate_artifact(tmp_path / "absent")) == 1


@pytest.mark.parametrize(
    ("score", "expected"),
    [
        ("def load_model(:\n", "score.py: not valid Python (line 1"),
        ("def predict(data):\n    return data\n", "does not define load_model()"),
        ("def load_model():\n    return 1\n", "does not define predict()"),
        ("def load_model(path):\n    return 1\ndef predict(data):\n    pass\n", "`path` has no default"),
        ("def load_model():\n    pass\ndef predict(x):\n    pass\n", "must be named `data` (found `x`)"),
        ("def load_model():\n    pass\ndef predict():\n    pass\n", "takes no required argument"),
        ("def load_model():\n    pass\ndef predict(data, model):\n    pass\n", "give `model` a default"),
        ("def load_model():\n    pass\ndef predict(model, data):\n    pass\n", "first argument must be `data`"),
        ("def load_model():\n    pass\ndef predict(data, *, model):\n    pass\n", "give `model` a default"),
    ],
)
def test_score_py_problems(tmp_path: Path, score: str, expected: str) -> None:
    found = messages(validate_artifact(artifact(tmp_path, score=score)))
    assert len(found) == 1 and expected in found[0], found


@pytest.mark.parametrize(
    "score",
    [
        GOOD_SCORE,
        "def load_model():\n    pass\ndef predict(data):\n    pass\n",
        "def load_model(name='m.pkl'):\n    pass\ndef predict(data, *args, model=None, **kwargs):\n    pass\n",
        "def load_model():\n    pass\nasync def predict(data, model=None):\n    pass\n",
        "try:\n    import json\nexcept ImportError:\n    pass\nelse:\n    def load_model():\n        pass\n"
        "    def predict(data):\n        pass\n",
        # Bound by assignment or import: only the import can check the signature.
        "from json import loads as load_model\npredict = lambda data: data\n",
    ],
)
def test_score_py_accepted(tmp_path: Path, score: str) -> None:
    assert validate_artifact(artifact(tmp_path, score=score)) == []


def runtime_yaml(version: str = "'3.0'", python: str = f"'{RUNNING}'", env_path: str | None = "oci://b@n/p",
                 provenance: bool = True) -> str:
    lines = [f"MODEL_ARTIFACT_VERSION: {version}", "MODEL_DEPLOYMENT:", "  INFERENCE_CONDA_ENV:",
             f"    INFERENCE_PYTHON_VERSION: {python}"]
    if env_path is not None:
        lines.append(f"    INFERENCE_ENV_PATH: {env_path}")
    if provenance:
        lines.append("MODEL_PROVENANCE: {}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("runtime", "expected"),
    [
        ("a: [unclosed\n", "runtime.yaml: not valid YAML (line 2"),
        ("- a list\n", "must be a YAML mapping"),
        (runtime_yaml(version="'2.0'"), "MODEL_ARTIFACT_VERSION is '2.0'; only '3.0' is supported"),
        ("MODEL_DEPLOYMENT:\n  INFERENCE_CONDA_ENV:\n    INFERENCE_PYTHON_VERSION: '3.11'\n",
         "MODEL_ARTIFACT_VERSION is missing"),
        ("MODEL_ARTIFACT_VERSION: '3.0'\n", "MODEL_DEPLOYMENT is missing"),
        ("MODEL_ARTIFACT_VERSION: '3.0'\nMODEL_DEPLOYMENT:\n  INFERENCE_CONDA_ENV: py311\n",
         "MODEL_DEPLOYMENT.INFERENCE_CONDA_ENV must be a mapping"),
        (runtime_yaml(python="''"), "INFERENCE_PYTHON_VERSION is missing"),
        (runtime_yaml(python="'3.5'"), "INFERENCE_PYTHON_VERSION is '3.5'"),
        (runtime_yaml(python="'2.7'"), "INFERENCE_PYTHON_VERSION is '2.7'"),
        (runtime_yaml(python="'3.15'"), "INFERENCE_PYTHON_VERSION is '3.15'"),
        (runtime_yaml(python="3.10"), "write the version quoted, e.g. '3.10'"),
        (runtime_yaml(python="'python3.11'"), "INFERENCE_PYTHON_VERSION is 'python3.11'"),
    ],
)
def test_runtime_yaml_problems(tmp_path: Path, runtime: str, expected: str) -> None:
    found = messages(validate_artifact(artifact(tmp_path, runtime=runtime)))
    assert len(found) == 1 and expected in found[0], found


@pytest.mark.parametrize(
    ("runtime", "expected"),
    [
        (runtime_yaml(env_path=None), "INFERENCE_ENV_PATH is not set"),
        (runtime_yaml(python="'3.8'" if RUNNING != "3.8" else "'3.9'"), f"dockyard serves the model on Python {RUNNING}"),
        (runtime_yaml(provenance=False), "MODEL_PROVENANCE is missing"),
    ],
)
def test_runtime_yaml_warnings_do_not_fail(tmp_path: Path, runtime: str, expected: str) -> None:
    problems = validate_artifact(artifact(tmp_path, runtime=runtime))
    assert errors(problems) == []
    assert len(problems) == 1 and expected in str(problems[0]) and str(problems[0]).startswith("warning: runtime.yaml")


@pytest.mark.parametrize("version", ["3.0", "'3.0'"])
def test_artifact_version_quoted_or_not(tmp_path: Path, version: str) -> None:
    assert validate_artifact(artifact(tmp_path, runtime=runtime_yaml(version=version))) == []


@pytest.mark.parametrize("python", [f"'{RUNNING}'", f"'{RUNNING}.4'"])
def test_python_version_forms_accepted(tmp_path: Path, python: str) -> None:
    assert validate_artifact(artifact(tmp_path, runtime=runtime_yaml(python=python))) == []


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    problems = validate_artifact(artifact(tmp_path, score="x = 1\n", runtime=runtime_yaml(version="'1.0'", python="'2'")))
    assert {p.file for p in errors(problems)} == {"score.py", "runtime.yaml"}
    assert len(errors(problems)) == 4
