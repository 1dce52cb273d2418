"""Learned warm-up under a real gunicorn: with ``COWPROF_WARMUP=learned`` the workers of a first
start count the GET paths they answer with a 2xx status, and the second master requests them in
its warm-up; without ``learned`` neither happens (the pair that must fail the same check)."""
from __future__ import annotations

import http.client
import json
import os
import sys
import textwrap

import pytest

from gunicorn_server import GunicornServer

APP = textwrap.dedent("""
    import os

    def app(environ, start_response):
        path, method = environ["PATH_INFO"], environ["REQUEST_METHOD"]
        if path.startswith("/items/") and method == "GET":
            with open(os.environ["LEARNED_APP_LOG"], "a") as log:  # who served it: master or worker
                log.write(f"{os.getpid()} {path}\\n")
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [path.encode()]
        if path == "/submit":
            start_response("303 See Other", [("Location", "/items/1")])
            return [b""]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no"]
""")


def _serve_and_stop(tmp_path, env: dict[str, str], name: str, requests: list[tuple[str, str]]) -> dict:
    server = GunicornServer(str(tmp_path), "learnedapp:app", 2,
                            {**env, "COWPROF_PREPARE_REPORT": str(tmp_path / f"{name}.json")},
                            tmp_path / f"{name}.log")
    try:
        server.wait_ready()
        for method, path in requests:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            conn.request(method, path)
            conn.getresponse().read()
            conn.close()
    finally:
        server.stop()
    return {"report": json.loads((tmp_path / f"{name}.json").read_text()), "master": server.pid,
            "log": (tmp_path / f"{name}.log").read_text()}


LOAD = [("GET", "/items/1")] * 5 + [("GET", "/items/2")] * 2 + [("GET", "/missing"), ("POST", "/items/3"),
                                                                  ("GET", "/submit")]


@pytest.mark.skipif(sys.version_info < (3, 12), reason="the warm-up runs with the hook's prepare, CPython 3.12+")
@pytest.mark.parametrize("warmup", ["learned", "auto"])
def test_second_master_warms_up_with_what_the_first_ones_workers_served(tmp_path, warmup):
    (tmp_path / "learnedapp.py").write_text(APP)
    served = tmp_path / "served.log"
    env = {"COWPROF_WARMUP": warmup, "COWPROF_PRELOAD_DIR": str(tmp_path / "preload"),
           "COWPROF_APP_KEY": "learned-test", "LEARNED_APP_LOG": str(served), "PYTHONPATH": str(tmp_path)}
    first = _serve_and_stop(tmp_path, env, "first", LOAD)
    served.write_text("")
    second = _serve_and_stop(tmp_path, env, "second", [])
    warm = second["report"]["warmup"]
    assert warm["left_open"] == [], warm["left_open"]  # nothing a worker would inherit or miss
    in_master = [line.split()[1] for line in served.read_text().splitlines()
                 if int(line.split()[0]) == second["master"]]
    if warmup == "learned":
        # the 2xx GETs, most frequent first; not the 404, the POST nor the redirect
        assert second["report"]["learned_paths"] == ["/items/1", "/items/2"], second["log"][-2000:]
        assert {"/items/1", "/items/2"} <= set(warm["paths"])
        assert in_master.count("/items/1") >= 2 and in_master.count("/items/2") >= 2  # rounds, then settling
        assert first["report"]["learned_paths"] == []  # nothing learned yet at the first start
    else:
        assert "learned_paths" not in second["report"]
        assert in_master == [] and not set(warm["paths"]) & {"/items/1", "/items/2"}
    names = os.listdir(tmp_path / "preload")
    assert not any(n.startswith(f"paths-{first['master']}-") for n in names)  # merged into the learned list
