"""Rules judged before (or without) a running container: registry, image, configuration (pure).

C11 registry allowed and in the service's region, D1 digest resolvable, C7 size (with R3's
warning for large images), C9 curl, C10 cmd + entrypoint size, and the environment-variable
rules, each from what `probe_run` measured, with the domain's own validation functions.
"""

from __future__ import annotations

from dockyard.checking.findings import Finding, Verdict
from dockyard.checking.measurements import Measurements
from dockyard.checking.wording import GIB, argv_bytes, describe_size, split
from dockyard.domain.validation import (
    MAX_CMD_ENTRYPOINT_BYTES,
    MAX_ENV_BYTES,
    Problem,
    check_cmd_entrypoint,
    check_environment,
)

MAX_IMAGE_BYTES = 16 * GIB  # C7, as the runtime enforces it
LARGE_IMAGE_BYTES = 5 * GIB  # R3: from here on, say the size is hurting
CURL_FIX = ("install curl in the image: apt-get install -y curl (Debian/Ubuntu), apk add curl (Alpine), "
            "microdnf install curl (UBI)")
PASS, WARN, FAIL, SKIP = Verdict.PASS, Verdict.WARN, Verdict.FAIL, Verdict.SKIP


def registry_allowed(m: Measurements) -> Finding:
    check = "registry allowed, same region"
    r = m.registry
    if not r.named:
        return Finding("C11", check, SKIP, "a local image (no registry in its name): push it to the service's "
                                           "registry and check that name before deploying")
    if r.refused:
        what, fix = split(r.refused)
        return Finding("C11", check, FAIL, what, fix)
    return Finding("C11", check, PASS, f"{r.registry}: {r.allowed_as}")


def digest_resolvable(m: Measurements) -> Finding:
    check = "digest resolvable"
    r = m.registry
    if not r.named:
        return Finding("D1", check, SKIP, "a local image has no registry digest")
    if r.refused:
        return Finding("D1", check, SKIP, "not asked: a deployment may not pull from this registry", cause="C11")
    if r.digest is None:
        what, fix = split(r.error or "the registry gave no digest")
        if r.unreachable:
            fix = fix or f"start the registry {r.registry} or fix its address"
        return Finding("D1", check, FAIL, what, fix or "push the image, then check again")
    size = f", {describe_size(r.compressed_bytes)} compressed" if r.compressed_bytes else ""
    if r.digest_given:
        measured = f"{r.digest} exists in {r.registry}{size}"
    else:
        measured = f"{m.request.image} is {r.digest}{size}; create the deployment with it as imageDigest"
    if m.image is not None and m.image.local_differs:
        return Finding("D1", check, WARN,
                       f"{measured}, but the local image of that name is different (this check ran the registry's)",
                       fix=f"push the local image again (docker push {m.request.image}) if it is the one to deploy")
    return Finding("D1", check, PASS, measured)


def image_size(m: Measurements) -> Finding:
    check = "image size <= 16 GB uncompressed"
    image = m.image
    fix = ("make the image smaller: a slim base image, fewer layers, no build tools or caches, the model "
           "weights in the model artifact rather than in the image")
    if image is not None and image.rejected:
        what, _ = split(image.rejected)
        return Finding("C7", check, FAIL, what, fix)
    if image is None or image.size_bytes is None:
        return Finding("C7", check, SKIP, "not measured: the engine did not report the image's size")
    size = image.size_bytes
    limit = describe_size(MAX_IMAGE_BYTES)
    if size > MAX_IMAGE_BYTES:
        return Finding("C7", check, FAIL, f"{describe_size(size)} uncompressed, over the {limit} limit", fix)
    if size >= LARGE_IMAGE_BYTES:
        return Finding("C7", check, WARN, f"{describe_size(size)} uncompressed (limit {limit}): every new instance "
                                          "pulls all of it, which slows provisioning (R3)", fix)
    return Finding("C7", check, PASS, f"{describe_size(size)} uncompressed (limit {limit})")


def curl_installed(m: Measurements) -> Finding:
    check = "curl installed"
    image = m.image
    if image is None or image.has_curl is None:
        return Finding("C9", check, SKIP, "not measured: the image was not prepared")
    probe = f"curl -f http://localhost:{m.request.health_port}{m.health_path}"
    if not image.has_curl:
        return Finding("C9", check, FAIL, "curl is not in the image: the service's HEALTHCHECK runs "
                                          f"`{probe}` inside the container, and a deployment refuses the image",
                       CURL_FIX)
    healthy_outside = m.health is not None and m.health.healthy_after_s is not None
    if m.inner_health == "HEALTHY":
        return Finding("C9", check, PASS, f"curl runs; the service's HEALTHCHECK (`{probe}` inside the container) "
                                          "reports healthy")
    if m.inner_health == "UNHEALTHY" and healthy_outside:
        detail = f": {m.inner_detail}" if m.inner_detail else ""
        return Finding("C9", check, WARN, f"curl is present, but the service's HEALTHCHECK (`{probe}` inside the "
                                          f"container) fails while the probe from outside succeeds{detail}",
                       "make curl work inside the image (its libraries, CA certificates) and let the server "
                       "answer on localhost")
    return Finding("C9", check, PASS, "curl runs in the image (`curl --version`)")


# --- configuration -----------------------------------------------------------------------------


def command_size(m: Measurements) -> Finding:
    check = f"cmd + entrypoint <= {MAX_CMD_ENTRYPOINT_BYTES} bytes"
    request = m.request
    if request.cmd is None and request.entrypoint is None:
        own = argv_bytes((m.image.entrypoint or []) + (m.image.cmd or [])) if m.image is not None else 0
        words = f" ({own} bytes)" if own else ""
        return Finding("C10", check, PASS, f"none given: the image's own ENTRYPOINT/CMD run{words}; the limit applies "
                                           "to what the API sends")
    problems: list[Problem] = []
    check_cmd_entrypoint(request.cmd, request.entrypoint, problems)
    size = argv_bytes((request.cmd or []) + (request.entrypoint or []))
    if problems:
        what, fix = split(problems[0].message)
        return Finding("C10", check, FAIL, what, fix)
    return Finding("C10", check, PASS, f"{size} bytes of {MAX_CMD_ENTRYPOINT_BYTES}")


def environment_variables(m: Measurements) -> Finding:
    check = "environment variables"
    variables = m.request.environment
    problems: list[Problem] = []
    check_environment(variables, "environmentVariables", problems)
    injected = f"MODEL_DEPLOYMENT_OCID={m.deployment_id} injected"
    if problems:
        keys = [p.field.removeprefix("environmentVariables").lstrip(".") or "all of them" for p in problems]
        halves = [split(p.message) for p in problems]
        return Finding("ENV", check, FAIL, "; ".join(f"{key}: {what}" for key, (what, _) in zip(keys, halves)),
                       "; ".join(f"{key}: {fix}" for key, (_, fix) in zip(keys, halves) if fix))
    if not variables:
        return Finding("ENV", check, PASS, f"none given; {injected}")
    size = sum(len(k.encode()) + len(v.encode()) for k, v in variables.items())
    return Finding("ENV", check, PASS, f"{len(variables)} given, {size} bytes of {MAX_ENV_BYTES}; {injected}")
