"""`tag-backend serve` (development server) and `tag-backend download-weights` (Docker build).

Registered in the main CLI group by tag_backend.cli. Production uses gunicorn, sized by the
settings: ``gunicorn -c python:tag_backend.gunicorn_conf tag_backend.wsgi:app``.
"""

from __future__ import annotations

import click

from .cli_common import configure_logging, engine_options, handle_errors, settings_with
from .presets import PRESETS


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=int, help="Port to listen on [env TAG_PORT or PORT; default 9090].")
@engine_options
@handle_errors
def serve(host: str, port: int | None, **flags) -> None:
    """Run the Label Studio ML backend (threaded development server; use gunicorn in production)."""
    from .app import create_app

    settings = settings_with(port=port, **flags)
    port = settings.port
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings, warm_up=True)
    click.echo(
        f"TAG backend on http://{host}:{port} (connect it in Label Studio: "
        "Project > Settings > Model)"
    )
    app.run(host=host, port=port, threaded=True, use_reloader=False)


@click.command("download-weights")
@click.option(
    "--preset",
    type=click.Choice(sorted(PRESETS)),
    default=None,
    help="Preset whose weights to fetch [env TAG_PRESET].",
)
@handle_errors
def download_weights(preset: str | None) -> None:
    """Download (into the Hugging Face / open_clip caches) the weights a preset needs.

    Used by the Dockerfile to bake weights into the image; loading a model is what downloads
    it, so this loads both backbones once and reports where they came from.
    """
    from .services import Services

    settings = settings_with(preset=preset, device="cpu")
    configure_logging(settings.log_level, settings.log_format)
    services = Services(settings)
    dino, clip = services.models.dino, services.models.clip
    click.echo(
        f"preset {services.preset.name}: DINOv2 ready ({type(dino.model).__name__}), "
        f"CLIP ready ({clip.encoder_id})"
    )
