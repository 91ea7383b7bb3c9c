"""Options agree across commands, reach commands through the context, and a flag and the
variable that stands for it are checked by the same code."""

from __future__ import annotations

import json

import pytest
import typer

from organizer.cli import app

# Commands whose run time grows with the library (not a lookup): each takes --quiet.
LONG_RUNNING = {
    "ingest",
    "cluster",
    "duplicates",
    "export",
    "events",
    "report",
    "index build",
    "index shards train",
    "index shards fill",
    "index shards merge",
}
# A web server prints no result to stdout: the only command without --json.
NO_RESULT = {"serve"}


def _commands() -> dict[str, object]:
    """Every command a user can run, by its words ("index shards fill"); a group counts when
    it runs by itself (`organizer cluster`)."""
    found = {}

    def walk(group, words):
        for name, command in group.commands.items():
            path = (*words, name)
            if hasattr(command, "commands"):
                if command.invoke_without_command:
                    found[" ".join(path)] = command
                walk(command, path)
            else:
                found[" ".join(path)] = command

    walk(typer.main.get_command(app), ())
    return found


def _flags(command) -> set[str]:
    return {opt for param in command.params for opt in getattr(param, "opts", [])}


def test_every_command_that_prints_results_takes_json_and_every_long_one_quiet():
    commands = _commands()
    assert commands.keys() >= LONG_RUNNING | NO_RESULT  # the lists name real commands
    assert len(commands) > 15
    for name, command in commands.items():
        if name not in NO_RESULT:
            assert "--json" in _flags(command), f"`organizer {name}` has no --json"
        if name in LONG_RUNNING:
            assert "--quiet" in _flags(command), f"`organizer {name}` has no --quiet"


@pytest.mark.parametrize(
    ("flag", "variable", "value"),
    [
        ("--device", "ORGANIZER_DEVICE", "tpu"),
        ("--precision", "ORGANIZER_PRECISION", "fp8"),
        ("--runtime", "ORGANIZER_RUNTIME", "tpu"),
        ("--batch-size", "ORGANIZER_BATCH_SIZE", "many"),
        ("--batch-size", "ORGANIZER_BATCH_SIZE", "0"),
        ("--workers", "ORGANIZER_WORKERS", "-1"),
        ("--library", "ORGANIZER_LIBRARY", "mysql://bob:hunter2@db.example/photos"),
    ],
)
def test_a_bad_variable_reads_as_the_same_bad_flag(cli, photos, library, flag, variable, value):
    by_flag = cli("ingest", photos, flag, value)
    by_variable = cli("ingest", photos, **{variable: value})
    for result in (by_flag, by_variable):
        assert result.exit_code == 2, result.output
        assert result.stdout == "" and len(result.stderr.splitlines()) == 1
        assert flag in result.stderr and variable in result.stderr
        assert "hunter2" not in result.output
    assert by_flag.stderr == by_variable.stderr
    assert not library.exists()  # refused before a library was made


def test_a_bad_variable_is_a_usage_error_for_commands_without_its_flag(cli, photos):
    assert cli("ingest", photos).exit_code == 0
    result = cli("search", "a dog", ORGANIZER_DEVICE="tpu")
    assert result.exit_code == 2 and "unknown device 'tpu'" in result.stderr


def test_options_given_to_a_group_reach_its_commands(cli, photos, tmp_path):
    """`index` and `index shards` took no -L or --json before the command, so its commands'
    checks of the group's --json could never be true; `cluster` refused --quiet."""
    other = tmp_path / "other"
    assert cli("-L", other, "ingest", photos, "--quiet").exit_code == 0
    built = cli("index", "-L", other, "--json", "build", "--kind", "flat")
    assert built.exit_code == 0, built.output
    assert json.loads(built.stdout)["count"] == 6
    clustered = cli("-L", other, "cluster", "-k", "2", "--no-names", "--quiet")
    assert clustered.exit_code == 0, clustered.output
    assigned = cli("cluster", "-L", other, "--json", "assign")
    assert json.loads(assigned.stdout)["assigned"] == 0
    listed = cli("roots", "-L", other, "--json", "remove", photos, "--dry-run")
    assert json.loads(listed.stdout)["dry_run"] is True


def test_options_of_one_run_do_not_reach_the_next(cli, photos, tmp_path):
    other = tmp_path / "other"
    assert cli("-L", other, "ingest", photos).exit_code == 0
    assert cli("cluster", "-L", other, "--json", "assign").exit_code == 1  # no run yet
    after = cli("status")  # the test's library, as a table
    assert after.exit_code == 1 and "no library at" in after.stderr


def test_a_usage_error_found_while_running_names_the_command_help(cli):
    result = cli("serve", "--host", "0.0.0.0")
    assert result.exit_code == 2 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: --host 0.0.0.0 lets other machines in")
    assert line.endswith("serve --help')")


def test_help_keeps_the_variables_and_defaults_it_names(cli):
    """Rich markup takes `[env ORGANIZER_DEVICE]` for a style and drops it ("Where the model
    runs ."): the help says (env ...) instead."""

    def flat(text: str) -> str:  # the help's words, without its frame, wrapping or spaces
        return "".join(text.replace("│", "").split())

    shown = flat(cli("ingest", "--help").stdout)
    for variable in ("DEVICE", "PRECISION", "RUNTIME", "MODEL", "BATCH_SIZE", "WORKERS"):
        assert f"ORGANIZER_{variable}" in shown, variable
    assert "Wherethemodelruns(env" in shown
    assert "default40" in flat(cli("cluster", "--help").stdout)
