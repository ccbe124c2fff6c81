"""A checked instance is the instance a deployment would run: same spec, same health path,
same artifact layout."""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path

import pytest

from dockyard.checking import image_source
from dockyard.checking.artifacts import prepare_artifact
from dockyard.checking.image_source import names_registry
from dockyard.checking.inputs import parse_request
from dockyard.checking.session import deployment_config, instance_spec, is_triton, predict_path
from dockyard.errors import InvalidParameter, ServiceUnavailable
from dockyard.reconciler.loop import Reconciler
from dockyard.settings import Settings
from dockyard.store.metadata import Record

OCID = "ocid1.datasciencemodeldeployment.oc1.local.abcdef"


@pytest.mark.parametrize("options", [
    {},
    {"server_port": 5000, "health_port": 5001, "cmd": "python api.py", "entrypoint": "",
     "env": ["SHM_SIZE=1g", "MODEL_DEPLOY_HEALTH_ENDPOINT=/ready", "A=b"]},
    {"env": ["CONTAINER_TYPE=TRITON"]},
])
def test_the_spec_is_the_one_the_reconciler_builds(tmp_path: Path, options: dict[str, object]) -> None:
    request = parse_request("127.0.0.1:5001/team/app:1", **options)  # type: ignore[arg-type]
    image = "127.0.0.1:5001/team/app@sha256:" + "a" * 64
    ours = instance_spec(request, OCID, tmp_path, image)
    config = deployment_config(request, image)
    record = Record(id=OCID, kind="modeldeployment", body={"modelDeploymentConfigurationDetails": config})
    theirs = Reconciler._spec(None, record, ours.spec_hash, tmp_path)  # type: ignore[arg-type]
    assert ours == theirs
    assert ours.environment["MODEL_DEPLOYMENT_OCID"] == OCID


def test_service_interpreted_variables() -> None:
    triton = parse_request("app:1", env=["CONTAINER_TYPE=triton"])
    assert is_triton(triton) and instance_spec(triton, OCID, None, "app:1").health_path == "/v2/health/ready"
    custom = parse_request("app:1", env=["MODEL_DEPLOY_PREDICT_ENDPOINT=/v1/chat/completions"])
    assert predict_path(custom) == "/v1/chat/completions" and predict_path(parse_request("app:1")) == "/predict"


def test_names_registry_follows_dockers_rule() -> None:
    assert names_registry("127.0.0.1:5001/team/app:1") and names_registry("iad.ocir.io/ns/app:1")
    assert names_registry("localhost/app:1")
    assert not names_registry("team/app:1") and not names_registry("app:1") and not names_registry("app")


def test_a_folder_is_laid_out_as_its_zip_would_be(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "empty" / "1").mkdir(parents=True)  # Triton needs empty version folders
    (folder / "api.py").write_text("print('hi')")
    (folder / "run.sh").write_text("#!/bin/sh\n")
    (folder / "run.sh").chmod(0o700)
    (folder / "sub" / "weights.bin").write_bytes(b"\0" * 100)
    (folder / "sub" / "weights.bin").chmod(0o600)  # unpacked world-readable all the same
    (folder / "link.py").symlink_to(folder / "api.py")  # followed, as `zip -r` does
    mounted, evidence = prepare_artifact(folder, tmp_path / "work")
    assert sorted(str(p.relative_to(mounted)) for p in mounted.rglob("*")) == [
        "api.py", "empty", "empty/1", "link.py", "run.sh", "sub", "sub/weights.bin"]
    assert (evidence.files, evidence.bytes) == (4, len("print('hi')") * 2 + len("#!/bin/sh\n") + 100)
    assert stat.S_IMODE(os.stat(mounted / "sub" / "weights.bin").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(mounted / "run.sh").st_mode) == 0o755
    assert folder.joinpath("api.py").read_text() == "print('hi')"  # the user's folder is untouched


def test_a_zip_goes_through_the_services_unpacker(tmp_path: Path) -> None:
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("models/clf.joblib", b"x" * 10)
    mounted, evidence = prepare_artifact(archive, tmp_path / "work")
    assert (mounted / "models" / "clf.joblib").read_bytes() == b"x" * 10 and evidence.files == 1

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../escape.txt", "x")
    with pytest.raises(InvalidParameter, match="cannot be deployed"):
        prepare_artifact(evil, tmp_path / "work2")


def test_no_artifact_mounts_an_empty_folder(tmp_path: Path) -> None:
    mounted, evidence = prepare_artifact(None, tmp_path / "work")
    assert mounted.is_dir() and list(mounted.iterdir()) == [] and evidence.files == 0


class _Unreachable:
    """Stands in for RegistryClient: every registry is down."""

    def __init__(self, **_: object) -> None:
        pass

    async def __aenter__(self) -> _Unreachable:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    async def resolve(self, image: object, *, digest: str | None = None) -> object:
        raise ServiceUnavailable("registry x is unreachable; check it")


async def test_registry_evidence_without_a_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image_source, "RegistryClient", _Unreachable)
    settings = Settings(region="local", allowed_registries="")
    assert (await image_source.look_up("team/app:1", None, settings)).named is False
    # Podman names local images localhost/NAME: with nothing answering there, a local image.
    assert (await image_source.look_up("localhost/app:1", None, settings)).named is False
    down = await image_source.look_up("127.0.0.1:5999/team/app:1", None, settings)
    assert down.named and down.unreachable and down.allowed_as == "a registry on this machine"
    refused = await image_source.look_up("fra.ocir.io/ns/app:1", None, settings)  # region "local"
    assert refused.refused.startswith("C11: registry 'fra.ocir.io' is in region 'eu-frankfurt-1'")
