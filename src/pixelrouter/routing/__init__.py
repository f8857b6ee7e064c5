"""Routing: choose providers for a request and try them in turn."""
