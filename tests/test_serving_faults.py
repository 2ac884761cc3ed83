"""The service as production software, against a real ``python -m recsys_core serve`` on 127.0.0.1: a
watcher that outlives every broken pointer or run (the old champion keeps answering, /health says
degraded, the next good champion is picked up without a restart), request limits, the API key, the
/reload rule, a 500 that names a request id, and the Prometheus metrics."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from recsys_core.matrices import load_split
from recsys_core.registry import POINTER, Registry
from tests.loop_fixtures import serving
from tests.test_serving import wait_for

ROOT = Path(__file__).resolve().parents[1]
NAME = "demo"
KEY = "k3y-for-the-tests-0123456789"


def _copy(loop_runs, label: str, data: Path, as_name: str) -> Path:
    """A copy of a trained run under the data dir's runs/ (its id there is runs/<as_name>)."""
    target = data / "runs" / as_name
    shutil.copytree(loop_runs[label], target)
    return target


@pytest.fixture(scope="module")
def faults(loop_runs, tmp_path_factory):
    """A server (watching every 0.2 s) on a registry under a data dir whose runs live in its runs/."""
    data = tmp_path_factory.mktemp("faults") / "data"
    registry = Registry(data / "registry")
    registry.promote(NAME, _copy(loop_runs, "ae_old", data, "ae-1"), "first")
    log = data.parent / "server.log"
    with serving(data / "registry", NAME, log) as (client, _):
        wait_for(lambda: client.get("/health").status_code == 200, what="the first champion")
        yield {"client": client, "registry": registry, "data": data, "log": log, "copies": 1}
    assert "Traceback" not in log.read_text()


def _known_user(loop_runs) -> int:
    old = load_split(loop_runs["old"])
    return int(old.user_ids[0])


def _write_pointer(registry: Registry, text: str) -> None:
    path = registry.folder(NAME) / POINTER
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _list_pointer(ctx):
    _write_pointer(ctx["registry"], "[1, 2]")
    return "a JSON list"


def _pointer_without_version(ctx):
    pointer = ctx["registry"].champion(NAME).to_json()
    del pointer["version"]
    _write_pointer(ctx["registry"], json.dumps(pointer))
    return "version None is not a positive integer"


def _unreadable_pointer(ctx):
    path = ctx["registry"].folder(NAME) / POINTER
    path.unlink()
    path.mkdir()  # reading it is an OSError (IsADirectoryError) even for root, which chmod would not stop
    return "cannot be read"


def _corrupt_model(ctx, loop_runs):
    """A run whose model.pt torch cannot unpickle, promoted with that file's hash (no manifest to stop it)."""
    ctx["copies"] += 1
    run = _copy(loop_runs, "ae_new", ctx["data"], f"corrupt-{ctx['copies']}")
    (run / "manifest.json").unlink(missing_ok=True)  # train() by hand writes none; the flow does
    (run / "model.pt").write_bytes(b"\x80\x02not a torch file \xff\xfe" * 100)
    ctx["registry"].promote(NAME, run, "corrupt weights")
    return "cannot load version"


def _deleted_run_folder(ctx, loop_runs):
    ctx["copies"] += 1
    run = _copy(loop_runs, "ae_new", ctx["data"], f"deleted-{ctx['copies']}")
    pointer = ctx["registry"].champion(NAME).to_json()
    # the pointer names the run, then the run folder is gone before the service loads it
    shutil.rmtree(run)
    _write_pointer(ctx["registry"], json.dumps({**pointer, "version": pointer["version"] + 1, "run_dir": str(run)}))
    return "does not exist"


@pytest.mark.parametrize("case", ["list pointer", "pointer without version", "unreadable pointer",
                                  "corrupt model.pt", "deleted run folder"])
