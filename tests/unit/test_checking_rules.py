"""The verdict of each rule over hand-written measurements: one root cause, one flag, a fix."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from dockyard.checking.findings import Verdict
from dockyard.checking.inputs import CheckRequest
from dockyard.checking.measurements import (
    ArtifactEvidence,
    Exit,
    HealthWatch,
    HttpAnswer,
    ImageEvidence,
    Measurements,
    RegistryEvidence,
    StopEvidence,
    refused_writes,
)
from dockyard.checking.probe_run import report_of
from dockyard.checking.rules import judge
from dockyard.checking.sockets import Listener

GIB = 1024**3
OCID = "ocid1.datasciencemodeldeployment.oc1.local.abcdef"
PASS, WARN, FAIL, SKIP = Verdict.PASS, Verdict.WARN, Verdict.FAIL, Verdict.SKIP
ORDER = ["C11", "D1", "C7", "C9", "C10", "ENV", "C6", "START", "A3", "C3", "H2", "C2", "C4", "STOP"]


def healthy_run(**changes: Any) -> Measurements:
    """A good image, pushed, healthy at once, answering /predict, stopping on SIGTERM."""
    request = changes.pop("request", CheckRequest(image="127.0.0.1:5001/team/app:1", predict_data=b'{"x": 1}'))
    m = Measurements(
        request=request, deployment_id=OCID, health_path="/health", predict_path="/predict",
        registry=RegistryEvidence(True, "127.0.0.1:5001", allowed_as="a registry on this machine",
                                  digest="sha256:" + "a" * 64, compressed_bytes=50 * 1024**2),
        artifact=ArtifactEvidence("zip model.zip", 2, 1000),
        image=ImageEvidence("127.0.0.1:5001/team/app@sha256:" + "a" * 64, 170 * 1024**2, True, None, ["python3", "s.py"]),
        started=True,
        health=HealthWatch(budget_s=600, patience_s=30, waited_s=1.2, healthy_after_s=1.2, probes=3,
                           statuses={200: 1}, answered=True),
        listeners=[Listener(8080, "0.0.0.0")],
        inner_health="HEALTHY",
        predict=HttpAnswer("POST", "/predict", 200, 0.01, "application/json", '{"y": 2}'),
        predict_other=HttpAnswer("POST", "/predict/", 404, 0.01, "application/json", '{"error": "no"}'),
        stop=StopEvidence(0.3, 143, False, 10),
        running_s=2.0,
        logs="serving on 8080\n",
    )
    for name, value in changes.items():
        setattr(m, name, value)
    return m


def never_healthy(**changes: Any) -> Measurements:
    watch = changes.pop("health", HealthWatch(budget_s=600, patience_s=30, waited_s=30, probes=60))
    return healthy_run(health=watch, inner_health="", predict=None, predict_other=None, **changes)


def flagged(m: Measurements) -> dict[str, Verdict]:
    return {f.rule: f.verdict for f in report_of(m).flagged()}


def finding(m: Measurements, rule: str) -> Any:
    return report_of(m).finding(rule)


def test_a_good_run_passes_every_rule_in_order() -> None:
    findings = judge(healthy_run())
    assert [f.rule for f in findings] == ORDER
    assert {f.verdict for f in findings} == {PASS}, [f for f in findings if f.verdict is not PASS]
    assert report_of(healthy_run()).exit_code == 0


# --- one broken thing, one flag -------------------------------------------------------------------

SCENARIOS: dict[str, tuple[dict[str, Any], dict[str, Verdict]]] = {
    "no curl": ({"image": ImageEvidence("x", 1, False, None, None), "inner_health": ""}, {"C9": FAIL}),
    "health 404": ({"health": HealthWatch(600, 30, 31, None, 60, {404: 60}, True, "answered 404", "status")},
                   {"C3": FAIL}),
    "health 500 until the budget": ({"health": HealthWatch(5, 30, 5, None, 10, {500: 10}, True, "", "budget")},
                                    {"C3": FAIL}),
    "503 until the budget is slowness": ({"health": HealthWatch(5, 30, 5, None, 10, {503: 10}, True, "", "budget")},
                                         {"H2": FAIL}),
    "another port": ({"health": HealthWatch(600, 30, 31, None, 60, {}, False, "refused", "ports"),
                      "listeners": [Listener(8081, "0.0.0.0")]}, {"C6": FAIL}),
    "loopback only": ({"health": HealthWatch(600, 30, 31, None, 60, {}, False, "reset", "ports"),
                       "listeners": [Listener(8080, "127.0.0.1")]}, {"C6": FAIL}),
    "nothing listens within the budget": ({"health": HealthWatch(4, 30, 4, None, 9, {}, False, "refused", "budget"),
                                           "listeners": []}, {"H2": FAIL}),
    "listens but never answers HTTP": ({"health": HealthWatch(4, 30, 4, None, 3, {}, False, "timeout", "budget")},
                                       {"C3": FAIL}),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_each_problem_flags_exactly_its_rule(name: str) -> None:
    changes, expected = SCENARIOS[name]
    m = never_healthy(**changes) if "health" in changes else healthy_run(**changes)
    assert flagged(m) == expected
    for item in report_of(m).flagged():
        assert item.fix


def test_a_crash_fails_start_and_skips_what_needs_a_running_container() -> None:
    m = healthy_run(exit=Exit(1, 0.4, "exit code 1"), health=HealthWatch(600, 30, 0.4, gave_up="exited"),
                    listeners=None, predict=None, predict_other=None, stop=None, inner_health="",
                    logs="Traceback (most recent call last):\nFileNotFoundError: model.joblib\n")
    assert flagged(m) == {"START": FAIL}
    start = finding(m, "START")
    assert "exited with code 1 0.4 s after it started" in start.measured and "model.joblib" in start.measured
    for rule in ("C6", "C3", "H2", "C2", "C4", "STOP"):
        assert (finding(m, rule).verdict, finding(m, rule).cause) == (SKIP, "START"), rule
    assert finding(m, "A3").verdict is PASS


def test_a_command_that_cannot_run_fails_start_with_the_engines_words() -> None:
    m = healthy_run(started=False, health=None, exit=Exit(None, 0, "C10: start: the container's command cannot be "
                                                                  "run: exec: \"pythonx\": not found; check entrypoint"),
                    listeners=None, predict=None, predict_other=None, stop=None)
    m.exit = dataclasses.replace(m.exit, start_error=m.exit.detail)  # type: ignore[arg-type]
    assert flagged(m) == {"START": FAIL}
    assert "pythonx" in finding(m, "START").measured and finding(m, "START").fix == "check entrypoint"


def test_exit_code_0_and_127_get_their_own_fix() -> None:
    done = healthy_run(exit=Exit(0, 0.1, "exit code 0"), health=HealthWatch(600, 30, gave_up="exited"), stop=None)
    assert "foreground" in finding(done, "START").fix
    missing = healthy_run(exit=Exit(127, 0.1, "exit code 127"), health=HealthWatch(600, 30, gave_up="exited"), stop=None)
    assert "not in the image" in finding(missing, "START").fix


def test_a_write_into_the_artifact_that_kills_the_server_is_the_root_cause() -> None:
    logs = ("Traceback (most recent call last):\nOSError: [Errno 30] Read-only file system: "
            "'/opt/ds/model/deployed_model/cache.json'\n")
    m = healthy_run(exit=Exit(1, 0.3, "exit code 1"), health=HealthWatch(600, 30, gave_up="exited"), logs=logs,
                    stop=None, predict=None, predict_other=None)
    assert flagged(m) == {"A3": FAIL}
    assert (finding(m, "START").verdict, finding(m, "START").cause) == (FAIL, "A3")
    assert "/opt/ds/model/deployed_model/cache.json" in finding(m, "A3").measured
    assert report_of(m).exit_code == 1


def test_a_tolerated_write_into_the_artifact_is_a_warning() -> None:
    m = healthy_run(logs="could not save cache: [Errno 30] Read-only file system: '/opt/ds/model/deployed_model/c'\n")
    assert flagged(m) == {"A3": WARN}
    assert "tolerated" in finding(m, "A3").measured and report_of(m).exit_code == 0


def test_ignoring_sigterm_is_a_warning_with_the_time_it_took() -> None:
    m = healthy_run(stop=StopEvidence(10.2, 137, True, 10))
    assert flagged(m) == {"STOP": WARN}
    assert "still running 10 s later" in finding(m, "STOP").measured and report_of(m).exit_code == 0


def test_c7_size_pass_warn_fail() -> None:
    def size(n: int) -> Any:
        return finding(healthy_run(image=ImageEvidence("x", n, True, None, None)), "C7")

    assert size(500 * 1024**2).verdict is PASS
    large = size(8 * GIB)
    assert large.verdict is WARN and "8.0 GiB" in large.measured and "R3" in large.measured
    assert size(17 * GIB).verdict is FAIL
    refused = healthy_run(image=ImageEvidence("x", None, None, None, None, rejected="C7: pull: the image x is 17.0 GiB "
                                              "uncompressed, over the 16.0 GiB limit; make it smaller"),
                          started=False, health=None, stop=None, predict=None, predict_other=None)
    assert flagged(refused) == {"C7": FAIL}
    assert finding(refused, "START").cause == "C7" and finding(refused, "C3").cause == "C7"


def test_c10_counts_the_bytes_of_cmd_and_entrypoint() -> None:
    request = CheckRequest(image="app:1", cmd=["python3", "-c", "x" * 3000], entrypoint=None)
    m = healthy_run(request=request)
    assert flagged(m) == {"C10": FAIL}
    assert "3009 bytes, over the 2048-byte limit" in finding(m, "C10").measured
    ok = healthy_run(request=CheckRequest(image="app:1", cmd=["python3", "s.py"]))
    assert finding(ok, "C10").measured == "11 bytes of 2048"


def test_environment_rules_are_the_services() -> None:
    request = CheckRequest(image="app:1", environment={"MODEL_DEPLOYMENT_OCID": "x", "bad-key": "1", "OK": "v"})
    m = healthy_run(request=request)
    assert finding(m, "ENV").verdict is FAIL
    assert "MODEL_DEPLOYMENT_OCID" in finding(m, "ENV").measured and "bad-key" in finding(m, "ENV").measured
    big = healthy_run(request=CheckRequest(image="app:1", environment={"BIG": "x" * 3000}))
    assert "over the 2048-byte limit" in finding(big, "ENV").measured


@pytest.mark.parametrize("status, verdict, words", [
    (200, PASS, "-> 200"),
    (404, FAIL, "the route does not exist"),
    (405, FAIL, "the route does not exist"),
    (308, FAIL, "a redirect"),
    (500, FAIL, "a server error"),
    (400, WARN, "refused the sample"),
])
def test_c2_by_status(status: int, verdict: Verdict, words: str) -> None:
    m = healthy_run(predict=HttpAnswer("POST", "/predict", status, 0.01, "application/json", "{}"))
    assert finding(m, "C2").verdict is verdict and words in finding(m, "C2").measured


def test_c2_without_a_sample_accepts_a_4xx_as_proof_the_route_exists() -> None:
    m = healthy_run(request=CheckRequest(image="127.0.0.1:5001/team/app:1"),
                    predict=HttpAnswer("POST", "/predict", 400, 0.01, "application/json", "{}"))
    assert finding(m, "C2").verdict is PASS and "--predict-data" in finding(m, "C2").measured


def test_c4_warns_about_a_redirect_on_the_slash_twin() -> None:
    m = healthy_run(predict_other=HttpAnswer("POST", "/predict/", 308, 0.01, location="http://localhost:8080/predict"))
    assert flagged(m) == {"C4": WARN}
    same = healthy_run(predict_other=HttpAnswer("POST", "/predict/", 200, 0.01, "application/json", '{"y": 2}'))
    assert "the same answer" in finding(same, "C4").measured and finding(same, "C4").verdict is PASS


def test_h2_warns_when_healthy_late_in_the_budget() -> None:
    watch = HealthWatch(600, 30, 400, 400.0, 800, {200: 1}, True)
    assert flagged(healthy_run(health=watch)) == {"H2": WARN}


def test_c6_with_separate_ports_and_a_missing_server_port() -> None:
    request = CheckRequest(image="127.0.0.1:5001/team/app:1", server_port=5000, health_port=5001)
    m = healthy_run(request=request, listeners=[Listener(5001, "0.0.0.0"), Listener(6000, "0.0.0.0")],
                    predict=HttpAnswer("POST", "/predict", None, 0.01, error="ConnectError"), predict_other=None)
    c6 = finding(m, "C6")
    assert c6.verdict is FAIL and "server port 5000" in c6.measured and "--server-port 6000" in c6.fix
    assert (finding(m, "C2").verdict, finding(m, "C2").cause) == (SKIP, "C6")
    assert flagged(m) == {"C6": FAIL}


def test_c6_without_cat_in_the_image_falls_back_on_http_answers() -> None:
    assert finding(healthy_run(listeners=None), "C6").verdict is PASS
    slow = never_healthy(listeners=None, health=HealthWatch(4, 30, 4, None, 9, {}, False, "refused", "budget"))
    assert flagged(slow) == {"H2": FAIL}
    assert "no `cat`" in finding(slow, "C6").measured


def test_c9_warns_when_the_inner_healthcheck_fails_but_the_outer_probe_passes() -> None:
    m = healthy_run(inner_health="UNHEALTHY", inner_detail="curl: (7) Failed to connect")
    assert flagged(m) == {"C9": WARN}


def test_registry_lines() -> None:
    local = healthy_run(registry=RegistryEvidence(False))
    assert finding(local, "C11").verdict is SKIP and finding(local, "D1").verdict is SKIP
    refused = healthy_run(registry=RegistryEvidence(True, "iad.ocir.io", refused="C11: registry 'iad.ocir.io' is in "
                                                    "region 'us-ashburn-1' but this service runs in region 'local'; "
                                                    "push the image to a registry of this service"))
    c11 = finding(refused, "C11")
    assert c11.verdict is FAIL and c11.measured.startswith("registry 'iad.ocir.io'") and c11.fix.startswith("push")
    assert finding(refused, "D1").cause == "C11"
    missing = healthy_run(registry=RegistryEvidence(True, "127.0.0.1:5001", allowed_as="local",
                                                    error="image 'x' not found in registry 127.0.0.1:5001 "
                                                          "(404 MANIFEST_UNKNOWN): push it first"))
    assert flagged(missing) == {"D1": FAIL}
    differs = healthy_run(image=dataclasses.replace(healthy_run().image, local_differs=True))  # type: ignore[type-var]
    assert flagged(differs) == {"D1": WARN} and "docker push" in finding(differs, "D1").fix


def test_triton_mode_does_not_try_predict() -> None:
    m = healthy_run(triton=True, predict=None, predict_other=None)
    assert finding(m, "C2").verdict is SKIP and "Triton" in finding(m, "C2").measured
    assert finding(m, "C4").verdict is SKIP


def test_refused_writes_finds_erofs_lines_in_any_language() -> None:
    logs = ("ok\njava.nio.file.FileSystemException: /opt/ds/model/deployed_model/x: Read-only file system\n"
            "open /opt/ds/model/deployed_model/y: read-only file system\n")
    assert len(refused_writes(logs)) == 2
    assert refused_writes("all fine\n") == []


def test_a_server_that_dies_on_predict_is_flagged_on_c2() -> None:
    m = healthy_run(exit=Exit(137, 5.0, "exit code 137 (killed by SIGKILL)", after_healthy=True), stop=None,
                    predict=HttpAnswer("POST", "/predict", None, 0.5, error="RemoteProtocolError: disconnected"),
                    predict_other=None, logs="loading\nKilled\n")
    assert flagged(m) == {"C2": FAIL}
    assert "the container exited (code 137) while answering" in finding(m, "C2").measured
    assert (finding(m, "START").verdict, finding(m, "START").cause) == (FAIL, "C2")
    assert finding(m, "C3").verdict is PASS and finding(m, "H2").verdict is PASS  # measured before it died
    assert (finding(m, "STOP").verdict, finding(m, "STOP").cause) == (SKIP, "START")


@pytest.mark.parametrize(("exit_code", "oom", "seconds", "killed"), [
    (137, False, 10.02, True),   # the engine's SIGKILL, once the 10 s passed
    (137, False, 0.3, False),    # 137 from the container itself, right after SIGTERM: no SIGKILL was sent yet
    (137, True, 10.02, False),   # out of memory: the kernel's SIGKILL, not the stop's
    (143, False, 0.2, False),    # SIGTERM passed on by the init process
    (0, False, 10.5, False),     # a clean exit just at the end of the grace
    (None, False, 10.1, False),
])  # fmt: skip
def test_a_stop_reads_as_killed_only_for_137_at_the_timeout(exit_code: int | None, oom: bool, seconds: float, killed: bool) -> None:
    from dockyard.runtimes.docker_measure import killed_at_timeout

    assert killed_at_timeout(exit_code, oom, seconds, 10.0) is killed
