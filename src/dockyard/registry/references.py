"""Image references (``host/repository:tag@sha256:...``), parsed with Docker's rules.

Docker's grammar (github.com/distribution/reference), restated:

- The first ``/``-separated component is the registry host only when it contains ``.`` or ``:``
  or is ``localhost``; otherwise the registry is ``docker.io``, and a one-component name on
  Docker Hub gets the ``library/`` prefix (``python`` -> ``docker.io/library/python``).
- Repository path components are lower case: ``[a-z0-9]+`` joined by ``.``, ``_``, ``__`` or
  dashes. The whole name is at most 255 characters.
- A tag follows the last ``:`` after the last ``/`` and matches ``[\\w][\\w.-]{0,127}``.
- A digest follows ``@``; dockyard accepts only ``sha256:`` + 64 lower-case hex characters,
  the only algorithm registries and engines use for image manifests.
- With neither tag nor digest, the tag is ``latest``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import NoReturn

from dockyard.errors import InvalidParameter

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"
MAX_NAME_LENGTH = 255
EXAMPLE_REFERENCE = "iad.ocir.io/namespace/name:tag"

_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = re.compile(rf"(?:{_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})*|\[[a-fA-F0-9:]+\])(?::([0-9]+))?")
# re.ASCII: Go's \w (Docker's tag grammar) is ASCII-only, Python's is Unicode.
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
_IMAGE_ID = re.compile(r"[a-f0-9]{64}")
# Docker Hub's legacy names for itself; references to them mean docker.io.
_DOCKER_HUB_ALIASES = frozenset({"index.docker.io", "registry-1.docker.io"})


@dataclass(frozen=True)
class ImageReference:
    """A parsed, normalised image reference. Build it with :func:`parse_image_reference`.

    ``registry`` is ``host[:port]`` in lower case, ``repository`` the path inside it
    (``library/python``), ``tag`` is ``None`` only when a digest was given alone.
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``registry/repository``, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def manifest_reference(self) -> str:
        """What to ask the registry for: the digest when there is one (it wins over the tag,
        as in Docker), else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_digest(self, digest: str) -> ImageReference:
        """The same reference pinned to ``digest``. Raises InvalidParameter for a bad digest."""
        return replace(self, digest=validate_digest(digest))

    def pinned(self, digest: str | None = None) -> str:
        """``registry/repository@sha256:...``: the form engines pull by content (D2).

        Uses ``digest`` when given, else the reference's own digest. Raises InvalidParameter
        when the digest is malformed or there is none.
        """
        chosen = digest if digest is not None else self.digest
        if chosen is None:
            raise InvalidParameter(
                f"image '{self}' has no digest to pin to; resolve it first or give imageDigest"
            )
        return f"{self.name}@{validate_digest(chosen)}"

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def validate_digest(digest: str, *, what: str = "image digest") -> str:
    """Return ``digest`` unchanged when it is ``sha256:`` + 64 lower-case hex characters.

    Raises InvalidParameter naming the value and the expected form otherwise.
    """
    problem = _digest_problem(digest)
    if problem is None:
        return digest
    raise InvalidParameter(f"{what} '{digest}' is not a valid digest: {problem}; {_DIGEST_HINT}")


_DIGEST_HINT = (
    "use 'sha256:' followed by 64 lower-case hex characters, as printed by `docker push` "
    "or `docker inspect --format '{{index .RepoDigests 0}}' IMAGE`"
)


def _digest_problem(digest: object) -> str | None:
    if isinstance(digest, str) and _DIGEST.fullmatch(digest):
        return None
    if not isinstance(digest, str) or ":" not in digest:
        return "it has no 'sha256:' prefix"
    if not digest.startswith("sha256:"):
        return f"the algorithm must be sha256, not '{digest.partition(':')[0]}'"
    if _DIGEST.fullmatch(digest.lower()):
        return "the hex part must be lower case"
    return f"the hex part must be exactly 64 hex characters (got {len(digest) - 7})"


def parse_image_reference(image: str) -> ImageReference:
    """Parse ``image`` into an :class:`ImageReference` with Docker's normalisation.

    Raises InvalidParameter whose message names the value, what is wrong and how to fix it.
    """
    if not isinstance(image, str) or not image:
        _invalid(image, "it is empty")
    if any(ch.isspace() for ch in image):
        _invalid(image, "it contains whitespace")
    if _IMAGE_ID.fullmatch(image):
        _invalid(image, "a 64-character hex string is an image ID, not a repository name")

    rest, at, digest = image.partition("@")
    if at:
        if not digest:
            _invalid(image, "nothing follows '@'; put a digest like 'sha256:<64 hex>' after it")
        problem = _digest_problem(digest)
        if problem is not None:
            raise InvalidParameter(
                f"image '{image}' is not a valid image reference: its digest '{digest}' is "
                f"malformed: {problem}; {_DIGEST_HINT}"
            )

    tag: str | None = None
    colon, slash = rest.rfind(":"), rest.rfind("/")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.fullmatch(tag):
            _invalid(
                image,
                f"tag '{tag}' must start with a letter, digit or '_' and contain only letters, "
                "digits, '_', '.' and '-' (at most 128 characters)",
            )

    registry, path = _split_registry(image, rest)
    if registry == DEFAULT_REGISTRY and "/" not in path:
        path = f"library/{path}"
    _check_path(image, path)
    if len(f"{registry}/{path}") > MAX_NAME_LENGTH:
        _invalid(image, f"the name is longer than {MAX_NAME_LENGTH} characters")

    if tag is None and not at:
        tag = DEFAULT_TAG
    return ImageReference(registry, path, tag, digest if at else None)


def _split_registry(image: str, name: str) -> tuple[str, str]:
    first, slash, remainder = name.partition("/")
    if not slash or not ("." in first or ":" in first or first == "localhost"):
        return DEFAULT_REGISTRY, name
    match = _HOST.fullmatch(first)
    if not match:
        _invalid(image, f"registry host '{first}' is not a valid host[:port]")
    if match.group(1) is not None and not 0 < int(match.group(1)) <= 65535:
        _invalid(image, f"registry port {match.group(1)} is outside 1-65535")
    # Host names are case-insensitive; one spelling keeps allow-lists and credential
    # look-ups exact.
    host = first.lower()
    return (DEFAULT_REGISTRY if host in _DOCKER_HUB_ALIASES else host), remainder


def _check_path(image: str, path: str) -> None:
    if path != path.lower():
        _invalid(image, "repository path components must be lowercase")
    for component in path.split("/"):
        if not component:
            _invalid(image, "the repository path has an empty component ('//' or a '/' at an end)")
        if not _PATH_COMPONENT.fullmatch(component):
            _invalid(
                image,
                f"repository path component '{component}' must be lower-case letters and "
                "digits, separated by single '.', '_' or '__', or by dashes",
            )


def _invalid(image: object, problem: str) -> NoReturn:
    raise InvalidParameter(
        f"image '{image}' is not a valid image reference: {problem}; "
        f"use a reference like '{EXAMPLE_REFERENCE}'"
    )
