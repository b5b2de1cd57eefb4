"""`energo provision`: the enrollment client against a stand-in of the contract, the checks on
what the board reports, and the whole command against an emulated board's pty."""
import json
import re
import shutil

import pytest

from energo import identity, p256
from host_tools import cli, flashing
from tests.test_provision_standin import (
    ROOT,
    EmulatedBoard,
    StandInService,
    mqtt_password,
    require_umqtt,
)

KEY_LINE = re.compile(r"energo: meter (m-[0-9a-f]{12}) board \S+ key ([0-9a-f]+)")


@pytest.fixture
def service():
    svc = StandInService()
    yield svc
    svc.close()


@pytest.fixture
def token_file(tmp_path, service):
    path = tmp_path / "admin.token"
    path.write_text(service.token + "\n")
    return path


def _identity(role="meter"):
    pub = p256.public_key(p256.generate_private_key())
    return identity.device_id(pub, role), p256.spki_encode(pub)


def test_enroll_sends_the_contract_request_and_checks_the_answer(service):
    device_id, spki = _identity()
    answer = flashing.enroll(service.url + "/", service.token, device_id, spki.hex().upper(),
                             "meter", "alice")
    assert answer["mqtt_password"] == mqtt_password(service.secret, device_id)
    path, headers, body = service.requests[-1]
    assert path == "/api/v1/devices"
    assert json.loads(body) == {"device_id": device_id, "public_key": spki.hex().upper(),
                                "role": "meter", "member": "alice"}


def test_enroll_refusals_are_clear_errors(service):
    device_id, spki = _identity()
    with pytest.raises(flashing.FlashError, match="HTTP 401 unauthorized"):
        flashing.enroll(service.url, "wrong", device_id, spki.hex(), "meter", "alice")
    with pytest.raises(flashing.FlashError, match="HTTP 404 unknown_member: mallory"):
        flashing.enroll(service.url, service.token, device_id, spki.hex(), "meter", "mallory")
    with pytest.raises(flashing.FlashError, match="--service"):
        flashing.enroll("ftp://x", service.token, device_id, spki.hex(), "meter", "alice")
    service.close()
    with pytest.raises(flashing.FlashError, match="cannot reach the service"):
        flashing.enroll(service.url, service.token, device_id, spki.hex(), "meter", "alice",
                        timeout_s=2)


@pytest.mark.parametrize("change", [
    {"device_id": "m-000000000000"}, {"mqtt_username": "someone-else"}, {"member": "bob"},
    {"mqtt_password": ""}, {"mqtt_password": 7}])
def test_enroll_refuses_an_answer_that_departs_from_the_request(service, change):
    device_id, spki = _identity()
    good = {"device_id": device_id, "role": "meter", "member": "alice",
            "mqtt_username": device_id, "mqtt_password": "p" * 32}
    service.override = {**good, **change}
    with pytest.raises(flashing.FlashError, match="answer"):
        flashing.enroll(service.url, service.token, device_id, spki.hex(), "meter", "alice")


def test_parse_identity_checks_what_the_board_says():
    device_id, spki = _identity()
    out = f"energo-id: created meter {device_id} {spki.hex()}\nenergo-devcfg: null\n"
    assert flashing.parse_identity(out) == ("created", "meter", device_id, spki, None)
    other_id, _ = _identity()
    with pytest.raises(flashing.FlashError, match="its key gives"):
        flashing.parse_identity(out.replace(device_id, other_id))
    with pytest.raises(flashing.FlashError, match="bad public key"):
        flashing.parse_identity(out.replace(spki.hex(), spki.hex()[:-4] + "0000"))
    with pytest.raises(flashing.FlashError, match="unusable"):
        flashing.parse_identity("energo-id: corrupt meter - -\nenergo-problems: ['x']\n")
    with pytest.raises(flashing.FlashError, match="did not report"):
        flashing.parse_identity("Traceback ...\nImportError: no module named 'energo'\n")


def test_device_settings_merge_and_check():
    current = {"community": "north", "mqtt": {"url": "mqtt://broker:1884", "user": "old",
                                              "password": "old"}, "record_interval_s": 30}
    cfg = flashing.device_settings(current, "m-1", "pw", service_url="http://svc:8080")
    assert cfg == {"community": "north", "record_interval_s": 30,
                   "mqtt": {"url": "mqtt://broker:1884", "user": "m-1", "password": "pw"}}
    fresh = flashing.device_settings(None, "m-1", "pw", service_url="http://svc:8080",
                                     wifi_ssid="net", wifi_password="secret")
    assert fresh["community"] == "demo" and fresh["mqtt"]["url"] == "mqtt://svc:1883"
    assert fresh["wifi"] == {"ssid": "net", "password": "secret"}
    with pytest.raises(flashing.FlashError, match="community"):
        flashing.device_settings(None, "m", "p", community="Bad Name", service_url="http://s")
    with pytest.raises(flashing.FlashError, match="mqtt.url"):
        flashing.device_settings(None, "m", "p", mqtt_url="http://x", service_url="http://s")
    with pytest.raises(flashing.FlashError, match="--wifi-ssid"):
        flashing.device_settings(None, "m", "p", service_url="http://s", wifi_password="x")


