"""Runs the server: the launcher that joins the page and the OpenAI-compatible /v1 API
in one process (and, later, health, metrics and MCP). Calls tasks, never the reverse."""
