"""`dockyard check` against real images on the real engine: a good image passes every rule, each
deliberately broken image is flagged with exactly the rule it breaks (and a useful fix), the
seed's Flask LDA image passes, and bad input stops before anything starts.

Needs the engine, the open registry on 127.0.0.1:5001 and the test images (scripts/test sets
them up). The broken images are built once for the module FROM dockyard-test/base:bookworm
(tests/integration/images/check_server.py with `ENV MODE=...`), tagged under a name unique to
this run, and removed at the end with everything else the run made (found by label). All the
checks run at the same time, in one event loop, so the module takes as long as its slowest
check.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import secrets
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import pytest

from dockyard.checking.findings import Report, Verdict
from dockyard.checking.inputs import parse_request
from dockyard.checking.probe_run import run_check
from dockyard.checking.report import as_text
from dockyard.settings import Settings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SERVER = (Path(__file__).parent / "images" / "check_server.py").read_bytes()
RUN = secrets.token_hex(3)
PREFIX = f"dyck{RUN}"  # the check runtime's label prefix and this run's image namespace
IMAGE_LABEL = f"{PREFIX}.test"
REGISTRY = "127.0.0.1:5001"
BASE = "dockyard-test/base:bookworm"
NOCURL = "dockyard-test/base-nocurl:bookworm"
LDA = f"{REGISTRY}/dockyard-test/lda-flask:1.0.0"
LDA_ZIP = REPO / "build" / "lda-artifact.zip"
DOCKYARD = [sys.executable, "-m", "dockyard.cli.main"]
MANIFEST_TYPES = ", ".join([
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
])
MODES = ("good", "health404", "health500", "wrongport", "loopback", "crash", "slow", "writer", "sigterm", "oompredict")

# Patience 3 s: a conclusive non-answer (404/500 on /health, only another port) ends the wait
# after 3 s instead of 30; the budget stays the real 600 s except for the slow image.
QUICK: dict[str, Any] = {"patience_s": 3, "stop_timeout_s": 3}

# case -> (image key, request options, {rule: verdict} of the flagged (root) findings)
CASES: dict[str, tuple[str, dict[str, Any], dict[str, Verdict]]] = {
    "good": ("pushed", {"predict_data": '{"x": 1}', "artifact": "folder"}, {}),
    "nocurl": ("nocurl", {}, {"C9": Verdict.FAIL}),
    "health404": ("health404", {}, {"C3": Verdict.FAIL}),
    "health500": ("health500", {}, {"C3": Verdict.FAIL}),
    "wrongport": ("wrongport", {}, {"C6": Verdict.FAIL}),
    "loopback": ("loopback", {}, {"C6": Verdict.FAIL}),
    "crash": ("crash", {}, {"START": Verdict.FAIL}),
    "slow": ("slow", {"health_budget_s": 4}, {"H2": Verdict.FAIL}),
    "writer": ("writer", {"artifact": "folder"}, {"A3": Verdict.FAIL}),
    "bigcmd": ("good", {"cmd": json.dumps(["python3", "/srv/server.py", "--padding", "x" * 3000])},
               {"C10": Verdict.FAIL}),
    "sigterm": ("sigterm", {}, {"STOP": Verdict.WARN}),
    "oompredict": ("oompredict", {}, {"C2": Verdict.FAIL}),
    "badenv": ("good", {"env": ["MODEL_DEPLOYMENT_OCID=mine", "9lives=1"]}, {"ENV": Verdict.FAIL}),
    "ocir": ("ocir", {}, {"C11": Verdict.FAIL}),
}


# --- infrastructure ---------------------------------------------------------------------------------


def _infra_missing(what: str, command: str) -> None:
    message = f"{what}; run `{command}` (as root) first"
    if os.environ.get("DOCKYARD_TEST_REQUIRE_INFRA") == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def engine() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env(version="auto", timeout=120)
        client.ping()
    except Exception as exc:  # any failure to reach the engine means there is none
        _infra_missing(f"no Docker engine answers ({exc})", "bash scripts/infra/docker.sh")
    for image in (BASE, NOCURL, LDA):
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            _infra_missing(f"the test image {image} is missing", "bash scripts/infra/images.sh")
    try:
        if httpx.get(f"http://{REGISTRY}/v2/", timeout=3, trust_env=False).status_code != 200:
            raise httpx.HTTPError("not 200")
    except httpx.HTTPError:
        _infra_missing(f"the open test registry {REGISTRY} does not answer", "bash scripts/infra/registry.sh")
    if not LDA_ZIP.is_file():
        _infra_missing(f"the LDA example artifact {LDA_ZIP} is missing", "bash scripts/infra/lda-artifact.sh")
    try:
        yield client
    finally:
        _cleanup(client)
        client.close()


def _build(engine: docker.DockerClient, mode: str, base: str, tag: str) -> str:
    dockerfile = (f"FROM {base}\nCOPY check_server.py /srv/server.py\nENV MODE={mode}\n"
                  f'CMD ["python3", "/srv/server.py"]\n')
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data in {"Dockerfile": dockerfile.encode(), "check_server.py": SERVER}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    image, _ = engine.images.build(fileobj=context, custom_context=True, tag=tag, rm=True, labels={IMAGE_LABEL: "1"})
    return str(image.id)


@pytest.fixture(scope="module")
def images(engine: docker.DockerClient) -> dict[str, str]:
    """Every test image by key, built once; the good one also pushed to the open registry."""
    started = time.monotonic()
    names = {mode: f"{PREFIX}/{mode}:1" for mode in MODES}
    for mode in MODES:
        _build(engine, mode, BASE, names[mode])
    names["nocurl"] = f"{PREFIX}/nocurl:1"
    _build(engine, "good", NOCURL, names["nocurl"])
    names["pushed"] = f"{REGISTRY}/{PREFIX}/good:1"
    engine.images.get(names["good"]).tag(names["pushed"])
    for line in engine.images.push(f"{REGISTRY}/{PREFIX}/good", tag="1", stream=True, decode=True):
        assert "error" not in line, line
    names["ocir"] = f"iad.ocir.io/{PREFIX}/good:1"  # another region's registry (this one is "local")
    engine.images.get(names["good"]).tag(names["ocir"])
    print(f"built and pushed the test images in {time.monotonic() - started:.1f} s")
    return names


def _cleanup(engine: docker.DockerClient) -> None:
    for container in engine.containers.list(all=True, filters={"label": f"{PREFIX}.managed"}):
        container.remove(force=True, v=True)
    digest = None
    try:
        response = httpx.head(f"http://{REGISTRY}/v2/{PREFIX}/good/manifests/1", headers={"Accept": MANIFEST_TYPES},
                              timeout=5, trust_env=False)
        digest = response.headers.get("Docker-Content-Digest")
        if digest:
            httpx.delete(f"http://{REGISTRY}/v2/{PREFIX}/good/manifests/{digest}", timeout=5, trust_env=False)
    except httpx.HTTPError:
        pass
    for image in engine.images.list(filters={"label": IMAGE_LABEL}):
        for ref in image.tags:
            try:
                engine.images.remove(ref, force=True)
            except docker.errors.APIError:
                pass
        try:
            engine.images.remove(image.id, force=True)
        except docker.errors.APIError:
            pass


# --- all checks, at once --------------------------------------------------------------------------


def _artifact(tmp: Path) -> Path:
    folder = tmp / "artifact"
    (folder / "weights").mkdir(parents=True)
    (folder / "model.txt").write_text("weights-v1")
    (folder / "empty").mkdir()
    return folder


async def _cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(*DOCKYARD, *args, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.PIPE, cwd=REPO)
    stdout, stderr = await process.communicate()
    return process.returncode or 0, stdout.decode(), stderr.decode()


LDA_ARGS = [LDA, "--artifact", str(LDA_ZIP), "--server-port", "5000", "--health-port", "5000",
            "--cmd", "python /opt/ds/model/deployed_model/api.py", "--predict-data", '{"line": "12"}']


@pytest.fixture(scope="module")
def results(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every case's report, the LDA image through the command (text and --json), all in parallel."""
    folder = _artifact(tmp_path_factory.mktemp("check"))
    settings = Settings(region="local", allowed_registries="")  # the "ocir" case needs another region than ours
    progress: dict[str, list[str]] = {case: [] for case in CASES}

    async def one(case: str) -> Report:
        key, options, _ = CASES[case]
        options = QUICK | options
        if options.get("artifact") == "folder":
            options["artifact"] = folder
        request = parse_request(images[key], **options)
        return await run_check(request, settings, progress[case].append, label_prefix=PREFIX)

    async def everything() -> list[Any]:
        return await asyncio.gather(*(one(case) for case in CASES), _cli("check", *LDA_ARGS),
                                    _cli("check", *LDA_ARGS, "--json"))

    started = time.monotonic()
    found = asyncio.run(everything())
    print(f"{len(CASES)} checks and 2 LDA commands in {time.monotonic() - started:.1f} s")
    reports = dict(zip(CASES, found[: len(CASES)]))
    for case, report in reports.items():  # shown with `pytest -s`, and kept in the log on failures
        print(f"--- {case}\n{as_text(report)}")
    return {"reports": reports, "progress": progress, "lda_text": found[-2], "lda_json": found[-1]}


