"""A simulated vehicle from a board scenario's world section (`"world": {"vehicle": {...}}`).

    "vehicle": {
      "community_key": "3059…",      # hex SPKI of the community service key the vehicle trusts
      "wallet": "alice",             # the member that pays
      "seed": 1,                     # its key is derived from the seed (optional: random)
      "plugs": [{"at_s": 5, "soc": 0.3}],   # plug-ins at board seconds since power-on
      "unplug_after_s": 10,          # pull the cable this long after each session ended
      "emax_wh": 20000, "cmax_micro": 10000000, "auth_ttl_s": 900,
      "target_wh": 2000, "target_soc": 0.8, "soc_start": 0.3,
      "misbehave": "replay-auth", "excess_a": 10, "receipts_dir": "/tmp/receipts"
    }

Everything but `community_key` and `wallet` is optional; see `sim_board.vehicle.Vehicle` for
the meaning. The vehicle's link goes on the board's `vehicle_link` UART and its battery is the
site's EV, so the site needs an "ev" (give it `"sessions": []` so that only the vehicle's plug-ins
count). Mistakes raise ScenarioError naming the key, before anything is attached.
"""
from sim_board.world_scenario import ScenarioError

_OPTIONS = ("seed", "emax_wh", "cmax_micro", "auth_ttl_s", "target_wh", "target_soc",
            "soc_start", "misbehave", "excess_a", "receipts_dir", "unplug_after_s")
_KEYS = ("community_key", "wallet", "plugs") + _OPTIONS


def from_scenario(board, board_world, cfg, path="world.vehicle"):
    """A started Vehicle on `board`, with its scripted plug-ins scheduled; see the module doc."""
    from energo.evproto import ProtocolError
    from sim_board.vehicle import Vehicle

    if not isinstance(cfg, dict):
        raise ScenarioError(f"{path}: expected an object")
    unknown = sorted(set(cfg) - set(_KEYS))
    if unknown:
        raise ScenarioError(f"{path}: unknown key(s) {', '.join(unknown)}")
    if board_world.site.ev is None:
        raise ScenarioError(f"{path}: site {board_world.site_name!r} has no EV")
    plugs = cfg.get("plugs", [])
    if not isinstance(plugs, list) or len(plugs) > 1000:
        raise ScenarioError(f"{path}.plugs: expected a list of at most 1000 plug-ins")
    checked = []
    for n, plug in enumerate(plugs):
        where = f"{path}.plugs[{n}]"
        if not isinstance(plug, dict) or set(plug) - {"at_s", "soc"}:
            raise ScenarioError(f"{where}: expected {{at_s, soc}}")
        at_s, soc = plug.get("at_s"), plug.get("soc", cfg.get("soc_start", 0.3))
        for name, value, top in (("at_s", at_s, 10**7), ("soc", soc, 1)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not 0 <= value <= top:
                raise ScenarioError(f"{where}.{name}: expected a number 0..{top}")
        if checked and at_s <= checked[-1][0]:
            raise ScenarioError(f"{where}.at_s: plug-ins must be in time order")
        checked.append((float(at_s), float(soc)))
    try:
        vehicle = Vehicle(cfg.get("community_key"), cfg.get("wallet"),
                          **{k: cfg[k] for k in _OPTIONS if k in cfg})
        vehicle.attach(board, board_world)
    except (ValueError, ProtocolError) as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    vehicle.schedule = [(board.clock.true_epoch_s + at_s, soc) for at_s, soc in checked]
    return vehicle.start()
