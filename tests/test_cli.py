"""The energo CLI: every command has help with an example and is documented in the README."""
import pathlib

from host_tools import cli

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _commands():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices


def test_every_command_has_an_example_in_its_help():
    for name, parser in _commands().items():
        assert "Example: energo " + name in (parser.epilog or ""), name


def test_every_command_is_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in _commands() if f"energo {name}" not in readme]
    assert not missing, f"commands not in README.md: {missing}"


def test_no_command_prints_help_and_fails(capsys):
    assert cli.main([]) == 2
    assert "usage: energo" in capsys.readouterr().out
