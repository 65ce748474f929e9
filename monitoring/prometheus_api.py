"""A minimal client of Prometheus' HTTP API (instant and range queries), for `rlef report` and tests.

Scope: GET /api/v1/query and /api/v1/query_range with the standard library only; results are returned as
the API's ``data.result`` list (vector: ``{"metric": {...}, "value": [t, "v"]}``; matrix: ``"values"``).
A query error (bad PromQL, unreachable server) raises :class:`PrometheusError` naming the query.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request

from rlef.common.errors import RlefError


class PrometheusError(RlefError):
    """A Prometheus query failed: server unreachable, HTTP error, or a PromQL error (message says which)."""


class PrometheusAPI:
    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def _get(self, path: str, params: dict[str, str], what: str) -> dict:
        full = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(full, timeout=self.timeout_s) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read()).get("error", "")
            except (ValueError, OSError):
                detail = ""
            raise PrometheusError(f"{self.url}: {what}: HTTP {exc.code} {detail}") from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise PrometheusError(f"{self.url}: {what}: {exc}") from exc
        if body.get("status") != "success":
            raise PrometheusError(f"{self.url}: {what}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def reachable(self) -> bool:
        """True when /-/ready answers 200."""
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=min(self.timeout_s, 3.0)) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """Instant query; returns the result vector (scalars come back as one sample without labels)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self._get("/api/v1/query", params, f"query {expr!r}")
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def query_range(self, expr: str, start: float, end: float, step_s: float) -> list[dict]:
        """Range query; returns the result matrix."""
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{max(step_s, 0.001):.3f}"}
        return self._get("/api/v1/query_range", params, f"query_range {expr!r}")["result"]

    def value(self, expr: str, at: float | None = None) -> float:
        """The single value of an instant query that must return exactly one series (NaN when none)."""
        result = self.query(expr, at)
        if not result:
            return math.nan
        if len(result) > 1:
            raise PrometheusError(f"{self.url}: query {expr!r} returned {len(result)} series, expected one")
        return float(result[0]["value"][1])

    def targets(self, state: str = "any") -> dict:
        """GET /api/v1/targets: ``{"activeTargets": [...], "droppedTargets": [...]}``; state: active, dropped, any."""
        return self._get("/api/v1/targets", {"state": state}, f"targets state={state}")

    def wait_for(self, expr: str, timeout_s: float, poll_s: float = 0.5) -> list[dict]:
        """Poll until ``expr`` returns a non-empty vector; raise PrometheusError on timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.query(expr)
            if result:
                return result
            if time.monotonic() > deadline:
                raise PrometheusError(f"{self.url}: {expr!r} still empty after {timeout_s:.0f} s")
            time.sleep(poll_s)
