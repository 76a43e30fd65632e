"""Write (or check) docs/configuration.md, generated from the settings in tag_backend/config.py.

    python scripts/env_table.py           # print it
    python scripts/env_table.py --write   # regenerate docs/configuration.md
    python scripts/env_table.py --check   # exit 1 when docs/configuration.md is out of date
"""
from __future__ import annotations

import sys
from pathlib import Path

from tag_backend.config_docs import configuration_markdown

TARGET = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def main(argv: list[str]) -> int:
    text = configuration_markdown()
    if "--write" in argv:
        TARGET.write_text(text)
        print(f"wrote {TARGET}")
    elif "--check" in argv:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{TARGET} is out of date: run python scripts/env_table.py --write", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
