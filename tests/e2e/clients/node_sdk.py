"""Runs one scenario of the OpenAI Node SDK (``node/scenarios.mjs``) and returns its JSON."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.clients.stack import MODEL, REPORT_SCHEMA, TOOL_OUTPUT, WEATHER_TOOL, VLLMStack

NODE_PROJECT = Path(__file__).with_name("node")
SCRIPT = NODE_PROJECT / "scenarios.mjs"
INSTALL_HINT = "`make node-clients` (a prerequisite of `make test`) installs node and the SDK"


def node_sdk_version() -> str:
    """The installed SDK's version, or a failure saying how to install it (never a skip)."""
    manifest = NODE_PROJECT / "node_modules" / "openai" / "package.json"
    if shutil.which("node") is None or not manifest.exists():
        pytest.fail(f"the OpenAI Node SDK is not installed: {INSTALL_HINT}")
    return str(json.loads(manifest.read_text())["version"])


def run_scenario(name: str, stack: VLLMStack) -> dict[str, Any]:
    """``node scenarios.mjs NAME`` against ``stack``'s gateway: the object it prints."""
    node_sdk_version()
    config = {
        "baseURL": stack.base_url,
        "apiKey": stack.key,
        "model": MODEL,
        "tool": WEATHER_TOOL,
        "schema": REPORT_SCHEMA,
        "toolOutput": TOOL_OUTPUT,
    }
    done = subprocess.run(
        ["node", str(SCRIPT), name],
        input=json.dumps(config),
        capture_output=True,
        text=True,
        cwd=NODE_PROJECT,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"node scenario {name!r} exited {done.returncode}:\n{done.stderr.strip()}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result
