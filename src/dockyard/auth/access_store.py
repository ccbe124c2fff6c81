"""Compartments, groups, policy statements and registry-credential grants of each tenancy, in SQL.

Like the principals (`auth/principals.py`) these tables have their own `MetaData`
(`access_metadata`, ``auth_`` prefix) and live in the metadata store's database; `AccessStore`
creates them when missing. The tenancy OCID is its root compartment and has no row here.

`PolicyAuthorizer` answers the one question the services ask (`service.access.Authorizer`):
may this caller do VERB on FAMILY in this compartment?
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import Column, Engine, Index, MetaData, String, Table, Text, UniqueConstraint, create_engine, delete, insert, select
from sqlalchemy.exc import IntegrityError

from dockyard.auth.policy import ADMINISTRATORS, ADMINISTRATORS_GRANT, Grant, Statement, Verb, allows, check_name, parse_statement
from dockyard.auth.principals import tenancies, users
from dockyard.domain.ids import COMPARTMENT, is_ocid, new_ocid
from dockyard.errors import Conflict, InvalidParameter, NotAuthorizedOrNotFound
from dockyard.service.context import Caller

access_metadata = MetaData()

compartments = Table(
    "auth_compartments",
    access_metadata,
    Column("id", String(255), primary_key=True),
    Column("tenancy_id", String(255), nullable=False, index=True),
    Column("name", String(100), nullable=False),
    Column("name_key", String(100), nullable=False),  # lower case: names compare case-insensitively
    Column("time_created", String(40), nullable=False),
    UniqueConstraint("tenancy_id", "name_key", name="uq_auth_compartments_tenancy_name"),
)

groups = Table(
    "auth_groups",
    access_metadata,
    Column("tenancy_id", String(255), primary_key=True),
    Column("name_key", String(100), primary_key=True),
    Column("name", String(100), nullable=False),
    Column("time_created", String(40), nullable=False),
)

group_members = Table(
    "auth_group_members",
    access_metadata,
    Column("tenancy_id", String(255), primary_key=True),
    Column("group_key", String(100), primary_key=True),
    Column("user_id", String(255), primary_key=True),
    Index("ix_auth_group_members_user", "user_id"),
)

# One row per group a statement names, so a decision is one indexed query; `statement_id`
# ties the rows of one statement together (list and remove work on statements).
policy_grants = Table(
    "auth_policy_grants",
    access_metadata,
    Column("statement_id", String(40), primary_key=True),
    Column("group_key", String(100), primary_key=True),
    Column("tenancy_id", String(255), nullable=False, index=True),
    Column("verb", String(10), nullable=False),
    Column("family", String(60), nullable=False),
    Column("compartment_id", String(255), nullable=True),  # NULL: the whole tenancy
    Column("text", Text, nullable=False),
    Column("time_created", String(40), nullable=False),
)

registry_grants = Table(
    "auth_registry_grants",
    access_metadata,
    Column("host", String(255), primary_key=True),
    Column("tenancy_id", String(255), primary_key=True),
    Column("time_created", String(40), nullable=False),
)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Compartment:
    id: str
    tenancy_id: str
    name: str
    time_created: str


@dataclass(frozen=True)
class PolicyStatement:
    id: str
    tenancy_id: str
    text: str
    built_in: bool = False


class AccessStore:
    """Every method blocks (run it in a thread from async code). `engine` reads, `writer` writes
    (share the metadata store's: ``AccessStore(store.engine, store.writer)``)."""

    def __init__(self, engine: Engine, writer: Engine | None = None, *, realm: str = "oc1") -> None:
        self.engine = engine
        self.writer = writer or engine
        self.realm = realm
        access_metadata.create_all(self.writer)

    def _tenancy_exists(self, tenancy_id: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(select(tenancies.c.id).where(tenancies.c.id == tenancy_id)).first() is not None

    def _require_tenancy(self, tenancy_id: str) -> None:
        if not self._tenancy_exists(tenancy_id):
            raise NotAuthorizedOrNotFound(f"no tenancy {tenancy_id}; check the id (`dockyard users list` shows them)")

    # --- compartments -------------------------------------------------------------------------

    def create_compartment(self, tenancy_id: str, name: str, compartment_id: str | None = None) -> Compartment:
        """A compartment of the tenancy; `compartment_id` registers an existing OCI compartment
        OCID (so scripts written for OCI keep their ids). Raises Conflict for a taken name or id."""
        self._require_tenancy(tenancy_id)
        check_name("compartment", name)
        if compartment_id is not None and not is_ocid(compartment_id):
            raise InvalidParameter(
                f"compartment id {compartment_id!r} is not an OCID; pass one like ocid1.compartment.oc1..aaaa..., or leave --id out"
            )
        new = Compartment(compartment_id or new_ocid(COMPARTMENT, self.realm, ""), tenancy_id, name, _now())
        with self.writer.begin() as conn:
            taken = conn.execute(select(compartments.c.id).where(compartments.c.id == new.id)).first()
            is_a_tenancy = conn.execute(select(tenancies.c.id).where(tenancies.c.id == new.id)).first()
            if taken or is_a_tenancy:
                raise Conflict(f"the id {new.id} is taken already; register another id, or leave --id out for a new one")
            clash = select(compartments.c.id).where(compartments.c.tenancy_id == tenancy_id, compartments.c.name_key == name.lower())
            if conn.execute(clash).first():
                raise Conflict(f"tenancy {tenancy_id} has a compartment named {name!r} already; choose another name")
            try:
                conn.execute(insert(compartments).values(
                    id=new.id, tenancy_id=tenancy_id, name=name, name_key=name.lower(), time_created=new.time_created,
                ))  # fmt: skip
            except IntegrityError as exc:
                raise Conflict(f"compartment {name!r} or id {new.id} was just created by someone else; list them and retry") from exc
        return new

    def compartments(self, tenancy_id: str | None = None) -> list[Compartment]:
        query = select(compartments).order_by(compartments.c.time_created)
        if tenancy_id is not None:
            query = query.where(compartments.c.tenancy_id == tenancy_id)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [Compartment(r.id, r.tenancy_id, r.name, r.time_created) for r in rows]

    def find_compartment(self, tenancy_id: str, name_or_id: str) -> Compartment:
        """Raises NotAuthorizedOrNotFound."""
        for compartment in self.compartments(tenancy_id):
            if name_or_id == compartment.id or name_or_id.lower() == compartment.name.lower():
                return compartment
        raise NotAuthorizedOrNotFound(
            f"tenancy {tenancy_id} has no compartment {name_or_id!r}; `dockyard compartments list` shows them, "
            "`dockyard compartments create NAME` makes one"
        )

    def tenancy_of_compartment(self, compartment_id: str) -> str | None:
        """The tenancy a compartment (or a tenancy, its own root compartment) belongs to."""
        with self.engine.connect() as conn:
            if conn.execute(select(tenancies.c.id).where(tenancies.c.id == compartment_id)).first():
                return compartment_id
            return conn.execute(select(compartments.c.tenancy_id).where(compartments.c.id == compartment_id)).scalar()

    # --- groups -------------------------------------------------------------------------------

    def ensure_administrators(self, tenancy_id: str) -> None:
        """Every tenancy has the Administrators group (its grant is built in)."""
        with self.writer.begin() as conn:
            key = ADMINISTRATORS.lower()
            if conn.execute(select(groups.c.name).where(groups.c.tenancy_id == tenancy_id, groups.c.name_key == key)).first():
                return
            conn.execute(insert(groups).values(tenancy_id=tenancy_id, name_key=key, name=ADMINISTRATORS, time_created=_now()))

    def create_group(self, tenancy_id: str, name: str) -> str:
        self._require_tenancy(tenancy_id)
        check_name("group", name)
        self.ensure_administrators(tenancy_id)
        try:
            with self.writer.begin() as conn:
                conn.execute(insert(groups).values(tenancy_id=tenancy_id, name_key=name.lower(), name=name, time_created=_now()))
        except IntegrityError as exc:
            raise Conflict(f"tenancy {tenancy_id} has a group named {name!r} already; choose another name") from exc
        return name

    def groups(self, tenancy_id: str) -> dict[str, list[str]]:
        """Group name -> user ids of its members (Administrators lists the is_admin users too)."""
        self.ensure_administrators(tenancy_id)
        with self.engine.connect() as conn:
            names = conn.execute(select(groups.c.name_key, groups.c.name).where(groups.c.tenancy_id == tenancy_id).order_by(groups.c.time_created)).all()
            members = conn.execute(select(group_members.c.group_key, group_members.c.user_id).where(group_members.c.tenancy_id == tenancy_id)).all()
            admins = conn.execute(select(users.c.id).where(users.c.tenancy_id == tenancy_id, users.c.is_admin.is_(True))).scalars().all()
        result: dict[str, list[str]] = {name: [] for _, name in names}
        by_key = dict(names)
        for key, user_id in members:
            result[by_key[key]].append(user_id)
        result[ADMINISTRATORS] = sorted(set(result.get(ADMINISTRATORS, [])) | set(admins))
        return result

    def add_member(self, tenancy_id: str, group: str, user_id: str) -> None:
        """Raises NotAuthorizedOrNotFound for an unknown group or a user of another tenancy."""
        self.ensure_administrators(tenancy_id)
        key = group.lower()
        with self.writer.begin() as conn:
            if conn.execute(select(groups.c.name).where(groups.c.tenancy_id == tenancy_id, groups.c.name_key == key)).first() is None:
                raise NotAuthorizedOrNotFound(f"tenancy {tenancy_id} has no group {group!r}; create it with `dockyard groups create {group}`")
            if conn.execute(select(users.c.id).where(users.c.id == user_id, users.c.tenancy_id == tenancy_id)).first() is None:
                raise NotAuthorizedOrNotFound(f"tenancy {tenancy_id} has no user {user_id}; a group holds users of its own tenancy only")
            exists = select(group_members.c.user_id).where(
                group_members.c.tenancy_id == tenancy_id, group_members.c.group_key == key, group_members.c.user_id == user_id
            )
            if conn.execute(exists).first() is None:
                conn.execute(insert(group_members).values(tenancy_id=tenancy_id, group_key=key, user_id=user_id))

    def remove_member(self, tenancy_id: str, group: str, user_id: str) -> None:
        """Raises NotAuthorizedOrNotFound when the user is not in the group. An `--admin` user
        stays an administrator whatever their memberships (`is_admin` counts as membership)."""
        with self.writer.begin() as conn:
            gone = conn.execute(delete(group_members).where(
                group_members.c.tenancy_id == tenancy_id, group_members.c.group_key == group.lower(), group_members.c.user_id == user_id
            ))  # fmt: skip
        if not gone.rowcount:
            raise NotAuthorizedOrNotFound(f"user {user_id} is not in group {group!r}; `dockyard groups list` shows the members")

    def groups_of(self, tenancy_id: str, user_id: str) -> set[str]:
        """The names of the groups the user is in, Administrators included for is_admin users."""
        with self.engine.connect() as conn:
            keys = set(conn.execute(select(group_members.c.group_key).where(
                group_members.c.tenancy_id == tenancy_id, group_members.c.user_id == user_id
            )).scalars())  # fmt: skip
            is_admin = conn.execute(select(users.c.is_admin).where(users.c.id == user_id, users.c.tenancy_id == tenancy_id)).scalar()
        if is_admin:
            keys.add(ADMINISTRATORS.lower())
        return keys

    def decision_inputs(self, tenancy_id: str, user_id: str, compartment_id: str) -> tuple[set[str], list[Grant]] | None:
        """What one decision needs, read on one connection: None when the compartment is not the
        tenancy's; else the user's groups and the grants to them (Administrators' included)."""
        with self.engine.connect() as conn:
            if compartment_id != tenancy_id:
                owner = conn.execute(select(compartments.c.tenancy_id).where(compartments.c.id == compartment_id)).scalar()
                if owner != tenancy_id:
                    return None
            member = conn.execute(
                select(users.c.is_admin, group_members.c.group_key)
                .select_from(users.outerjoin(group_members, (group_members.c.user_id == users.c.id) & (group_members.c.tenancy_id == tenancy_id)))
                .where(users.c.id == user_id, users.c.tenancy_id == tenancy_id)
            ).all()
            if not member:  # a user of another tenancy (or none): nothing here is theirs
                return None
            group_keys = {row.group_key for row in member if row.group_key is not None}
            if member[0].is_admin:
                group_keys.add(ADMINISTRATORS.lower())
            grants = [ADMINISTRATORS_GRANT]
            if group_keys:
                rows = conn.execute(
                    select(policy_grants.c.group_key, policy_grants.c.verb, policy_grants.c.family, policy_grants.c.compartment_id)
                    .where(policy_grants.c.tenancy_id == tenancy_id, policy_grants.c.group_key.in_(sorted(group_keys)))
                ).all()
                grants += [Grant(r.group_key, Verb[r.verb.upper()], r.family, r.compartment_id) for r in rows]
        return group_keys, grants

    # --- policy statements ----------------------------------------------------------------------

    def add_statement(self, tenancy_id: str, text: str) -> PolicyStatement:
        """Parses, checks that its groups and compartment exist in the tenancy, and stores it.
        Raises InvalidParameter (grammar), NotAuthorizedOrNotFound (unknown group or compartment)."""
        self._require_tenancy(tenancy_id)
        statement = parse_statement(text)
        known = {name.lower(): name for name in self.groups(tenancy_id)}
        for group in statement.groups:
            if group.lower() not in known:
                raise NotAuthorizedOrNotFound(
                    f"policy statement {text!r}: tenancy {tenancy_id} has no group {group!r}; "
                    f"create it first with `dockyard groups create {group}`"
                )
        compartment_id, label = self._where(tenancy_id, statement)
        canonical = Statement(tuple(known[g.lower()] for g in statement.groups), statement.verb, statement.family,
                              statement.compartment, statement.compartment_is_id).text(label)  # fmt: skip
        statement_id = new_ocid("policystatement", self.realm, "")[-40:]
        now = _now()
        with self.writer.begin() as conn:
            for group in {g.lower() for g in statement.groups}:
                conn.execute(insert(policy_grants).values(
                    statement_id=statement_id, group_key=group, tenancy_id=tenancy_id, verb=statement.verb.word,
                    family=statement.family, compartment_id=compartment_id, text=canonical, time_created=now,
                ))  # fmt: skip
        return PolicyStatement(statement_id, tenancy_id, canonical)

    def _where(self, tenancy_id: str, statement: Statement) -> tuple[str | None, str | None]:
        if statement.compartment is None:
            return None, None
        if statement.compartment_is_id and statement.compartment == tenancy_id:
            return None, None
        found = self.find_compartment(tenancy_id, statement.compartment)
        return found.id, found.name

    def statements(self, tenancy_id: str) -> list[PolicyStatement]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(policy_grants.c.statement_id, policy_grants.c.text, policy_grants.c.time_created)
                .where(policy_grants.c.tenancy_id == tenancy_id)
                .distinct()
                .order_by(policy_grants.c.time_created, policy_grants.c.statement_id)
            ).all()
        built_in = PolicyStatement("built-in", tenancy_id, Statement((ADMINISTRATORS,), Verb.MANAGE, ADMINISTRATORS_GRANT.family).text(), True)
        return [built_in] + [PolicyStatement(r.statement_id, tenancy_id, r.text) for r in rows]

    def remove_statement(self, tenancy_id: str, statement_id: str) -> None:
        if statement_id == "built-in":
            raise InvalidParameter("the Administrators statement is built in and cannot be removed; take users out of Administrators instead")
        with self.writer.begin() as conn:
            gone = conn.execute(delete(policy_grants).where(policy_grants.c.tenancy_id == tenancy_id, policy_grants.c.statement_id == statement_id))
        if not gone.rowcount:
            raise NotAuthorizedOrNotFound(f"tenancy {tenancy_id} has no policy statement {statement_id}; `dockyard policies list` shows the ids")

    def grants(self, tenancy_id: str, group_keys: set[str]) -> list[Grant]:
        grants = [ADMINISTRATORS_GRANT]
        if not group_keys:
            return grants
        query = select(policy_grants.c.group_key, policy_grants.c.verb, policy_grants.c.family, policy_grants.c.compartment_id).where(
            policy_grants.c.tenancy_id == tenancy_id, policy_grants.c.group_key.in_(sorted(group_keys))
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return grants + [Grant(r.group_key, Verb[r.verb.upper()], r.family, r.compartment_id) for r in rows]

    # --- registry credentials (C8) ----------------------------------------------------------------

    def grant_registry(self, host: str, tenancy_id: str) -> None:
        self._require_tenancy(tenancy_id)
        host = host.strip().lower()
        if not host or "/" in host:
            raise InvalidParameter(f"registry {host!r} is not a host[:port]; pass it as it appears in DOCKYARD_REGISTRY_CREDENTIALS")
        with self.writer.begin() as conn:
            exists = select(registry_grants.c.host).where(registry_grants.c.host == host, registry_grants.c.tenancy_id == tenancy_id)
            if conn.execute(exists).first() is None:
                conn.execute(insert(registry_grants).values(host=host, tenancy_id=tenancy_id, time_created=_now()))

    def revoke_registry(self, host: str, tenancy_id: str) -> None:
        with self.writer.begin() as conn:
            gone = conn.execute(delete(registry_grants).where(registry_grants.c.host == host.strip().lower(), registry_grants.c.tenancy_id == tenancy_id))
        if not gone.rowcount:
            raise NotAuthorizedOrNotFound(f"tenancy {tenancy_id} has no grant for registry {host}; `dockyard registries list` shows them")

    def registry_grants(self) -> list[tuple[str, str]]:
        """(host, tenancy id) pairs."""
        with self.engine.connect() as conn:
            return [(r.host, r.tenancy_id) for r in conn.execute(select(registry_grants).order_by(registry_grants.c.host)).all()]

    def home_tenancy(self) -> str | None:
        """The installation's first tenancy (the one `dockyard serve` makes with the administrator)."""
        with self.engine.connect() as conn:
            return conn.execute(select(tenancies.c.id).order_by(tenancies.c.time_created).limit(1)).scalar()

    def registry_hosts_for(self, tenancy_id: str) -> set[str] | None:
        """The registry hosts whose configured credentials the tenancy may use; None: all of them
        (the home tenancy, which owns the installation's credentials)."""
        if tenancy_id == self.home_tenancy():
            return None
        with self.engine.connect() as conn:
            return set(conn.execute(select(registry_grants.c.host).where(registry_grants.c.tenancy_id == tenancy_id)).scalars())


def home_tenancy_reader(database_url: str) -> Callable[[], str | None]:
    """`AccessStore.home_tenancy` for a process that has no store of its own (a gateway worker):
    the database is opened on the first call, which blocks (run it in a thread)."""
    store: list[AccessStore] = []

    def read() -> str | None:
        if not store:
            store.append(AccessStore(create_engine(database_url)))
        return store[0].home_tenancy()

    return read


class PolicyAuthorizer:
    """Decides from the stored policies (implements `service.access.Authorizer`).

    A caller without a tenancy (ANONYMOUS under --insecure-no-auth, and the server's own
    internal calls) may do everything. A signed caller may act only in compartments of their own
    tenancy (a foreign or unknown compartment is denied exactly like a forbidden one), and only
    as far as a statement granted to one of their groups allows.
    """

    def __init__(self, store: AccessStore) -> None:
        self.store = store

    def allowed(self, caller: Caller, verb: Verb, family: str, compartment_id: str) -> bool:
        tenancy_id = caller.tenancy_id
        if tenancy_id is None:
            return True
        found = self.store.decision_inputs(tenancy_id, caller.user_id, compartment_id)
        if found is None:
            return False
        group_keys, grants = found
        return allows(grants, group_keys, verb, family, compartment_id)

    def registry_hosts_for(self, caller: Caller) -> set[str] | None:
        return None if caller.tenancy_id is None else self.store.registry_hosts_for(caller.tenancy_id)
