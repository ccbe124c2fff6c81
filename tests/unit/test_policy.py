"""The policy grammar (auth/policy.py), the decision table, and the stored policies that feed it
(auth/access_store.py on a real SQLite database)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine

from dockyard.auth.access_store import AccessStore, PolicyAuthorizer
from dockyard.auth.policy import (
    ADMINISTRATORS_GRANT,
    ALL_RESOURCES,
    DATA_SCIENCE_FAMILY,
    MODEL_DEPLOYMENTS,
    MODELS,
    PROJECTS,
    WORK_REQUESTS,
    Grant,
    Statement,
    Verb,
    allows,
    parse_statement,
)
from dockyard.auth.principals import PrincipalStore
from dockyard.errors import Conflict, InvalidParameter, NotAuthorizedOrNotFound
from dockyard.service.access import ALLOW_ALL, Access
from dockyard.service.context import ANONYMOUS, Caller

# --- grammar -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("allow group readers to read data-science-family in tenancy", Statement(("readers",), Verb.READ, DATA_SCIENCE_FAMILY)),
        ("Allow Group ops, ml-team TO manage data-science-model-deployments IN compartment prod",
         Statement(("ops", "ml-team"), Verb.MANAGE, MODEL_DEPLOYMENTS, "prod")),
        ("allow group a,b to use data-science-model-deployments in compartment id ocid1.compartment.oc1..xyz",
         Statement(("a", "b"), Verb.USE, MODEL_DEPLOYMENTS, "ocid1.compartment.oc1..xyz", compartment_is_id=True)),
        ("  allow   group x to inspect all-resources in tenancy  ", Statement(("x",), Verb.INSPECT, ALL_RESOURCES)),
    ],
)  # fmt: skip
def test_statements_parse_case_insensitively_with_group_lists(text: str, expected: Statement) -> None:
    assert parse_statement(text) == expected


@pytest.mark.parametrize(
    "text, says",
    [
        ("", "it is empty"),
        ("deny group a to read all-resources in tenancy", "must start with 'allow'"),
        ("allow any-user to read all-resources in tenancy", "any-user and dynamic groups are not supported"),
        ("allow group a read all-resources in tenancy", "'to' is missing"),
        ("allow group to read all-resources in tenancy", "a group name must follow 'group'"),
        ("allow group a b to read all-resources in tenancy", "separated by commas"),
        ("allow group a,,b to read all-resources in tenancy", "single commas"),
        ("allow group a to write all-resources in tenancy", "'write' is not a verb; use inspect, read, use or manage"),
        ("allow group a to read buckets in tenancy", "'buckets' is not a resource family; use one of"),
        ("allow group a to read all-resources", "'in tenancy' or 'in compartment <name>' must follow"),
        ("allow group a to read all-resources in tenancy where request.user.id = 'x'", "conditions ('where ...') are not supported"),
        ("allow group a to read all-resources in compartment ocid1.compartment.oc1..x", "write 'compartment id ocid1.compartment.oc1..x'"),
        ("allow group a to read all-resources in compartment id nope", "'nope' after 'compartment id' is not an OCID"),
        ("allow group a to read all-resources in the cloud", "is not a place"),
    ],
)
def test_bad_statements_are_refused_naming_the_statement_the_problem_and_the_form(text: str, says: str) -> None:
    with pytest.raises(InvalidParameter) as caught:
        parse_statement(text)
    message = caught.value.message
    assert repr(text) in message
    assert says in message
    assert "The form is: allow group <group>" in message


def test_canonical_text_round_trips() -> None:
    statement = parse_statement("ALLOW GROUP a, b TO USE data-science-model-deployments IN COMPARTMENT prod")
    assert statement.text() == "allow group a, b to use data-science-model-deployments in compartment prod"
    assert parse_statement(statement.text()) == statement


# --- decision table -------------------------------------------------------------------------------

C1, C2 = "ocid1.compartment.oc1..one", "ocid1.compartment.oc1..two"


@pytest.mark.parametrize(
    "grant, verb, family, compartment, allowed",
    [
        # verbs include the ones below them, never the ones above
        (Grant("g", Verb.READ, MODELS, None), Verb.INSPECT, MODELS, C1, True),
        (Grant("g", Verb.READ, MODELS, None), Verb.READ, MODELS, C1, True),
        (Grant("g", Verb.READ, MODELS, None), Verb.USE, MODELS, C1, False),
        (Grant("g", Verb.USE, MODEL_DEPLOYMENTS, None), Verb.USE, MODEL_DEPLOYMENTS, C1, True),
        (Grant("g", Verb.USE, MODEL_DEPLOYMENTS, None), Verb.MANAGE, MODEL_DEPLOYMENTS, C1, False),
        (Grant("g", Verb.MANAGE, PROJECTS, None), Verb.INSPECT, PROJECTS, C1, True),
        # families: exact, or covered by an aggregate
        (Grant("g", Verb.MANAGE, MODELS, None), Verb.READ, PROJECTS, C1, False),
        (Grant("g", Verb.READ, DATA_SCIENCE_FAMILY, None), Verb.READ, WORK_REQUESTS, C1, True),
        (Grant("g", Verb.READ, ALL_RESOURCES, None), Verb.READ, MODEL_DEPLOYMENTS, C1, True),
        # places: the tenancy covers every compartment, a compartment only itself
        (Grant("g", Verb.MANAGE, ALL_RESOURCES, C1), Verb.READ, MODELS, C1, True),
        (Grant("g", Verb.MANAGE, ALL_RESOURCES, C1), Verb.READ, MODELS, C2, False),
        # groups the caller is not in grant nothing
        (Grant("other", Verb.MANAGE, ALL_RESOURCES, None), Verb.INSPECT, MODELS, C1, False),
        # group names compare case-insensitively (as in OCI)
        (Grant("G", Verb.READ, MODELS, None), Verb.READ, MODELS, C1, True),
    ],
)
def test_decision_table(grant: Grant, verb: Verb, family: str, compartment: str, allowed: bool) -> None:
    assert allows([grant], {"g"}, verb, family, compartment) is allowed


def test_no_grants_allow_nothing_and_administrators_manage_everything() -> None:
    assert not allows([], {"g"}, Verb.INSPECT, MODELS, C1)
    for family in (PROJECTS, MODELS, MODEL_DEPLOYMENTS, WORK_REQUESTS):
        assert allows([ADMINISTRATORS_GRANT], {"administrators"}, Verb.MANAGE, family, C2)


# --- stored policies ----------------------------------------------------------------------------


@pytest.fixture
def stores(tmp_path: Path) -> tuple[PrincipalStore, AccessStore]:
    engine = create_engine(f"sqlite:///{tmp_path / 'access.db'}")
    return PrincipalStore(engine), AccessStore(engine)


def test_authorizer_isolates_tenancies_and_follows_groups_and_statements(stores: tuple[PrincipalStore, AccessStore]) -> None:
    principals, access = stores
    home, other = principals.create_tenancy("home"), principals.create_tenancy("other")
    admin = principals.create_user("admin", home.id, is_admin=True)
    reader = principals.create_user("reader", home.id)
    stranger_admin = principals.create_user("admin", other.id, is_admin=True)
    prod = access.create_compartment(home.id, "prod")
    registered = access.create_compartment(home.id, "scripts", "ocid1.compartment.oc1..keptfromoci")
    decide = PolicyAuthorizer(access).allowed

    def as_(user: object) -> Caller:
        return Caller(user.id, user.tenancy_id)  # type: ignore[attr-defined]

    # administrators manage everything in their own tenancy, nothing elsewhere
    for compartment in (home.id, prod.id, registered.id):
        assert decide(as_(admin), Verb.MANAGE, MODEL_DEPLOYMENTS, compartment)
        assert not decide(as_(stranger_admin), Verb.INSPECT, MODEL_DEPLOYMENTS, compartment)
    # unknown compartments are nobody's
    assert not decide(as_(admin), Verb.INSPECT, MODELS, "ocid1.compartment.oc1..nobodys")
    # a user in no group may do nothing; a group with read may read, not manage, only in its place
    assert not decide(as_(reader), Verb.INSPECT, MODELS, prod.id)
    access.create_group(home.id, "readers")
    access.add_member(home.id, "READERS", reader.id)
    added = access.add_statement(home.id, "allow group Readers to read data-science-family in compartment PROD")
    assert added.text == "allow group readers to read data-science-family in compartment prod"
    assert decide(as_(reader), Verb.READ, MODELS, prod.id)
    assert not decide(as_(reader), Verb.MANAGE, MODELS, prod.id)
    assert not decide(as_(reader), Verb.READ, MODELS, home.id)
    # removing the statement takes the permission away
    access.remove_statement(home.id, added.id)
    assert not decide(as_(reader), Verb.READ, MODELS, prod.id)
    # callers without a tenancy (internal calls, --insecure-no-auth) are not restricted
    assert decide(ANONYMOUS, Verb.MANAGE, MODELS, "ocid1.compartment.oc1..anything")


def test_store_refusals_name_the_problem_and_the_fix(stores: tuple[PrincipalStore, AccessStore]) -> None:
    principals, access = stores
    home, other = principals.create_tenancy("home"), principals.create_tenancy("other")
    access.create_compartment(home.id, "prod", "ocid1.compartment.oc1..taken")
    with pytest.raises(Conflict, match="the id ocid1.compartment.oc1..taken is taken already"):
        access.create_compartment(other.id, "prod", "ocid1.compartment.oc1..taken")
    with pytest.raises(Conflict, match="the id .* is taken already"):
        access.create_compartment(other.id, "root", home.id)
    with pytest.raises(Conflict, match="has a compartment named 'PROD' already"):
        access.create_compartment(home.id, "PROD")
    with pytest.raises(InvalidParameter, match="is not an OCID"):
        access.create_compartment(home.id, "x", "not-an-id")
    with pytest.raises(NotAuthorizedOrNotFound, match="has no group 'ghosts'; create it first with `dockyard groups create ghosts`"):
        access.add_statement(home.id, "allow group ghosts to read all-resources in tenancy")
    with pytest.raises(NotAuthorizedOrNotFound, match="has no compartment 'nowhere'"):
        access.add_statement(home.id, "allow group Administrators to read all-resources in compartment nowhere")
    stranger = principals.create_user("s", other.id)
    with pytest.raises(NotAuthorizedOrNotFound, match="a group holds users of its own tenancy only"):
        access.add_member(home.id, "Administrators", stranger.id)
    with pytest.raises(InvalidParameter, match="built in and cannot be removed"):
        access.remove_statement(home.id, "built-in")


def test_registry_credentials_belong_to_the_home_tenancy_until_granted(stores: tuple[PrincipalStore, AccessStore]) -> None:
    principals, access = stores
    home, other = principals.create_tenancy("home"), principals.create_tenancy("other")
    assert access.registry_hosts_for(home.id) is None
    assert access.registry_hosts_for(other.id) == set()
    access.grant_registry("127.0.0.1:5002", other.id)
    assert access.registry_hosts_for(other.id) == {"127.0.0.1:5002"}
    access.revoke_registry("127.0.0.1:5002", other.id)
    assert access.registry_hosts_for(other.id) == set()


def test_access_seam_refuses_with_the_message_it_is_given() -> None:
    class Never:
        def allowed(self, *_: object) -> bool:
            return False

        def registry_hosts_for(self, _: object) -> set[str]:
            return set()

    with pytest.raises(NotAuthorizedOrNotFound) as caught:
        Access(Never()).require(ANONYMOUS, Verb.READ, MODELS, C1, "model X was not found")  # type: ignore[arg-type]
    assert caught.value.message == "model X was not found"
    Access(ALLOW_ALL).require(ANONYMOUS, Verb.MANAGE, MODELS, C1, "unused")


# --- the gateway's cached predict decision ---------------------------------------------------------


def test_predict_decisions_are_reused_briefly_per_caller_and_compartment() -> None:
    import asyncio

    from dockyard.auth.predict_authorization import PredictAuthorization

    asked: list[tuple[str, Verb, str, str]] = []
    answer = {"value": True}

    class Counting:
        def allowed(self, caller: Caller, verb: Verb, family: str, compartment_id: str) -> bool:
            asked.append((caller.user_id, verb, family, compartment_id))
            return answer["value"]

        def registry_hosts_for(self, _: Caller) -> None:
            return None

    now = [0.0]
    decide = PredictAuthorization(Access(Counting()), ttl_s=2.0, clock=lambda: now[0])  # type: ignore[arg-type]
    alice, bob = Caller("alice", "t"), Caller("bob", "t")

    async def run() -> list[bool]:
        results = [await decide(alice, C1), await decide(alice, C1), await decide(bob, C1), await decide(alice, C2)]
        answer["value"] = False  # a policy change ...
        results.append(await decide(alice, C1))  # ... is not seen while the decision is fresh
        now[0] = 2.5
        results.append(await decide(alice, C1))  # ... and is once it expired
        results.append(await decide(None, C1))  # no verified caller: never allowed
        return results

    assert asyncio.run(run()) == [True, True, True, True, True, False, False]
    assert asked == [
        ("alice", Verb.USE, MODEL_DEPLOYMENTS, C1),
        ("bob", Verb.USE, MODEL_DEPLOYMENTS, C1),
        ("alice", Verb.USE, MODEL_DEPLOYMENTS, C2),
        ("alice", Verb.USE, MODEL_DEPLOYMENTS, C1),
    ]
