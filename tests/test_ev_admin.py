"""Charge-and-pay administration: `energo vehicle`, `energo station fee`, and the sessions API
(members see their own sessions only)."""
import json

from energo import evproto
from host_tools import cli
from tests.test_api_support import Harness
from tests.test_ev_support import EvKit, key, spki


def _cli(capsys, *argv):
    code = cli.main(list(argv))
    return code, capsys.readouterr()


def test_vehicle_and_station_commands(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    kit = EvKit(url, tmp_path / "key.pem")
    station = kit.station
    kit.close()
    pub = spki(key("cli car"))
    code, out = _cli(capsys, "vehicle", "add", "--db", url, "--pubkey", pub.upper(),
                     "--member", "other", "--offline-limit", "5000")
    assert code == 0, out.err
    added = json.loads(out.out)
    assert (added["member"], added["offline_limit_micro"]) == ("other", 5000)
    assert _cli(capsys, "vehicle", "add", "--db", url, "--pubkey", pub, "--member", "other",
                "--offline-limit", "5000")[0] == 0  # the same again: a no-op
    code, out = _cli(capsys, "vehicle", "add", "--db", url, "--pubkey", pub, "--member", "driver")
    assert code == 2 and "already registered" in out.err
    code, out = _cli(capsys, "vehicle", "add", "--db", url, "--pubkey", "3059abcd",
                     "--member", "driver")
    assert code == 2 and "not a P-256" in out.err
    code, out = _cli(capsys, "vehicle", "add", "--db", url, "--pubkey", spki(key("x")),
                     "--member", "nobody")
    assert code == 2 and "no member" in out.err
    code, out = _cli(capsys, "vehicle", "list", "--db", url)
    assert sorted(v["member"] for v in json.loads(out.out)) == ["driver", "other"]
    code, out = _cli(capsys, "station", "fee", "--db", url, "--device-id", station,
                     "--fee", "41000")
    assert code == 0 and json.loads(out.out)["fee"] == 41000
    code, out = _cli(capsys, "station", "fee", "--db", url, "--device-id", "c-000000000000",
                     "--fee", "1")
    assert code == 2 and "not an enrolled charger" in out.err


def test_sessions_api_shows_members_their_own_sessions(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    kit = EvKit(url, tmp_path / "key.pem")
    session, offer, auth, _ = kit.authorize()
    records = kit.records(session, 4_000)
    receipt = kit.send(kit.close_request(session, offer, auth, records))["receipt"]
    kit.close()
    harness = Harness(url)
    try:
        tokens = {name: harness.admin("POST", f"/api/v1/members/{name}/token").json["token"]
                  for name in ("driver", "owner", "other")}
        for name in ("driver", "owner"):
            reply = harness.call("GET", "/api/v1/sessions", token=tokens[name])
            assert [s["session"] for s in reply.json["sessions"]] == [session]
            one = harness.call("GET", f"/api/v1/sessions/{session}", token=tokens[name])
            assert one.status == 200 and one.json["session"]["receipt"] == receipt
            assert one.json["session"]["wh"] == 4_000
        assert harness.call("GET", "/api/v1/sessions", token=tokens["other"]).json == {
            "sessions": []}
        assert harness.call("GET", f"/api/v1/sessions/{session}",
                            token=tokens["other"]).status == 404
        assert harness.call("GET", "/api/v1/sessions").status == 401
        assert harness.admin("GET", "/api/v1/sessions").json["sessions"][0]["session"] == session
        assert harness.admin("GET", "/api/v1/sessions/XYZ").status == 400
        assert harness.admin("GET", "/api/v1/sessions/" + "0" * 32).status == 404
    finally:
        harness.close()


def test_allow_list_fits_one_signed_message(tmp_path):
    kit = EvKit(f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path / "key.pem")
    try:
        for n in range(30):
            kit.ev.add_vehicle(spki(key(f"fleet car {n}")), "other", 1_000 + n)
        kit.ev.add_vehicle(spki(key("never offline")), "other", 0)
        allow = kit.ev.allow_list()
        assert len(allow) <= 4096
        body = evproto.open_message(allow, "allow", kit.ev.community_key_hex())
        ids = [v["id"] for v in body["vehicles"]]
        assert 10 <= len(ids) < 31 and ids == sorted(ids)
        assert evproto.key_id(spki(key("never offline")), "vehicle") not in ids
        assert body["seq"] == 32
    finally:
        kit.close()
