"""Real upstream servers, run from environments of their own under ``.venvs/``."""
