"""`energo bench NAME [--json]`: run one benchmark.

Each benchmark is a module in `host_tools.bench` with a `NAME`, a one-line
`__doc__`, an optional `add_arguments(parser)` and `run(args) -> dict`. The
result dict is printed as one JSON object on the last line with --json.
"""
import importlib
import json
import pkgutil

from host_tools import bench


def _benchmarks():
    found = {}
    for info in pkgutil.iter_modules(bench.__path__):
        module = importlib.import_module(f"{bench.__name__}.{info.name}")
        if hasattr(module, "run"):
            found[getattr(module, "NAME", info.name)] = module
    return found


def register(sub):
    benches = _benchmarks()
    parser = sub.add_parser(
        "bench",
        help="run a benchmark and print its figures",
        description="Run one benchmark; baselines are measured in the same run.",
        epilog="Example: energo bench sign --json",
    )
    sub_names = parser.add_subparsers(dest="bench_name", metavar="NAME", required=True)
    for name, module in sorted(benches.items()):
        p = sub_names.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        p.add_argument("--json", action="store_true", help="print the result as one JSON line last")
        if hasattr(module, "add_arguments"):
            module.add_arguments(p)
        p.set_defaults(bench_module=module)
    parser.set_defaults(func=_run)


def _run(args):
    result = args.bench_module.run(args)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        for key, value in result.items():
            print(f"{key:32} {value}")
    return 0
