"""The README and docs/ stay true: links resolve, commands exist, settings are documented."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import click
from click.testing import CliRunner

from tag_backend.config import ENV_VARS
from tag_backend.config_docs import configuration_markdown

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
#: Topic pages written alongside this one; links to them are allowed until they exist.
PENDING_PAGES = {"docs/ARCHITECTURE.md", "docs/presets.md", "docs/security.md", "docs/inference-backends.md",
                 "docs/scale.md"}
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _documentation() -> list[Path]:
    """The README and every Markdown page reachable from it through local links."""
    seen, todo = [], [ROOT / "README.md"]
    while todo:
        doc = todo.pop()
        if doc in seen or not doc.exists():
            continue
        seen.append(doc)
        for target in LINK.findall(doc.read_text()):
            path = target.partition("#")[0]
            if path.endswith(".md") and not target.startswith(("http://", "https://")):
                todo.append((doc.parent / path).resolve())
    return sorted(seen)


DOC_FILES = _documentation()
COMPOSE_VERBS = {"up", "exec", "run", "build", "logs", "restart", "stop", "down"}


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", markdown, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_configuration_page_is_generated_from_the_settings():
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert page == configuration_markdown(), "docs/configuration.md is stale: run python scripts/env_table.py --write"
    missing = [v.name for v in ENV_VARS if f"`{v.name}`" not in page]
    assert not missing


def test_no_default_column_claims_a_preset_for_unrelated_settings():
    for line in (ROOT / "docs" / "configuration.md").read_text().splitlines():
        if "(preset)" in line:
            pytest.fail(f"placeholder default in: {line}")
        if line.startswith("| `") and "preset" in line.split("|")[3] and "PRESET" not in line:
            assert any(w in line for w in ("MODEL", "PRETRAINED", "DENSE", "DTYPE")), line


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_resolve(doc: Path):
    text = doc.read_text()
    broken = []
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        rel = dest.relative_to(ROOT).as_posix() if dest.is_relative_to(ROOT) else str(dest)
        if not dest.exists():
            if rel not in PENDING_PAGES:
                broken.append(target)
            continue
        if anchor and dest.suffix == ".md" and anchor not in _anchors(dest.read_text()):
            broken.append(target)
    assert not broken, f"{doc.name}: broken links {broken}"


def test_the_topic_pages_are_reachable_from_the_readme():
    names = {p.relative_to(ROOT).as_posix() for p in DOC_FILES}
    for page in ("engine", "label-studio", "concept-database", "jobs", "evaluation", "benchmarks", "configuration"):
        assert f"docs/{page}.md" in names
    assert "CHANGELOG.md" in names


def test_docs_point_only_at_files_users_have():
    for doc in DOC_FILES:
        assert "shared/reference" not in doc.read_text(), doc
        for name in ("TAG.md", "LABEL_STUDIO.md", "PERFORMANCE.md", "STYLE.md"):
            assert name not in doc.read_text(), (doc, name)


def test_code_comments_cite_sources_users_have():
    cited = []
    for package in ("tag_backend", "database_tools", "benchmarks", "scripts"):
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            cited += [(path.name, n) for n in ("TAG.md", "LABEL_STUDIO.md", "PERFORMANCE.md", "shared/reference")
                      if n in text]
    assert not cited, cited


def test_readme_is_short_and_starts_with_the_two_commands():
    lines = README.split("\n")
    assert len(lines) <= 200
    head = lines[:8]
    assert any(line.startswith("make run") for line in head) and any(line.startswith("make test") for line in head)


def test_ci_runs_exactly_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_makefile_has_the_targets_the_readme_names():
    makefile = (ROOT / "Makefile").read_text()
    for target in set(re.findall(r"\bmake ([a-z][a-z-]*)", README)):
        assert re.search(rf"^{target}:", makefile, flags=re.M), target


def _readme_commands(tool: str) -> list[list[str]]:
    """Every `tool ...` invocation in the README's code blocks, as argument lists (without the tool)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0].strip()
            for part in re.split(r"&&|;", line):
                words = shlex.split(part.replace("<", "").replace(">", ""))
                for i, word in enumerate(words):
                    service_name = words[:1] == ["docker"] and (words[i - 1] in COMPOSE_VERBS or words[i - 1].startswith("-"))
                    if (word == tool or word.endswith(f"/{tool}")) and not service_name:
                        commands.append(words[i + 1:])
                        break
    return commands


def _command_path(group, args: list[str]) -> list[str]:
    """The leading words of ``args`` that name (sub)commands of the click ``group`` (lazy ones too)."""
    import click

    path, command = [], group
    for word in args:
        if not isinstance(command, click.Group):
            break
        ctx = click.Context(command)
        if word not in command.list_commands(ctx):  # lazy groups load commands on lookup
            break
        path.append(word)
        command = command.get_command(ctx, word)
    return path


@pytest.mark.parametrize("tool", ["tag-backend", "tag-db"])
def test_readme_commands_exist_and_parse(tool: str):
    if tool == "tag-backend":
        from tag_backend.cli import main
    else:
        from database_tools.cli import cli as main
    commands = _readme_commands(tool)
    assert commands, f"the README shows no {tool} command"
    runner = CliRunner()
    for args in commands:
        path = _command_path(main, args)
        assert path, f"README: `{tool} {' '.join(args)}` names no command"
        result = runner.invoke(main, [*path, "--help"])
        assert result.exit_code == 0, (args, result.output)
        # Every option the README passes is one the command accepts.
        options = {w.split("=")[0] for w in args if w.startswith("--")}
        unknown = [o for o in options if o not in result.output]
        assert not unknown, f"README: `{tool} {' '.join(args)}` uses unknown options {unknown}"


def test_every_tag_backend_command_has_help():
    from tag_backend.cli import main

    runner = CliRunner()
    ctx = click.Context(main)
    for name in main.list_commands(ctx):
        command = main.get_command(ctx, name)
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0 and (command.help or command.short_help), name
        for sub_name in getattr(command, "commands", {}):
            assert runner.invoke(main, [name, sub_name, "--help"]).exit_code == 0, (name, sub_name)


def test_every_python_module_the_docs_run_exists():
    import importlib.util

    missing = []
    for doc in DOC_FILES:
        for module in re.findall(r"python -m ([\w.]+)", doc.read_text()):
            if importlib.util.find_spec(module) is None:
                missing.append((doc.name, module))
    assert not missing, missing
