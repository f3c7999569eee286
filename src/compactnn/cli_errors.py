"""How the ``compactnn`` command reports errors.

A *user error* (missing data, a bad config value, a path that does not exist or cannot be
written, no disk space, a failed download) is one ``error:`` line on stderr saying what is
wrong and what to do, and exit code 2. Anything else is an *internal error*, a bug: the
full traceback, a line asking for a report, and exit code 1. ``--debug`` anywhere on the
command line, or ``COMPACTNN_DEBUG=1``, prints the traceback for user errors too.

Exit codes of ``compactnn`` (also in ``compactnn --help``):

- 0: success;
- 1: internal error (a bug: please report it with the traceback);
- 2: user error (bad arguments or config, missing or corrupt data, bad path, permissions,
  failed download);
- 3: ``reproduce`` ran, but skipped experiments whose data is missing (none failed);
- 4: ``reproduce`` ran, but at least one experiment failed (see its report);
- 130: interrupted (Ctrl-C); finished runs and checkpoints are kept.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from collections.abc import Callable

__all__ = ["EXIT_CODES_HELP", "format_user_error", "is_user_error", "pop_debug_flag",
           "run_guarded"]

DEBUG_ENV = "COMPACTNN_DEBUG"
EXIT_CODES_HELP = ("exit codes: 0 success; 1 internal error (a bug: please report it); "
                   "2 user error (arguments, config, missing or corrupt data, paths, "
                   "permissions, downloads); 3 reproduce skipped experiments whose data is "
                   "missing; 4 reproduce had a failed experiment; 130 interrupted. "
                   f"--debug or {DEBUG_ENV}=1 shows tracebacks.")
_USER_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM,
                getattr(errno, "EDQUOT", errno.ENOSPC)}
_PATH_ERRORS = (FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError,
                FileExistsError)


def pop_debug_flag(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` without ``--debug`` (accepted anywhere), and whether debugging is on."""
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")
    return [a for a in argv if a != "--debug"], debug


def is_user_error(e: BaseException) -> bool:
    """Whether ``e`` comes from the user's input or environment rather than a bug."""
    from compactnn.data.errors import CacheError, DataIntegrityError, FetchError

    if isinstance(e, (DataIntegrityError, FetchError, CacheError, *_PATH_ERRORS)):
        return True  # DataNotFoundError is a FileNotFoundError
    if isinstance(e, OSError) and e.errno in _USER_ERRNOS:
        return True
    # matched by name so that printing an error imports nothing of the training stack
    return any(c.__name__ == "ConfigError" for c in type(e).__mro__)


def format_user_error(e: BaseException) -> str:
    """One line: what is wrong and what to do."""
    from compactnn.data.errors import CacheError, DataIntegrityError, DataNotFoundError

    if isinstance(e, DataNotFoundError | DataIntegrityError | CacheError) or not isinstance(
            e, OSError) or not e.strerror:
        text = str(e).strip() or type(e).__name__
        return text.splitlines()[0]
    where = f": {e.filename}" if e.filename else ""
    if isinstance(e, FileNotFoundError):
        todo = "check the path"
    elif isinstance(e, PermissionError) or e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        todo = "check its permissions or choose another location"
    elif e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        todo = "free some disk space or choose another location"
    else:
        todo = "choose another path"
    return f"{e.strerror}{where}; {todo}"


def run_guarded(func: Callable[[], int], debug: bool) -> int:
    """Run a command body, turning exceptions into the messages and exit codes above."""
    try:
        return func()
    except BrokenPipeError:
        # the reader went away (`compactnn ... | head`): not an error, as in other Unix
        # tools; stdout is pointed at /dev/null so the exit-time flush cannot fail again
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0
    except KeyboardInterrupt as e:
        print("\ninterrupted: finished runs and checkpoints are kept; run the same command "
              "again to resume", file=sys.stderr)
        return 128 + int(getattr(e, "signum", 2))  # 130 for SIGINT, 143 for SIGTERM
    except Exception as e:
        if is_user_error(e):
            if debug:
                traceback.print_exc()
            print(f"error: {format_user_error(e)}", file=sys.stderr)
            return 2
        traceback.print_exc()
        print("compactnn: internal error (a bug, not a problem with your input or data). "
              "Please report it with the traceback above and the command you ran.",
              file=sys.stderr)
        return 1
