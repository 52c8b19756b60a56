"""fdatasync a file from the event loop, without a thread where Linux allows.

A store acknowledges a write only once it is on disk, so every group of
writes waits for one fdatasync. On a thread, that wait costs more CPU than the
writes themselves: the GIL passes between the loop and the thread and back,
each pass a futex wake-up and a context switch (measured: ~15 futex calls and
a fifth of the server CPU per enrollment). Linux's native AIO runs the
fdatasync in the kernel (IOCB_CMD_FDSYNC, Linux >= 4.18) and signals an
eventfd the event loop already watches: no thread, no GIL hand-off.

Where native AIO is missing (another OS or architecture, a seccomp profile
that forbids it, aio-max-nr exhausted), the same call runs os.fdatasync on a
thread of its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import errno
import itertools
import logging
import os
import platform

log = logging.getLogger(__name__)

# io_setup, io_destroy, io_getevents, io_submit
_SYSCALLS = {"x86_64": (206, 207, 208, 209), "aarch64": (0, 1, 4, 2)}
_IOCB_CMD_FDSYNC = 3
_IOCB_FLAG_RESFD = 1
_QUEUE_DEPTH = 64


class _Iocb(ctypes.Structure):  # struct iocb, linux/aio_abi.h (little endian)
    _fields_ = (
        ("aio_data", ctypes.c_uint64),
        ("aio_key", ctypes.c_uint32),
        ("aio_rw_flags", ctypes.c_int32),
        ("aio_lio_opcode", ctypes.c_uint16),
        ("aio_reqprio", ctypes.c_int16),
        ("aio_fildes", ctypes.c_uint32),
        ("aio_buf", ctypes.c_uint64),
        ("aio_nbytes", ctypes.c_uint64),
        ("aio_offset", ctypes.c_int64),
        ("aio_reserved2", ctypes.c_uint64),
        ("aio_flags", ctypes.c_uint32),
        ("aio_resfd", ctypes.c_uint32),
    )


class _IoEvent(ctypes.Structure):  # struct io_event
    _fields_ = (
        ("data", ctypes.c_uint64),
        ("obj", ctypes.c_uint64),
        ("res", ctypes.c_int64),
        ("res2", ctypes.c_int64),
    )


class _KernelAio:
    """Linux native AIO, completions signalled on an eventfd the loop reads."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        numbers = _SYSCALLS.get(platform.machine())
        if numbers is None or not hasattr(os, "eventfd") or platform.system() != "Linux":
            raise OSError(errno.ENOSYS, "no native AIO here")
        self._setup, self._destroy, self._getevents, self._submit = numbers
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.syscall.restype = ctypes.c_long
        self._loop = loop
        self._context = ctypes.c_ulong(0)
        self._syscall(self._setup, _QUEUE_DEPTH, ctypes.byref(self._context))
        # token -> (future, descriptor, iocb): the kernel owns the iocb until it completes.
        self._waiting: dict[int, tuple[asyncio.Future[None], int, _Iocb]] = {}
        self._tokens = itertools.count(1)
        self._events = (_IoEvent * _QUEUE_DEPTH)()
        self._no_wait = (ctypes.c_long * 2)(0, 0)
        self._eventfd = -1
        try:
            self._eventfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            loop.add_reader(self._eventfd, self._reap)
        except BaseException:  # e.g. a loop without add_reader: leave nothing behind
            self._libc.syscall(self._destroy, self._context)
            if self._eventfd >= 0:
                os.close(self._eventfd)
            raise

    def _syscall(self, number: int, *args: object) -> int:
        result: int = self._libc.syscall(number, *args)
        if result < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        return result

    def fdatasync(self, fd: int) -> asyncio.Future[None]:
        """Start an fdatasync of ``fd``; the caller keeps ``fd`` open until it resolves."""
        if len(self._waiting) >= _QUEUE_DEPTH:
            raise OSError(errno.EAGAIN, "too many fdatasyncs in flight")
        token = next(self._tokens)
        iocb = _Iocb(
            aio_data=token,
            aio_lio_opcode=_IOCB_CMD_FDSYNC,
            aio_fildes=fd,
            aio_flags=_IOCB_FLAG_RESFD,
            aio_resfd=self._eventfd,
        )
        batch = (ctypes.POINTER(_Iocb) * 1)(ctypes.pointer(iocb))
        self._syscall(self._submit, self._context, 1, batch)
        future = self._loop.create_future()
        self._waiting[token] = (future, fd, iocb)
        return future

    def _reap(self) -> None:
        try:
            os.eventfd_read(self._eventfd)
        except BlockingIOError:
            return
        while self._waiting:
            count = self._syscall(
                self._getevents, self._context, 0, _QUEUE_DEPTH, self._events, self._no_wait
            )
            for event in self._events[:count]:
                future, _, _ = self._waiting.pop(event.data)
                if future.done():
                    continue
                if event.res < 0:
                    code = -event.res
                    future.set_exception(OSError(code, os.strerror(code)))
                else:
                    future.set_result(None)
            if count < _QUEUE_DEPTH:
                return

    def close(self) -> None:
        self._loop.remove_reader(self._eventfd)
        # io_destroy waits for the fdatasyncs still in flight.
        self._libc.syscall(self._destroy, self._context)
        self._reap_all_closed()
        os.close(self._eventfd)

    def _reap_all_closed(self) -> None:
        for future, _, _ in self._waiting.values():
            if not future.done():
                future.set_exception(OSError(errno.ECANCELED, "fdatasync cancelled at close"))
        self._waiting.clear()


class FileSyncer:
    """``await syncer.start(fd)``: the file's data is on disk when it resolves."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread: concurrent.futures.ThreadPoolExecutor | None = None
        self._aio: _KernelAio | None = None
        self._aio_tried = False  # set up on first use: read-only users never need it
        self._aio_refused = False  # the file system said EINVAL: threads from now on

    @property
    def uses_threads(self) -> bool:
        return self._thread is not None

    def _native(self) -> _KernelAio | None:
        if not self._aio_tried:
            self._aio_tried = True
            try:
                self._aio = _KernelAio(self._loop)
            except (OSError, NotImplementedError) as exc:  # NotImplementedError: no add_reader
                log.info("native AIO unavailable (%s): fdatasync runs on a thread", exc)
        return self._aio

    def start(self, fd: int) -> asyncio.Future[None]:
        """Start an fdatasync of ``fd``; the caller keeps ``fd`` open until it resolves."""
        aio = None if self._aio_refused else self._native()
        if aio is not None:
            try:
                return aio.fdatasync(fd)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.EAGAIN, errno.ENOSYS):
                    raise
                # EINVAL: this file system cannot (for good); EAGAIN: the queue is full.
                self._aio_refused = exc.errno == errno.EINVAL
        if self._thread is None:
            self._thread = concurrent.futures.ThreadPoolExecutor(1, "fleet-fsync")
        return self._loop.run_in_executor(self._thread, os.fdatasync, fd)

    def close(self) -> None:
        if self._aio is not None:
            self._aio.close()
            self._aio = None
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None
