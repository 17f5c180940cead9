"""The web UI in real headless Chromium (Debian's, driven by Playwright; never `playwright install`),
against a real ``ctl server``, Redis and workers running containers. Screenshots of each page go to the
test's tmp folder (and /work/notes/screens when that folder exists) for a person to look at."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from scheduler.service import submit_file
from tests.conftest import Workers
from tests.helpers import write_dag
from tests.servers import OPERATOR_TOKEN, Server, own_settings, wait_for_state  # noqa: F401

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync"]
SCREENS = Path("/work/notes/screens")
HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)>"

REPORT = """
    name: report
    description: Daily report of orders
    schedule: {cron: "0 17 * * 1-5", timezone: America/New_York, calendar: NYSE}
    params:
      date: {type: date, required: true, description: The day to report on.}
      rows: {type: int, default: 3}
      region: {type: string, enum: [eu, us], default: eu}
    defaults: {image: conveyor/busybox:local}
    steps:
      extract: {command: [sh, -c, 'echo "rows $0 for $1"; sleep 1', "{{ params.rows }}", "{{ params.date }}"]}
      enrich: {command: [echo, enriched], depends_on: [extract]}
      check: {command: [sh, -c, 'test "$0" -lt 10 || { echo "too many rows" >&2; exit 4; }', "{{ params.rows }}"],
              depends_on: [extract]}
      load: {command: [echo, loaded], depends_on: [check, enrich]}
"""
HOSTILE_DAG = """
    name: hostile
    description: "<img src=x onerror=alert(3)> a DAG whose text tries to run script"
    params: {note: {type: string, default: ""}}
    steps:
      shout: {image: conveyor/busybox:local, command: [sh, -c, "echo 'HOSTILE'; echo 'HOSTILE' >&2"]}
