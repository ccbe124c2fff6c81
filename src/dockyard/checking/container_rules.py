"""Rules judged on the running container (pure): C6, START, A3, C3, H2, C2, C4, STOP.

One root cause, one flag: a container that listens on the wrong port fails C6, and the lines
that could not be measured because of it (C3, H2, C2, C4) are SKIPs naming C6 as their cause,
not four more FAILs. `health_root` decides which rule explains a container that never became
healthy.
"""

from __future__ import annotations

from dockyard.checking.findings import Finding, Verdict
from dockyard.checking.measurements import ARTIFACT_MOUNT, Measurements, refused_writes
from dockyard.checking.sockets import loopback_only_on, reachable_on
from dockyard.checking.wording import (
    describe_answer,
    describe_ports,
    describe_statuses,
    last_lines,
    port_flags,
    port_roles,
    split,
)

SLOW_SHARE = 0.5  # H2: healthy after more than this share of the budget is a WARN
NOT_READY = 503  # the conventional "still loading": waited for until the budget runs out
PASS, WARN, FAIL, SKIP = Verdict.PASS, Verdict.WARN, Verdict.FAIL, Verdict.SKIP


def _blocker(m: Measurements) -> Finding | None:
    """A SKIP for lines that need a running container, when there was none to measure."""
    if m.image is not None and m.image.rejected:
        return Finding("", "", SKIP, "not measured: the image was refused before it ran", cause="C7")
    if m.exit is not None and not m.exit.after_healthy:
        return Finding("", "", SKIP, "not measured: the container stopped", cause="START")
    if not m.started or m.health is None:
        return Finding("", "", SKIP, "not measured: no container ran")
    return None


def _skip(m: Measurements, rule: str, check: str) -> Finding | None:
    blocker = _blocker(m)
    if blocker is None:
        return None
    return Finding(rule, check, SKIP, blocker.measured, cause=blocker.cause)


def health_root(m: Measurements) -> str | None:
    """Which rule explains a running container that never answered its health check with 200:
    C3 (/health answers, not 200), C6 (it listens elsewhere) or H2 (nothing, too slow)."""
    watch = m.health
    if watch is None or m.exit is not None or watch.healthy_after_s is not None:
        return None
    if watch.gave_up == "status":
        return "C3"
    if watch.gave_up == "ports":
        return "C6"
    if watch.answered:
        return "H2" if set(watch.statuses) == {NOT_READY} else "C3"
    listeners = m.listeners
    port = m.request.health_port
    if listeners:
        return "C3" if reachable_on(listeners, port) else "C6"
    return "H2"


def ports_listened_on(m: Measurements, root: str | None) -> Finding:
    request = m.request
    check = "ports valid and listened on"
    skipped = _skip(m, "C6", check)
    if skipped is not None:
        return skipped
    roles = port_roles(request.server_port, request.health_port)
    listeners = m.listeners
    if listeners is None:
        answered = {request.health_port: bool(m.health and m.health.answered),
                    request.server_port: bool(m.predict and m.predict.status is not None)}
        if all(answered[port] for port in roles):
            return Finding("C6", check, PASS, f"{describe_ports(roles)}: valid, answered HTTP (the sockets could "
                                              "not be read: no `cat` in the image)")
        return Finding("C6", check, SKIP, "cannot tell: no `cat` in the image to read its sockets, and nothing "
                                          f"answered on {describe_ports(roles)}", cause=root)
    loopback = [port for port in roles if loopback_only_on(listeners, port)]
    absent = [port for port in roles if not reachable_on(listeners, port) and port not in loopback]
    if loopback:
        shown = ", ".join(str(item) for item in listeners if item.port in loopback)
        return Finding("C6", check, FAIL, f"the server listens on {shown} only: inside the container, so the port the "
                                          "service publishes cannot reach it",
                       "listen on all addresses (0.0.0.0), e.g. app.run(host=\"0.0.0.0\"), uvicorn --host 0.0.0.0, "
                       "gunicorn --bind 0.0.0.0:PORT")
    if absent and not listeners:
        return Finding("C6", check, SKIP, f"nothing listened on any port yet ({describe_ports(roles)} declared)",
                       cause=root)
    if absent:
        elsewhere = ", ".join(str(item) for item in listeners)
        flags = " / ".join(f"{roles[port]} {port}" for port in absent)
        other = sorted({item.port for item in listeners if not item.loopback} - set(roles))
        guess = other[0] if len(other) == 1 else "PORT"
        fix_flags = " ".join(port_flags(roles[port], guess) for port in absent)
        return Finding("C6", check, FAIL, f"declared {flags}, but nothing listens there; the container listens on "
                                          f"{elsewhere}",
                       f"make the server listen on {describe_ports({p: roles[p] for p in absent})}, or declare the "
                       f"port it uses: {fix_flags} (serverPort / healthCheckPort)")
    shown = ", ".join(str(item) for item in listeners if item.port in roles)
    return Finding("C6", check, PASS, f"{describe_ports(roles)}: valid, listened on ({shown})")


