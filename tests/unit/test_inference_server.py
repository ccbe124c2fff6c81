"""The built-in inference server, in-process through httpx.ASGITransport, on small artifacts."""

from __future__ import annotations

import datetime as dt
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from dockyard.inference import ScoreFileError, create_app, load_scorer
from dockyard.inference.__main__ import main
from dockyard.inference.environments import ensure_environment
from dockyard.inference.server import to_jsonable

RUNTIME = textwrap.dedent(
    f"""\
    MODEL_ARTIFACT_VERSION: '3.0'
    MODEL_DEPLOYMENT:
      INFERENCE_CONDA_ENV:
        INFERENCE_ENV_PATH: oci://bucket@namespace/conda/pack
        INFERENCE_PYTHON_VERSION: '{sys.version_info.major}.{sys.version_info.minor}'
    MODEL_PROVENANCE: {{}}
    """
)

ADDER = """
calls = {"load_model": 0}

def load_model():
    calls["load_model"] += 1
    return {"offset": 100}

def predict(data, model=None):
    return {"sum": sum(data["numbers"]) + model["offset"], "loads": calls["load_model"]}
"""

RAISES = """
def load_model():
    return None

def predict(data):
    if data.get("fail"):
        raise ValueError("numbers must be positive")
    return {"ok": True}
"""

BYTES = """
def load_model():
    return None

def predict(data):
    assert isinstance(data, bytes), type(data)
    return data[::-1]
"""

ECHO_TYPE = """
def load_model():
    return None

def predict(data):
    return {"type": type(data).__name__, "value": data if not isinstance(data, bytes) else data.decode()}
"""


def write_artifact(root: Path, score: str, **files: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "score.py").write_text(textwrap.dedent(score))
    (root / "runtime.yaml").write_text(RUNTIME)
    for name, text in files.items():
        (root / name).write_text(textwrap.dedent(text))
    return root


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Callable[..., httpx.AsyncClient]]:
    """serve(score, **files) -> an httpx.AsyncClient over the app of that artifact."""
    clients: list[httpx.AsyncClient] = []

    def make(score: str, **files: str) -> httpx.AsyncClient:
        directory = write_artifact(tmp_path / f"artifact{len(clients)}", score, **files)
        app = create_app(load_scorer(directory))
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://model")
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


