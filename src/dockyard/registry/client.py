"""An async client for the OCI distribution API (v2): resolve an image to its digest and size.

It reads manifests only. Layers are the engine's to pull (it caches and verifies them); the
manifests already say how big they are.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from types import TracebackType
from typing import NoReturn

import httpx

from dockyard.errors import InvalidParameter, ServiceUnavailable
from dockyard.registry import manifests as m
from dockyard.registry.auth import (
    Challenge,
    Credentials,
    basic_authorization,
    parse_challenges,
    token_from_response,
    token_request_params,
)
from dockyard.registry.hosts import is_loopback_host
from dockyard.registry.references import (
    DEFAULT_REGISTRY,
    ImageReference,
    parse_image_reference,
    validate_digest,
)

CREDENTIALS_SETTING = "DOCKYARD_REGISTRY_CREDENTIALS"
PLAIN_HTTP_SETTING = "DOCKYARD_PLAIN_HTTP_REGISTRIES"
DEFAULT_TIMEOUT_S = 30.0
#: C7 limits images to 16 GB uncompressed; compressed is all a manifest tells, and an image
#: whose download alone is larger is certainly over the limit.
DEFAULT_MAX_COMPRESSED_BYTES = 16 * 1024**3
#: The distribution spec lets registries refuse manifests over 4 MiB; reading no more keeps a
#: misbehaving registry from filling memory.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
# Docker Hub's API lives on another host than the one in its image names.
_API_HOSTS = {DEFAULT_REGISTRY: "registry-1.docker.io"}


@dataclass(frozen=True)
class ResolvedImage:
    """What a reference points at in its registry right now.

    ``digest`` is the digest the reference resolves to (the index's digest for a
    multi-platform image): pin deployments to it (D2). ``platform_digest`` is the
    manifest an engine on ``platform`` runs; it equals ``digest`` for a single-platform
    image, whose ``platform`` is then ``None`` (only its config blob would say).
    ``compressed_size_bytes`` is config plus layers of that manifest.
    """

    reference: ImageReference
    digest: str
    media_type: str
    compressed_size_bytes: int
    platform_digest: str
    platform: str | None = None

    @property
    def pinned(self) -> str:
        """``registry/repository@digest``: the reference to pull from now on."""
        return self.reference.pinned(self.digest)


@dataclass(frozen=True)
class _Response:
    status: int
    headers: httpx.Headers
    body: bytes
    truncated: bool


@dataclass(frozen=True)
class _Manifest:
    digest: str
    media_type: str
    document: dict[str, object]


class RegistryClient:
    """Resolves image references against registries. Use as ``async with``, or call
    :meth:`aclose`.

    ``credentials`` maps ``host[:port]`` to ``(username, password)``. Loopback registries
    and ``plain_http_hosts`` are spoken to over HTTP, all others over HTTPS. Every request
    times out after ``timeout_s``. ``platform`` (``os/arch[/variant]``) picks the image out
    of a multi-platform index, by default ``linux/<this machine's arch>``; a malformed one
    raises ValueError (a configuration error, found at start-up). ``transport`` is the httpx
    seam for tests and custom TLS.

    Manifests are fetched with GET, not HEAD: their body is needed anyway for the sizes
    (and, for an index, the platform entry).
    """

    def __init__(
        self,
        *,
        credentials: Credentials | None = None,
        plain_http_hosts: Collection[str] = (),
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_compressed_bytes: int = DEFAULT_MAX_COMPRESSED_BYTES,
        platform: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._credentials = {h.strip().lower(): c for h, c in (credentials or {}).items()}
        self._plain_http = {h.strip().lower() for h in plain_http_hosts}
        self._max_compressed_bytes = max_compressed_bytes
        self._platform = m.Platform.parse(platform) if platform else m.Platform.of_host()
        self._timeout_s = timeout_s
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s),
            follow_redirects=True,
            transport=transport,
            headers={"User-Agent": "dockyard-registry-client"},
        )
        # (registry, repository) -> Authorization header that worked, so the second request
        # of a resolve (an index's platform manifest) skips the 401 round trip.
        self._authorizations: dict[tuple[str, str], str] = {}

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def resolve(
        self, image: ImageReference | str, *, digest: str | None = None
    ) -> ResolvedImage:
        """Look ``image`` up in its registry: digest, media type and compressed size.

        With a digest (in ``image`` or as ``digest``, the API's imageDigest) that exact
        manifest is looked up and the tag is ignored, as engines do.

        Raises InvalidParameter when the reference or digest is malformed or disagree, the
        image, tag or digest does not exist (D2), access is refused (C8), the content is not a
        container image or has no image for the platform (C13), or it is over the size limit
        (C7); ServiceUnavailable when the registry cannot be reached, times out or fails.
        The registry host is named in every message.
        """
        ref = image if isinstance(image, ImageReference) else parse_image_reference(image)
        if digest is not None:
            validate_digest(digest)
            if ref.digest is not None and ref.digest != digest:
                raise InvalidParameter(
                    f"image '{ref}' carries digest {ref.digest} but imageDigest is {digest}; "
                    "give the digest once, or make the two agree",
                    rule="D1",
                )
            ref = ref.with_digest(digest)

        top = await self._fetch_manifest(ref, ref.manifest_reference)
        platform: str | None = None
        if top.media_type in m.INDEX_TYPES:
            try:
                entry = m.select_platform(top.document, self._platform)
            except m.ManifestError as exc:
                raise self._not_an_image(ref, str(exc)) from exc
            chosen = await self._fetch_manifest(ref, entry.digest, platform_of=top)
            platform = str(entry.platform)
        else:
            chosen = top
        if chosen.media_type not in m.IMAGE_MANIFEST_TYPES:
            raise self._not_an_image(ref, self._media_type_problem(chosen.media_type))
        try:
            size = m.compressed_size(chosen.document)
        except m.ManifestError as exc:
            raise self._not_an_image(ref, str(exc)) from exc
        if size > self._max_compressed_bytes:
            raise InvalidParameter(
                f"image '{ref}' in registry {ref.registry} is {_gb(size)} ({size} bytes) "
                f"compressed, over this service's limit of {_gb(self._max_compressed_bytes)}; "
                "images are limited to 16 GB uncompressed: use a smaller base image and keep "
                "the model in the model artifact rather than in the image",
                rule="C7",
            )
        return ResolvedImage(ref, top.digest, top.media_type, size, chosen.digest, platform)

    # --- manifests -------------------------------------------------------------------------

    async def _fetch_manifest(
        self, ref: ImageReference, reference: str, *, platform_of: _Manifest | None = None
    ) -> _Manifest:
        url = f"{self._base_url(ref.registry)}/v2/{ref.repository}/manifests/{reference}"
        response = await self._get(ref, url, {"Accept": m.ACCEPT_HEADER})
        if response.status != 200:
            self._raise_for_status(ref, reference, response, platform_of=platform_of)
        if response.truncated:
            raise self._not_an_image(ref, f"its manifest is larger than {MAX_MANIFEST_BYTES} bytes")
        computed = m.sha256_digest(response.body)
        announced = response.headers.get("docker-content-digest")
        # Content addressing is the point of D2: a pinned digest must name exactly these bytes,
        # or the engine's pull by digest would later fail or fetch something else.
        expected = reference if reference.startswith("sha256:") else announced
        if expected and expected.startswith("sha256:") and expected != computed:
            raise ServiceUnavailable(
                f"registry {ref.registry} served a manifest for '{ref}' whose content "
                f"({computed}) does not match its digest ({expected}); the registry or a proxy "
                "in between is altering content: check it and try again"
            )
        try:
            document = m.parse_document(response.body)
        except m.ManifestError as exc:
            raise self._not_an_image(ref, str(exc)) from exc
        media_type = m.media_type_of(response.headers.get("content-type"), document)
        return _Manifest(computed, media_type, document)

    def _raise_for_status(
        self,
        ref: ImageReference,
        reference: str,
        response: _Response,
        *,
        platform_of: _Manifest | None,
    ) -> NoReturn:
        host, status = ref.registry, response.status
        code = _error_code(response.body)
        what = f"{status} {code}".strip()
        if status in (401, 403):
            raise self._refused(ref, status)
        if status == 404 and platform_of is not None:
            raise InvalidParameter(
                f"image '{ref}' is a multi-platform index whose {self._platform} manifest "
                f"{reference} is missing from registry {host} ({what}): push the image again"
            )
        if status == 404 and reference.startswith("sha256:"):
            raise InvalidParameter(
                f"image digest {reference} does not exist in repository '{ref.repository}' of "
                f"registry {host} ({what}); the deployment pulls exactly this digest: give the "
                "digest of a pushed image (`docker push` prints it), or leave imageDigest out "
                "to use the tag's current digest",
                rule="D2",
            )
        if status == 404:
            # distribution answers MANIFEST_UNKNOWN for a missing repository too, so only
            # NAME_UNKNOWN is sure about which part is wrong.
            fix = "the repository name" if code == "NAME_UNKNOWN" else "the tag or repository name"
            raise InvalidParameter(
                f"image '{ref}' not found in registry {host} ({what}): push it first or fix {fix}"
            )
        if status == 429:
            raise ServiceUnavailable(
                f"registry {host} is rate-limiting requests ({what}); try again later"
            )
        if status >= 500:
            raise ServiceUnavailable(
                f"registry {host} failed to answer for '{ref}' ({what}); try again later or "
                "ask its operator"
            )
        raise InvalidParameter(
            f"registry {host} rejected the request for '{ref}' ({what}"
            f"{': ' + _error_message(response.body) if _error_message(response.body) else ''}); "
            f"check the image reference"
        )

    def _not_an_image(self, ref: ImageReference, problem: str) -> InvalidParameter:
        return InvalidParameter(
            f"image '{ref}' in registry {ref.registry} is not a usable container image: "
            f"{problem}; only Docker/OCI container images built for {self._platform} "
            "can be deployed",
            rule="C13",
        )

    @staticmethod
    def _media_type_problem(media_type: str) -> str:
        if media_type in m.DOCKER_SCHEMA1:
            return "it has an old Docker schema-1 manifest; push it again with a current Docker"
        return f"its manifest has media type '{media_type}'"

    # --- HTTP and authentication -----------------------------------------------------------

    def _base_url(self, registry: str) -> str:
        api_host = _API_HOSTS.get(registry, registry)
        plain = is_loopback_host(registry) or registry in self._plain_http
        return f"{'http' if plain else 'https'}://{api_host}"

    def _credentials_for(self, registry: str) -> tuple[str, str] | None:
        return self._credentials.get(registry) or self._credentials.get(
            _API_HOSTS.get(registry, registry)
        )

    async def _get(self, ref: ImageReference, url: str, headers: dict[str, str]) -> _Response:
        key = (ref.registry, ref.repository)
        cached = self._authorizations.get(key)
        response = await self._send(
            url, ref.registry, headers | ({"Authorization": cached} if cached else {})
        )
        if response.status != 401:
            return response
        # Anonymous first (or a cached token that expired): the 401 says how to authenticate.
        authorization = await self._authorize(ref, response)
        response = await self._send(url, ref.registry, headers | {"Authorization": authorization})
        if response.status in (401, 403):
            raise self._refused(ref, response.status)
        self._authorizations[key] = authorization
        return response

    async def _authorize(self, ref: ImageReference, response: _Response) -> str:
        challenges = parse_challenges(response.headers.get_list("www-authenticate"))
        schemes = {c.scheme: c for c in challenges}
        credentials = self._credentials_for(ref.registry)
        if "bearer" in schemes:
            return f"Bearer {await self._fetch_token(ref, schemes['bearer'], credentials)}"
        if "basic" in schemes and credentials is not None:
            return basic_authorization(*credentials)
        if "basic" in schemes:
            raise self._refused(ref, 401)
        raise ServiceUnavailable(
            f"registry {ref.registry} answered 401 without a usable WWW-Authenticate challenge "
            f"(got {[c.scheme for c in challenges] or 'none'}); dockyard supports Basic and "
            "Bearer: check the registry's authentication setup"
        )

    async def _fetch_token(
        self, ref: ImageReference, challenge: Challenge, credentials: tuple[str, str] | None
    ) -> str:
        realm = challenge.params.get("realm", "")
        try:
            realm_url = httpx.URL(realm)
        except httpx.InvalidURL:
            realm_url = None
        if realm_url is None or realm_url.scheme not in ("http", "https") or not realm_url.host:
            raise ServiceUnavailable(
                f"registry {ref.registry} asked for a Bearer token but gave no usable token "
                f"service address (realm '{realm}'); check the registry's authentication setup"
            )
        realm_host = realm_url.netloc.decode("ascii")
        if (
            credentials is not None
            and realm_url.scheme == "http"
            and not is_loopback_host(realm_host)
            and realm_host not in self._plain_http
        ):
            # Never send a password in clear text to a remote host just because a 401 said so.
            raise InvalidParameter(
                f"registry {ref.registry} wants credentials sent to {realm} over plain HTTP; "
                f"refusing: serve its token service over HTTPS, or list {realm_host} in "
                f"{PLAIN_HTTP_SETTING} if this network is trusted",
                rule="C8",
            )
        url = realm_url.copy_merge_params(token_request_params(challenge, ref.repository))
        auth = basic_authorization(*credentials) if credentials else None
        response = await self._send(
            str(url), ref.registry, {"Authorization": auth} if auth else {}, via=realm_host
        )
        if response.status in (401, 403):
            raise self._refused(ref, response.status)
        token = None
        if response.status == 200 and not response.truncated:
            try:
                token = token_from_response(json.loads(response.body))
            except (UnicodeDecodeError, json.JSONDecodeError):
                token = None
        if token is None:
            raise ServiceUnavailable(
                f"the token service of registry {ref.registry} at {realm_host} gave no token "
                f"({response.status}); try again later or check the registry's authentication"
            )
        return token

    async def _send(
        self, url: str, registry: str, headers: dict[str, str], *, via: str | None = None
    ) -> _Response:
        where = f"registry {registry}" + (f" (token service {via})" if via else "")
        try:
            async with self._http.stream("GET", url, headers=headers) as response:
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_MANIFEST_BYTES:
                        break
                return _Response(
                    response.status_code,
                    response.headers,
                    bytes(body[:MAX_MANIFEST_BYTES]),
                    len(body) > MAX_MANIFEST_BYTES,
                )
        except httpx.TimeoutException as exc:
            raise ServiceUnavailable(
                f"{where} did not answer within {self._timeout_s:g} s ({type(exc).__name__}); "
                "check that it is up and reachable from this service, then try again"
            ) from exc
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(
                f"{where} is unreachable at {url.split('?')[0]} ({type(exc).__name__}: {exc}); "
                "check the host name, that it is up, and that it serves HTTPS (a plain-HTTP "
                f"registry must be listed in {PLAIN_HTTP_SETTING})"
            ) from exc

    def _refused(self, ref: ImageReference, status: int) -> InvalidParameter:
        host = ref.registry
        credentials = self._credentials_for(host)
        if credentials is None:
            message = (
                f"registry {host} refused access ({status}) to repository '{ref.repository}' "
                f"without credentials: configure credentials for {host} with "
                f"{CREDENTIALS_SETTING}, or make the repository readable anonymously"
            )
        elif status == 403:
            message = (
                f"registry {host} refused access ({status}) to repository '{ref.repository}' "
                f"for user '{credentials[0]}': grant that user pull access to the repository, "
                f"or configure credentials of a user who has it in {CREDENTIALS_SETTING}"
            )
        else:
            message = (
                f"registry {host} refused access ({status}) to repository '{ref.repository}' "
                f"with the credentials configured for user '{credentials[0]}': fix the username "
                f"or password for {host} in {CREDENTIALS_SETTING} (for OCIR: "
                "'<namespace>/<user>' and an auth token); some registries also answer "
                f"{status} for a repository that does not exist"
            )
        return InvalidParameter(message, rule="C8")


def _errors(body: bytes) -> list[dict[str, object]]:
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return []
    errors = document.get("errors") if isinstance(document, dict) else None
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []


def _error_code(body: bytes) -> str:
    """The first registry error code of a distribution-API error body (MANIFEST_UNKNOWN ...)."""
    codes = [str(e.get("code")) for e in _errors(body) if e.get("code")]
    return codes[0] if codes else ""


def _error_message(body: bytes) -> str:
    messages = [str(e.get("message")) for e in _errors(body) if e.get("message")]
    return "; ".join(messages)


def _gb(size: int) -> str:
    return f"{size / 1024**3:.1f} GiB" if size >= 1024**3 else f"{size / 1024**2:.1f} MiB"
