"""`dockyard check` and `dockyard run`: a container image tried locally, the way a deployment runs it.

Both start the image through the same `DockerRuntime` the service uses (pinned image, read-only
artifact at /opt/ds/model/deployed_model, injected MODEL_DEPLOYMENT_OCID, the service's
HEALTHCHECK, init process, loopback-only ports), so a local pass means a deployment pass.

Modules, one concept each:

- `inputs`: what the user asked for, validated before anything starts (`CheckRequest`);
- `session`: one instance started as a deployment's would be, and its cleanup;
- `artifacts`: the artifact unpacked by the service's own unpacker (or an empty one);
- `image_source`: the registry side of the image (C11 region rule, D1 digest);
- `sockets`: what a container listens on, from its /proc/net/tcp (pure);
- `measurements`: everything a check measured (pure records);
- `findings`: the report model, one `Finding` per rule (pure);
- `rules`: the verdict of every rule (`image_rules`, `container_rules`, with `wording`; pure);
- `probe_run`: drives the runtime through one check and returns the report;
- `local_run`: the H3 emulation behind `dockyard run`;
- `report`: the report as text and as JSON.
"""
