"""The verdict of every rule over what a check measured (pure: tested with tables).

`judge(measurements)` returns one `Finding` per rule, in the order a deployment meets them:
registry (C11, D1), image (C7, C9), configuration (C10, ENV), then the running container
(C6, START, A3, C3, H2, C2, C4, STOP). The rules themselves live in `image_rules` and
`container_rules`; `Report.flagged()` lists the root problems.
"""

from __future__ import annotations

from dockyard.checking import container_rules as running
from dockyard.checking import image_rules as image
from dockyard.checking.findings import Finding
from dockyard.checking.measurements import Measurements

ORDER = ("C11", "D1", "C7", "C9", "C10", "ENV", "C6", "START", "A3", "C3", "H2", "C2", "C4", "STOP")


def judge(m: Measurements) -> list[Finding]:
    """Every rule's finding, in report order (`ORDER`)."""
    root = running.health_root(m)
    c6 = running.ports_listened_on(m, root)
    c2 = running.predict_answers(m, root, c6)
    return [
        image.registry_allowed(m), image.digest_resolvable(m), image.image_size(m), image.curl_installed(m),
        image.command_size(m), image.environment_variables(m),
        c6, running.keeps_running(m), running.artifact_untouched(m), running.health_answers(m, root),
        running.healthy_in_time(m, root), c2, running.slash_twin(m, c2), running.clean_stop(m),
    ]
