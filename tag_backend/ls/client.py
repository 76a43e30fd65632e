"""The one Label Studio API client of the backend (label-studio-sdk), built lazily.

Pushing predictions, planning a project's pre-labelling and re-ingesting annotations on
"Start Training" all talk to Label Studio through one :class:`LabelStudioClient` built from
``LABEL_STUDIO_URL`` / ``LABEL_STUDIO_API_KEY``. The SDK exchanges a personal access token for
an access token itself; after an authentication failure :meth:`LabelStudioClient.reset` drops
the client so the next call exchanges the token again.
"""

from __future__ import annotations

import logging
import threading

from ..errors import TagError

logger = logging.getLogger(__name__)


class LabelStudioAccessError(TagError):
    """Label Studio refused the token (401/403) or is not configured."""


class LabelStudioClient:
    """A lazily built ``label_studio_sdk.LabelStudio`` for one URL and API key."""

    def __init__(self, url: str | None, api_key: str | None, timeout: float = 30.0) -> None:
        self.url = (url or "").rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self._sdk = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings) -> "LabelStudioClient":
        return cls(settings.label_studio_url, settings.label_studio_api_key)

    @property
    def configured(self) -> bool:
        return bool(self.url and self.api_key)

    def sdk(self):
        """The SDK client; :class:`LabelStudioAccessError` when URL or key are not set."""
        if not self.configured:
            raise LabelStudioAccessError("set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY so the "
                                         "backend can reach the Label Studio API")
        with self._lock:
            if self._sdk is None:
                from label_studio_sdk import LabelStudio

                self._sdk = LabelStudio(base_url=self.url, api_key=self.api_key,
                                        timeout=self.timeout)
            return self._sdk

    def reset(self) -> None:
        """Drop the client (after an auth failure, so a new token exchange happens)."""
        with self._lock:
            self._sdk = None
