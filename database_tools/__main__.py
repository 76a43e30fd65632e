"""``python -m database_tools`` runs the ``tag-db`` CLI."""
from database_tools.cli import main

if __name__ == "__main__":
    main()