def test_bad_arguments_fail_before_the_board_is_touched(tmp_path, service, token_file, capsys):
    port = str(tmp_path / "no-such-tty")
    base = ["provision", "--port", port, "--member", "alice", "--service", service.url,
            "--token", str(token_file)]
    bad_token = tmp_path / "empty.token"
    bad_token.write_text("\n")
    for argv, needle in [
            (base[:-1] + [str(bad_token)], "token file"),
            (base[:-1] + [str(tmp_path / "missing")], "cannot read"),
            (base[:6] + ["nope://x"] + base[7:], "--service"),
            (base + ["--community", "UPPER"], "community"),
            (base + ["--mqtt-url", "mqtt://host:99999"], "mqtt.url")]:
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err and err.count("\n") == 1, err
    assert service.requests == []


def test_an_unflashed_board_is_told_to_be_flashed_first(tmp_path, service, token_file, capsys):
    board = EmulatedBoard(tmp_path)
    try:
        assert cli.main(["provision", "--port", board.port, "--member", "alice", "--service",
                         service.url, "--token", str(token_file)]) == 2
    finally:
        board.close()
    err = capsys.readouterr().err
    assert "flash it with energo flash first" in err and "Traceback" not in err
    assert service.requests == []
    assert not (board.flash / "device.json").exists()


@pytest.fixture
def flashed_board(tmp_path):
    require_umqtt()
    board = EmulatedBoard(tmp_path)
    try:
        assert cli.main(["flash", "--port", board.port, "--board",
                         "boards/esp32-meter-sdm630.json"]) == 0
        board.wait_output("/device.json: missing")
        yield board
    finally:
        board.close()


def test_provision_enrolls_the_boards_own_key(flashed_board, service, token_file, capsys):
    board = flashed_board
    mark = len(board.output)
    argv = ["provision", "--port", board.port, "--member", "alice", "--service", service.url,
            "--token", str(token_file), "--community", "north", "--mqtt-url",
            "mqtt://127.0.0.1:1", "--wifi-ssid", "energo-sim", "--wifi-password",
            "sim-password"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    (device_id,) = service.devices
    enrolled = service.devices[device_id]
    assert f"provisioned {device_id} for alice" in out
    assert mqtt_password(service.secret, device_id) not in out  # the password is not shown
    # The key on the board is the enrolled one: the firmware prints it at boot.
    board.wait_output("energo: meter", start=mark)
    device_id_booted, spki_hex = KEY_LINE.search(board.text()[mark:]).groups()
    assert device_id_booted == device_id
    assert spki_hex.upper() == enrolled["public_key"]
    cfg = json.loads((board.flash / "device.json").read_text())
    assert cfg == {"community": "north", "wifi": {"ssid": "energo-sim",
                                                  "password": "sim-password"},
                   "mqtt": {"url": "mqtt://127.0.0.1:1", "user": device_id,
                            "password": mqtt_password(service.secret, device_id)}}
    # The key files stay on the board; nothing private went over the wire.
    assert sorted(p.name for p in (board.flash / "data").iterdir() if "devkey" in p.name) == [
        "devkey.a", "devkey.b"]
    for _, _, body in service.requests:
        assert set(json.loads(body)) == {"device_id", "public_key", "role", "member"}

    # Provisioning again (a new broker) keeps the identity and the other settings.
    mark = len(board.output)
    assert cli.main(argv[:11] + ["--mqtt-url", "mqtt://127.0.0.1:2"]) == 0
    assert list(service.devices) == [device_id]
    cfg2 = json.loads((board.flash / "device.json").read_text())
    assert cfg2["mqtt"]["url"] == "mqtt://127.0.0.1:2" and cfg2["community"] == "north"
    assert cfg2["wifi"] == cfg["wifi"]
    board.wait_output(f"energo: meter {device_id}", start=mark)


def test_a_refused_enrollment_leaves_the_board_as_it_was(request, tmp_path, service, token_file,
                                                         capsys):
    # The firmware put on the flash directly (energo flash is tested above and in test_flash).
    flash = tmp_path / "emu-flash"
    shutil.copytree(ROOT / "firmware", flash, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "boards" / "esp32-meter-sdm630.json", flash / "board.json")
    board = EmulatedBoard(tmp_path, flash=flash)
    request.addfinalizer(board.close)
    argv = ["provision", "--port", board.port, "--member", "mallory", "--service", service.url,
            "--token", str(token_file)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "HTTP 404 unknown_member" in err and "Traceback" not in err
    assert not (board.flash / "device.json").exists()
    assert service.devices == {}
