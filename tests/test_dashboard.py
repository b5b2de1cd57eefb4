"""The dashboard's JSON endpoint and page against a real SQLite ledger: who sees what (public
totals, a member's own row, the admin's every row), the numbers against the ledger's entries,
open-interval energy from the real ingest, refusals, the OpenAPI entry, and a page that loads
nothing from elsewhere. The page in a real browser: test_dashboard_browser.py."""
import json
import re

import pytest

from host_tools.api import dashboard, openapi, routes
from host_tools.settlement import market as settlement_market
from host_tools.settlement.ledger import MONEY, WATT, Ledger, Leg, member_account
from host_tools.settlement.registry import Registry
from host_tools.sim import community
from tests.conftest import need
from tests.test_api_support import T0_S, T1_S, Harness, state
from tests.test_ev_support import seed_session
from tests.test_ingest_support import Rig

DASHBOARD = "/api/v1/dashboard"


@pytest.fixture
def api(tmp_path):
    harness = Harness(f"sqlite:///{tmp_path / 'ledger.db'}", key_path=str(tmp_path / "key.pem"))
    harness.add_member("alice")
    harness.add_member("bob", storage_capacity_wh=5000)
    harness.add_member("carol")
    yield harness
    harness.close()


def _settle_two(api):
    """T0: alice exports 1300, imports 300; bob imports 200 (all from the grid).
    T1: alice sells 400 Wh to bob; alice exports 900; bob imports 500 (400 from storage)."""
    api.ledger.settle_interval(T0_S, {"alice": (300, 1300), "bob": (200, 0)})
    api.ledger.transfer("trade:1", [Leg(member_account("alice"), member_account("bob"), WATT, 400),
                                    Leg(member_account("bob"), member_account("alice"), MONEY,
                                        60_000)],
                        at_s=T1_S + 10, kind="trade", meta={"price_micro_per_kwh": 150_000},
                        allow_receivable=True)
    api.ledger.settle_interval(T1_S, {"alice": (0, 900), "bob": (500, 0)})


def _validator(path="/api/v1/dashboard", method="get", status="200",
               media="application/json"):
    try:
        import jsonschema
    except ImportError:
        jsonschema = None
    need(jsonschema is not None, "jsonschema is not installed")
    operation = openapi.document()["paths"][path][method]
    return jsonschema.Draft202012Validator(operation["responses"][status]["content"][media]
                                           ["schema"])


def _row(reply, name):
    return next(row for row in reply.json["members"] if row["name"] == name)


def test_the_public_sees_community_totals_only(api):
    _settle_two(api)
    reply = api.call("GET", DASHBOARD)
    assert reply.status == 200
    data = reply.json
    _validator().validate(data)
    assert data["viewer"] == {"kind": "public", "member": None}
    assert data["members"] is None and data["sessions"]["items"] is None
    for name in ("alice", "bob", "carol"):
        assert name not in reply.text, "no member's name in the public answer"
    assert data["members_count"] == 3
    assert data["community"]["last"]["production_wh"] == 900
    leaked = dict(data, community=dict(data["community"], alice={"production_wh": 1}))
    with pytest.raises(Exception, match="Additional properties"):
        _validator().validate(leaked)


