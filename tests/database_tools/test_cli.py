"""``tag-db`` through click's CliRunner: every command, errors, and --help everywhere."""
from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from database_tools.cli import cli
from database_tools.store import Store
from store_helpers import latest_index_version


def _commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        yield prefix + (name,), command
        if isinstance(command, click.Group):
            yield from _commands(command, prefix + (name,))


ALL_COMMANDS = [path for path, _ in _commands(cli)]


def run(args, env=None, ok=True):
    result = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda p: " ".join(p))
def test_every_command_has_help(path):
    result = run([*path, "--help"])
    assert "Usage: " in result.output
    command = cli
    for name in path:
        command = command.commands[name]
    assert command.help and len(command.help.strip()) > 15


def test_expected_commands_exist():
    names = {" ".join(p) for p in ALL_COMMANDS}
    assert {"init", "import", "build-index", "search", "stats", "concepts list",
            "concepts approve", "concepts reject", "concepts merge", "concepts rename",
            "ingest-corrections", "export", "import-bundle"} <= names


def test_curation_workflow(db_url, tmp_path):
    db = ["--db", db_url]
    assert "db_version 0" in run([*db, "init"]).output
    concepts = tmp_path / "concepts.txt"
    concepts.write_text("dog\npuppy\ncat\nsofa\n")
    captions = tmp_path / "cc.tsv"
    captions.write_text("a dog on a beach\thttp://x\nbad\xff".encode("latin-1").decode("latin-1"))
    captions.write_bytes(b"a dog on a beach\thttp://x\nbad \xff row\thttp://y\n")
    out = run([*db, "import", str(concepts), str(captions)]).output
    assert "4 concept records read, 4 new entries" in out
    assert "1 caption records read, 1 new entries, 1 bad lines skipped" in out
    assert "already imported" in run([*db, "import", str(concepts)]).output
    assert "2 concepts merged into 'dog'" in run([*db, "concepts", "merge", "puppy", "cat",
                                                  "dog"]).output
    assert "renamed 'sofa' to 'couch'" in run([*db, "concepts", "rename", "sofa", "couch"]).output
    run([*db, "concepts", "reject", "couch"])
    listed = run([*db, "concepts", "list", "--status", "rejected"]).output
    assert listed.startswith("couch\trejected\t1\tfile:concepts.txt")
    run([*db, "concepts", "approve", "couch"])
    stats = run([*db, "stats"]).output
    assert "concept  active    2" in stats and "dog: 2" in stats
    missing = run([*db, "concepts", "approve", "unicorn"], ok=False)
    assert missing.exit_code == 1 and "no concept named 'unicorn'" in missing.output


def test_corrections_and_bundles(tmp_path):
    db = ["--db", f"sqlite:///{tmp_path / 'a.db'}"]
    export = tmp_path / "export.json"
    export.write_text(json.dumps([{"id": 1, "annotations": [{"id": 3, "updated_at": "t",
        "result": [{"id": "r", "type": "brushlabels",
                    "value": {"rle": [1], "brushlabels": ["teapot"]}}]}]}]))
    out = run([*db, "ingest-corrections", str(export), "--new-concept-status", "pending"]).output
    assert "1 annotations recorded" in out and "1 new concepts" in out
    assert "teapot\tpending" in run([*db, "concepts", "list"]).output
    assert "1 entries, 0 aliases" in run([*db, "export", str(tmp_path / "b"), "--format",
                                          "jsonl"]).output
    other = ["--db", f"sqlite:///{tmp_path / 'b.db'}"]
    assert "1 entries" in run([*other, "import-bundle", str(tmp_path / "b")]).output
    assert "already imported" in run([*other, "import-bundle", str(tmp_path / "b")]).output
    (tmp_path / "b" / "entries.jsonl").write_text("{}\n")
    bad = run([*other, "import-bundle", str(tmp_path / "b")], ok=False)
    assert bad.exit_code == 1 and "checksum mismatch" in bad.output
    with_index = run([*db, "export", str(tmp_path / "c"), "--with-index", "--index-dir",
                      str(tmp_path / "none")], ok=False)
    assert with_index.exit_code == 1 and "does not exist" in with_index.output
    assert not (tmp_path / "c").exists()


def test_unreachable_database_is_a_clean_error():
    result = run(["--db", "postgresql://bob:hunter2@127.0.0.1:1/x", "stats"], ok=False)
    assert result.exit_code == 1
    assert "StoreUnavailable: cannot connect to postgresql+psycopg://bob:***@" in result.output
    assert "hunter2" not in result.output


def test_build_index_and_search_with_tiny_clip(tmp_path, tiny_clip_dir):
    env = {"TAG_CLIP_MODEL": tiny_clip_dir, "TAG_DEVICE": "cpu", "TAG_DTYPE": "float32",
           "TAG_DATA_DIR": str(tmp_path / "data"), "TAG_DB_URL": "", "TAG_INDEX_DIR": ""}
    concepts = tmp_path / "c.txt"
    concepts.write_text("dog\ncat\nred car\nteapot\n")
    run(["import", str(concepts)], env=env)
    out = run(["build-index"], env=env).output
    assert "4 entries" in out
    hits = run(["search", "red car", "-k", "2"], env=env).stdout.strip().splitlines()
    assert len(hits) == 2 and hits[0].endswith("concept  red car")
    encoder_id = out.split(" encoder ")[1].split(",")[0]
    store = Store(f"sqlite:///{tmp_path / 'data' / 'concepts.db'}")
    assert latest_index_version(store, encoder_id).count == 4
    run(["concepts", "reject", "teapot"], env=env)
    assert "3 entries" in run(["build-index", "--incremental"], env=env).output
    missing = run(["search", "dog", "--index-dir", str(tmp_path / "nothing")], env=env, ok=False)
    assert missing.exit_code == 1 and "Index" in missing.output


def test_text_encoders_come_from_the_entry_point_group(tmp_path, monkeypatch):
    """tag-db loads the engine's encoder and defaults by entry point, never by import."""
    from database_tools.plugin import installed_providers, load_provider

    assert "tag-backend" in installed_providers()
    monkeypatch.setenv("TAG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("TAG_DB_URL", raising=False)
    monkeypatch.delenv("TAG_INDEX_DIR", raising=False)
    defaults = load_provider().defaults()  # the engine's settings, no model loaded
    assert defaults.db_url == f"sqlite:///{tmp_path / 'data' / 'concepts.db'}"
    assert defaults.index_dir == str(tmp_path / "data" / "index")
    unknown = run(["--db", f"sqlite:///{tmp_path / 'a.db'}", "--encoder", "nope", "search",
                   "dog"], ok=False)
    assert unknown.exit_code == 1
    assert ("EncoderUnavailable: no text encoder named 'nope'; installed: tag-backend"
            in unknown.output)
