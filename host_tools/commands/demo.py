"""`energo demo`: sign OCMF readings with a fresh device key and verify them."""
from host_tools import demo
from host_tools.errors import UsageError


def register(sub):
    parser = sub.add_parser(
        "demo",
        help="sign a few OCMF readings with a new device key and verify them",
        description="Generate a device key with the firmware's P-256 code, sign periodic OCMF "
        "readings, verify them with OpenSSL and show that tampering is caught.",
        epilog="Example: energo demo --records 5 --out out/demo",
    )
    parser.add_argument("--records", type=int, default=5, help="how many records (1-1000)")
    parser.add_argument("--out", default="out/demo", help="where to write records and key")
    parser.set_defaults(func=run)


def run(args):
    if not 1 <= args.records <= 1000:
        raise UsageError("--records must be between 1 and 1000")
    try:
        ok = demo.run(args.out, args.records)
    except OSError as exc:
        raise UsageError(f"cannot write to {args.out}: {exc.strerror or exc}") from None
    return 0 if ok else 1
