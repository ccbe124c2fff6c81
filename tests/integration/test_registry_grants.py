"""C8 per tenancy: an image is referenced only through registry credentials the caller's tenancy
may use.

A live server (fake runtime: nothing is pulled, but every create resolves and pins the image
against the real registry) with credentials for the basic-auth test registry (127.0.0.1:5002).
A small image is pushed there over the distribution API. The home tenancy (the administrator's)
may use the configured credentials; a second tenancy may not until an administrator runs
``dockyard registries grant``, and its refusal names the rule, the registry and that command.
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import oci
import pytest
from oci.data_science import models as m

from tests.support.server import LiveServer

AUTH_REGISTRY = "127.0.0.1:5002"
OPEN_REGISTRY = "127.0.0.1:5001"
CREDENTIALS = ("dockyard", "dockyard-secret")
NO_RETRY = oci.retry.NoneRetryStrategy()


def push_tiny_image(registry: str, repository: str, tag: str, auth: tuple[str, str] | None) -> str:
    """Uploads a config blob, one layer blob and a manifest naming them; returns the manifest digest."""
    base = f"http://{registry}/v2/{repository}"
    with httpx.Client(auth=auth, timeout=30, trust_env=False) as client:

        def blob(data: bytes) -> dict[str, object]:
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            started = client.post(f"{base}/blobs/uploads/")
            assert started.status_code == 202, started.text
            location = started.headers["location"]
            location = location if location.startswith("http") else f"http://{registry}{location}"
            location += ("&" if "?" in location else "?") + f"digest={digest}"  # keeps the upload's own query
            done = client.put(location, content=data, headers={"content-type": "application/octet-stream"})
            assert done.status_code == 201, done.text
            return {"mediaType": "", "digest": digest, "size": len(data)}

        config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
        config_ref = blob(config) | {"mediaType": "application/vnd.oci.image.config.v1+json"}
        layer_ref = blob(secrets.token_bytes(64)) | {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip"}
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": config_ref, "layers": [layer_ref],
        }).encode()  # fmt: skip
        put = client.put(f"{base}/manifests/{tag}", content=manifest, headers={"content-type": "application/vnd.oci.image.manifest.v1+json"})
        assert put.status_code == 201, put.text
        return "sha256:" + hashlib.sha256(manifest).hexdigest()


def delete_manifest(registry: str, repository: str, digest: str, auth: tuple[str, str] | None) -> None:
    try:
        httpx.delete(f"http://{registry}/v2/{repository}/manifests/{digest}", auth=auth, timeout=10, trust_env=False)
    except httpx.HTTPError:
        pass  # a registry without deletes keeps a tiny manifest: harmless


def run_cli(data_dir: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "dockyard.cli.main", *args, "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, f"dockyard {' '.join(args)} failed: {done.stdout}{done.stderr}"
    return done.stdout


def deployment(project_id: str, model_id: str, compartment: str, image: str) -> m.CreateModelDeploymentDetails:
    return m.CreateModelDeploymentDetails(
        project_id=project_id,
        compartment_id=compartment,
        model_deployment_configuration_details=m.SingleModelDeploymentConfigurationDetails(
            model_configuration_details=m.ModelConfigurationDetails(
                model_id=model_id,
                instance_configuration=m.InstanceConfiguration(instance_shape_name="VM.Standard.E4.Flex"),
                scaling_policy=m.FixedSizeScalingPolicy(instance_count=1),
            ),
            environment_configuration_details=m.OcirModelDeploymentEnvironmentConfigurationDetails(image=image, server_port=8080),
        ),
    )


def catalog(client: oci.data_science.DataScienceClient, compartment: str) -> tuple[str, str]:
    project = client.create_project(m.CreateProjectDetails(compartment_id=compartment)).data
    model = client.create_model(m.CreateModelDetails(compartment_id=compartment, project_id=project.id)).data
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model.txt", "weights\n")
    client.create_model_artifact(model.id, buffer.getvalue())
    return project.id, model.id


@pytest.fixture(scope="module")
def images() -> Iterator[dict[str, str]]:
    try:
        status = httpx.get(f"http://{AUTH_REGISTRY}/v2/", timeout=5, trust_env=False).status_code
    except httpx.HTTPError as exc:
        status = f"unreachable ({exc})"  # type: ignore[assignment]
    assert status == 401, f"the basic-auth test registry {AUTH_REGISTRY} answers {status}, not 401: run bash scripts/infra/registry.sh"
    repository, tag = f"dockyard-test/c8-{secrets.token_hex(4)}", "1"
    private = push_tiny_image(AUTH_REGISTRY, repository, tag, CREDENTIALS)
    public = push_tiny_image(OPEN_REGISTRY, repository, tag, None)
    yield {
        "private": f"{AUTH_REGISTRY}/{repository}:{tag}", "private_digest": private,
        "public": f"{OPEN_REGISTRY}/{repository}:{tag}", "public_digest": public,
    }  # fmt: skip
    delete_manifest(AUTH_REGISTRY, repository, private, CREDENTIALS)
    delete_manifest(OPEN_REGISTRY, repository, public, None)


def test_only_tenancies_granted_a_registry_use_its_credentials(tmp_path: Path, images: dict[str, str]) -> None:
    data = tmp_path / "data"
    env = {"DOCKYARD_VERIFY_IMAGES": "true", "DOCKYARD_REGISTRY_CREDENTIALS": f"{AUTH_REGISTRY}={CREDENTIALS[0]}:{CREDENTIALS[1]}"}
    server = LiveServer(data, env=env).start()
    try:
        home = oci.data_science.DataScienceClient(server.oci_config(), service_endpoint=server.url, retry_strategy=NO_RETRY)
        home_tenancy = server.oci_config()["tenancy"]
        other_tenancy = run_cli(data, "tenancies", "create", "other").split()[2]
        run_cli(data, "users", "create", "olga", "--tenancy", "other", "--admin")
        run_cli(data, "keys", "add", "olga", "--out", str(tmp_path / "olga"), "--endpoint", server.url)
        other = oci.data_science.DataScienceClient(
            oci.config.from_file(str(tmp_path / "olga" / "config")), service_endpoint=server.url, retry_strategy=NO_RETRY
        )

        # the home tenancy owns the installation's credentials: its image resolves and is pinned
        project, model = catalog(home, home_tenancy)
        created = home.create_model_deployment(deployment(project, model, home_tenancy, images["private"])).data
        env_details = created.model_deployment_configuration_details.environment_configuration_details
        assert env_details.image_digest == images["private_digest"]

        # another tenancy: public images are fine, the private registry's credentials are withheld
        project, model = catalog(other, other_tenancy)
        public = other.create_model_deployment(deployment(project, model, other_tenancy, images["public"])).data
        assert public.model_deployment_configuration_details.environment_configuration_details.image_digest == images["public_digest"]
        with pytest.raises(oci.exceptions.ServiceError) as refused:
            other.create_model_deployment(deployment(project, model, other_tenancy, images["private"]))
        error = refused.value
        assert (error.status, error.code) == (400, "InvalidParameter"), error.message
        assert error.message.startswith("C8: registry 127.0.0.1:5002 has credentials configured on this dockyard")
        assert "dockyard registries grant 127.0.0.1:5002 --tenancy" in error.message
        assert CREDENTIALS[1] not in error.message

        # granted: the same request goes through
        run_cli(data, "registries", "grant", AUTH_REGISTRY, "--tenancy", "other")
        granted = other.create_model_deployment(deployment(project, model, other_tenancy, images["private"])).data
        assert granted.model_deployment_configuration_details.environment_configuration_details.image_digest == images["private_digest"]

        # revoked: refused again
        run_cli(data, "registries", "revoke", AUTH_REGISTRY, "--tenancy", "other")
        with pytest.raises(oci.exceptions.ServiceError) as again:
            other.create_model_deployment(deployment(project, model, other_tenancy, images["private"]))
        assert again.value.message.startswith("C8: registry 127.0.0.1:5002")
    finally:
        server.stop()