def keeps_running(m: Measurements) -> Finding:
    check = "container starts and keeps running"
    if m.image is not None and m.image.rejected:
        return Finding("START", check, SKIP, "not started: the image was refused", cause="C7")
    end = m.exit
    if end is None:
        if not m.started:
            return Finding("START", check, SKIP, "not started")
        ran = f" for {m.running_s:.1f} s" if m.running_s else ""
        return Finding("START", check, PASS, f"started and kept running{ran} until the check stopped it")
    cause = "A3" if refused_writes(m.logs) else ("C2" if end.after_healthy and _predict_failed(m) else None)
    if end.start_error:
        what, fix = split(end.start_error)
        return Finding("START", check, FAIL, what, fix or "check entrypoint and cmd (or the image's ENTRYPOINT/CMD)",
                       cause=cause)
    last = last_lines(m.logs or end.detail, 2)
    words = f"exited with code {end.code} {end.after_s:.1f} s after it started"
    if end.after_healthy:
        words += ", after it had become healthy"
    if last:
        words += f"; last log lines: {last}"
    if end.code == 0:
        fix = ("the command finished instead of serving: run the web server in the foreground (no daemon mode, "
               "no trailing &)")
    elif end.code == 127:
        fix = "the command is not in the image: check --entrypoint/--cmd or the image's ENTRYPOINT/CMD (C10)"
    elif "out of memory" in end.detail.lower() or "oomkilled" in end.detail.lower():
        fix = "the container ran out of memory: use a shape with more memory, or make the server use less"
    else:
        fix = ("fix what the log says; the command must start the web server and keep it running "
               f"(try it by hand: docker run --rm -it {m.request.image})")
    return Finding("START", check, FAIL, words, fix, cause=cause)


def artifact_untouched(m: Measurements) -> Finding:
    check = "no writes to the read-only artifact"
    if not m.started or (m.image is not None and m.image.rejected):
        refused = m.image is not None and bool(m.image.rejected)
        return Finding("A3", check, SKIP, "not measured: no container ran", cause="C7" if refused else None)
    lines = refused_writes(m.logs)
    fix = (f"write to /tmp or another folder outside {ARTIFACT_MOUNT} (the container's root filesystem is "
           "writable); every deployment mounts the artifact read-only there (A3)")
    if not lines:
        count = len(m.logs.splitlines())
        return Finding("A3", check, PASS, f"no 'Read-only file system' error in its log ({count} line"
                                          f"{'' if count == 1 else 's'}; the artifact is mounted read-only at "
                                          f"{ARTIFACT_MOUNT})")
    shown = " | ".join(lines)
    if m.exit is not None:
        return Finding("A3", check, FAIL, f"a write was refused and the container exited: {shown}", fix)
    return Finding("A3", check, WARN, f"a write was refused (tolerated: the server kept running, but what it wrote is "
                                      f"lost): {shown}", fix)