""".replace("HOSTILE", HOSTILE)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is missing: run ./dev setup (apt-get install chromium)", pytrace=False)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


@pytest.fixture
def server(settings, tmp_path, store) -> Iterator[Server]:
    submit_file(store, write_dag(tmp_path, REPORT, "report.yaml"))
    submit_file(store, write_dag(tmp_path, HOSTILE_DAG, "hostile.yaml"))
    running = Server(settings, tmp_path)
    yield running
    running.stop()


@pytest.fixture
def page(browser: Browser, server: Server) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    opened.dialogs = []  # type: ignore[attr-defined]
    opened.on("dialog", lambda d: (opened.dialogs.append(d.message), d.dismiss()))  # type: ignore[attr-defined]
    yield opened
    context.close()


def shot(page: Page, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if SCREENS.parent.is_dir():
        SCREENS.mkdir(exist_ok=True)
        shutil.copy(path, SCREENS / path.name)


def log_in(page: Page, server: Server) -> None:
    page.goto(server.url + "/")
    expect(page).to_have_url(f"{server.url}/login?next=%2F")
    page.fill("input[name=token]", OPERATOR_TOKEN)
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("DAGs")


@pytest.mark.timeout(300)
def test_log_in_trigger_from_the_form_and_watch_steps_turn_green(page: Page, server: Server, workers: Workers,
                                                                  tmp_path: Path) -> None:
    workers.start(2)
    page.goto(server.url + "/login")
    shot(page, tmp_path, "01-login")
    log_in(page, server)
    rows = page.locator("table.dags tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(1)).to_contain_text("at 17:00, Monday to Friday")
    shot(page, tmp_path, "02-dags")

    page.click("a.dag-name:text-is('report')")
    expect(page.locator("#trigger-form input[name=date]")).to_have_attribute("type", "date")
    expect(page.locator("#trigger-form input[name=rows]")).to_have_attribute("type", "number")
    expect(page.locator("#trigger-form select[name=region] option")).to_have_count(3)
    expect(page.locator("#next .timeline li").first).to_be_visible()
    shot(page, tmp_path, "03-dag")
    page.click("#trigger-form button[type=submit]")  # the required date is empty: the browser keeps the form
    assert page.url.endswith("/dags/report")
    assert page.locator("#trigger-form input[name=date]:invalid").count() == 1

    page.fill("#trigger-form input[name=date]", "2026-11-20")
    page.fill("#trigger-form input[name=rows]", "5")
    page.click("#trigger-form button[type=submit]")
    page.wait_for_url(f"{server.url}/runs/*")
    run_id = page.url.rsplit("/", 1)[1]
    page.evaluate("window.__sameDocument = true")
    expect(page.locator("tr[data-step=extract]")).not_to_have_attribute("data-state", "queued", timeout=60000)
    shot(page, tmp_path, "04-run-live")
    for step in ("extract", "enrich", "check", "load"):
        expect(page.locator(f"tr[data-step={step}]")).to_have_attribute("data-state", "success", timeout=90000)
    expect(page.locator("h1 .badge")).to_have_text("success", timeout=30000)
    assert page.evaluate("window.__sameDocument") is True, "the page was reloaded"
    expect(page.locator("svg.graph g.node.s-success")).to_have_count(4)
    expect(page.locator("svg.gantt rect.bar")).to_have_count(4)
    shot(page, tmp_path, "05-run-success")

    page.click("tr[data-step=extract] a:text-is('Logs')")
    expect(page.locator("pre.log")).to_have_text("rows 5 for 2026-11-20\n")
    expect(page.locator(".kv dd.param-value").first).to_have_text("2026-11-20")
    assert wait_for_state(server.client(), run_id, {"success"})["params"]["rows"] == 5
    page.set_viewport_size({"width": 390, "height": 844})
    shot(page, tmp_path, "06-run-phone")


@pytest.mark.timeout(300)
def test_rerun_a_failed_step_and_see_the_new_attempt(page: Page, server: Server, workers: Workers,
                                                     tmp_path: Path) -> None:
    workers.start(2)
    client = server.client()
    run_id = client.post("/api/v1/dags/report/runs", json={"params": {"date": "2026-11-21", "rows": 12}}).json()[
        "run_id"]
    assert wait_for_state(client, run_id, {"success", "failed"})["state"] == "failed"
    log_in(page, server)
    page.goto(f"{server.url}/runs/{run_id}")
    expect(page.locator("tr[data-step=check]")).to_have_attribute("data-state", "failed")
    expect(page.locator("pre.log")).to_have_text("too many rows\n")  # the failed step's log is opened
    shot(page, tmp_path, "07-run-failed")
    page.click("button[data-action=rerun-failed]")
    page.evaluate("window.__sameDocument = true")
    expect(page.locator("tr[data-step=check] + tr.attempts-row summary")).to_have_text("2 attempts", timeout=90000)
    expect(page.locator("tr[data-step=load]")).to_have_attribute("data-state", "upstream_failed", timeout=90000)
    assert page.evaluate("window.__sameDocument") is True
    expect(page.locator(".log-links a:text-is('#2')")).to_be_visible()
    shot(page, tmp_path, "08-run-rerun")


@pytest.mark.timeout(300)
def test_hostile_output_params_and_names_show_as_text(page: Page, server: Server, workers: Workers,
                                                      tmp_path: Path) -> None:
    workers.start(1)
    client = server.client()
    run_id = client.post("/api/v1/dags/hostile/runs", json={"params": {"note": HOSTILE}}).json()["run_id"]
    assert wait_for_state(client, run_id, {"success", "failed"})["state"] == "success"
    log_in(page, server)
    expect(page.locator("table.dags")).to_contain_text("<img src=x onerror=alert(3)>")
    page.goto(f"{server.url}/runs/{run_id}?step=shout")
    expect(page.locator("pre.log")).to_contain_text(HOSTILE)
    expect(page.locator(".kv dd.param-value")).to_have_text(HOSTILE)
    page.wait_for_timeout(1000)  # time for an injected onerror to fire, if there were one
    assert page.dialogs == []  # type: ignore[attr-defined]
    assert page.locator("main img").count() == 0 and page.locator("main script").count() == 0
    shot(page, tmp_path, "09-hostile")


@pytest.mark.timeout(300)
def test_diff_and_stats_pages(page: Page, server: Server, workers: Workers, tmp_path: Path) -> None:
    workers.start(2)
    client = server.client()
    good = client.post("/api/v1/dags/report/runs", json={"params": {"date": "2026-11-19"}}).json()["run_id"]
    bad = client.post("/api/v1/dags/report/runs", json={"params": {"date": "2026-11-20", "rows": 40}}).json()[
        "run_id"]
    wait_for_state(client, good, {"success", "failed"})
    wait_for_state(client, bad, {"success", "failed"})
    log_in(page, server)
    page.goto(f"{server.url}/runs/{bad}")
    page.click("a:text-is('Compare with previous')")
    expect(page).to_have_url(f"{server.url}/runs/{good}/diff/{bad}")
    expect(page.locator("tr.differs th.mono:text-is('rows')")).to_have_count(1)
    expect(page.locator("tr.differs", has_text="check")).to_have_count(1)
    expect(page.locator(".chip b")).not_to_have_text("0")
    shot(page, tmp_path, "10-diff")
    page.goto(f"{server.url}/stats?by=step")
    expect(page.locator("table.stats tbody tr")).not_to_have_count(0)
    shot(page, tmp_path, "11-stats")
    page.goto(f"{server.url}/dags/report")
    shot(page, tmp_path, "12-dag-with-runs")
