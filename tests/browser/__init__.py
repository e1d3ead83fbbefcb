"""Helpers for the browser test (tests/test_browser.py): loopback server, chromedriver client."""
