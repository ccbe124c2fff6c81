"""What authorization costs per request: one uncached policy decision (what every control-plane
operation pays) and one cached predict decision (what the gateway pays on its hot path).

    .venv/bin/python benchmarks/authorization_cost.py [--decisions 2000]

SQLite in a temporary directory, two tenancies, a handful of compartments, groups and statements.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine

from dockyard.auth.access_store import AccessStore, PolicyAuthorizer
from dockyard.auth.identity import Principal
from dockyard.auth.policy import MODELS, Verb
from dockyard.auth.principals import PrincipalStore
from dockyard.auth.predict_authorization import PredictAuthorization
from dockyard.service.access import Access


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--decisions", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{Path(tmp) / 'bench.db'}")
        principals, store = PrincipalStore(engine), AccessStore(engine)
        home, other = principals.create_tenancy("home"), principals.create_tenancy("other")
        user = principals.create_user("u", home.id)
        principals.create_user("x", other.id)
        compartments = [store.create_compartment(home.id, f"c{i}") for i in range(10)]
        for g in range(5):
            store.create_group(home.id, f"g{g}")
            store.add_member(home.id, f"g{g}", user.id)
            store.add_statement(home.id, f"allow group g{g} to read data-science-family in compartment c{g}")
        caller = Principal(user_id=user.id, tenancy_id=home.id, fingerprint="aa:" * 15 + "aa")
        access = Access(PolicyAuthorizer(store))
        target = compartments[4].id

        samples = []
        for _ in range(args.decisions):
            started = time.perf_counter()
            assert access.allowed(caller, Verb.READ, MODELS, target)
            samples.append(time.perf_counter() - started)
        samples.sort()
        print(f"uncached decision (control plane): median {statistics.median(samples) * 1e3:.3f} ms, "
              f"p99 {samples[int(len(samples) * 0.99)] * 1e3:.3f} ms over {len(samples)}")  # fmt: skip

        predict = PredictAuthorization(access, ttl_s=60)

        async def cached() -> float:
            await predict(caller, target)  # the first one reads the policies
            started = time.perf_counter()
            for _ in range(args.decisions * 50):
                await predict(caller, target)
            return (time.perf_counter() - started) / (args.decisions * 50)

        per_call = asyncio.run(cached())
        print(f"cached predict decision (gateway): {per_call * 1e6:.2f} us per request over {args.decisions * 50}")


if __name__ == "__main__":
    main()
