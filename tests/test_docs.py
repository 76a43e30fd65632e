"""The README documents every setting and every command has help text."""
from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from tag_backend.config import ENV_VARS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_environment_variable_is_in_the_readme():
    missing = [v.name for v in ENV_VARS if f"`{v.name}`" not in README]
    assert not missing, f"README lacks {missing}: run scripts/env_table.py"


def test_readme_starts_with_the_two_commands():
    head = README.split("\n")[:8]
    assert any(line.startswith("make run") for line in head) and any(line.startswith("make test") for line in head)


def test_every_tag_backend_command_has_help():
    from tag_backend.cli import main

    runner = CliRunner()
    ctx = main.make_context("tag-backend", [])
    for name in main.list_commands(ctx):
        command = main.get_command(ctx, name)
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0 and (command.help or command.short_help), name
        sub = getattr(command, "commands", {})
        for sub_name in sub:
            assert runner.invoke(main, [name, sub_name, "--help"]).exit_code == 0, (name, sub_name)


def test_ci_runs_exactly_the_readme_test_command():
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert "make test" in ci and any(line.startswith("make test") for line in README.split("\n")[:8])
