"""A small threaded TCP forwarder for tests: listen on (host, port) and forward every
connection to a target (host, port), so that processes in another network namespace reach
a service that listens only on 127.0.0.1, and so that a test can cut the service off and
bring it back.

    proxy = TcpProxy(("10.213.47.1", 0), ("127.0.0.1", 5432)).start()
    proxy.port          # the port it listens on (picked when 0 was asked)
    proxy.cut()         # stop listening and reset every forwarded connection: new ones are refused
    proxy.restore()     # listen again, on the same port
    proxy.delay = 0.1   # wait this long before forwarding each piece (a slow network)
    proxy.close()       # for good (also on leaving a `with` block)

Every thread is a daemon thread; `cut` and `close` return once the listener and every
forwarded connection are closed on both sides.
"""
from __future__ import annotations

import select
import socket
import struct
import threading
import time
from types import TracebackType

CHUNK = 256 * 1024


class _Connection:
    """One forwarded connection: the client's socket, the target's (once connected), and a
    thread per direction (one thread for both could deadlock, each side blocked sending to
    the other). Either side ending ends both: the direction that sees it shuts both sockets
    down, which wakes the other one from recv or sendall; once both stopped, they are closed."""

    def __init__(self, proxy: TcpProxy, client: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream: socket.socket | None = None
        self.aborted = False
        self.thread = threading.Thread(target=self._run, name="netproxy-pump", daemon=True)

    def abort(self) -> None:
        """Reset both sides (RST, not a polite FIN: as a service or network that went away)."""
        with self.proxy._lock:
            self.aborted = True
            for sock in (self.client, self.upstream):
                if sock is not None and sock.fileno() >= 0:
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    except OSError:
                        pass
        self._shutdown()

    def _shutdown(self) -> None:
        with self.proxy._lock:
            for sock in (self.client, self.upstream):
                if sock is not None and sock.fileno() >= 0:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

    def _run(self) -> None:
        try:
            try:
                upstream = socket.create_connection(self.proxy.target, timeout=10)
            except OSError:
                return  # the target is down: the client sees its connection closed
            upstream.settimeout(None)
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.proxy._lock:
                self.upstream = upstream
                if self.aborted:
                    return
            back = threading.Thread(target=self._copy, args=(upstream, self.client), name="netproxy-pump", daemon=True)
            back.start()
            self._copy(self.client, upstream)
            back.join()
        finally:
            with self.proxy._lock:
                for sock in (self.client, self.upstream):
                    if sock is not None:
                        sock.close()
                self.proxy._connections.discard(self)

    def _copy(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(CHUNK):
                if self.proxy.delay:
                    time.sleep(self.proxy.delay)
                sink.sendall(data)
        except OSError:  # reset, or shut down by the other direction or by `abort`
            pass
        finally:
            self._shutdown()


class TcpProxy:
    """Forward connections to `listen` (port 0: a free one) to `target`."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.host, self.port = listen
        self.target = target
        self._lock = threading.Lock()
        self._connections: set[_Connection] = set()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._closed = False
        self._control = threading.Lock()  # one start, cut or close at a time
        self.delay = 0.0

    # -- the public side -------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def listening(self) -> bool:
        return self._listener is not None

    @property
    def connections(self) -> int:
        """Forwarded connections open now."""
        with self._lock:
            return len(self._connections)

    def start(self) -> TcpProxy:
        with self._control:
            return self._start()

    def _start(self) -> TcpProxy:
        if self._closed:
            raise RuntimeError("this proxy is closed")
        if self._listener is not None:
            return self
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # The port is taken again by `restore` while cut connections may linger.
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.port))
            listener.listen(128)
        except OSError:
            listener.close()
            raise
        self.port = listener.getsockname()[1]
        self._drain_wakeups()
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept_loop, args=(listener,), name="netproxy-accept", daemon=True)
        self._acceptor.start()
        return self

    def cut(self) -> None:
        """Stop listening (a new connection is refused) and reset every forwarded one.
        Returns once all of them are closed. Idempotent."""
        with self._control:
            self._cut()

    def _cut(self) -> None:
        listener, acceptor = self._listener, self._acceptor
        if listener is not None and acceptor is not None:
            self._wake_w.send(b"x")
            acceptor.join(10)
            listener.close()
            self._listener = self._acceptor = None
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.abort()
        for connection in connections:
            if connection.thread.is_alive():
                connection.thread.join(10)

    def restore(self) -> TcpProxy:
        """Listen again on the same port, after `cut`."""
        return self.start()

    def close(self) -> None:
        with self._control:
            if self._closed:
                return
            self._cut()
            self._closed = True
            self._wake_r.close()
            self._wake_w.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "listening" if self.listening else "cut"
        return f"<TcpProxy {self.host}:{self.port} -> {self.target[0]}:{self.target[1]} {state}>"

    # -- the threads -----------------------------------------------------------------

    def _drain_wakeups(self) -> None:
        self._wake_r.setblocking(False)
        try:
            while self._wake_r.recv(64):
                pass
        except BlockingIOError:
            pass
        finally:
            self._wake_r.setblocking(True)

    def _accept_loop(self, listener: socket.socket) -> None:
        poller = select.poll()
        poller.register(listener, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while True:
            try:
                ready = {fd for fd, _ in poller.poll()}
            except OSError:
                return
            if self._wake_r.fileno() in ready:
                return  # `cut`: it closes the listener once this thread is gone
            try:
                client, _ = listener.accept()
            except OSError:
                continue
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = _Connection(self, client)
            with self._lock:
                self._connections.add(connection)
            connection.thread.start()
