# main.py: load the board and device configuration and start the role.
# Roles land with their issues; until then the board only reports what it is.
import sys


def _load_json(path):
    import json

    try:
        with open(path) as f:
            return json.load(f)
    except OSError:
        return None
    except ValueError as exc:
        print("main: bad", path, exc)
        return None


def main():
    board = _load_json("/board.json")
    if board is None:
        print("energo: no /board.json on flash; nothing to run")
        return
    print("energo: board", board.get("name", "?"), "role", board.get("role", "?"))


try:
    main()
except Exception as exc:  # noqa: BLE001 - the last line of defence on a board
    sys.print_exception(exc)
