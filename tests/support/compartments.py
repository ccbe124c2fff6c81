"""Fixed compartment ids that tests use, registered as compartments of the administrator's tenancy.

A signed caller may act only in compartments of their own tenancy, so a test that names a
compartment id of its own (as scripts written for OCI do) registers it first, as a user would
with ``dockyard compartments create NAME --id OCID``.
"""

from __future__ import annotations

import secrets

from sqlalchemy import Engine, create_engine

from dockyard.auth.access_store import AccessStore
from dockyard.auth.principals import PrincipalStore
from dockyard.errors import Conflict

# Compartments for tests that want one of their own (exact counts in a shared server); the
# in-process app registers them all.
SPARE_COMPARTMENTS = tuple(f"ocid1.compartment.oc1..spare{secrets.token_hex(10)}" for _ in range(64))


def register(engine: Engine, *compartment_ids: str) -> None:
    """Registers each id (once; ids registered already are left alone) in the tenancy of the
    first administrator."""
    principals = PrincipalStore(engine)
    admin = principals.admin()
    assert admin is not None, "no administrator yet: register compartments after the server's first start"
    access = AccessStore(engine)
    known = {c.id for c in access.compartments(admin.tenancy_id)}
    for compartment_id in compartment_ids:
        if compartment_id in known:
            continue
        try:
            access.create_compartment(admin.tenancy_id, f"test-{secrets.token_hex(6)}", compartment_id)
        except Conflict:  # registered by a concurrent caller
            pass


def register_in_database(database_url: str, *compartment_ids: str) -> None:
    engine = create_engine(database_url, connect_args={"timeout": 30} if database_url.startswith("sqlite") else {})
    try:
        register(engine, *compartment_ids)
    finally:
        engine.dispose()