def test_the_watcher_survives_and_the_next_good_champion_is_served(faults, loop_runs, case):
    client, registry = faults["client"], faults["registry"]
    served = client.get("/health").json()
    assert served["status"] == "ok", served
    user = _known_user(loop_runs)   # in both splits
    errors_before = _metric(client, "recsys_reload_errors_total")
    breaker = {"list pointer": _list_pointer, "pointer without version": _pointer_without_version,
               "unreadable pointer": _unreadable_pointer}.get(case)
    needle = breaker(faults) if breaker else {"corrupt model.pt": _corrupt_model,
                                              "deleted run folder": _deleted_run_folder}[case](faults, loop_runs)
    wait_for(lambda: client.get("/health").status_code == 503, what=f"health to say degraded ({case})")
    health = client.get("/health").json()
    assert health["status"] == "degraded" and health["version"] == served["version"], health
    assert needle in health["last_reload_error"] and "still serving version" in health["last_reload_error"]
    assert str(faults["data"]) not in health["last_reload_error"]  # paths relative to the data dir
    # the old champion keeps answering
    model = client.get("/model").json()
    assert model["version"] == served["version"] and model["run"].startswith("runs/")
    response = client.get(f"/users/{user}/recommendations", params={"k": 3})
    assert response.status_code == 200 and response.json()["version"] == served["version"]
    # the watcher is alive: it retried the broken pointer (with backoff) but logged the error once
    wait_for(lambda: _metric(client, "recsys_reload_errors_total") >= errors_before + 2, what="a retry")
    assert faults["log"].read_text().count(health["last_reload_error"]) == 1
    # a good promotion (the registry rebuilds a damaged pointer from its history first) is picked up
    if case == "unreadable pointer":
        (registry.folder(NAME) / POINTER).rmdir()
    faults["copies"] += 1
    event = registry.promote(NAME, _copy(loop_runs, "ae_new", faults["data"], f"good-{faults['copies']}"), "good")
    wait_for(lambda: client.get("/health").json()["version"] == event.version, what="the next champion")
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok" and health.json()["last_reload_error"] is None
    assert client.get("/model").json()["run"] == f"runs/good-{faults['copies']}"


def test_a_run_folder_restored_is_picked_up_by_the_retries_alone(faults, loop_runs):
    """No pointer change at all: the backoff's retries find the run once it is back."""
    client, registry = faults["client"], faults["registry"]
    _deleted_run_folder(faults, loop_runs)
    wait_for(lambda: client.get("/health").status_code == 503, what="health to say degraded")
    broken = registry.champion(NAME)
    shutil.copytree(loop_runs["ae_new"], broken.run_dir)
    wait_for(lambda: client.get("/health").status_code == 200, what="the restored run")
    assert client.get("/health").json()["version"] == broken.version


def _metric(client: httpx.Client, name: str, headers: dict | None = None) -> float:
    text = client.get("/metrics", headers=headers).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_an_invalid_model_name_stops_the_server_with_one_sentence(tmp_path):
    done = subprocess.run([sys.executable, "-m", "recsys_core", "serve", "--registry", str(tmp_path / "registry"),
                           "--model", "../demo", "--port", "1"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "RECSYS_PROGRESS": "0"})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "registry model name '../demo' must be" in done.stderr


# --------------------------------------------------------------------------- limits


@pytest.fixture(scope="module")
def limited(loop_runs, tmp_path_factory):
    root = tmp_path_factory.mktemp("limits")
    registry = Registry(root / "registry")
    registry.promote(NAME, loop_runs["ae_old"], "first")
    with serving(root / "registry", NAME, root / "server.log",
                 extra=["--max-body-bytes", "4096", "--max-ratings", "5"]) as (client, _):
        wait_for(lambda: client.get("/health").status_code == 200, what="the champion")
        yield client
    assert "Traceback" not in (root / "server.log").read_text()


def _raw(client: httpx.Client, request: bytes) -> bytes:
    """One raw HTTP/1.1 exchange: the answer's bytes (the server closes or answers within 30 s)."""
    with socket.create_connection((client.base_url.host, client.base_url.port), timeout=30) as sock:
        sock.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


