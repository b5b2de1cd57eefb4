"""The settlement service's HTTP API: members' wallets, the public digest, devices, the exchange.

Standard library only (`http.server`): the API is a thin, validated edge over the ledger, the
device registry and the exchange, so it needs no framework. Start with `server.make_server`; the
route table in `routes.py` is also the source of the OpenAPI document (`openapi.py`), so the
document cannot drift from what the server does.
"""
