"""What `dockyard check` / `run` accept, and the clear errors for what they refuse."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from dockyard.checking.inputs import CheckRequest, parse_request
from dockyard.errors import InvalidParameter


def refused(**values: object) -> str:
    image = str(values.pop("image", "127.0.0.1:5001/team/app:1"))
    with pytest.raises(InvalidParameter) as caught:
        parse_request(image, **values)  # type: ignore[arg-type]
    return caught.value.message


def test_defaults_are_the_platforms() -> None:
    request = parse_request("127.0.0.1:5001/team/app:1")
    assert (request.server_port, request.health_port) == (8080, 8080)
    assert request.entrypoint is None and request.cmd is None  # the image's own
    assert request.sample == b"{}" and request.content_type == "application/json"
    assert request.health_budget_s == 600 and request.stop_timeout_s == 10


def test_artifact_may_be_a_zip_or_a_folder(tmp_path: Path) -> None:
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("api.py", "print(1)")
    assert parse_request("app:1", artifact=archive).artifact == archive
    assert parse_request("app:1", artifact=tmp_path).artifact == tmp_path
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert "neither a zip archive nor a folder" in refused(artifact=text)
    assert "does not exist" in refused(artifact=tmp_path / "missing")


@pytest.mark.parametrize("flag, value, words", [
    ("server_port", 80, "outside 1024-65535"),
    ("health_port", 70000, "outside 1024-65535"),
    ("server_port", 8446, "reserved"),
    ("health_port", "http", "not a port number"),
])
def test_ports_outside_the_range_are_refused(flag: str, value: object, words: str) -> None:
    message = refused(**{flag: value})
    assert words in message and f"--{flag.replace('_', '-')}" in message


def test_ports_as_numeric_strings_are_accepted() -> None:
    assert parse_request("app:1", server_port="5000", health_port="5001").health_port == 5001


def test_the_sample_must_be_json_unless_another_type_is_given(tmp_path: Path) -> None:
    assert "not valid JSON" in refused(predict_data='{"line": 12')
    assert parse_request("app:1", predict_data="a,b\n1,2", content_type="text/csv").predict_data == b"a,b\n1,2"
    sample = tmp_path / "sample.json"
    sample.write_text('{"line": "12"}')
    assert parse_request("app:1", predict_data=f"@{sample}").sample == b'{"line": "12"}'
    assert "cannot read" in refused(predict_data=f"@{tmp_path / 'none.json'}")


def test_command_lines_are_json_lists_or_shell_words() -> None:
    request = parse_request("app:1", cmd='python /opt/ds/model/deployed_model/api.py --port "50 00"',
                            entrypoint='["/bin/sh", "-c"]')
    assert request.cmd == ["python", "/opt/ds/model/deployed_model/api.py", "--port", "50 00"]
    assert request.entrypoint == ["/bin/sh", "-c"]
    assert parse_request("app:1", entrypoint="").entrypoint == []  # clears the image's ENTRYPOINT
    assert "JSON list" in refused(cmd='["python", 3]')
    assert "shell words" in refused(cmd="python 'unclosed")


def test_environment_pairs() -> None:
    assert parse_request("app:1", env=["A=1", "B=x=y", "EMPTY="]).environment == {"A": "1", "B": "x=y", "EMPTY": ""}
    assert "is not KEY=VALUE" in refused(env=["NOEQUALS"])
    # the contract's key rules are a report line (ENV), not an input error
    assert parse_request("app:1", env=["bad-key=1"]).environment == {"bad-key": "1"}


def test_image_references_and_digests() -> None:
    assert "not a valid image reference" in refused(image="Not A Reference")
    assert "digest" in refused(image_digest="sha256:abc")


def test_every_problem_is_named_at_once() -> None:
    message = refused(server_port=80, predict_data="{", env=["X"])
    assert message.startswith("3 problems:")


def test_a_request_is_a_value() -> None:
    assert CheckRequest(image="a:1") == CheckRequest(image="a:1")
