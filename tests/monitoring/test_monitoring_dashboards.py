"""Grafana dashboards: JSON matches the specs, provisioning is consistent, every query works on a real run."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from rlef.monitoring.dashboards import DASHBOARD_DIR, DASHBOARDS, DATASOURCE_UID, GRAFANA_DIR, dashboard_queries, dashboard_text
from rlef.monitoring.prometheus_api import PrometheusError


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_dashboard_json_matches_specs(uid):
    path = DASHBOARD_DIR / f"{uid}.json"
    assert path.is_file(), f"{path} missing: .venv/bin/python -m rlef.monitoring.dashboards"
    assert path.read_text() == dashboard_text(uid), f"{path} is stale: .venv/bin/python -m rlef.monitoring.dashboards"
    doc = json.loads(path.read_text())
    assert doc["uid"] == uid and doc["panels"]
    for panel in doc["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}, panel["title"]
        assert panel["targets"], panel["title"]
    positions = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in doc["panels"]]
    assert len(set(positions)) == len(positions)  # no panel on top of another


def test_provisioning_points_at_the_datasource_and_dashboards():
    ds = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "rlef.yml").read_text())
    assert [d["uid"] for d in ds["datasources"]] == [DATASOURCE_UID]
    assert ds["datasources"][0]["type"] == "prometheus"
    providers = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "rlef.yml").read_text())["providers"]
    assert providers[0]["type"] == "file" and providers[0]["options"]["path"] == "${RLEF_GRAFANA_DASHBOARDS}"
    assert sorted(p.stem for p in DASHBOARD_DIR.glob("*.json")) == sorted(DASHBOARDS)


def _specs():
    for uid, (_, panels) in DASHBOARDS.items():
        for panel in panels:
            yield pytest.param(uid, panel, id=f"{uid}/{panel.title}")


@pytest.mark.services
@pytest.mark.slow
@pytest.mark.parametrize("uid,panel", list(_specs()))
def test_panel_queries_on_a_real_run(live_run, uid, panel):
    """Every query parses in Prometheus; panels whose roles ran return data for each `always` query."""
    api = live_run.prometheus
    exprs = [t for title, t in dashboard_queries(json.loads((DASHBOARD_DIR / f"{uid}.json").read_text())) if title == panel.title]
    assert exprs == [q.expr for q in panel.queries]
    check_data = panel.roles <= live_run.roles
    for query in panel.queries:
        end = time.time()
        try:
            api.query_range(query.expr, end - 120, end, 2)  # a PromQL error raises here
        except PrometheusError as exc:
            pytest.fail(f"{uid} / {panel.title}: {exc}")
        if not (check_data and query.always):
            continue
        deadline = time.monotonic() + 45
        while True:
            end = time.time()
            result = api.query_range(query.expr, end - 120, end, 2)
            if any(series["values"] for series in result):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"{uid} / {panel.title}: {query.expr!r} returned no data from the live run")
            time.sleep(1)
