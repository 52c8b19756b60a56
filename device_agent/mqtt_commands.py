"""What other threads ask of the MQTT session's loop thread, and how they wake it.

Only the loop thread touches the paho client. Other threads append a command
(publish, identity swap, stop) to a queue and write a byte to a socket pair;
the loop thread sleeps in ``select()`` on that socket (beside the broker's)
and applies the commands when it wakes.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import select
import socket
import threading

from device_agent.mqtt_tls import TlsIdentity


@dataclasses.dataclass
class Publish:
    topic: str
    payload: bytes
    qos: int


@dataclasses.dataclass
class Swap:
    identity: TlsIdentity
    done: threading.Event


@dataclasses.dataclass
class Stop:
    pass


Command = Publish | Swap | Stop


class CommandQueue:
    """Commands in the order they were sent; ``waker`` is readable while some may wait."""

    def __init__(self) -> None:
        self._commands: collections.deque[Command] = collections.deque()
        self.waker, self._wake_w = socket.socketpair()
        self.waker.setblocking(False)
        self._wake_w.setblocking(False)

    def send(self, command: Command) -> None:
        """Any thread: queue ``command`` and wake the loop thread."""
        self._commands.append(command)
        # A full buffer means the loop is already due to wake; closed means stopped.
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def pop(self) -> Command | None:
        """Loop thread: the oldest command not yet applied, or None."""
        return self._commands.popleft() if self._commands else None

    def sleep(self, timeout: float) -> None:
        """Loop thread: wait until a command is sent or ``timeout`` passes."""
        readable, _, _ = select.select([self.waker], [], [], timeout)
        if readable:
            self.drain_wakeups()

    def drain_wakeups(self) -> None:
        try:
            while self.waker.recv(4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        self.waker.close()
        self._wake_w.close()
