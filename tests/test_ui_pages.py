"""Operator pages added for a newcomer: the runs page across deployments, the
Tokens page and ``manage.py create_token``, the page paths the README names,
the favicon, how to call an agent, and the small honesty fixes (stopped,
unknown cost). Who may see and do what on each. What a user sees in the
browser when a form fails is in tests/test_ui_browser.py."""
from __future__ import annotations

import re
import uuid
from datetime import timedelta
from decimal import Decimal
from html import unescape
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from deployments import actions
from deployments.audit import Actor
from deployments.models import ApiToken, AuditEvent, Deployment, Instance
from telemetry.models import Run

from .factories import DeploymentFactory

HX = {"HX-Request": "true"}


def login(world, who: str) -> Client:
    client = Client()
    client.force_login(world.users[who])
    return client


def make_run(deployment, *, minutes_ago: float = 1, status: str = "ok", cost: str = "0.01",
             model: str = "gpt-4o-mini", unpriced: int = 0, name: str = "invoke") -> Run:
    return Run.objects.create(
        team_id=deployment.agent.team_id, agent_id=deployment.agent_id,
        deployment_id=deployment.pk, trace_id=uuid.uuid4(), root_span_id=1, name=name,
        status=status, started_at=timezone.now() - timedelta(minutes=minutes_ago),
        duration_ms=120, cost_usd=Decimal(cost), model=model, unpriced_spans=unpriced,
        input_tokens=10, output_tokens=5, llm_spans=1)


@pytest.fixture
def runs(world):
    foreign = Deployment.objects.exclude(agent__team=world.team).get()
    return {
        "ok": make_run(world.deployment, name="cheap-ok", cost="0.002"),
        "error": make_run(world.deployment, name="failed-one", status="error", cost="0.5",
                          minutes_ago=30),
        "unpriced": make_run(world.deployment, name="no-price", model="offline-echo",
                             unpriced=1, cost="0", minutes_ago=60),
        "foreign": make_run(foreign, name="foreign-run"),
    }


# Page paths -------------------------------------------------------------------------


def test_every_page_path_the_readme_names_exists(world, runs):
    client = login(world, "admin")
    paths = ["/", "/fleet/", "/runs/", f"/runs/{runs['ok'].pk}/", "/costs/",
             f"/teams/{world.team.pk}/costs/", f"/agents/{world.agent.pk}/",
             f"/deployments/{world.deployment.pk}/", f"/deployments/{world.deployment.pk}/runs/",
             f"/teams/{world.team.pk}/tokens/"]
    for path in paths:
        assert client.get(path).status_code == 200, path
    top_bar = client.get("/fleet/").content.decode().split('<nav class="mainnav">')[1]
    top_bar = top_bar.split("</nav>")[0]
    for href, text in (("/runs/", "Runs"), ("/costs/", "Costs"), ("/tokens/", "Tokens")):
        assert re.search(rf'<a href="{href}"[^>]*>{text}</a>', top_bar), text
    # The first home of these pages forwards, query string and all.
    old = client.get("/telemetry/costs/?x=1")
    assert old.status_code == 302 and old["Location"] == "/costs/?x=1"


def test_favicon_is_served_and_linked(world):
    client = login(world, "viewer")
    response = client.get("/favicon.ico", follow=True)
    assert response.status_code == 200
    body = b"".join(response.streaming_content) if response.streaming else response.content
    assert body[:4] == b"\x00\x00\x01\x00"  # an ICO file
    page = client.get("/fleet/").content.decode()
    assert re.search(r'<link rel="icon" href="/static/img/favicon\.svg"', page)


def test_error_pages_say_why(world):
    viewer = login(world, "viewer")
    denied = viewer.get(f"/teams/{world.team.pk}/tokens/")
    assert denied.status_code == 403
    assert re.search(r"data-error-detail>This needs the admin role in the team; you have "
                     r"viewer\.<", denied.content.decode())
    missing = viewer.get("/no/such/page/")
    assert missing.status_code == 404 and b"There is nothing at this address" in missing.content


# Runs page --------------------------------------------------------------------------


