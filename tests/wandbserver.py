"""A loopback stand-in of W&B's GraphQL API, recording what it receives (no network; for `sweeper dashboard
--publish`).

    with WandbStandIn(entity="E", project="P") as srv:
        env = {"WANDB_BASE_URL": srv.url, "WANDB_API_KEY": "x" * 40}
        ... run the client ...
        srv.requests   # [{"path", "query", "variables"}] of every POST, in order

It answers the few operations a report/view save needs, by the field the operation asks for: ``viewer`` (the
login check), ``models`` (the project list), ``upsertModel`` (create a project), ``upsertView`` (save: echoes
the view back with an id), and ``{"data": {}}`` to anything else (recorded all the same, so a test sees it).
It is not W&B: what it accepts says nothing about whether W&B's server would.
"""
from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class WandbStandIn:
    def __init__(self, entity: str = "E", project: str = "P", projects_exist: bool = True):
        self.entity, self.project, self.projects_exist = entity, project, projects_exist
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._views = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):
                self._send(200, {"status": "ok"})

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    msg = json.loads(body or b"{}")
                except json.JSONDecodeError:
                    msg = {"raw": body.decode(errors="replace")}
                with owner._lock:
                    owner.requests.append({"path": self.path, "query": msg.get("query", ""),
                                           "variables": msg.get("variables") or {}})
                self._send(200, owner._answer(msg.get("query", ""), msg.get("variables") or {}))

            def _send(self, code: int, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _answer(self, query: str, variables: dict) -> dict:
        if re.search(r"\bupsertView\s*\(", query):
            with self._lock:
                self._views += 1
                n = self._views
            return {"data": {"upsertView": {"inserted": True, "view": {
                "id": f"view{n}", "type": variables.get("type"), "name": variables.get("name") or f"name{n}",
                "displayName": variables.get("displayName"), "description": variables.get("description") or "",
                "project": {"id": "project1", "name": variables.get("projectName"),
                            "entityName": variables.get("entityName")},
                "spec": variables.get("spec"), "updatedAt": "2026-01-01T00:00:00Z", "createdAt": "2026-01-01T00:00:00Z"}}}}
        if re.search(r"\bupsertModel\s*\(", query):
            return {"data": {"upsertModel": {"inserted": True, "model": {
                "id": "project1", "name": self.project, "entityName": self.entity, "description": None,
                "createdAt": "2026-01-01T00:00:00Z", "isBenchmark": False}}}}
        if re.search(r"\bmodels\s*\(", query):
            edges = [{"node": {"__typename": "Project", "id": "project1", "name": self.project,
                               "entityName": self.entity, "createdAt": "2026-01-01T00:00:00Z", "isBenchmark": False,
                               "user": None}}] if self.projects_exist else []
            return {"data": {"models": {"edges": edges, "pageInfo": {"__typename": "PageInfo", "hasNextPage": False,
                                                                     "endCursor": None}}}}
        if re.search(r"\bviewer\b", query):
            return {"data": {"viewer": {"id": "user1", "entity": self.entity, "username": "tester", "flags": "{}",
                                        "teams": {"edges": []}, "email": None, "admin": False}}}
        return {"data": {}}

    def upserts(self) -> list[dict]:
        """The variables of every upsertView received, in order."""
        return [r["variables"] for r in self.requests if re.search(r"\bupsertView\s*\(", r["query"])]

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