def _flagged(report: Report) -> dict[str, Verdict]:
    return {f.rule: f.verdict for f in report.flagged()}


@pytest.mark.parametrize("case", list(CASES))
def test_each_image_is_flagged_with_exactly_its_rule(results: dict[str, Any], case: str) -> None:
    report = results["reports"][case]
    expected = CASES[case][2]
    assert _flagged(report) == expected, "\n".join(str(f) for f in report.findings)
    for finding in report.flagged():
        assert finding.fix, f"{finding.rule} has no fix"
    assert report.exit_code == (1 if Verdict.FAIL in expected.values() else 0)


def test_a_good_image_passes_everything(results: dict[str, Any]) -> None:
    report = results["reports"]["good"]
    assert [f.rule for f in report.findings if f.verdict is not Verdict.PASS] == []
    assert report.ran.startswith(f"{REGISTRY}/{PREFIX}/good@sha256:")  # the pinned digest, as deployed (D2)
    predict = report.finding("C2").measured
    assert '"echo": {"x": 1}' in predict and report.deployment_id[-12:] in predict  # MODEL_DEPLOYMENT_OCID injected
    assert "reports healthy" in report.finding("C9").measured  # the service's HEALTHCHECK ran inside
    assert "/predict/ -> 404" in report.finding("C4").measured
    assert report.finding("STOP").verdict is Verdict.PASS
    lines = results["progress"]["good"]
    assert any(line.startswith("unpack:") for line in lines) and any("healthy after" in line for line in lines)