def test_runs_page_lists_readable_runs_newest_first(world, runs):
    html = login(world, "viewer").get("/runs/").content.decode()
    assert html.index("cheap-ok") < html.index("failed-one") < html.index("no-price")
    assert "foreign-run" not in html
    assert "Support bot @ production" in html
    assert "unknown" in html.split("no-price")[1].split("</tr>")[0]


def test_runs_page_anonymous_goes_to_login_outsider_sees_only_theirs(world, runs):
    response = Client().get("/runs/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")
    html = login(world, "outsider").get("/runs/").content.decode()
    assert "foreign-run" in html and "cheap-ok" not in html
    # A filter on someone else's team or deployment is not a way in.
    html = login(world, "outsider").get(
        f"/runs/?deployment={world.deployment.pk}").content.decode()
    assert "cheap-ok" not in html and "Select a valid choice" in html


@pytest.mark.parametrize("query, shown", [
    ("status=error", {"failed-one"}),
    ("status=ok", {"cheap-ok", "no-price"}),
    ("min_cost=0.01", {"failed-one"}),
    ("max_cost=0.01", {"cheap-ok"}),
    ("cost_unknown=true", {"no-price"}),
    ("cost_unknown=false", {"cheap-ok", "failed-one"}),
    ("model=offline-echo", {"no-price"}),
    ("deployment={deployment}", {"cheap-ok", "failed-one", "no-price"}),
    ("agent={spare_agent}", set()),
    ("team={team}", {"cheap-ok", "failed-one", "no-price"}),
])
def test_runs_page_filters_as_the_api(world, runs, query, shown):
    query = query.format(deployment=world.deployment.pk, spare_agent=world.spare_agent.pk,
                         team=world.team.pk)
    html = login(world, "viewer").get(f"/runs/?{query}").content.decode()
    names = {"cheap-ok", "failed-one", "no-price"}
    assert {n for n in names if n in html} == shown
    api = login(world, "viewer").get(f"/api/v1/runs?{query}").json()
    assert {item["name"] for item in api["items"]} == shown


def test_runs_page_since_until_and_a_bad_range(world, runs):
    client = login(world, "viewer")
    since = timezone.localtime(timezone.now() - timedelta(minutes=45)).strftime("%Y-%m-%dT%H:%M")
    html = client.get(f"/runs/?since={since}").content.decode()
    assert "failed-one" in html and "no-price" not in html
    html = client.get("/runs/?min_cost=1&max_cost=0.5").content.decode()
    assert "The maximum cost is below the minimum." in html
    assert "no-price" not in html and "failed-one" not in html  # min_cost still applies
    partial = client.get("/runs/?status=error", headers={**HX, "HX-Target": "runs-list"})
    assert b"<html" not in partial.content and b'id="runs-list"' in partial.content


def test_runs_page_queries_do_not_grow_with_runs(world, runs, django_assert_num_queries):
    client = login(world, "viewer")
    extra = DeploymentFactory(agent=world.spare_agent, target=world.target)
    client.get("/runs/")  # warm the session
    with django_assert_num_queries(9):
        client.get("/runs/")
    for n in range(40):
        make_run(extra if n % 2 else world.deployment, name=f"bulk-{n}")
    with django_assert_num_queries(9):
        html = client.get("/runs/").content.decode()
    assert html.count("bulk-") == 40


# Tokens page ------------------------------------------------------------------------


@pytest.mark.parametrize("who, status", [("admin", 200), ("operator", 403), ("viewer", 403),
                                         ("outsider", 404)])
def test_tokens_page_is_for_team_admins(world, who, status):
    assert login(world, who).get(f"/teams/{world.team.pk}/tokens/").status_code == status
    response = login(world, who).post(f"/teams/{world.team.pk}/tokens/",
                                      {"name": "x", "scope": "read"})
    assert response.status_code == (201 if who == "admin" else status)
    revoke = login(world, who).post(f"/tokens/{world.token_row.pk}/revoke/")
    assert revoke.status_code == (302 if who == "admin" else status)
    assert (ApiToken.objects.get(pk=world.token_row.pk).revoked_at is not None) == \
        (who == "admin")


