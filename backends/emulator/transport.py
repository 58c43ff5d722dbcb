"""Byte streams the emulator serves on: a pseudo-terminal or a loopback TCP socket.

Both give the host a pyserial URL: the pseudo-terminal's slave path (a serial port as
far as pyserial is concerned) or `socket://127.0.0.1:PORT`.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import tty

logger = logging.getLogger(__name__)

WRITE_TIMEOUT_S = 2.0
"""How long a reply may wait for the host to read, in s, before it is dropped."""


class PtyTransport:
    """A pseudo-terminal whose slave side the host opens as a serial port."""

    def __init__(self) -> None:
        self._master, self._slave = os.openpty()
        # Raw mode before the host opens the port, so no byte is echoed or translated.
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.url = os.ttyname(self._slave)

    def read(self, timeout_s: float) -> bytes:
        """Return bytes from the host, or b"" when none came within the timeout."""
        ready, _, _ = select.select([self._master], [], [], timeout_s)
        if not ready:
            return b""
        try:
            return os.read(self._master, 65536)
        except BlockingIOError:
            return b""

    def write(self, data: bytes) -> None:
        """Send bytes to the host; drop them if it does not read for a while."""
        view = memoryview(data)
        while view:
            _, ready, _ = select.select([], [self._master], [], WRITE_TIMEOUT_S)
            if not ready:
                logger.warning("host is not reading; %d reply bytes dropped", len(view))
                return
            try:
                view = view[os.write(self._master, view) :]
            except BlockingIOError:
                continue

    def close(self) -> None:
        """Close both sides of the pseudo-terminal."""
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError as err:
                if err.errno != errno.EBADF:
                    raise


class SocketTransport:
    """A TCP listener on the loopback interface that serves one host at a time."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._listener = socket.create_server((host, port))
        self._listener.setblocking(False)
        self._client: socket.socket | None = None
        bound_host, bound_port = self._listener.getsockname()[:2]
        self.url = f"socket://{bound_host}:{bound_port}"

    def read(self, timeout_s: float) -> bytes:
        """Return bytes from the host, accepting a new host when none is connected."""
        watched = self._client or self._listener
        ready, _, _ = select.select([watched], [], [], timeout_s)
        if not ready:
            return b""
        if self._client is None:
            self._accept()
            return b""
        try:
            data = self._client.recv(65536)
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError as err:
            logger.info("host connection failed (%s); waiting for a new one", err)
            data = b""
        if not data:
            self._drop_client()
        return data

    def _accept(self) -> None:
        try:
            client, address = self._listener.accept()
        except BlockingIOError:
            return
        client.setblocking(True)
        client.settimeout(WRITE_TIMEOUT_S)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._client = client
        logger.info("host connected from %s:%d", *address[:2])

    def _drop_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
            logger.info("host disconnected")

    def write(self, data: bytes) -> None:
        """Send bytes to the connected host; drop them when none is connected."""
        if self._client is None:
            return
        try:
            self._client.sendall(data)
        except OSError as err:
            logger.info("sending to the host failed (%s); dropping the connection", err)
            self._drop_client()

    def close(self) -> None:
        """Close the connection and the listener."""
        self._drop_client()
        self._listener.close()


def open_transport(kind: str, port: int = 0):
    """Open the transport named `pty` or `socket` (on `port`, 0 for any free one)."""
    if kind == "pty":
        return PtyTransport()
    if kind == "socket":
        return SocketTransport(port=port)
    raise ValueError(f"unknown transport {kind!r}: use pty or socket")