def health_answers(m: Measurements, root: str | None) -> Finding:
    request = m.request
    check = f"GET {m.health_path} returns 200"
    skipped = _skip(m, "C3", check)
    if skipped is not None:
        return skipped
    watch = m.health
    assert watch is not None
    where = f"GET {m.health_path} on port {request.health_port}"
    if watch.healthy_after_s is not None:
        return Finding("C3", check, PASS, f"{where} answered 200")
    if root != "C3":
        if watch.answered:
            return Finding("C3", check, SKIP, f"{where} answered {describe_statuses(watch.statuses)} (not ready) "
                                              "until the budget ran out", cause=root)
        return Finding("C3", check, SKIP, f"{where}: no answer", cause=root)
    if not watch.answered:
        return Finding("C3", check, FAIL, f"the container listens on port {request.health_port} but {where} got no "
                                          f"HTTP answer ({watch.last_detail})",
                       f"answer GET {m.health_path} with 200 within the health check's timeout (3 s, H1)")
    seen = watch.statuses
    measured = (f"{where} answered {describe_statuses(seen)} ({watch.probes} probes over {watch.waited_s:.1f} s), "
                "never 200")
    worst = max(seen, key=lambda code: seen[code])
    if worst in (404, 405):
        fix = (f"serve GET {m.health_path} answering 200 when the server is ready (or set "
               "MODEL_DEPLOY_HEALTH_ENDPOINT to the health path the server has)")
    elif worst in (401, 403):
        fix = f"let GET {m.health_path} answer without authentication: the service's probe sends no credentials"
    elif worst >= 500:
        fix = f"GET {m.health_path} must answer 200 once the server is ready; see the container's log for the error"
    else:
        fix = f"GET {m.health_path} must answer exactly 200 (not {worst}) once the server is ready"
    return Finding("C3", check, FAIL, measured, fix)


def healthy_in_time(m: Measurements, root: str | None) -> Finding:
    check = "healthy within the budget"
    skipped = _skip(m, "H2", check)
    if skipped is not None:
        return skipped
    watch = m.health
    assert watch is not None
    budget = f"{watch.budget_s:g} s"
    if watch.healthy_after_s is not None:
        after = watch.healthy_after_s
        if after > watch.budget_s * SLOW_SHARE:
            return Finding("H2", check, WARN, f"healthy {after:.1f} s after it started, over half of the {budget} "
                                              "budget",
                           "start faster: load the model once at start-up from the artifact, keep the image small "
                           "(R3); a deployment fails when an instance is not healthy within 10 minutes")
        return Finding("H2", check, PASS, f"healthy {after:.1f} s after it started (budget {budget})")
    if root == "H2":
        answered = (f"GET {m.health_path} answered {describe_statuses(watch.statuses)} (not ready)" if watch.answered
                    else f"nothing answered on port {m.request.health_port}")
        return Finding("H2", check, FAIL, f"not healthy within the {budget} budget: {answered}",
                       "become healthy sooner (a deployment fails after 10 minutes); if the server is up on "
                       "another port, declare that port (--server-port / --health-port)")
    return Finding("H2", check, SKIP, f"not healthy; stopped waiting after {watch.waited_s:.1f} s of the {budget} "
                                      "budget", cause=root)


