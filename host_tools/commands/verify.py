"""`energo verify [FILE|-] [--key HEX|FILE] [--community-key HEX|FILE]`: verify offline.

Input is one record per line: either a bare OCMF string (then --key is needed),
or a JSON object with "ocmf" and "public_key" (hex/base64 SPKI). A file that is one
JSON object with "receipt" and "records" is a charging receipt instead, checked
completely (docs/charging-protocol.md). Exit status: 0 all valid, 1 any invalid,
2 unreadable input.
"""
import json
import pathlib
import sys

from host_tools import verify
from host_tools.cli import UsageError

LINE_BYTES_MAX = 1 << 20


def register(sub):
    parser = sub.add_parser(
        "verify",
        help="verify signed OCMF records or a charging receipt offline",
        description="Verify OCMF records, one per line (bare, or JSON with ocmf and public_key), "
        "or a charging receipt file (JSON with receipt, cert, records, meter, vehicle_pub, "
        "community_key). Exit 0 when all are valid, 1 when any is invalid, 2 for unreadable "
        "input.",
        epilog="Example: energo verify records.txt --key 3059301306072A8648CE3D0201...",
    )
    parser.add_argument("file", nargs="?", default="-", help="file of records, or - for stdin")
    parser.add_argument("--key", help="public key: hex or base64 DER SPKI, PEM, or a file of one")
    parser.add_argument("--community-key", metavar="HEX|FILE",
                        help="receipts: the community key you trust (the file's must equal it)")
    parser.set_defaults(func=run)


def _key_from_arg(arg):
    if arg is None:
        return None
    path = pathlib.Path(arg)
    text = arg
    if len(arg) < 4096 and path.is_file():
        try:
            text = path.read_text()
        except (OSError, UnicodeError) as exc:
            raise UsageError(f"cannot read key file {arg}: {exc}") from None
    try:
        return verify.read_key_text(text)
    except verify.KeyError_ as exc:
        raise UsageError(str(exc)) from None


def _read_lines(name):
    try:
        data = sys.stdin.buffer.read() if name == "-" else pathlib.Path(name).read_bytes()
        text = data.decode("utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {name}: {exc.strerror or exc}") from None
    except UnicodeError:
        raise UsageError(f"{name} is not UTF-8 text") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise UsageError(f"no records in {name}")
    return lines


def _entry(line, default_key):
    """(ocmf text, key bytes or an error string) for one input line."""
    if line.startswith("{"):
        try:
            obj = json.loads(line)
            text = obj["ocmf"]
            key_text = obj.get("public_key") or obj.get("public_key_hex")
        except (ValueError, KeyError, TypeError, AttributeError):
            return line, "line is JSON but has no 'ocmf' string"
        if key_text is None:
            return text, default_key or "no public_key in the line and no --key given"
        try:
            return text, verify.read_key_text(key_text)
        except verify.KeyError_ as exc:
            return text, str(exc)
    return line, default_key or "no --key given for a bare OCMF record"


def run(args):
    default_key = _key_from_arg(args.key)
    lines = _read_lines(args.file)
    receipt = _as_receipt(lines)
    if receipt is not None:
        return _verify_receipt(receipt, _key_from_arg(args.community_key))
    if args.community_key:
        raise UsageError("--community-key is for receipt files; this file holds OCMF records")
    invalid = 0
    for number, line in enumerate(lines, 1):
        if len(line) > LINE_BYTES_MAX:
            print(f"record {number}: INVALID: line longer than {LINE_BYTES_MAX} bytes")
            invalid += 1
            continue
        text, key = _entry(line, default_key)
        if isinstance(key, str):
            print(f"record {number}: INVALID: {key}")
            invalid += 1
            continue
        result = verify.verify_text(text, key)
        _print_result(number, result)
        invalid += not result.valid
    print(f"{len(lines) - invalid} valid, {invalid} invalid")
    return 1 if invalid else 0


def _print_result(number, result):
    record = result.record
    head = f"record {number}: {'VALID' if result.valid else 'INVALID'}: {result.reason}"
    if record is not None:
        pg = record.get("PG")
        head += f" (meter {record.get('MS', '?')}, {pg if isinstance(pg, str) else '?'})"
    print(head)
    if record is not None:
        for reading in record.readings:
            tm = reading.fields.get("TM", "?")
            value = reading.value.text if reading.value is not None else "?"
            print(f"  {tm}  TX={reading.tx or '?'}  {value} {reading.unit or '?'}"
                  f"  {reading.obis or ''}  ST={reading.status or '?'}")
    for note in result.notes:
        print(f"  note: {note}")


def _as_receipt(lines):
    """The receipt file's object when the input is one (decided by content), else None."""
    from host_tools.settlement import ev_receipt

    if not lines[0].startswith("{") or lines[0].startswith('{"ocmf"'):
        return None
    try:
        obj = json.loads("\n".join(lines))
    except ValueError:
        return None
    return obj if ev_receipt.is_receipt_file(obj) else None


def _verify_receipt(doc, community_key):
    from host_tools.settlement import ev_receipt

    try:
        receipt = ev_receipt.verify(doc, community_key)
    except ev_receipt.ReceiptError as exc:
        print(f"receipt: INVALID: {exc.check} check failed: {exc.detail}")
        return 1
    print(f"receipt: VALID (session {receipt['session']}, station {receipt['station']}, "
          f"vehicle {receipt['vehicle']})")
    print(f"  energy  {receipt['wh']} Wh")
    print(f"  price   {receipt['price']} µ/kWh -> {receipt['energy_micro']} µ")
    print(f"  fee     {receipt['fee']} µ/kWh -> {receipt['fee_micro']} µ (to {receipt['owner']})")
    print(f"  total   {receipt['total_micro']} µ (hold {receipt['hold_micro']} µ, released "
          f"{receipt['released_micro']} µ)")
    notes = [name for name, on in (("countersigned by the vehicle", receipt["countersigned"]),
                                   ("settled after an offline session", receipt["offline"])) if on]
    if notes:
        print("  " + "; ".join(notes))
    return 0
