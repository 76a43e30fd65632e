"""`tag-backend ls-connect`: set up a Label Studio project for this backend in one command."""
from __future__ import annotations

import os

import click

from ..cli_common import configure_logging, handle_errors, settings_with


@click.command("ls-connect")
@click.option("--url", "ls_url", metavar="URL", help="Label Studio address [env LABEL_STUDIO_URL].")
@click.option("--api-key", metavar="TOKEN", help="Label Studio Personal Access Token [env LABEL_STUDIO_API_KEY].")
@click.option("--images", metavar="DIR",
              help="Image folder to add as Local Files storage, as Label Studio sees it (under its "
                   "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT).")
@click.option("--project", "project_id", type=int, metavar="ID",
              help="Use this existing project (default: the project titled --title, created if missing).")
@click.option("--title", default="TAG pre-labelling", show_default=True, help="Project title to find or create.")
@click.option("--backend-url", metavar="URL",
              help="Address at which Label Studio reaches this backend [env TAG_BACKEND_URL].")
@click.option("--prelabel/--no-prelabel", default=False, show_default=True,
              help="Ask Label Studio to retrieve predictions for every task now.")
@click.option("--shape", type=click.Choice(["brush", "polygon", "rectangle"]), default="brush", show_default=True,
              help="Shipped labeling config for a new project: masks, polygons or boxes (each with its name).")
@click.option("--replace-config", is_flag=True,
              help="Replace a labeling config this backend cannot use with the shipped one.")
@click.option("--timeout", default=900.0, show_default=True, type=float,
              help="Seconds to wait for one Label Studio call (retrieving predictions is synchronous).")
@handle_errors
def ls_connect(ls_url, api_key, images, project_id, title, backend_url, prelabel, shape, replace_config,
               timeout) -> None:
    """Create or update a Label Studio project with this backend: config, storage, connection, pre-labels.

    Idempotent: running it again changes nothing (new images in the folder are synced).
    """
    from .connect import ConnectRequest, connect_project

    settings = settings_with(label_studio_url=ls_url, label_studio_api_key=api_key, backend_url=backend_url)
    configure_logging(settings.log_level, settings.log_format)
    request = ConnectRequest(
        ls_url=settings.label_studio_url or "", api_key=settings.label_studio_api_key or "",
        backend_url=settings.backend_url, images=os.path.abspath(images) if images else None,
        project_id=project_id, title=title, prelabel=prelabel, shape=shape, replace_config=replace_config,
        basic_auth_user=settings.basic_auth_user, basic_auth_pass=settings.basic_auth_pass,
        webhook_secret=settings.webhook_secret, timeout=timeout)
    for line in connect_project(request).lines():
        click.echo(line)