def test_the_admin_sees_every_member_and_the_numbers_are_the_ledgers(api):
    _settle_two(api)
    reply = api.admin("GET", DASHBOARD)
    assert reply.status == 200
    data = reply.json
    _validator().validate(data)
    assert data["viewer"] == {"kind": "admin", "member": None}
    assert [row["name"] for row in data["members"]] == ["alice", "bob", "carol"]
    assert data["latest_interval_s"] == T1_S and data["next_open_interval_s"] == T1_S + 900
    assert data["day_start_s"] == T1_S - T1_S % 86_400
    alice, bob, carol = (_row(reply, name) for name in ("alice", "bob", "carol"))
    assert alice["today"] == {"production_wh": 2200, "consumption_wh": 300, "from_storage_wh": 300,
                              "from_grid_wh": 0, "to_grid_wh": 0, "bought_wh": 0,
                              "sold_wh": 400}
    assert alice["last"]["production_wh"] == 900 and alice["last"]["sold_wh"] == 400
    # bob: 200 Wh from the grid at T0; at T1 500 Wh of which his 400 bought Wh cover 400.
    assert bob["today"]["from_grid_wh"] == 300 and bob["today"]["from_storage_wh"] == 400
    assert bob["last"] == {"production_wh": 0, "consumption_wh": 500, "from_storage_wh": 400,
                           "from_grid_wh": 100, "to_grid_wh": 0, "bought_wh": 400, "sold_wh": 0}
    assert carol["today"] == dict.fromkeys(dashboard.FLOW_KEYS, 0)
    ledger = api.ledger
    for row in (alice, bob, carol):
        balances = ledger.balances(member_account(row["name"]))
        assert row["watt_wh"] == balances[WATT] and row["money_micro"] == balances[MONEY]
        assert row["cap_wh"] == ledger.cap_wh(row["name"])
    assert bob["storage_capacity_wh"] == 5000
    totals = data["community"]
    assert totals["stored_wh"] == sum(row["watt_wh"] for row in (alice, bob, carol))
    assert totals["cap_wh"] == sum(row["cap_wh"] for row in (alice, bob, carol))
    # The community's figures are the closed intervals' own totals.
    closed = {item["interval_start_s"]: item for item in data["prices"]["intervals"]}
    for start in (T0_S, T1_S):
        result = json.loads(ledger.db.one("SELECT result FROM intervals WHERE "
                                          "interval_start_s = ?", (start,))[0])
        assert closed[start]["minted_wh"] == result["minted_wh"]
        assert closed[start]["shortfall_wh"] == result["shortfall_wh"]
    assert totals["today"]["production_wh"] == 2200
    assert totals["today"]["from_grid_wh"] == 300
    assert totals["today"]["bought_wh"] == totals["today"]["sold_wh"] == 400


def test_a_member_sees_their_own_row_only(api):
    _settle_two(api)
    reply = api.as_member("bob", "GET", DASHBOARD)
    assert reply.status == 200
    _validator().validate(reply.json)
    assert reply.json["viewer"] == {"kind": "member", "member": "bob"}
    assert [row["name"] for row in reply.json["members"]] == ["bob"]
    assert "alice" not in reply.text and "carol" not in reply.text
    assert reply.json["sessions"] == {"count": 0, "energy_wh": 0, "items": []}


def test_prices_come_from_the_markets_reference_prices(api):
    _settle_two(api)
    db = api.ledger.db
    with db.transaction():
        settlement_market.ensure_tables(db)
        db.execute("INSERT INTO market_reference_prices (interval_start_s, price_micro_per_kwh, "
                   "volume_wh, trade_count, carried, agent_count, agent_order_count, "
                   "recorded_at_ms) VALUES (?, 150000, 400, 1, 0, 2, 3, 0)", (T1_S,))
    reply = api.call("GET", DASHBOARD + "?intervals=1")
    assert reply.status == 200
    prices = reply.json["prices"]
    assert prices["intervals"] == [{"interval_start_s": T1_S, "price_micro_per_kwh": 150_000,
                                    "volume_wh": 400, "trade_count": 1, "minted_wh": 900,
                                    "burned_wh": 400, "shortfall_wh": 100, "sold_wh": 0}]
    assert prices["retail_micro_per_kwh"] == api.ledger.config.retail_tariff_micro_per_kwh
    assert prices["feed_in_micro_per_kwh"] == api.ledger.config.feed_in_tariff_micro_per_kwh
    both = api.call("GET", DASHBOARD).json["prices"]["intervals"]
    assert [item["interval_start_s"] for item in both] == [T0_S, T1_S], "oldest first"
    assert both[0]["price_micro_per_kwh"] is None, "no market price recorded for T0"


