"""
Where messages go.

Each module logs through its own logger under "trainer_ckpt" ("trainer_ckpt.engine",
"trainer_ckpt.storage", "trainer_ckpt.remote", a face's): their names, levels and handlers work
as always, and decide which records exist. A face adds where its framework's users look, its
framework's logger (the runner's MMLogger, ignite's `engine.logger`, fvcore's
`Checkpointer.logger`): an Engine given it as `logger` routes to it while it acts (each public
method, and the background save it hands to its worker thread), and a face routes its own calls
with `logs_to`. Within a route, a record of any trainer_ckpt logger (the engine's, the stores',
io's, the face's) also goes to the handlers of that logger (and of the loggers it propagates
to), formatted their way, each handler once; it keeps its name ("trainer_ckpt.engine"). The
route is a context variable: other threads, engines and faces in the process do not see it. A
record no handler takes goes to Python's last resort (bare, on stderr) as before; within a route,
to stderr with its level and time (ignite's `setup_logger` format) instead.
"""
import contextlib
import contextvars
import functools
import logging
import sys
import threading
from typing import Any, Callable, Iterator, List, Optional

_ROUTE: "contextvars.ContextVar[Optional[logging.Logger]]" = contextvars.ContextVar("trainer_ckpt.log_route", default=None)


class _Stderr(logging.StreamHandler):
    """Python's last resort (WARNING and above, to the `sys.stderr` of the moment), with a level and a time."""

    def __init__(self) -> None:
        super().__init__()
        self.setLevel(logging.WARNING)
        self.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))

    @property
    def stream(self) -> Any:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


_STDERR = _Stderr()


def _handlers(start: logging.Logger) -> List[logging.Handler]:
    """The handlers a record logged by `start` reaches, as `Logger.callHandlers` walks them."""
    found: List[logging.Handler] = []
    current: Optional[logging.Logger] = start
    while current is not None:
        found.extend(current.handlers)
        current = current.parent if current.propagate else None
    return found


class _Router(logging.Handler):
    """On the "trainer_ckpt" logger, once per process: hands each record that reaches it to the route in effect."""

    def handle(self, record: logging.LogRecord) -> bool:  # type: ignore[override]  # no lock: the handlers it calls take theirs
        own = [h for h in _handlers(logging.getLogger(record.name)) if h is not self]  # they have it, or will
        route = _ROUTE.get()
        theirs = [] if route is None else [h for h in _handlers(route) if all(h is not o for o in own)]
        if theirs and not route.disabled and route.isEnabledFor(record.levelno) and route.filter(record):
            for handler in theirs:
                if record.levelno >= handler.level:
                    handler.handle(record)
        if not (own or theirs):
            last = logging.lastResort if route is None else _STDERR
            if last is not None and record.levelno >= last.level:
                last.handle(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        self.handle(record)


_ROUTER = _Router()
_ROUTER_LOCK = threading.Lock()


def _install_router() -> None:
    """Puts the router on "trainer_ckpt" (again, when a logging configuration replaced its handlers;
    in place of a router of an earlier import of this module)."""
    top = logging.getLogger("trainer_ckpt")
    if _ROUTER in top.handlers:
        return
    with _ROUTER_LOCK:
        for handler in [h for h in top.handlers if h is not _ROUTER and (type(h).__module__, type(h).__qualname__) == (__name__, "_Router")]:
            top.removeHandler(handler)
        if _ROUTER not in top.handlers:
            top.addHandler(_ROUTER)


_install_router()


@contextlib.contextmanager
def logs_to(target: Optional[logging.Logger]) -> Iterator[None]:
    """
    Within it (in this thread or task), records of trainer_ckpt's loggers go to `target`'s handlers
    too (see this module's docstring); None leaves the route as it is.
    """
    if target is None:
        yield
        return
    _install_router()
    token = _ROUTE.set(target)
    try:
        yield
    finally:
        _ROUTE.reset(token)


def routed(method: Callable) -> Callable:
    """A method whose messages go to its object's `logger` too (the Engine's public methods)."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with logs_to(self.logger):
            return method(self, *args, **kwargs)

    return wrapper