def test_the_broken_images_get_useful_measurements_and_fixes(results: dict[str, Any]) -> None:
    reports: dict[str, Report] = results["reports"]

    c9 = reports["nocurl"].finding("C9")
    assert "curl is not in the image" in c9.measured and "apt-get install -y curl" in c9.fix
    assert reports["nocurl"].finding("C3").verdict is Verdict.PASS  # probed from outside all the same

    assert "answered 404" in reports["health404"].finding("C3").measured
    assert "serve GET /health" in reports["health404"].finding("C3").fix
    assert "answered 500" in reports["health500"].finding("C3").measured
    assert reports["health500"].finding("H2").cause == "C3"

    wrong = reports["wrongport"]
    assert "0.0.0.0:8081" in wrong.finding("C6").measured
    assert "--server-port 8081 --health-port 8081" in wrong.finding("C6").fix
    assert {wrong.finding(rule).cause for rule in ("C3", "H2", "C2")} == {"C6"}

    loop = reports["loopback"].finding("C6")
    assert "127.0.0.1:8080 only" in loop.measured and "0.0.0.0" in loop.fix

    crash = reports["crash"].finding("START")
    assert "exited with code 1" in crash.measured and "model.joblib" in crash.measured
    assert reports["crash"].finding("STOP").cause == "START"

    slow = reports["slow"]
    assert "not healthy within the 4 s budget" in slow.finding("H2").measured
    assert slow.finding("STOP").verdict is Verdict.PASS  # sleeping, it still dies on SIGTERM

    writer = reports["writer"]
    assert "Read-only file system" in writer.finding("A3").measured and "/tmp" in writer.finding("A3").fix
    assert writer.finding("START").verdict is Verdict.FAIL and writer.finding("START").cause == "A3"

    big = reports["bigcmd"].finding("C10")
    assert "3030 bytes, over the 2048-byte limit" in big.measured and "artifact" in big.fix
    assert reports["bigcmd"].finding("C2").verdict is Verdict.PASS  # it still runs locally

    stop = reports["sigterm"].finding("STOP")
    assert "ignored SIGTERM" in stop.measured and "exit code 137" in stop.measured and "SIGTERM" in stop.fix

    dies = reports["oompredict"]
    assert "exited (code 137) while answering" in dies.finding("C2").measured
    assert "MemoryError" in dies.finding("C2").measured and "memory" in dies.finding("C2").fix
    assert dies.finding("C3").verdict is Verdict.PASS and dies.finding("START").cause == "C2"

    env = reports["badenv"].finding("ENV").measured
    assert "MODEL_DEPLOYMENT_OCID" in env and "9lives" in env
    assert reports["badenv"].deployment_id[-12:] in reports["badenv"].finding("C2").measured  # the injected id wins

    ocir = reports["ocir"]
    assert "region" in ocir.finding("C11").measured and ocir.finding("D1").cause == "C11"


