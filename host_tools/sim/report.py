"""The HTML report of a community run: the summary table and PNG plots next to it.

Plots are drawn with matplotlib's non-interactive Agg backend (no display needed, same output
on a CI machine) from the summary dict alone, so a report can be redrawn from summary.json.
What the run has no data for (market prices without a market, EV sessions with --no-ev) is
said in the report rather than drawn as an empty chart.
"""
import datetime
import html
import json
import pathlib

POWER_PLOT = "power.png"
GRID_PLOT = "grid.png"
BALANCE_PLOT = "balances.png"
FLOW_PLOT = "flows.png"
PRICE_PLOT = "prices.png"


def _hours(start_s, day_start_s):
    return (start_s - day_start_s) / 3600


def _day_start_s(summary):
    text = summary["run"]["day_start_utc"]
    return int(datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


def _plot_power(plt, summary, path):
    """Average net power per member per interval (import positive, export negative)."""
    interval_s = summary["interval_s"]
    day_s = _day_start_s(summary)
    fig, ax = plt.subplots(figsize=(10, 5))
    ax.set_prop_cycle(color=plt.cm.tab20.colors)  # up to 20 members without a repeat
    for member, rows in sorted(summary["series"].items()):
        xs = [_hours(start_s, day_s) for start_s, _, _ in rows]
        ys = [(imp - exp) * 3600 / interval_s for _, imp, exp in rows]
        ax.step(xs, ys, where="post", label=member, linewidth=1.2)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xlabel("hour of the simulated day (UTC)")
    ax.set_ylabel("net power, W (import > 0, export < 0)")
    ax.set_title("Metered power per member (settled records)")
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_grid(plt, summary, path):
    """Per closed interval: energy bought from and sold to the grid, at the fixed tariffs."""
    day_s = _day_start_s(summary)
    rows = summary["intervals"]
    fig, ax = plt.subplots(figsize=(10, 4))
    xs = [_hours(row["interval_start_s"], day_s) for row in rows]
    width = summary["interval_s"] / 3600 * 0.8
    ax.bar(xs, [row["shortfall_wh"] for row in rows], width=width, align="edge",
           label="bought from the grid (Wh)")
    ax.bar(xs, [-row["sold_wh"] for row in rows], width=width, align="edge",
           label="sold to the grid (Wh)")
    ax.bar(xs, [row["burned_wh"] for row in rows], width=width * 0.5, align="edge",
           label="consumed from community WATT (Wh)")
    prices = summary["prices"]
    ax.set_title(f"Grid exchange per interval (retail {prices['retail_micro_per_kwh']} µ/kWh, "
                 f"feed-in {prices['feed_in_micro_per_kwh']} µ/kWh)")
    ax.set_xlabel("hour of the simulated day (UTC)")
    ax.set_ylabel("Wh")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_prices(plt, summary, path):
    """The market's reference price per interval (carried-over prices drawn hollow)."""
    day_s = _day_start_s(summary)
    rows = summary["market_prices"]
    fig, ax = plt.subplots(figsize=(10, 4))
    for carried, style in ((0, "o"), (1, "x")):
        points = [row for row in rows if row[4] == carried]
        ax.plot([_hours(row[0], day_s) for row in points], [row[1] for row in points], style,
                label="carried over" if carried else "traded")
    prices = summary["prices"]
    ax.axhline(prices["retail_micro_per_kwh"], color="red", linewidth=0.8, label="retail")
    ax.axhline(prices["feed_in_micro_per_kwh"], color="green", linewidth=0.8, label="feed-in")
    ax.set_xlabel("hour of the simulated day (UTC)")
    ax.set_ylabel("µ per kWh")
    ax.set_title("Community reference price per interval")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_balances(plt, summary, path):
    members = sorted(summary["members"])
    fig, ax = plt.subplots(figsize=(10, 4))
    xs = range(len(members))
    ax.bar([x - 0.2 for x in xs], [summary["members"][m]["watt_wh"] for m in members],
           width=0.4, label="WATT balance (Wh)")
    ax.bar([x + 0.2 for x in xs], [summary["members"][m]["cap_wh"] for m in members],
           width=0.4, label="cap (Wh)")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(members, rotation=45, fontsize=8)
    ax.set_title("Balances against caps at the end of the run")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_flows(plt, summary, path):
    """Per member: metered import/export; there are no member-to-member trades yet."""
    rows = summary["households"]
    members = [row["member"] for row in rows]
    fig, ax = plt.subplots(figsize=(10, 4))
    xs = range(len(members))
    ax.bar(xs, [row["import_wh"] for row in rows], label="import (Wh)")
    ax.bar(xs, [-row["export_wh"] for row in rows], label="export (Wh)")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(members, rotation=45, fontsize=8)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_title("Energy per member over the run (settled)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _ev_table(block):
    """The charging sessions as an HTML table (amounts as the ledger booked them)."""
    head = ("vehicle's member", "session", "Wh", "price µ/kWh", "fee µ/kWh", "energy µ",
            "fee µ", "total µ", "hold µ", "released µ", "stop", "receipt")
    rows = ["<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for s in block["sessions"]:
        cells = (s["member"], s["session"][:12], s["wh"], s["price_micro_per_kwh"],
                 s["fee_micro_per_kwh"], s["energy_micro"], s["fee_micro"], s["total_micro"],
                 s["hold_micro"], s["released_micro"], s["stop"],
                 "verified" if s["receipt_verified"] else "NOT verified")
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    station = block["station"]
    return (f"<h2>EV charging</h2><p>{block['paid_verified']} of {len(block['planned'])} "
            f"planned sessions paid with a verified receipt; the station owner "
            f"({html.escape(station['member'])}) was paid {block['paid_to_owner_micro']} µ, "
            f"{block['fees_to_owner_micro']} µ of it service fees; the station's consumption "
            f"burned {station['burned_wh']} Wh of WATT and cost {station['grid_micro']} µ at "
            f"the grid; {block['holds_released_micro']} µ of holds went back to the drivers."
            f"</p><table border=\"1\" cellspacing=\"0\" cellpadding=\"3\">"
            + "".join(rows) + "</table>")


def write(summary, out_dir):
    """Write report.html and its PNGs into `out_dir`; returns the HTML path (as text)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from host_tools.sim.summary import format_table

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _plot_power(plt, summary, out_dir / POWER_PLOT)
    _plot_grid(plt, summary, out_dir / GRID_PLOT)
    _plot_balances(plt, summary, out_dir / BALANCE_PLOT)
    _plot_flows(plt, summary, out_dir / FLOW_PLOT)
    if summary.get("market_prices"):
        _plot_prices(plt, summary, out_dir / PRICE_PLOT)
    run = summary["run"]
    title = (f"Energo community run: {run['households']} households, {run['hours']:g} h, "
             f"seed {run['seed']}")
    figures = [(POWER_PLOT, "Power per member over the day"),
               (GRID_PLOT, "Grid exchange per interval (no market price yet: fixed tariffs)"),
               (BALANCE_PLOT, "Balances against caps"),
               (FLOW_PLOT, "Energy per member over the run")]
    if summary.get("market_prices"):
        figures.insert(2, (PRICE_PLOT, "Market reference price per interval"))
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p>Day starting {html.escape(run['day_start_utc'])}; wall time {run['wall_s']} s"
            + ("; <strong>interrupted (partial)</strong>" if run["interrupted"] else "")
            + "</p>",
            f"<pre>{html.escape(format_table(summary))}</pre>"]
    for name, caption in figures:
        body.append(f"<figure><img src=\"{name}\" alt=\"{html.escape(caption)}\">"
                    f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    if summary.get("ev_sessions") is None:
        body.append("<p>EV sessions were not simulated in this run (--no-ev).</p>")
    else:
        body.append(_ev_table(summary["ev_sessions"]))
    if summary.get("market_prices") is None:
        body.append("<p>The settlement service ran without a market.</p>")
    body.append("<details><summary>summary.json</summary><pre>"
                + html.escape(json.dumps({k: v for k, v in summary.items() if k != "series"},
                                         indent=1, sort_keys=True)[:200_000])
                + "</pre></details>")
    page = ("<!doctype html><html><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}"
            "img{max-width:100%}pre{font-size:12px;overflow-x:auto}</style></head><body>"
            + "\n".join(body) + "</body></html>")
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return str(path)
