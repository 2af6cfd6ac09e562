"""Small builders shared by the tests (``from helpers import ...``; tests/ is on sys.path)."""


def error_lines(text):
    """The ERROR log lines of a tool's stderr (what the user reads when a run is refused)."""
    return [line for line in text.splitlines() if " ERROR " in line]