def test_the_lda_example_passes_through_the_command(results: dict[str, Any]) -> None:
    code, text, errors = results["lda_text"]
    assert code == 0, text + errors
    assert not [line for line in text.splitlines() if line.startswith(("FAIL", "WARN", "SKIP"))], text
    assert '{"prediction LDA":2}' in text
    for rule in ("C11", "D1", "C7", "C9", "C10", "ENV", "C6", "START", "A3", "C3", "H2", "C2", "C4", "STOP"):
        assert f"PASS  {rule}" in text, rule
    assert "pull:" in errors and "health: healthy after" in errors  # progress goes to stderr

    code, output, _ = results["lda_json"]
    document = json.loads(output)
    assert code == 0 and document["passed"] is True and document["flagged"] == []
    assert [f["rule"] for f in document["findings"]][:3] == ["C11", "D1", "C7"]
    assert {f["verdict"] for f in document["findings"]} == {"PASS"}


# --- bad input: a clear error before anything starts ----------------------------------------------


@pytest.mark.parametrize("args, words", [
    ([f"{REGISTRY}/{PREFIX}/nope:1"], "does not exist"),
    ([f"{PREFIX}/nope:1"], "is not in this Docker engine and cannot be pulled"),
    ([BASE, "--artifact", "pyproject.toml"], "neither a zip archive nor a folder"),
    ([BASE, "--artifact", "no/such/folder"], "does not exist"),
    ([BASE, "--server-port", "80"], "outside 1024-65535"),
    ([BASE, "--health-port", "8446"], "reserved"),
    ([BASE, "--predict-data", '{"line": 12'], "not valid JSON"),
    ([BASE, "-e", "NOEQUALS"], "is not KEY=VALUE"),
    (["Not A Reference"], "not a valid image reference"),
])
def test_bad_input_is_refused_before_anything_starts(engine: docker.DockerClient, args: list[str], words: str) -> None:
    completed = subprocess.run([*DOCKYARD, "check", *args], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert completed.returncode == 2, completed.stdout + completed.stderr
    assert words in " ".join(completed.stderr.split()), completed.stderr
    assert "start:" not in completed.stderr and completed.stdout == ""
