"""Response schemas (JSON Schema 2020-12, as OpenAPI 3.1 uses), published in the document and
checked against real answers in the tests. Public answers forbid extra properties, so a field
that would leak a member's name or data cannot be added without failing those tests.
"""
INT = {"type": "integer"}
INT_OR_NULL = {"type": ["integer", "null"]}
STR = {"type": "string"}
STR_OR_NULL = {"type": ["string", "null"]}
BOOL = {"type": "boolean"}
HEX64 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
ASSET = {"type": "string", "enum": ["WATT", "TSL", "money"]}


def obj(closed=True, optional=(), **properties):
    """An object schema: every property required except `optional`; `closed` forbids extras."""
    schema = {"type": "object", "properties": properties,
              "required": [name for name in properties if name not in optional]}
    if closed:
        schema["additionalProperties"] = False
    return schema


def array(items):
    return {"type": "array", "items": items}


_ASSET_TOTALS = obj(minted=INT, burned=INT, in_circulation=INT, held_by_members=INT)
_CHECKPOINT_FIELDS = dict(number=INT, interval_start_s=INT, first_seq=INT, last_seq=INT,
                          entry_count=INT, merkle_root=HEX64, chain_hash=HEX64,
                          prev_checkpoint_hash=HEX64, closed_at_ms=INT, hash=HEX64,
                          signature={"type": "string", "pattern": "^[0-9a-f]+$"})

DIGEST = obj(
    assets=obj(WATT=_ASSET_TOTALS, TSL=_ASSET_TOTALS, money=_ASSET_TOTALS),
    members_count=INT, entries_count=INT, chain_head_hash=HEX64, next_open_interval_s=INT_OR_NULL,
    interval_s=INT, service_public_key_pem=STR_OR_NULL,
    checkpoints=array(obj(**_CHECKPOINT_FIELDS)))
CHECKPOINTS = obj(checkpoints=array(obj(body=STR, **_CHECKPOINT_FIELDS)),
                  next_before=INT_OR_NULL)
# Interval totals are the settlement's result record: community sums only, fields may be added.
INTERVALS = obj(intervals=array(obj(closed=False, interval_start_s=INT, minted_wh=INT,
                                    burned_wh=INT, shortfall_wh=INT, grid_bill_micro=INT,
                                    sold_wh=INT, feed_in_micro=INT, storage_fee_wh=INT)),
                next_before=INT_OR_NULL)
MEMBER_CREATED = obj(name=STR, storage_capacity_wh=INT, tsl_granted=INT, token=STR)
TOKEN = obj(name=STR, token=STR)
MEMBER = obj(name=STR, balances=obj(WATT=INT, TSL=INT, money=INT), watt_wh=INT, tsl=INT,
             money_micro=INT, cap_wh=INT, storage_capacity_wh=INT)
MEMBERS = obj(members=array(obj(name=STR, storage_capacity_wh=INT, watt_wh=INT, tsl=INT,
                                money_micro=INT, cap_wh=INT)))
ENTRIES = obj(entries=array(obj(seq=INT, transfer_id=STR, kind=STR, account=STR, asset=ASSET,
                                amount=INT, counterparty=STR, interval_start_s=INT)),
              next_before=INT_OR_NULL)
AGENT = obj(optional=("updated_at_ms",), member=STR, enabled=BOOL,
            target_buy_micro_per_kwh=INT, target_sell_micro_per_kwh=INT,
            floor_micro_per_kwh=INT, ceiling_micro_per_kwh=INT, upper_threshold_ppm=INT,
            lower_threshold_ppm=INT, updated_at_ms=INT)
DEVICE_CREATED = obj(device_id=STR, role=STR, member=STR, mqtt_username=STR,
                     mqtt_password=STR_OR_NULL)
DEVICES = obj(devices=array(obj(closed=False, device_id=STR, role=STR, member=STR,
                                public_key_hex=STR, enrolled_at_s=INT)))
ORDER = obj(order_id=INT, side={"type": "string", "enum": ["buy", "sell"]}, qty_wh=INT,
            remaining_wh=INT, filled_wh=INT, price_micro_per_kwh=INT, interval_start_s=INT,
            gtc=BOOL, immediate=BOOL, client_id=STR_OR_NULL,
            status={"type": "string", "enum": ["open", "filled", "cancelled", "expired"]})
ORDER_PLACED = obj(order=ORDER, duplicate=BOOL, filled_wh=INT, stp_cancelled=BOOL,
                   trades=array(obj(trade_id=INT, side={"type": "string", "enum": ["buy", "sell"]},
                                    qty_wh=INT, price_micro_per_kwh=INT, value_micro=INT,
                                    interval_start_s=INT)))
ORDER_ONE = obj(order=ORDER)
ORDERS = obj(orders=array(ORDER))
_LEVEL = obj(price_micro_per_kwh=INT, qty_wh=INT)
DEPTH = obj(interval_start_s=INT, best_bid_micro_per_kwh=INT_OR_NULL,
            best_ask_micro_per_kwh=INT_OR_NULL, bids=array(_LEVEL), asks=array(_LEVEL))
TRADES = obj(interval_start_s=INT, volume_wh=INT,
             trades=array(obj(trade_id={"type": ["integer", "string"]}, qty_wh=INT,
                              price_micro_per_kwh=INT_OR_NULL, value_micro=INT_OR_NULL)))
PRICES = obj(open_from_s=INT, interval_s=INT, last_reference_price_micro_per_kwh=INT,
             quotes=array(obj(interval_start_s=INT, best_bid_micro_per_kwh=INT_OR_NULL,
                              best_ask_micro_per_kwh=INT_OR_NULL)),
             reference_prices=array(obj(interval_start_s=INT, price_micro_per_kwh=INT,
                                        volume_wh=INT, trade_count=INT, carried=BOOL)))
HEALTH = obj(closed=False, ok=BOOL, database=BOOL)
OPENAPI = {"type": "object", "required": ["openapi", "paths"]}
METRICS = {"type": "string"}
