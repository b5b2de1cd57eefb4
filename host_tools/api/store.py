"""The API's own tables, kept in the ledger's database (same adapter, same transactions).

Decision: member-token hashes and agent settings live next to the ledger rather than in a JSON
file, because creating a member and issuing its token must be one transaction (a crash never
leaves a member nobody can log in as, or a token for a member that does not exist), and because
the service runs on PostgreSQL as well as SQLite. The tables carry their own version under the
meta key `api_schema_version`, so the ledger's `schema_version` stays the ledger's business.
"""
import json

from host_tools.exchange.agents import AgentConfig

API_SCHEMA_VERSION = 1

_TABLES = [
    """CREATE TABLE IF NOT EXISTS api_member_tokens (
        member TEXT PRIMARY KEY,
        token_sha256 TEXT NOT NULL,
        issued_at_ms BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS api_agent_settings (
        member TEXT PRIMARY KEY,
        settings TEXT NOT NULL,
        updated_at_ms BIGINT NOT NULL)""",
]

# The fields of a stored agent setting, in AgentConfig's argument order.
AGENT_FIELDS = ("target_buy_micro_per_kwh", "target_sell_micro_per_kwh", "floor_micro_per_kwh",
                "ceiling_micro_per_kwh", "upper_threshold_ppm", "lower_threshold_ppm")


class StoreError(ValueError):
    """The API tables are from a newer version or a stored row does not read back."""


def ensure_tables(db):
    """Create the API tables on first use; refuse tables written by a newer version."""
    with db.transaction():
        for statement in _TABLES:
            db.execute(statement)
        version = db.get_meta("api_schema_version")
        if version is None:
            db.set_meta("api_schema_version", str(API_SCHEMA_VERSION))
        elif version != str(API_SCHEMA_VERSION):
            raise StoreError(f"API tables have version {version}; this code knows "
                             f"{API_SCHEMA_VERSION}")


def set_token_hash(db, member, token_sha256, at_ms):
    """Store (or replace: the old token stops working) a member's token hash."""
    db.execute("INSERT INTO api_member_tokens (member, token_sha256, issued_at_ms) VALUES (?, ?, ?) "
               "ON CONFLICT (member) DO UPDATE SET token_sha256 = excluded.token_sha256, "
               "issued_at_ms = excluded.issued_at_ms", (member, token_sha256, at_ms))


def token_hash(db, member):
    row = db.one("SELECT token_sha256 FROM api_member_tokens WHERE member = ?", (member,))
    return None if row is None else row[0]


def put_agent_settings(db, member, settings, at_ms):
    """Store a member's validated agent settings (`enabled` plus AGENT_FIELDS)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    db.execute("INSERT INTO api_agent_settings (member, settings, updated_at_ms) VALUES (?, ?, ?) "
               "ON CONFLICT (member) DO UPDATE SET settings = excluded.settings, "
               "updated_at_ms = excluded.updated_at_ms", (member, text, at_ms))


def get_agent_settings(db, member):
    row = db.one("SELECT settings, updated_at_ms FROM api_agent_settings WHERE member = ?",
                 (member,))
    if row is None:
        return None
    return dict(_read_settings(member, row[0]), updated_at_ms=row[1])


def _read_settings(member, text):
    """Read back and re-validate: a row edited by hand must not reach an agent unchecked."""
    try:
        settings = json.loads(text)
        agent_config(member, settings)
    except ValueError as exc:
        raise StoreError(f"stored agent settings of {member} are invalid: {exc}") from None
    if not isinstance(settings.get("enabled"), bool):
        raise StoreError(f"stored agent settings of {member} lack 'enabled'")
    return settings


def agent_config(member, settings):
    """An `AgentConfig` from a settings dict; raises ValueError when the prices do not fit."""
    if not isinstance(settings, dict) or any(name not in settings for name in AGENT_FIELDS):
        raise ValueError(f"agent settings need {', '.join(AGENT_FIELDS)}")
    return AgentConfig(member, *(settings[name] for name in AGENT_FIELDS))


def agent_configs(db):
    """Every enabled agent, for the agents runner: [AgentConfig] in member order.

    The runner reads this once per interval (`AgentRunner.opt_in` for each, `opt_out` for
    members no longer listed); a setting changed through the API takes effect at the next
    interval.
    """
    rows = db.all("SELECT member, settings FROM api_agent_settings ORDER BY member")
    configs = []
    for member, text in rows:
        settings = _read_settings(member, text)
        if settings["enabled"]:
            configs.append(agent_config(member, settings))
    return configs