def test_anonymous_tokens_page_goes_to_login(world):
    for path in ("/tokens/", f"/teams/{world.team.pk}/tokens/"):
        response = Client().get(path)
        assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_create_a_token_shown_once_then_listed_and_revoked(world):
    client = login(world, "admin")
    expires = timezone.localtime(timezone.now() + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M")
    response = client.post(f"/teams/{world.team.pk}/tokens/",
                           {"name": "ci-deploy", "scope": "deploy", "expires_at": expires},
                           headers=HX)
    assert response.status_code == 201 and response["Cache-Control"] == "no-store"
    html = response.content.decode()
    assert "<html" not in html and 'id="tokens-panel"' in html
    plaintext = re.search(r'data-testid="token-value">(hgr_[^<]+)<', html).group(1)
    token = ApiToken.objects.get(name="ci-deploy")
    assert plaintext.startswith(f"hgr_{token.prefix}_")
    assert token.scope == "deploy" and token.user == world.users["admin"]
    assert token.expires_at > timezone.now() + timedelta(days=29)
    assert actions.authenticate_token(plaintext) == token
    event = AuditEvent.objects.get(action="token.create", object_id=str(token.pk))
    assert event.source == "ui" and event.actor_label == "admin"
    # Listed with its prefix, never with its secret.
    page = client.get(f"/teams/{world.team.pk}/tokens/").content.decode()
    assert f"hgr_{token.prefix}_…" in page and plaintext not in page
    response = client.post(f"/tokens/{token.pk}/revoke/", headers=HX)
    assert response.status_code == 200 and "revoked" in response.content.decode()
    assert actions.authenticate_token(plaintext) is None
    assert AuditEvent.objects.filter(action="token.revoke", object_id=str(token.pk)).exists()


def test_token_form_errors(world):
    client = login(world, "admin")
    past = timezone.localtime(timezone.now() - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    response = client.post(f"/teams/{world.team.pk}/tokens/",
                           {"name": "late", "scope": "read", "expires_at": past}, headers=HX)
    assert response.status_code == 422 and b"Expiry must be in the future." in response.content
    response = client.post(f"/teams/{world.team.pk}/tokens/", {"name": "", "scope": "root"},
                           headers=HX)
    assert response.status_code == 422
    assert b"This field is required." in response.content and b"Select a valid choice" in \
        response.content
    assert not ApiToken.objects.filter(name="late").exists()


def test_tokens_link_leads_an_admin_to_their_team_and_others_to_an_explanation(world):
    response = login(world, "admin").get("/tokens/")
    assert response.status_code == 302 and response["Location"] == f"/teams/{world.team.pk}/tokens/"
    html = login(world, "viewer").get("/tokens/").content.decode()
    assert "you are not an admin of any team" in html


def test_tokens_list_queries_are_flat(world, django_assert_num_queries):
    client = login(world, "admin")
    client.get(f"/teams/{world.team.pk}/tokens/")
    with django_assert_num_queries(5):
        client.get(f"/teams/{world.team.pk}/tokens/")
    for n in range(20):
        actions.create_token(world.team, name=f"bulk-{n}", scope="read", expires_at=None,
                             actor=Actor(user=world.users["admin"]))
    with django_assert_num_queries(5):
        html = client.get(f"/teams/{world.team.pk}/tokens/").content.decode()
    assert html.count("<tr data-token=") == 21


def test_create_token_command(world):
    out, err = StringIO(), StringIO()
    call_command("create_token", "--user", "operator", "--team", "acme", "--scope", "deploy",
                 "--expires", "30d", stdout=out, stderr=err)
    plaintext = out.getvalue().strip()
    token = actions.authenticate_token(plaintext)
    assert token is not None and token.user == world.users["operator"]
    assert token.team == world.team and token.scope == "deploy"
    assert timedelta(days=29) < token.expires_at - timezone.now() <= timedelta(days=30)
    assert "not shown again" in err.getvalue() and plaintext not in err.getvalue()
    assert AuditEvent.objects.filter(action="token.create", object_id=str(token.pk)).exists()
    out = StringIO()
    call_command("create_token", "--user", "viewer", "--team", "acme", stdout=out)
    token = actions.authenticate_token(out.getvalue().strip())
    assert token.scope == "read" and token.expires_at is None
    for args, message in [
        (["--user", "nobody", "--team", "acme"], "No user 'nobody'"),
        (["--user", "viewer", "--team", "nope"], "No team with the slug 'nope'"),
        (["--user", "outsider", "--team", "acme"], "must be a member of the team"),
        (["--user", "viewer", "--team", "acme", "--expires", "soon"], "--expires 'soon'"),
        (["--user", "viewer", "--team", "acme", "--expires", "2001-01-01"], "in the future"),
    ]:
        with pytest.raises(CommandError, match=message):
            call_command("create_token", *args, stdout=StringIO(), stderr=StringIO())


def test_admin_token_message_shows_the_whole_prefix(world):
    from .factories import UserFactory

    root = UserFactory(username="root")
    root.is_staff = root.is_superuser = True
    root.save()
    client = Client()
    client.force_login(root)
    response = client.post("/admin/deployments/apitoken/add/",
                           {"team": world.team.pk, "user": world.users["admin"].pk,
                            "name": "from-admin", "scope": "read"}, follow=True)
    token = ApiToken.objects.get(name="from-admin")
    texts = [str(m) for m in response.context["messages"]]
    assert any(f"hgr_{token.prefix}_…" in text for text in texts), texts
    assert not any("hgr__" in text for text in texts)


# Deployment page, agent page, fleet -------------------------------------------------


def test_new_version_refreshes_the_deploy_forms_version_list(world):
    client = login(world, "operator")
    response = client.post(f"/agents/{world.agent.pk}/versions/",
                           {"image": "hangar/reference-agent:2", "cpu": "0.5",
                            "memory_mb": "256"}, headers=HX)
    html = response.content.decode()
    assert response.status_code == 200 and 'id="versions"' in html
    oob = html.split('id="deploy-form"')[1].split("</form>")[0]
    assert 'hx-swap-oob="outerHTML"' in oob and "v3</option>" in oob
    bad = client.post(f"/agents/{world.agent.pk}/versions/",
                      {"image": "x", "cpu": "0.5", "memory_mb": "256", "pattern_settings": "{"},
                      headers=HX)
    assert bad.status_code == 422 and b"hx-swap-oob" not in bad.content


def test_stopped_deployment_says_stopped(world):
    Deployment.objects.filter(pk=world.deployment.pk).update(state="stopped")
    html = login(world, "viewer").get(f"/deployments/{world.deployment.pk}/").content.decode()
    assert "Stopped: no instances run until it is resumed." in html
    assert "No instances observed yet" not in html


def test_deployment_page_says_how_to_call_the_agent(world):
    url = f"/deployments/{world.deployment.pk}/"
    html = login(world, "viewer").get(url).content.decode()
    assert 'data-testid="call-agent"' in html and "once one runs" in html
    Instance.objects.create(deployment=world.deployment, name="support-bot-1", phase="running",
                            health="Healthy", address="127.0.0.1:41234",
                            version=world.version, target=world.target)
    html = login(world, "viewer").get(url).content.decode()
    assert "http://127.0.0.1:41234/" in html
    curl = re.search(r'data-testid="curl">([^<]+)<', html).group(1)
    assert unescape(curl) == ("curl -X POST http://127.0.0.1:41234/invoke -H 'Content-Type: "
                              "application/json' -d '{\"input\": \"hello\"}'")


def test_fleet_names_the_unpriced_model(world):
    make_run(world.deployment, model="offline-echo", unpriced=1, cost="0")
    make_run(world.deployment, model="gpt-4o-mini", cost="0.25")
    html = login(world, "viewer").get("/fleet/").content.decode()
    row = html.split(f'data-deployment="{world.deployment.pk}"')[1].split("</tr>")[0]
    assert "+?" not in row
    assert re.search(r'title="No known price for offline-echo: those runs are not in this '
                     r'figure">\+ unknown<', row)


def test_agent_form_slug_follows_the_name(world):
    html = login(world, "operator").get("/agents/new/").content.decode()
    assert re.search(r'<input[^>]*name="slug"[^>]*data-slug-from="name"|'
                     r'<input[^>]*data-slug-from="name"[^>]*name="slug"', html)