def test_a_body_over_the_limit_is_refused_before_it_is_read(limited):
    # Content-Length says 100 MB and nothing follows: 413 at once (the server never waits for the body)
    answer = _raw(limited, b"POST /recommendations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Content-Length: 104857600\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413") and b"over the limit of 4096 bytes" in answer
    # chunked (no Content-Length): refused as soon as the count passes the limit
    body = json.dumps({"ratings": {str(i): 3 for i in range(1, 2000)}}).encode()

    def chunks():
        for start in range(0, len(body), 1000):
            yield body[start:start + 1000]

    response = limited.post("/recommendations", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "over the limit of 4096 bytes" in response.json()["detail"]
    assert limited.get("/health").status_code == 200


@pytest.mark.parametrize("body,needle", [
    (b'{"ratings": {"1": 5, "2": 4, "3": 3, "4": 2, "5": 1, "6": 5}}', "6 ratings, more than the limit of 5"),
    (b'{"ratings": {"1": true}}', "the rating of item 1 is true, not a number"),
    (b'{"ratings": {"1": 5, "01": 1}}', "item 1 is given twice ('1' and '01')"),
    (b'{"ratings": {"1": 5, "1": 1}}', "item 1 is given twice"),
    (b'{"ratings": {"1": NaN}}', "not JSON"),
    (b'{"ratings": {"1": "4"}}', 'the rating of item 1 is "4", not a number'),
    (b'{"ratings": {"1_0": 4}}', "item id '1_0' is not an integer"),
    (b'{"ratings": {"1": 4}, "k": true}', "k: must be an integer in 1..1000"),
    (b'{"ratings": {"1": 4}, "user": 3}', "unknown field 'user'"),
    (b'[1, 2]', "must be a JSON object"),
    (b'{"ratings": {"1": 4}, "k": "\xff"}', "not UTF-8 text (at byte offset 28)"),
])
def test_bad_fold_in_bodies_get_422_with_one_sentence(limited, body, needle):
    response = limited.post("/recommendations", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422 and needle in response.json()["detail"], response.text
    assert "Traceback" not in response.text


def test_headers_over_the_limit_are_refused(limited):
    response = limited.get("/health", headers={"X-Padding": "a" * 20_000})
    assert response.status_code == 431 and "headers over the limit" in response.json()["detail"]
    # far over: uvicorn's own (h11) limit refuses it while parsing
    answer = _raw(limited, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 100_000 + b"\r\n\r\n")
    assert answer.split(b" ", 2)[1] in (b"400", b"431"), answer[:200]
    assert limited.get("/health").status_code == 200


# --------------------------------------------------------------------------- API key, /reload, metrics


@pytest.fixture(scope="module")
def keyed(loop_runs, tmp_path_factory):
    root = tmp_path_factory.mktemp("keyed")
    registry = Registry(root / "registry")
    registry.promote(NAME, loop_runs["ae_old"], "first")
    key_file = root / "api-key"
    key_file.write_text(KEY + "\n")
    with serving(root / "registry", NAME, root / "server.log", extra=["--api-key-file", str(key_file)]) as (client, _):
        wait_for(lambda: client.get("/health").status_code == 200, what="the champion")
        yield client
    log = (root / "server.log").read_text()
    assert "Traceback" not in log and KEY not in log


def test_every_route_but_health_needs_the_key(keyed, loop_runs):
    user = _known_user(loop_runs)
    good = {"Authorization": f"Bearer {KEY}"}
    assert keyed.get("/health").status_code == 200
    for path in ("/model", f"/users/{user}/recommendations", "/items/1/similar", "/metrics", "/no/such/route"):
        for headers in ({}, {"Authorization": f"Bearer {KEY[:-1]}x"}, {"Authorization": KEY},
                        {"Authorization": f"Bearer {KEY}x"}, {"Authorization": f"Basic {KEY}"}):
            response = keyed.get(path, headers=headers)
            assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer", path
            assert "Authorization: Bearer" in response.json()["detail"]
    assert keyed.post("/reload").status_code == 401
    assert keyed.post("/recommendations", json={"ratings": {"1": 5}}).status_code == 401
    assert keyed.get(f"/users/{user}/recommendations", headers=good).status_code == 200
    assert keyed.get("/model", headers={"Authorization": f"bearer {KEY}"}).status_code == 200  # scheme: any case
    assert keyed.post("/recommendations", json={"ratings": {"1": 5}}, headers=good).status_code == 200
    assert keyed.post("/reload", headers=good).json()["version"] == 1


def test_metrics_count_requests_and_show_the_champion(keyed, loop_runs):
    good = {"Authorization": f"Bearer {KEY}"}
    user = _known_user(loop_runs)
    for _ in range(3):
        assert keyed.get(f"/users/{user}/recommendations", headers=good).status_code == 200
    assert keyed.get("/model", headers={"Authorization": f"bearer {KEY}"}).status_code == 200  # scheme: any case
    keyed.get("/users/8/recommendations", headers=good)   # unknown user: 404
    text = keyed.get("/metrics", headers=good).text
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    route = "/users/{user_id}/recommendations"
    assert float(lines[f'recsys_http_requests_total{{method="GET",route="{route}",status="200"}}']) >= 3
    assert float(lines[f'recsys_http_requests_total{{method="GET",route="{route}",status="404"}}']) >= 1
    assert float(lines[f'recsys_http_request_duration_seconds_count{{route="{route}"}}']) >= 4
    assert float(lines[f'recsys_http_request_duration_seconds_bucket{{le="+Inf",route="{route}"}}']) >= 4
    assert float(lines['recsys_champion_version{model="demo"}']) == 1
    assert float(lines['recsys_champion_load_seconds{model="demo"}']) > 0
    assert float(lines['recsys_degraded{model="demo"}']) == 0 and lines['recsys_reload_errors_total{model="demo"}']


def _in_process(app, method: str, path: str) -> httpx.Response:
    """One request to an app in this process (no server, no lifespan), app exceptions answered as 500s."""
    async def go():
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.request(method, path)
    return asyncio.run(go())


def test_reload_without_a_key_only_on_loopback_and_never_for_web_pages(limited, loop_runs):
    """On loopback without a key, POST /reload works for local tools but not for a page's cross-origin
    request; beyond loopback without a key it is refused (the app as the CLI builds it for 0.0.0.0)."""
    assert limited.post("/reload").status_code == 200
    response = limited.post("/reload", content="x", headers={"Origin": "https://evil.example",
                                                              "content-type": "text/plain"})
    assert response.status_code == 403 and "Origin" in response.json()["detail"]

    from recsys_core.serving.app import create_app, is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    app = create_app(str(loop_runs["old"].parent / "none"), NAME, watch_interval=0, reload_open=False)
    response = _in_process(app, "POST", "/reload")   # no lifespan: the gate answers first
    assert response.status_code == 403 and "--api-key-file" in response.json()["detail"]


def test_an_unexpected_error_is_a_500_with_a_request_id_and_no_detail(loop_runs, tmp_path, caplog):
    from recsys_core.serving.app import create_app

    app = create_app(str(tmp_path / "registry"), NAME, watch_interval=0)

    def broken():
        raise ValueError("secret internal state /home/x")

    app.state.holder.require = broken
    response = _in_process(app, "GET", "/model")
    body = response.json()
    request_id = response.headers["x-request-id"]
    assert response.status_code == 500 and request_id in body["detail"] and "secret" not in response.text
    assert any(request_id in r.getMessage() and "secret internal state" in r.getMessage() for r in caplog.records)


def test_scores_of_a_folded_in_user_do_not_depend_on_key_spelling(limited):
    """'+1', '1' and '001' name one item: the answers are identical."""
    answers = [limited.post("/recommendations", content=json.dumps({"ratings": {key: 5, "2": 1}, "k": 5}),
                            headers={"content-type": "application/json"}).json()["items"]
               for key in ("1", "+1", "001")]
    assert answers[0] == answers[1] == answers[2] and len(answers[0]) == 5
    assert np.all(np.diff([entry["score"] for entry in answers[0]]) <= 0)


def test_the_services_top_k_is_the_rankings():
    """The numpy top-k of one row gives exactly ``recsys_core.ranking.top_k``'s answer, ties included."""
    from recsys_core.ranking import top_k
    from recsys_core.serving.service import top_k_row

    rng = np.random.default_rng(0)
    for _ in range(2000):
        n, k = int(rng.integers(1, 60)), int(rng.integers(1, 70))
        scores = rng.integers(0, 5, n).astype(np.float32)      # many ties, also across the cut-off
        scores[rng.random(n) < 0.3 * rng.random()] = -np.inf   # rated items
        assert np.array_equal(top_k_row(scores, k), top_k(scores[None, :], k)[0]), (scores, k)
