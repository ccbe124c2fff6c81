"""Principals: tenancies, their users, and each user's API keys (public PEM + fingerprint).

The tables have their own `MetaData` (`principals_metadata`) and an ``auth_`` prefix, so they
live in the same database as the metadata store (same engines, same file) without touching
`store/schema.py`; `PrincipalStore` creates them when missing.

Ids are OCID-shaped (``ocid1.tenancy.<realm>..<unique>``, ``ocid1.user.<realm>..<unique>``) because
`oci.config.validate_config` refuses a config whose user or tenancy is not.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import Boolean, Column, Engine, ForeignKey, MetaData, String, Table, Text, UniqueConstraint, delete, func, insert, select
from sqlalchemy.exc import IntegrityError

from dockyard.auth.identity import KeyId, Principal, RegisteredKey
from dockyard.auth.keys import fingerprint as fingerprint_of
from dockyard.auth.keys import parse_public_pem
from dockyard.domain.ids import TENANCY, USER, new_ocid
from dockyard.errors import Conflict, InvalidParameter, NotAuthorizedOrNotFound

principals_metadata = MetaData()

tenancies = Table(
    "auth_tenancies",
    principals_metadata,
    Column("id", String(255), primary_key=True),
    Column("name", String(255), nullable=False, unique=True),
    Column("time_created", String(40), nullable=False),
)

users = Table(
    "auth_users",
    principals_metadata,
    Column("id", String(255), primary_key=True),
    Column("tenancy_id", String(255), ForeignKey("auth_tenancies.id"), nullable=False),
    Column("name", String(255), nullable=False),
    Column("description", Text, nullable=False, default=""),
    Column("is_admin", Boolean, nullable=False, default=False),
    Column("time_created", String(40), nullable=False),
    UniqueConstraint("tenancy_id", "name", name="uq_auth_users_tenancy_name"),
)

# A public key belongs to one user (as in OCI, the same key cannot be registered twice).
api_keys = Table(
    "auth_api_keys",
    principals_metadata,
    Column("fingerprint", String(47), primary_key=True),
    Column("user_id", String(255), ForeignKey("auth_users.id"), nullable=False, index=True),
    Column("public_pem", Text, nullable=False),
    Column("time_created", String(40), nullable=False),
)

_NAME_LIMIT = 100


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Tenancy:
    id: str
    name: str
    time_created: str


@dataclass(frozen=True)
class User:
    id: str
    tenancy_id: str
    name: str
    description: str
    is_admin: bool
    time_created: str


@dataclass(frozen=True)
class ApiKey:
    fingerprint: str
    user_id: str
    public_pem: str
    time_created: str


def _check_name(what: str, name: str) -> str:
    name = name.strip()
    if not name or len(name) > _NAME_LIMIT or any(c in name for c in "/\n\r\t"):
        raise InvalidParameter(f"{what} name {name[:120]!r} must be 1 to {_NAME_LIMIT} characters without '/' or line breaks; choose another")
    return name


class PrincipalStore:
    """Tenancies, users and API keys in SQL. Every method blocks (run it in a thread from async code).

    `engine` serves reads; `writer` (default: `engine`) serves writes, so the metadata store's
    SQLite writer engine (BEGIN IMMEDIATE) can be shared: ``PrincipalStore(store.engine, store.writer)``.
    """

    def __init__(self, engine: Engine, writer: Engine | None = None, *, realm: str = "oc1") -> None:
        self.engine = engine
        self.writer = writer or engine
        self.realm = realm
        principals_metadata.create_all(self.writer)

    # --- tenancies -----------------------------------------------------------------------------

    def create_tenancy(self, name: str) -> Tenancy:
        """Raises Conflict when a tenancy of that name exists."""
        tenancy = Tenancy(new_ocid(TENANCY, self.realm, ""), _check_name("tenancy", name), _now())
        try:
            with self.writer.begin() as conn:
                conn.execute(insert(tenancies).values(id=tenancy.id, name=tenancy.name, time_created=tenancy.time_created))
        except IntegrityError as exc:
            raise Conflict(f"a tenancy named {tenancy.name!r} exists already; choose another name") from exc
        return tenancy

    def tenancies(self) -> list[Tenancy]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(tenancies).order_by(tenancies.c.time_created)).all()
        return [Tenancy(r.id, r.name, r.time_created) for r in rows]

    def find_tenancy(self, name_or_id: str) -> Tenancy:
        """Raises NotAuthorizedOrNotFound."""
        for tenancy in self.tenancies():
            if name_or_id in (tenancy.id, tenancy.name):
                return tenancy
        raise NotAuthorizedOrNotFound(f"no tenancy {name_or_id!r}; check the name or id (`dockyard users list` shows them)")

    # --- users ------------------------------------------------------------------------------------

    def create_user(self, name: str, tenancy_id: str, *, is_admin: bool = False, description: str = "") -> User:
        """Raises NotAuthorizedOrNotFound for an unknown tenancy, Conflict for a taken name."""
        user = User(new_ocid(USER, self.realm, ""), tenancy_id, _check_name("user", name), description, is_admin, _now())
        with self.writer.begin() as conn:
            if conn.execute(select(tenancies.c.id).where(tenancies.c.id == tenancy_id)).first() is None:
                raise NotAuthorizedOrNotFound(f"no tenancy {tenancy_id}; check the id (`dockyard users list` shows them)")
            if conn.execute(select(users.c.id).where(users.c.tenancy_id == tenancy_id, users.c.name == user.name)).first():
                raise Conflict(f"user {user.name!r} exists already in tenancy {tenancy_id}; choose another name")
            conn.execute(insert(users).values(
                id=user.id, tenancy_id=user.tenancy_id, name=user.name, description=user.description,
                is_admin=user.is_admin, time_created=user.time_created,
            ))  # fmt: skip
        return user

    def users(self, tenancy_id: str | None = None) -> list[User]:
        query = select(users).order_by(users.c.time_created)
        if tenancy_id is not None:
            query = query.where(users.c.tenancy_id == tenancy_id)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [User(r.id, r.tenancy_id, r.name, r.description, bool(r.is_admin), r.time_created) for r in rows]

    def find_user(self, name_or_id: str) -> User:
        """The user with this OCID, or the only user with this name; raises NotAuthorizedOrNotFound
        (or InvalidParameter when several tenancies have a user of that name)."""
        matches = [u for u in self.users() if name_or_id in (u.id, u.name)]
        if not matches:
            raise NotAuthorizedOrNotFound(f"no user {name_or_id!r}; check the name or id (`dockyard users list` shows them)")
        if len(matches) > 1:
            raise InvalidParameter(f"several tenancies have a user named {name_or_id!r}; pass the user's OCID instead")
        return matches[0]

    def admin(self) -> User | None:
        """The first administrator created (the one `dockyard serve` makes on first start)."""
        return next((u for u in self.users() if u.is_admin), None)

    # --- API keys ---------------------------------------------------------------------------------

    def add_key(self, user_id: str, public_pem: str) -> ApiKey:
        """Registers an RSA public key (PEM) for a user.

        Raises InvalidParameter for anything but an RSA public key of 2048 bits or more,
        NotAuthorizedOrNotFound for an unknown user, Conflict when the key is registered already.
        """
        public_key = parse_public_pem(public_pem)
        key = ApiKey(fingerprint_of(public_key), user_id, public_pem.strip() + "\n", _now())
        try:
            with self.writer.begin() as conn:
                if conn.execute(select(users.c.id).where(users.c.id == user_id)).first() is None:
                    raise NotAuthorizedOrNotFound(f"no user {user_id}; check the id (`dockyard users list` shows them)")
                owner = conn.execute(select(api_keys.c.user_id).where(api_keys.c.fingerprint == key.fingerprint)).scalar()
                if owner is not None:
                    raise Conflict(
                        f"the key {key.fingerprint} is registered already (for {owner}); a key belongs to one user, "
                        "so create another key for this one"
                    )
                conn.execute(insert(api_keys).values(
                    fingerprint=key.fingerprint, user_id=key.user_id, public_pem=key.public_pem, time_created=key.time_created,
                ))  # fmt: skip
        except IntegrityError as exc:  # a concurrent add of the same key
            raise Conflict(f"the key {key.fingerprint} is registered already; create another key") from exc
        return key

    def keys(self, user_id: str | None = None) -> list[ApiKey]:
        query = select(api_keys).order_by(api_keys.c.time_created)
        if user_id is not None:
            query = query.where(api_keys.c.user_id == user_id)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [ApiKey(r.fingerprint, r.user_id, r.public_pem, r.time_created) for r in rows]

    def delete_key(self, fingerprint: str, user_id: str | None = None) -> ApiKey:
        """Removes a key (of `user_id`, when given); raises NotAuthorizedOrNotFound."""
        fingerprint = fingerprint.strip().lower()
        query = select(api_keys).where(api_keys.c.fingerprint == fingerprint)
        if user_id is not None:
            query = query.where(api_keys.c.user_id == user_id)
        with self.writer.begin() as conn:
            row = conn.execute(query).first()
            if row is None:
                owner = f" of user {user_id}" if user_id else ""
                raise NotAuthorizedOrNotFound(f"no key {fingerprint}{owner}; check the fingerprint (`dockyard keys list` shows them)")
            conn.execute(delete(api_keys).where(api_keys.c.fingerprint == fingerprint))
        return ApiKey(row.fingerprint, row.user_id, row.public_pem, row.time_created)

    def key_counts(self) -> dict[str, int]:
        """Number of keys per user id."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(api_keys.c.user_id, func.count()).group_by(api_keys.c.user_id)).all()
        return {user_id: count for user_id, count in rows}

    def lookup_key(self, key_id: KeyId) -> RegisteredKey | None:
        """The key a signature's keyId names: its fingerprint, registered for that user, who is in
        that tenancy. None otherwise (the verifier answers 401)."""
        query = (
            select(api_keys.c.public_pem, users.c.name, users.c.is_admin)
            .join(users, users.c.id == api_keys.c.user_id)
            .where(
                api_keys.c.fingerprint == key_id.fingerprint,
                users.c.id == key_id.user_id,
                users.c.tenancy_id == key_id.tenancy_id,
            )
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        principal = Principal(
            user_id=key_id.user_id, tenancy_id=key_id.tenancy_id, fingerprint=key_id.fingerprint,
            user_name=row.name, is_admin=bool(row.is_admin),
        )  # fmt: skip
        return RegisteredKey(principal, row.public_pem)
