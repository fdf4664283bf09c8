"""S3's behaviour where moto and SeaweedFS differ from it, emulated in front of them.

Each class here is a behaviour for ``FaultProxy.behave`` (tests/fault_proxy.py): it sees every
request on its way to the local server, as a parsed ``Request``, and may answer it itself, change
it, or rewrite the server's ``Answer``, so that a test meets what the tool would meet on AWS. Each
one names the part of the S3 API reference (or the S3 User Guide) it follows: a behaviour made up
here would prove nothing about S3.

Besides S3's own behaviours, ``Hold`` stops the world at a chosen request, for tests that kill the
tool at that exact moment.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional

from fault_proxy import Answer, Forward, Request

Predicate = Callable[[Request], bool]


def operation_is(name: str, *, key: Optional[str] = None, **query: str) -> Predicate:
    """A predicate: the request is this S3 operation (on this key, with these query values)."""

    def matches(request: Request) -> bool:
        return (request.operation == name and (key is None or request.key == key)
                and all(request.query.get(field) == [value] for field, value in query.items()))

    return matches


class Hold:
    """Hold the tool at one request, so a test can kill it there.

    Requests pass until one matches ``trigger``. With ``answer_trigger`` (the default) that one is
    answered; with ``answer_trigger=False`` the server carries it out but its answer is never sent,
    as when a machine dies after S3 acted and before the answer arrived. Every later request is held,
    never reaching the server, until ``close()`` (the proxy's stop), and then dropped unanswered, so
    that nothing the tool sent after the moment can change the server once the test has killed it.
    ``triggered`` is set at the moment.
    """

    def __init__(self, trigger: Predicate, *, answer_trigger: bool = True) -> None:
        self._trigger = trigger
        self._answer_trigger = answer_trigger
        self.triggered = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, request: Request, forward: Forward) -> Answer:
        with self._lock:
            holding = self.triggered.is_set()
            fires = not holding and self._trigger(request)
        if holding:
            self._closed.wait()
            raise ConnectionAbortedError("held until the proxy stopped")
        answer = forward(request)
        if fires:
            self.triggered.set()
            if not self._answer_trigger:
                self._closed.wait()
                raise ConnectionAbortedError("carried out, answer held until the proxy stopped")
        return answer

    def close(self) -> None:
        self._closed.set()


# -- items 9, 10, 11a and 13 of issue 15: throttling, KMS denials, archive tiers, a vanished copy source --

def _error_for(request: Request, status: int, code: str, message: str, **elements: str) -> Answer:
    """An S3 error answer; to a HEAD, the status alone, with no body, as S3 answers a HEAD."""
    answer = Answer.s3_error(status, code, message, **elements)
    if request.method == "HEAD":
        answer.body = b""
        answer.drop_header("Content-Type")
    return answer


class SlowDownStorm:
    """S3 throttling: ``503 SlowDown`` ("Please reduce your request rate.") to requests beyond the
    rate a prefix supports, while S3 scales it up (S3 API reference, "Error responses", SlowDown;
    S3 User Guide, "Best practices design patterns: optimizing Amazon S3 performance": back off and
    retry). A HEAD gets the bare 503.

    Count-based, so the same storm meets the same requests in every run: each distinct request
    (method, target and Range) that ``which`` selects is answered SlowDown its first ``times``
    times, then goes through. ``answered`` counts the SlowDowns sent.
    """

    def __init__(self, which: Predicate, *, times: int) -> None:
        self._which = which
        self._times = times
        self._seen: dict[tuple[str, str, Optional[str]], int] = {}
        self._lock = threading.Lock()
        self.answered = 0

    def __call__(self, request: Request, forward: Forward) -> Answer:
        if self._which(request):
            identity = (request.method, request.target, request.header("Range"))
            with self._lock:
                self._seen[identity] = self._seen.get(identity, 0) + 1
                throttled = self._seen[identity] <= self._times
                if throttled:
                    self.answered += 1
            if throttled:
                return _error_for(request, 503, "SlowDown", "Please reduce your request rate.")
        return forward(request)
