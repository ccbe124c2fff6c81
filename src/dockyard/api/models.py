"""/20190101/models, their artifacts and provenance."""

from __future__ import annotations

from typing import Any

from datetime import datetime, timezone
from email.utils import format_datetime

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from dockyard.api.openapi import binary_body, json_body
from dockyard.api.common import empty_reply, json_reply, list_query, list_reply
from dockyard.api.requests import caller, if_match, read_json, retry_token, services
from dockyard.schemas.catalog import CreateModelDetails, ModelProvenanceDetails, UpdateModelDetails
from dockyard.schemas.common import ChangeCompartmentDetails

router = APIRouter()


@router.post("/models", openapi_extra=json_body(CreateModelDetails))
async def create_model(request: Request) -> Response:
    details, _ = await read_json(request, CreateModelDetails)
    token = retry_token(request, "CreateModel", details.wire())
    record = await run_in_threadpool(services(request).models.create, details, caller(request), token)
    return json_reply(record.body, etag=record.etag)


@router.get("/models/{model_id}")
async def get_model(request: Request, model_id: str) -> Response:
    record = await run_in_threadpool(services(request).models.get, model_id, caller(request))
    return json_reply(record.body, etag=record.etag)


@router.get("/models")
async def list_models(request: Request, query: dict[str, Any] = Depends(list_query)) -> Response:
    return list_reply(await run_in_threadpool(services(request).models.list, query, caller(request)))


@router.put("/models/{model_id}", openapi_extra=json_body(UpdateModelDetails))
async def update_model(request: Request, model_id: str) -> Response:
    details, _ = await read_json(request, UpdateModelDetails)
    record = await run_in_threadpool(services(request).models.update, model_id, details, if_match(request), caller(request))
    return json_reply(record.body, etag=record.etag)


@router.delete("/models/{model_id}")
async def delete_model(request: Request, model_id: str) -> Response:
    await run_in_threadpool(services(request).models.delete, model_id, if_match(request), caller(request))
    return empty_reply(204)


@router.post("/models/{model_id}/actions/activate")
async def activate_model(request: Request, model_id: str) -> Response:
    record = await run_in_threadpool(services(request).models.set_active, model_id, True, if_match(request), caller(request))
    return json_reply(record.body, etag=record.etag)


@router.post("/models/{model_id}/actions/deactivate")
async def deactivate_model(request: Request, model_id: str) -> Response:
    record = await run_in_threadpool(services(request).models.set_active, model_id, False, if_match(request), caller(request))
    return json_reply(record.body, etag=record.etag)


@router.post("/models/{model_id}/actions/changeCompartment", openapi_extra=json_body(ChangeCompartmentDetails))
async def change_model_compartment(request: Request, model_id: str) -> Response:
    details, _ = await read_json(request, ChangeCompartmentDetails)
    await run_in_threadpool(services(request).models.change_compartment, model_id, details, if_match(request), caller(request))
    return empty_reply(200)


@router.post("/models/{model_id}/artifact", openapi_extra=binary_body("the model artifact: a zip archive"))
async def create_model_artifact(request: Request, model_id: str) -> Response:
    """Streams the body to disk: memory use does not grow with the artifact's size."""
    artifact = await services(request).models.put_artifact(
        model_id, request.stream(), request.headers.get("content-disposition"), if_match(request), caller(request)
    )
    return empty_reply(200, etag=artifact.etag)


# Two decorators rather than one api_route: each method gets its own OpenAPI operation id.
@router.get("/models/{model_id}/artifact/content", operation_id="GetModelArtifactContent")
@router.head("/models/{model_id}/artifact/content", operation_id="HeadModelArtifact")
async def get_model_artifact_content(request: Request, model_id: str) -> Response:
    model_service = services(request).models
    artifact = await run_in_threadpool(model_service.get_artifact, model_id, caller(request))
    created = datetime.strptime(artifact.time_created, "%Y-%m-%dT%H:%M:%S.%fZ")
    headers = {
        "etag": artifact.etag,
        "content-md5": artifact.md5_b64,
        "content-disposition": artifact.content_disposition or f'attachment; filename="{model_id}.zip"',
        "last-modified": format_datetime(created.replace(tzinfo=timezone.utc), usegmt=True),
    }
    # FileResponse streams in chunks, answers HEAD with headers only, and honours Range.
    response = FileResponse(model_service.blobs.path(artifact.sha256), media_type="application/octet-stream", headers=headers)
    response.headers["etag"] = artifact.etag  # FileResponse would otherwise derive its own
    return response


@router.post("/models/{model_id}/provenance", openapi_extra=json_body(ModelProvenanceDetails))
async def create_model_provenance(request: Request, model_id: str) -> Response:
    details, _ = await read_json(request, ModelProvenanceDetails)
    body, etag = await run_in_threadpool(services(request).models.put_provenance, model_id, details, False, caller(request))
    return json_reply(body, etag=etag)


@router.put("/models/{model_id}/provenance", openapi_extra=json_body(ModelProvenanceDetails))
async def update_model_provenance(request: Request, model_id: str) -> Response:
    details, _ = await read_json(request, ModelProvenanceDetails)
    body, etag = await run_in_threadpool(services(request).models.put_provenance, model_id, details, True, caller(request))
    return json_reply(body, etag=etag)


@router.get("/models/{model_id}/provenance")
async def get_model_provenance(request: Request, model_id: str) -> Response:
    body, etag = await run_in_threadpool(services(request).models.get_provenance, model_id, caller(request))
    return json_reply(body, etag=etag)
