"""Print the Markdown table of every environment variable (pasted into the README; a test checks it)."""
from tag_backend.config import ENV_VARS, Settings

defaults = Settings()
print("| variable | meaning | default |")
print("|---|---|---|")
for var in ENV_VARS:
    default = getattr(defaults, var.field)
    shown = "(preset)" if default is None else ("~/.local/share/tag-backend" if var.field == "data_dir" else default)
    print(f"| `{var.name}` | {var.help} | `{shown}` |")
