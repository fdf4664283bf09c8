#!/usr/bin/env python3
"""A loopback TCP proxy that adds a fixed one-way delay to each direction: latency, not throttling.

Why: on one machine client and server are microseconds apart, so a benchmark there says nothing
about how a tool copes with the round trips of a real network (S3 in another region, or just the
~1-20 ms of a datacenter hop), where per-request latency and not bandwidth is what small objects
pay. Kernel tools (tc netem) need privileges and touch the whole loopback interface; this proxy
only affects the connections made to it.

How: every chunk read from one side is stamped with ``now + delay`` and queued; a writer task per
direction sleeps until each chunk's due time and then writes it. Reading and writing are
pipelined, so many chunks are "in the air" at once and throughput is unchanged: a byte read at
time t is written at t + delay, whatever else is queued. An end of stream is queued like data,
so a half-close (shutdown of one direction) also arrives ``delay`` later and the other direction
keeps flowing. The queue per direction is bounded, so a slow receiver pushes back on the sender
instead of the proxy buffering without limit.

Use it as a class (``LatencyProxy(...).start()`` runs an asyncio loop in a daemon thread and
returns once the port is listening) or as a script:

    python bench/latency_proxy.py --target-port 8333 --delay-ms 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import threading
import time
from types import TracebackType

LOOPBACK = "127.0.0.1"
READ_SIZE = 256 * 1024
# Chunks queued per direction before the reader stops reading; with 256 KiB reads that is at most
# 64 MiB per direction, far above what 10 ms at loopback speed needs (a few MB).
QUEUE_CHUNKS = 256
_EOF = b""


class LatencyProxy:
    """Forward 127.0.0.1:<port> to 127.0.0.1:<target_port>, each direction delayed by ``delay`` seconds."""

    def __init__(self, target_port: int, delay: float = 0.010, listen_port: int = 0,
                 target_host: str = LOOPBACK) -> None:
        if target_host != LOOPBACK:
            raise ValueError("the latency proxy only forwards to 127.0.0.1")
        self.target_host = target_host
        self.target_port = target_port
        self.delay = delay
        self.port = listen_port  # replaced by the bound port once started
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self.connections = 0

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> LatencyProxy:
        """Run the proxy in a daemon thread; return once it listens (``self.port`` is then set)."""
        self._thread = threading.Thread(target=self._run_loop, name="latency-proxy", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            raise self._startup_error
        return self

    def stop(self) -> None:
        """Stop listening, drop every open connection and end the thread."""
        if self._loop is None or self._thread is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop may already be closed
            self._loop.call_soon_threadsafe(self._shutdown_now)
        self._thread.join(timeout=10)

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def __enter__(self) -> LatencyProxy:  # noqa: PYI034 - returns start()'s result, which is self
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _run_loop(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, LOOPBACK, self.port, backlog=512, limit=READ_SIZE))
            self.port = int(self._server.sockets[0].getsockname()[1])
        except BaseException as error:  # noqa: BLE001 - handed to the thread that called start()
            self._startup_error = error
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            # Connections still open (keep-alive pools) end here; let their handlers run their
            # cleanup to completion, so that no task is destroyed while pending.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            with contextlib.suppress(BaseException):
                loop.run_until_complete(asyncio.wait_for(
                    asyncio.gather(*pending, return_exceptions=True), timeout=5))
            loop.close()

    def _shutdown_now(self) -> None:
        if self._server is not None:
            self._server.close()
        assert self._loop is not None
        self._loop.stop()

    # -- one connection ----------------------------------------------------------------------

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        # Cancellation only comes from stop(); end quietly then, because asyncio's stream server
        # reports a handler task that ends cancelled as an error.
        with contextlib.suppress(asyncio.CancelledError):
            await self._proxy_connection(client_reader, client_writer)

    async def _proxy_connection(self, client_reader: asyncio.StreamReader,
                                client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                self.target_host, self.target_port, limit=READ_SIZE)
        except OSError:
            client_writer.close()
            return
        for writer in (client_writer, upstream_writer):
            sock = writer.get_extra_info("socket")
            if sock is not None:  # small HTTP requests must not wait for Nagle on top of the delay
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await asyncio.gather(
                self._pipe(client_reader, upstream_writer),
                self._pipe(upstream_reader, client_writer),
            )
        finally:
            for writer in (client_writer, upstream_writer):
                writer.close()
                with contextlib.suppress(OSError, asyncio.CancelledError):
                    await writer.wait_closed()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy one direction, each chunk written ``delay`` after it was read."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=QUEUE_CHUNKS)
        loop = asyncio.get_running_loop()

        async def read_side() -> None:
            try:
                while True:
                    data = await reader.read(READ_SIZE)
                    await queue.put((loop.time() + self.delay, data))
                    if not data:
                        return
            except (OSError, asyncio.IncompleteReadError):
                # A reset on the read side ends this direction as an EOF would; the writer closes.
                await queue.put((loop.time() + self.delay, _EOF))

        async def write_side() -> None:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                try:
                    if not data:
                        if writer.can_write_eof():
                            writer.write_eof()  # half-close: the peer sees EOF, the other direction flows on
                        return
                    writer.write(data)
                    await writer.drain()
                except OSError:
                    return  # the receiver went away; the reader side will see its own EOF or error

        reader_task = asyncio.ensure_future(read_side())
        try:
            await write_side()
        finally:
            if not reader_task.done():
                # Writing failed: nobody will take what the reader reads, so stop it.
                reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await reader_task


def measure_added_rtt(direct_url: str, proxied_url: str, access_key: str, secret_key: str, bucket: str,
                      samples: int = 21) -> tuple[float, float]:
    """Median seconds of one HeadBucket on a warm keep-alive connection: (direct, through the proxy)."""
    import boto3  # imported here so the proxy itself needs only the standard library
    from botocore.config import Config

    def median_head(url: str) -> float:
        client = boto3.session.Session().client(
            "s3", endpoint_url=url, aws_access_key_id=access_key, aws_secret_access_key=secret_key,
            region_name="us-east-1", config=Config(s3={"addressing_style": "path"}))
        client.head_bucket(Bucket=bucket)  # opens the connection and warms botocore's caches
        times = []
        for _ in range(samples):
            start = time.perf_counter()
            client.head_bucket(Bucket=bucket)
            times.append(time.perf_counter() - start)
        client.close()  # its keep-alive connection would otherwise outlive the measurement
        return sorted(times)[len(times) // 2]

    return median_head(direct_url), median_head(proxied_url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target-port", type=int, required=True, help="port on 127.0.0.1 to forward to")
    parser.add_argument("--listen-port", type=int, default=0, help="port to listen on (default: any free one)")
    parser.add_argument("--delay-ms", type=float, default=10.0, help="one-way delay per direction (default 10)")
    args = parser.parse_args()
    proxy = LatencyProxy(args.target_port, delay=args.delay_ms / 1000, listen_port=args.listen_port).start()
    print(f"forwarding {proxy.endpoint_url} -> {LOOPBACK}:{args.target_port}, "
          f"+{args.delay_ms:g} ms each way (+{2 * args.delay_ms:g} ms RTT); Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        proxy.stop()


if __name__ == "__main__":
    main()
