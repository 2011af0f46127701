"""The one exception type the CLI turns into a single line and exit code 2."""


class UserError(Exception):
    """Bad input from the user (unknown name, invalid parameter, missing data, unreadable file)."""


def run_script(main) -> None:
    """Run a script's main() as the CLI runs a command: a UserError is one line on stderr, exit 2."""
    import sys

    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def one_line(e: BaseException | str, limit: int = 300) -> str:
    """An exception's message on one line (a library's message may span several), at most `limit` characters."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def nearest(name: str, known, *, n: int = 3, cutoff: float = 0.5) -> list[str]:
    """The known names closest to `name` by spelling (difflib), best first."""
    import difflib

    return difflib.get_close_matches(name, list(known), n=n, cutoff=cutoff)


def did_you_mean(name: str, known, *, cutoff: float = 0.5, quote: bool = False) -> str:
    """" Did you mean a, b?" naming the nearest known names (repr'd with `quote`), or "" when none is near."""
    close = [repr(c) if quote else c for c in nearest(name, known, cutoff=cutoff)]
    return f" Did you mean {', '.join(close)}?" if close else ""
