"""Switchboard: omnichannel contact routing and self-service deflection."""

from pathlib import Path

WEB_DIR = Path(__file__).resolve().parent / "web"
"""The static pages: agent console, chat widget and demo, ops dashboard."""
