"""`energo sim community`: a simulated community day (emulated meters, broker, settlement).

A thin layer over `host_tools.sim.community`; option errors are one line and exit status 2.
"""
import argparse
import sys

from host_tools.cli import UsageError


def _number(name, low, high, integer):
    def parse(text):
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            kind = "a whole number" if integer else "a number"
            raise argparse.ArgumentTypeError(f"{name} must be {kind}, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{name} must be from {low:g} to {high:g}")
        return value
    return parse


def register(sub):
    from host_tools.sim import community

    parser = sub.add_parser(
        "sim",
        help="run simulations of the whole system with emulated boards",
        description="Simulations that run the unmodified firmware on emulated boards against "
                    "the real broker and settlement service.",
        epilog="Example: energo sim community --households 12 --hours 24 --seed 1",
    )
    kinds = parser.add_subparsers(dest="sim_kind", metavar="KIND")
    defaults = community.Options()
    run = kinds.add_parser(
        "community",
        help="a community day: households with CT and Modbus meters, PV, a storage owner, "
             "a charge point and two vehicles that pay",
        description="Provision and enroll one emulated meter per household, start the broker "
                    "and the settlement service, run the simulated period with a progress "
                    "line, then print the summary (settled energy beside the world's ground "
                    "truth, grid exchange, storage fees, ledger invariants, the last checkpoint) "
                    "and write summary.json and report.html into the output directory. "
                    "Ctrl-C stops the boards and prints a partial summary. The world, the "
                    "devices' keys, the households and the vehicles' arrivals follow from "
                    "--seed; the vehicles' receipts are kept in the output directory's "
                    "receipts/ for `energo verify`.",
        epilog="Example: energo sim community --households 6 --hours 24 --start-hour 0 --seed 3",
    )
    run.add_argument("--households", type=_number("--households", 1, community.HOUSEHOLDS_MAX,
                                                  True),
                     default=defaults.households,
                     help=f"emulated households (default {defaults.households})")
    run.add_argument("--hours", type=_number("--hours", 0.25, community.HOURS_MAX, False),
                     default=defaults.hours,
                     help=f"simulated hours (default {defaults.hours:g}: a whole day; four "
                          f"hours around noon: --hours 4 --start-hour 10)")
    run.add_argument("--start-hour", type=_number("--start-hour", 0, 23.75, False),
                     default=defaults.start_hour,
                     help=f"hour of the day (UTC) the run starts at (default "
                          f"{defaults.start_hour:g})")
    run.add_argument("--speed", type=_number("--speed", 1, community.SPEED_MAX, False),
                     default=defaults.speed,
                     help=f"simulated seconds per wall second (default {defaults.speed:g})")
    run.add_argument("--seed", type=_number("--seed", 0, 2**31 - 1, True),
                     default=defaults.seed, help=f"world and device seed (default "
                                                 f"{defaults.seed})")
    run.add_argument("--db", metavar="URL",
                     help="ledger database, sqlite:///PATH or postgresql://... (must be empty; "
                          "default: a fresh SQLite file in the output directory)")
    broker = run.add_mutually_exclusive_group()
    broker.add_argument("--broker", metavar="URL",
                        help="use this external broker (mqtt://HOST:PORT) instead of the "
                             "embedded one; it must accept the derived device passwords")
    broker.add_argument("--mosquitto", action="store_true",
                        help="run a private Mosquitto with the generated passwords and ACL "
                             "instead of the embedded broker")
    run.add_argument("--out", metavar="DIR", default=defaults.out_dir,
                     help=f"output directory (default {defaults.out_dir})")
    run.add_argument("--record-interval-s", type=_number("--record-interval-s", 15, 60, True),
                     default=defaults.record_interval_s,
                     help=f"seconds between signed records (default "
                          f"{defaults.record_interval_s})")
    run.add_argument("--sample-interval-ms",
                     type=_number("--sample-interval-ms", 1000, 60_000, True),
                     default=defaults.sample_interval_ms,
                     help=f"Modbus meters' polling interval (default "
                          f"{defaults.sample_interval_ms})")
    run.add_argument("--ct-sample-interval-ms",
                     type=_number("--ct-sample-interval-ms", 1000, 60_000, True),
                     default=defaults.ct_sample_interval_ms,
                     help=f"CT meters' sampling interval; shorter is more accurate and "
                          f"costlier (default {defaults.ct_sample_interval_ms})")
    run.add_argument("--no-ev", action="store_true",
                     help="leave out the charge point and its two vehicles")
    run.add_argument("--ev-target-wh", type=_number("--ev-target-wh", 100, 20_000, True),
                     metavar="WH",
                     help="energy each vehicle charges (default: 3000 to 5000 Wh from the seed)")
    run.add_argument("--processes", type=_number("--processes", 0, community.HOUSEHOLDS_MAX,
                                                  True),
                     default=defaults.processes,
                     help="worker processes the households' boards are split over (default: "
                          "one per core)")
    run.add_argument("--no-report", action="store_true",
                     help="skip the HTML report (the summary is still printed and saved)")
    run.set_defaults(func=_run)
    parser.set_defaults(func=_no_kind, sim_parser=parser)


def _no_kind(args):
    args.sim_parser.print_help()
    raise UsageError("choose a simulation, e.g. `energo sim community`")


def options_from_args(args):
    """`community.Options` from parsed arguments; UsageError for a bad combination."""
    from host_tools.sim import community

    options = community.Options(
        households=args.households, hours=args.hours, start_hour=args.start_hour,
        speed=args.speed, seed=args.seed,
        db_url=args.db, broker_url=args.broker, mosquitto=args.mosquitto, out_dir=args.out,
        record_interval_s=args.record_interval_s, sample_interval_ms=args.sample_interval_ms,
        ct_sample_interval_ms=args.ct_sample_interval_ms,
        report=not args.no_report, ev=not args.no_ev, ev_target_wh=args.ev_target_wh,
        processes=args.processes)
    try:
        return options.check()
    except community.SimError as exc:
        raise UsageError(str(exc)) from None


def _run(args):
    from host_tools.settlement import LedgerError
    from host_tools.sim import community, fleet, processes, summary

    options = options_from_args(args)
    try:
        result = community.CommunityRun(options, out=sys.stdout).run()
    except (community.SimError, processes.ProcessError, fleet.FleetError, LedgerError) as exc:
        raise UsageError(str(exc)) from None
    print(summary.format_table(result), flush=True)
    print(f"\nsummary: {options.out_dir}/summary.json"
          + (f"; report: {result['report']}" if result.get("report") else ""), flush=True)
    if result["run"]["interrupted"]:
        print("(partial: the run was interrupted)", flush=True)
        return 130
    ev = result.get("ev_sessions")
    ev_ok = ev is None or ev["paid_verified"] == len(ev["planned"])
    return 0 if result["invariants"]["ok"] and result["invariants"]["checkpoints_ok"] \
        and ev_ok else 1
