"""Settlement configuration: every constant of ECONOMICS.md, with its defaults.

The rule constants are stored in the ledger when it is created, so every later
process (ingest, `energo ledger check`, the HTTP API) applies and checks the
same rules; opening an existing ledger with a different configuration is
refused rather than silently mixing two rule sets.
"""
import dataclasses
import json

from host_tools.settlement.errors import ConfigError

_INT_MAX = 2**62  # well inside BIGINT, so a product of two config values never overflows SQL


@dataclasses.dataclass(frozen=True)
class SettlementConfig:
    """The community's rules. Units are in the names; all values are integers."""

    interval_s: int = 900
    retail_tariff_micro_per_kwh: int = 300_000
    feed_in_tariff_micro_per_kwh: int = 80_000
    storage_fee_ppm: int = 200
    fee_split_owners_percent: int = 80
    fee_split_education_percent: int = 10
    fee_split_operator_percent: int = 10
    tsl_supply: int = 1_000_000_000
    tsl_new_member_grant: int = 5_000
    quota_wh_per_tsl: int = 1
    # Bmax: configured directly, or (None) derived as Cu / (0.75 × p) from the
    # storage cost per member (Cu) and the storage price per kWh of capacity (p).
    bmax_wh: int | None = None
    storage_cost_per_member_micro: int = 300_000_000
    storage_price_micro_per_kwh: int = 200_000_000
    # How far a member may overdraw money through `Ledger.transfer` (0: not at
    # all). Grid bills at interval close ignore it: they are receivables.
    member_credit_limit_micro: int = 0
    transfer_legs_max: int = 64
    transfer_meta_bytes_max: int = 4096
    interval_energy_wh_max: int = 10**12
    # EV charge-and-pay (docs/charging-protocol.md): the reference price a charger offers
    # when the service runs no market, a station's service fee until its owner sets one,
    # a new vehicle's offline limit per session, and how long a session may stay open before
    # its hold goes back to the driver (a charger that died or lost its link for days).
    ev_reference_price_micro_per_kwh: int = 250_000
    ev_station_fee_micro_per_kwh: int = 30_000
    ev_offline_limit_micro: int = 10_000_000
    ev_hold_expiry_s: int = 2 * 86_400

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "bmax_wh" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{field.name} must be an integer, got {value!r}")
            if not 0 <= value <= _INT_MAX:
                raise ConfigError(f"{field.name} must be between 0 and {_INT_MAX}, got {value}")
        if not 60 <= self.interval_s <= 86_400 or 86_400 % self.interval_s:
            raise ConfigError(
                f"interval_s must divide a day and be at least 60, got {self.interval_s}")
        if self.storage_fee_ppm > 1_000_000:
            raise ConfigError(f"storage_fee_ppm must be at most 1000000, got {self.storage_fee_ppm}")
        split = (self.fee_split_owners_percent + self.fee_split_education_percent
                 + self.fee_split_operator_percent)
        if split != 100:
            raise ConfigError(f"the storage fee split must add up to 100 percent, got {split}")
        if self.bmax_wh is None and self.storage_price_micro_per_kwh == 0:
            raise ConfigError("storage_price_micro_per_kwh must be positive to derive bmax_wh")
        if self.ev_hold_expiry_s < 3600:
            raise ConfigError(f"ev_hold_expiry_s must be at least 3600 (a session's length), "
                              f"got {self.ev_hold_expiry_s}")
        if self.transfer_legs_max < 1:
            raise ConfigError("transfer_legs_max must be at least 1")

    @property
    def bmax_effective_wh(self):
        """Bmax in Wh; derived as Cu / (0.75 p) kWh = 4000 Cu / (3 p) Wh, rounded down."""
        if self.bmax_wh is not None:
            return self.bmax_wh
        return 4000 * self.storage_cost_per_member_micro // (3 * self.storage_price_micro_per_kwh)

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data):
        """Build from a mapping (a JSON file, a stored config); unknown keys are refused."""
        if not isinstance(data, dict):
            raise ConfigError("settlement config must be a JSON object")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown settlement config keys: {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def load(cls, path):
        """Read a JSON config file; errors name the file."""
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read(1_000_000)
            data = json.loads(text)
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config {path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
        return cls.from_dict(data)
