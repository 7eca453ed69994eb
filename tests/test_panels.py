"""Pattern panels: a pattern's extra sections on its deployment page, each
re-rendered alone for a live update, and seen only by those who may see the page."""
from __future__ import annotations

import pytest
from django.test import Client

from deployments.patterns import get_pattern
from deployments.views import panels
from deployments.views.panels import Panel


def _panel_context(actor, deployment):
    return {"figure": f"{deployment.replicas} replicas wanted by {deployment.agent.slug}"}


NOTE = Panel("note", "tests/panel_note.html", _panel_context)


@pytest.fixture
def note_panel(world, monkeypatch, settings, tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "panel_note.html").write_text(
        '<section class="card" id="{{ panel.id }}"><h2>Note</h2>'
        '<p data-testid="note">{{ panel.figure }}</p>'
        '{% if can_write %}<button>Act</button>{% endif %}</section>')
    settings.TEMPLATES = [{**settings.TEMPLATES[0],
                           "DIRS": [*settings.TEMPLATES[0]["DIRS"], tmp_path]}]
    monkeypatch.setitem(panels.PANELS, "note", "tests.test_panels.NOTE")
    pattern = get_pattern(world.deployment.agent.pattern)
    monkeypatch.setattr(type(pattern), "panels", ("note", "not-registered"))
    return world.deployment


def _client(world, who):
    client = Client()
    client.force_login(world.users[who])
    return client


def test_the_page_includes_the_patterns_panels(world, note_panel):
    d = note_panel
    html = _client(world, "operator").get(f"/deployments/{d.pk}/").content.decode()
    assert 'id="panel-note"' in html
    assert f"{d.replicas} replicas wanted by {d.agent.slug}" in html
    assert "<button>Act</button>" in html
    viewer_html = _client(world, "viewer").get(f"/deployments/{d.pk}/").content.decode()
    assert 'id="panel-note"' in viewer_html and "<button>Act</button>" not in viewer_html


def test_a_panel_rerenders_alone_for_its_htmx_target(world, note_panel):
    d = note_panel
    partial = _client(world, "viewer").get(f"/deployments/{d.pk}/", headers={
        "HX-Request": "true", "HX-Target": "panel-note"}).content.decode()
    assert partial.startswith('<section class="card" id="panel-note">')
    assert "Revisions" not in partial


def test_another_pattern_shows_no_panel_and_outsiders_see_nothing(world, note_panel):
    d = note_panel
    outsider = _client(world, "outsider")
    assert outsider.get(f"/deployments/{d.pk}/", headers={
        "HX-Request": "true", "HX-Target": "panel-note"}).status_code == 404
    other = next(p for p in ("batch", "stream", "realtime", "edge") if p != d.agent.pattern)
    d.agent.pattern = other
    d.agent.save(update_fields=["pattern"])
    html = _client(world, "viewer").get(f"/deployments/{d.pk}/").content.decode()
    assert 'id="panel-note"' not in html