def test_an_empty_ledger_answers_zeros(tmp_path):
    harness = Harness(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        reply = harness.admin("GET", DASHBOARD)
        assert reply.status == 200, reply.data
        _validator().validate(reply.json)
        assert reply.json["latest_interval_s"] is None and reply.json["day_start_s"] is None
        assert reply.json["members"] == [] and reply.json["prices"]["intervals"] == []
        assert reply.json["records_settled"] == 0
    finally:
        harness.close()


@pytest.mark.parametrize("path, token, status, code", [
    (DASHBOARD, "not-a-real-token-xxxxxxxx", 401, "unauthorized"),
    (DASHBOARD, "alice~" + "A" * 43, 401, "unauthorized"),
    (DASHBOARD + "?intervals=0", None, 400, "invalid_parameter"),
    (DASHBOARD + "?intervals=97", None, 400, "invalid_parameter"),
    (DASHBOARD + "?intervals=x", None, 400, "invalid_parameter"),
    (DASHBOARD + "?member=alice", None, 400, "unknown_parameter"),
    (DASHBOARD + "?intervals=1&intervals=2", None, 400, "invalid_parameter"),
])
def test_bad_requests_are_refused_and_change_nothing(api, path, token, status, code):
    _settle_two(api)
    before = state(api.ledger)
    reply = api.call("GET", path, token=token)
    assert reply.status == status, reply.data
    assert reply.json["error"] == code
    assert state(api.ledger) == before


def test_only_get_is_allowed(api):
    for method in ("POST", "PUT", "DELETE"):
        reply = api.admin(method, DASHBOARD)
        assert reply.status == 405 and reply.headers["Allow"] == "GET"


def test_open_intervals_and_settled_records_come_from_the_ingest(tmp_path):
    """Records of an interval that has not closed: 'live' is what the ingest summed for it."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    rig = Rig(url, tmp_path / "key.pem")
    harness = Harness(url, key_path=str(tmp_path / "key.pem"))
    try:
        alice, bob = rig.device("alice"), rig.device("bob")
        start_s = T0_S + 86_400 * 3
        for minute in range(1, 6):
            rig.send(alice, alice.record(start_s + 60 * minute, 10, 40))
            rig.send(bob, bob.record(start_s + 60 * minute, 25, 0))
        data = harness.admin("GET", DASHBOARD).json
        settled = rig.ledger.db.one("SELECT COUNT(*) FROM ingest_records "
                                    "WHERE state = 'settled'")[0]
        assert data["records_settled"] == settled > 0
        open_rows = rig.ledger.db.all("SELECT member, SUM(import_wh), SUM(export_wh) FROM "
                                      "ingest_open_energy GROUP BY member")
        expected = {member: {"import_wh": imp, "export_wh": exp} for member, imp, exp in open_rows}
        assert expected, "the interval is still open"
        assert {row["name"]: row["live"] for row in data["members"]} == expected
        assert data["community"]["live"] == {
            "import_wh": sum(v["import_wh"] for v in expected.values()),
            "export_wh": sum(v["export_wh"] for v in expected.values())}
        rig.send(alice, alice.record(start_s + 60 * 6, 10, 40))
        later = harness.call("GET", DASHBOARD).json
        assert later["records_settled"] > data["records_settled"]
        assert later["community"]["live"]["export_wh"] >= data["community"]["live"]["export_wh"]
    finally:
        harness.close()
        rig.close()


def test_the_page_and_its_files_are_served_and_load_nothing_from_elsewhere(api):
    page = api.call("GET", "/")
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    _validator("/", media="text/html").validate(page.text)
    referenced = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert set(referenced) == {"/static/dashboard.js", "/static/dashboard.css", "data:,"}
    referenced.remove("data:,")  # an empty icon: the browser asks the server for none
    for path in referenced:
        reply = api.call("GET", path)
        assert reply.status == 200, path
        expected = dashboard.STATIC_FILES[path.rsplit("/", 1)[1]].split(";")[0]
        assert reply.headers["Content-Type"].split(";")[0] == expected
        assert "Content-Security-Policy" in reply.headers
        # Nothing fetched from another origin (the SVG namespace is a name, not a fetch).
        text = reply.text.replace("http://www.w3.org/2000/svg", "")
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", text), path
    assert api.call("GET", "/static/other.js").status == 404
    assert api.call("GET", "/static/../dashboard.py").status == 404
    script = api.call("GET", "/static/dashboard.js").text
    assert "innerHTML" not in script, "values are written as text, never parsed as HTML"


def test_the_openapi_document_describes_the_dashboard(api):
    document = api.call("GET", "/openapi.json").json
    for route in routes.DASHBOARD_ROUTES:
        assert route.path in document["paths"]
    operation = document["paths"][DASHBOARD]["get"]
    assert operation["security"] == [{}, {"memberToken": []}, {"adminToken": []}]
    assert "401" in operation["responses"] and "403" not in operation["responses"]
    assert [p["name"] for p in operation["parameters"]] == ["intervals"]
    assert "text/html" in document["paths"]["/"]["get"]["responses"]["200"]["content"]
    try:
        from openapi_spec_validator import validate
    except ImportError:
        validate = None
    need(validate is not None, "openapi-spec-validator is not installed")
    validate(document)


def test_charging_sessions_are_counted_for_all_and_listed_for_those_concerned(api):
    assert api.call("GET", DASHBOARD).json["sessions"] == {"count": 0, "energy_wh": 0,
                                                           "items": None}
    assert community.sessions_count(api.ledger.db) == 0
    paid_by_alice = seed_session(api.ledger, "alice", "bob", session="a1" * 16)
    carols_own = seed_session(api.ledger, "carol", "carol", session="c3" * 16)
    public = api.call("GET", DASHBOARD)
    _validator().validate(public.json)
    assert public.json["sessions"] == {"count": 2, "energy_wh": 6, "items": None}
    assert paid_by_alice not in public.text and carols_own not in public.text
    admin = api.admin("GET", DASHBOARD).json["sessions"]
    _validator().validate(api.admin("GET", DASHBOARD).json)
    assert {item["session"] for item in admin["items"]} == {paid_by_alice, carols_own}
    expected = {"alice": [paid_by_alice], "bob": [paid_by_alice], "carol": [carols_own]}
    for member, sessions in expected.items():
        reply = api.as_member(member, "GET", DASHBOARD).json["sessions"]
        assert [item["session"] for item in reply["items"]] == sessions, member
        assert reply["count"] == 2, "the community's count, as for the public"
    row = next(item for item in admin["items"] if item["session"] == paid_by_alice)
    assert row == {"session": paid_by_alice, "station": "c-000000000000",
                   "vehicle": "v-000000000000", "member": "alice", "owner": "bob",
                   "state": "settled", "wh": 3, "total_micro": 840, "authorized_at_s": 1}
    assert community.sessions_count(api.ledger.db) == dashboard.sessions_count(api.ledger.db) == 2


def test_the_progress_line_reads_trades_and_sessions_from_the_database(tmp_path):
    run = community.CommunityRun(community.Options(out_dir=str(tmp_path / "run")))
    run.out_dir.mkdir()
    run.db_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger.open(run.db_url, key_path=str(tmp_path / "key.pem"))
    try:
        ledger.add_member("alice")
        with ledger.db.transaction():
            settlement_market.ensure_tables(ledger.db)
            ledger.db.execute(
                "INSERT INTO market_reference_prices (interval_start_s, price_micro_per_kwh, "
                "volume_wh, trade_count, carried, agent_count, agent_order_count, "
                "recorded_at_ms) VALUES (?, 150000, 700, 3, 0, 1, 4, 0)", (T0_S,))
    finally:
        ledger.close()
    run.market = True
    assert run._read_db_counts() == {"trades": "3", "sessions": "0"}
    # Read at most every 5 s, except for a run's last line, which must be up to date.
    run.market = False
    assert run._read_db_counts() == {"trades": "3", "sessions": "0"}
    assert run._read_db_counts(fresh=True) == {"trades": "-", "sessions": "0"}
    run.market = True
    assert run._dashboard_link("http://127.0.0.1:8080") == "http://127.0.0.1:8080/", \
        "no admin token yet: the public page"
    (run.out_dir / "admin-token").write_text("t" * 43 + "\n")
    assert run._dashboard_link("http://127.0.0.1:8080") == \
        "http://127.0.0.1:8080/#token=" + "t" * 43


@pytest.mark.postgres
def test_the_same_numbers_on_postgresql(postgres_url, tmp_path):
    """PostgreSQL sums are NUMERIC: the answer must still be integers, equal to SQLite's."""
    answers = []
    for url in (postgres_url, f"sqlite:///{tmp_path / 'ledger.db'}"):
        harness = Harness(url, key_path=str(tmp_path / f"key-{len(answers)}.pem"))
        try:
            for name in ("alice", "bob", "carol"):
                harness.add_member(name, storage_capacity_wh=5000 if name == "bob" else 0)
            _settle_two(harness)
            Registry(harness.ledger)  # the device table the charge-and-pay tables refer to
            seed_session(harness.ledger, "alice", "bob")
            reply = harness.admin("GET", DASHBOARD)
            assert reply.status == 200, reply.data
            _validator().validate(reply.json)
            answers.append(reply.json)
        finally:
            harness.close()
    assert answers[0] == answers[1]