async def test_health_once_loaded(serve: Callable[..., httpx.AsyncClient]) -> None:
    client = serve(ADDER)
    response = await client.get("/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


async def test_predict_gets_the_loaded_model_and_load_model_runs_once(serve: Callable[..., httpx.AsyncClient]) -> None:
    client = serve(ADDER)
    for numbers, expected in (([1, 2, 3], 106), ([10], 110)):
        response = await client.post("/predict", json={"numbers": numbers})
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {"sum": expected, "loads": 1}


async def test_predict_without_model_argument_is_called_with_data_only(serve: Callable[..., httpx.AsyncClient]) -> None:
    client = serve(RAISES)
    assert (await client.post("/predict", json={"fail": False})).json() == {"ok": True}


async def test_predict_raising_is_a_json_500_with_type_message_and_line(serve: Callable[..., httpx.AsyncClient],
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    client = serve(RAISES)
    response = await client.post("/predict", json={"fail": True})
    assert response.status_code == 500
    body = response.json()
    assert set(body) == {"code", "message"} and body["code"] == "InternalServerError"
    assert "ValueError: numbers must be positive" in body["message"]
    assert "score.py, line 7, in predict: raise ValueError" in body["message"]
    printed = capsys.readouterr().out
    assert "Traceback" in printed and 'score.py", line 7, in predict' in printed
    assert "anyio" not in printed  # the traceback starts at score.py


async def test_invalid_json_is_a_json_400(serve: Callable[..., httpx.AsyncClient]) -> None:
    client = serve(ECHO_TYPE)
    response = await client.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["code"] == "InvalidParameter" and "not valid JSON" in response.json()["message"]


@pytest.mark.parametrize(
    ("content_type", "expected_type"),
    [
        ("application/json", "dict"),
        ("application/json; charset=utf-8", "dict"),
        ("application/vnd.example+json", "dict"),
        ("text/plain", "bytes"),
        ("application/octet-stream", "bytes"),
        (None, "bytes"),
    ],
)
async def test_data_is_decoded_json_or_raw_bytes(serve: Callable[..., httpx.AsyncClient], content_type: str | None,
                                                  expected_type: str) -> None:
    client = serve(ECHO_TYPE)
    headers = {"content-type": content_type} if content_type else {}
    response = await client.post("/predict", content=b'{"a": 1}', headers=headers)
    assert response.status_code == 200 and response.json()["type"] == expected_type


async def test_bytes_in_bytes_out(serve: Callable[..., httpx.AsyncClient]) -> None:
    client = serve(BYTES)
    response = await client.post("/predict", content=b"\x00\x01abc", headers={"content-type": "application/octet-stream"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.content == b"cba\x01\x00"


async def test_predict_with_trailing_slash_is_another_endpoint(serve: Callable[..., httpx.AsyncClient]) -> None:
    client = serve(ECHO_TYPE)  # C4: no redirect from /predict/ to /predict
    response = await client.post("/predict/", json={})
    assert response.status_code == 404 and response.json()["code"] == "NotFound"


async def test_wrong_method_and_unknown_path_answer_json(serve: Callable[..., httpx.AsyncClient]) -> None:
    client = serve(ECHO_TYPE)
    response = await client.get("/predict")
    assert response.status_code == 405 and response.json()["code"] == "MethodNotAllowed"
    response = await client.get("/nothing")
    assert response.status_code == 404 and response.json()["code"] == "NotFound"


async def test_one_log_line_per_request(serve: Callable[..., httpx.AsyncClient], capsys: pytest.CaptureFixture[str]) -> None:
    client = serve(ADDER)
    await client.get("/health")
    await client.post("/predict", json={"numbers": [1]})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("GET /health 200 ") and lines[0].endswith("ms")
    assert lines[1].startswith("POST /predict 200 ")


async def test_numpy_like_values_are_serialised(serve: Callable[..., httpx.AsyncClient]) -> None:
    score = """
    class Array:  # what numpy arrays and scalars offer: tolist()
        def __init__(self, values):
            self.values = values
        def tolist(self):
            return list(self.values)

    def load_model():
        return None

    def predict(data):
        return {"prediction": Array([1, 2]), "labels": ("a", "b"), "score": Array([0.5])}
    """
    client = serve(score)
    assert (await client.post("/predict", json={})).json() == {"prediction": [1, 2], "labels": ["a", "b"], "score": [0.5]}


async def test_unserialisable_result_is_a_clear_500(serve: Callable[..., httpx.AsyncClient]) -> None:
    score = """
    def load_model():
        return None

    def predict(data):
        return {"model": object()}
    """
    response = await serve(score).post("/predict", json={})
    assert response.status_code == 500 and "cannot be sent as JSON" in response.json()["message"]


async def test_async_predict_and_sibling_modules(serve: Callable[..., httpx.AsyncClient]) -> None:
    score = """
    from dockyard_test_helpers import double

    def load_model():
        return 3

    async def predict(data, model=None):
        return double(data["x"]) + model
    """
    client = serve(score, **{"dockyard_test_helpers.py": "def double(x):\n    return 2 * x\n"})
    assert (await client.post("/predict", json={"x": 4})).json() == 11


async def test_the_bundled_example_predicts_iris_species() -> None:
    example = Path(__file__).parents[2] / "src" / "dockyard" / "examples" / "default_model"
    app = create_app(load_scorer(example))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://model") as client:
        response = await client.post("/predict", json={"data": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]})
        assert response.status_code == 200
        assert response.json()["prediction"] == ["setosa", "virginica"]
        response = await client.post("/predict", json={"data": [[1, 2]]})
        assert response.status_code == 500 and "must hold 4 numbers" in response.json()["message"]


@pytest.mark.parametrize(
    ("score", "expected"),
    [
        ("def load_model():\n    pass\ndef predict(x, y):\n    pass\n", "must be named `data`"),
        ("import not_a_module_anywhere\n", "importing it raised ModuleNotFoundError"),
        ("def load_model():\n    raise OSError('model.pkl is missing')\ndef predict(data):\n    pass\n",
         "load_model() raised OSError: model.pkl is missing"),
        ("load_model = 1\ndef predict(data):\n    pass\n", "does not define load_model()"),
    ],
)
def test_load_scorer_refuses_with_the_reason(tmp_path: Path, score: str, expected: str) -> None:
    with pytest.raises(ScoreFileError) as caught:
        load_scorer(write_artifact(tmp_path, score))
    assert caught.value.message.startswith("score.py: ") and expected in caught.value.message


def test_load_scorer_writes_no_bytecode_into_the_artifact(tmp_path: Path) -> None:
    directory = write_artifact(tmp_path, ADDER, **{"dockyard_test_sibling.py": "X = 1\n"})
    (directory / "score.py").write_text("import dockyard_test_sibling\n" + textwrap.dedent(ADDER))
    load_scorer(directory)
    assert not (directory / "__pycache__").exists()


@pytest.mark.parametrize(
    ("value", "expected"),
    [({1, 2}, [1, 2]), (dt.date(2024, 5, 1), "2024-05-01"), (b"\x00\x01", "AAE=")],
)
def test_to_jsonable(value: object, expected: object) -> None:
    assert to_jsonable(value) == expected


def test_check_mode_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write_artifact(tmp_path / "good", ADDER)
    assert main(["--artifact-dir", str(good), "--check"]) == 0
    bad = write_artifact(tmp_path / "bad", "def predict(data):\n    pass\n")
    assert main(["--artifact-dir", str(bad), "--check"]) == 2
    assert "score.py: does not define load_model()" in capsys.readouterr().err


def test_main_exits_1_when_load_model_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    score = "def load_model():\n    raise RuntimeError('corrupt model')\ndef predict(data):\n    pass\n"
    assert main(["--artifact-dir", str(write_artifact(tmp_path, score))]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: corrupt model" in err


def test_without_requirements_the_current_interpreter_serves(tmp_path: Path) -> None:
    directory = write_artifact(tmp_path / "a", ADDER)
    assert ensure_environment(directory, tmp_path / "venvs") == sys.executable
    assert ensure_environment(directory, tmp_path / "venvs", python="/opt/python") == "/opt/python"
    assert not (tmp_path / "venvs").exists()


async def test_real_numpy_results_are_serialised(serve: Callable[..., httpx.AsyncClient]) -> None:
    pytest.importorskip("numpy")
    score = """
    import numpy as np

    def load_model():
        return np.array([0.5, 1.5])

    def predict(data, model=None):
        x = np.asarray(data["data"], dtype=np.float32)
        return {"prediction": x @ model.astype(np.float32), "n": np.int64(len(x)), "best": np.float32(2.5),
                "flag": np.bool_(True)}
    """
    response = await serve(score).post("/predict", json={"data": [[1, 2], [3, 4]]})
    assert response.status_code == 200
    assert response.json() == {"prediction": [3.5, 7.5], "n": 2, "best": 2.5, "flag": True}