def predict_answers(m: Measurements, root: str | None, c6: Finding) -> Finding:
    request = m.request
    check = f"POST {m.predict_path} answers"
    if m.triton:
        return Finding("C2", check, SKIP, "Triton mode (CONTAINER_TYPE=TRITON): /predict maps to Triton's "
                                          "/v2/models/NAME/versions/V/infer, which needs a model name; not tried")
    skipped = _skip(m, "C2", check)
    if skipped is not None:
        return skipped
    answer = m.predict
    if answer is None or answer.status is None:
        error = answer.error if answer else "not tried"
        if m.exit is not None and m.exit.after_healthy:
            cause = "A3" if refused_writes(m.logs) else None
            last = last_lines(m.logs or m.exit.detail, 2)
            words = f"POST {m.predict_path} got no answer: the container exited (code {m.exit.code}) while answering"
            if last:
                words += f"; last log lines: {last}"
            return Finding("C2", check, FAIL, words,
                           "the server must survive a request: fix the crash in its log (out of memory on inference "
                           "is common: a shape with more memory, or a smaller model)", cause=cause)
        if root is not None or c6.verdict is FAIL:
            return Finding("C2", check, SKIP, f"no answer on port {request.server_port} ({error})",
                           cause="C6" if c6.verdict is FAIL else root)
        return Finding("C2", check, FAIL, f"POST {m.predict_path} on port {request.server_port} got no answer: {error}",
                       f"serve POST {m.predict_path} on port {request.server_port}, answering within 60 s (the "
                       "service's request limit)")
    shown = describe_answer(answer)
    status = answer.status
    sample = request.predict_data is not None
    if 200 <= status < 300:
        return Finding("C2", check, PASS, shown)
    if status in (404, 405):
        return Finding("C2", check, FAIL, f"{shown}: the route does not exist",
                       f"serve POST {m.predict_path} on port {request.server_port} (or set "
                       "MODEL_DEPLOY_PREDICT_ENDPOINT to the path the server has)")
    if 300 <= status < 400:
        return Finding("C2", check, FAIL, f"{shown}: a redirect, which callers of the deployment cannot follow (it "
                                          "points inside the container)",
                       f"answer POST {m.predict_path} itself (Flask: @app.route(\"{m.predict_path}\", "
                       "methods=[\"POST\"]), without a trailing slash)")
    if status >= 500:
        hint = "" if sample else "; give a real sample with --predict-data"
        return Finding("C2", check, FAIL, f"{shown}: a server error", f"fix the error in the container's log{hint}")
    if sample:
        return Finding("C2", check, WARN, f"{shown}: the route exists but refused the sample",
                       "check that --predict-data is what the server expects (and --content-type)")
    return Finding("C2", check, PASS, f"{shown}: the route exists (the body was {{}}; give --predict-data to try a "
                                      "real prediction)")


def slash_twin(m: Measurements, c2: Finding) -> Finding:
    other = m.predict_other
    path = m.predict_path
    slash = other.path if other else (path.rstrip("/") if path.endswith("/") else path + "/")
    check = f"{m.predict_path} and {slash} kept apart"
    if c2.verdict is SKIP:
        return Finding("C4", check, SKIP, "not measured", cause=c2.cause)
    if other is None or m.predict is None:
        return Finding("C4", check, SKIP, "not measured", cause="C2" if c2.verdict is FAIL else None)
    first = f"POST {m.predict_path} -> {m.predict.status}"
    second = f"POST {other.path} -> {other.status if other.status is not None else 'no answer'}"
    if other.status is not None and 300 <= other.status < 400:
        return Finding("C4", check, WARN, f"{second} (redirect to {other.location or '?'}), {first}: callers of "
                                          f"{other.path} are sent to an address inside the container",
                       f"answer {other.path} with 404 or serve it, without redirecting")
    same = other.status == m.predict.status and other.body == m.predict.body
    words = "the same answer" if same else "different answers"
    return Finding("C4", check, PASS, f"{first}, {second}: {words}; the service forwards each path unchanged")


def _predict_failed(m: Measurements) -> bool:
    return m.predict is not None and (m.predict.status is None or m.predict.status >= 500)


def clean_stop(m: Measurements) -> Finding:
    check = "clean stop on SIGTERM"
    skipped = _skip(m, "STOP", check)
    if skipped is not None:
        return skipped
    if m.exit is not None:
        return Finding("STOP", check, SKIP, "not measured: the container had stopped by itself", cause="START")
    stop = m.stop
    if stop is None:
        return Finding("STOP", check, SKIP, "not measured: the container was not stopped by the check")
    if stop.killed:
        return Finding("STOP", check, WARN, f"ignored SIGTERM: still running {stop.timeout_s:g} s later, SIGKILL ended "
                                            f"it (exit code {stop.exit_code}); every stop and rollout waits the full "
                                            "grace and cuts requests in flight",
                       "exit on SIGTERM (the service sends it, through an init process, to stop or replace an "
                       "instance): e.g. signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)), or a server that "
                       "handles it (gunicorn, uvicorn)")
    return Finding("STOP", check, PASS, f"exited {stop.seconds:.1f} s after SIGTERM (exit code {stop.exit_code}; "
                                        f"grace {stop.timeout_s:g} s)")
