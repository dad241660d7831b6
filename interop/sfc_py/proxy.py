"""A TCP relay that delivers a client's bytes the way a real network does.

A long write does not arrive at once: it crosses the network in segments of at most one
MSS (1,460 bytes on Ethernet), a little apart. On 127.0.0.1 a write arrives whole, so a
server that reads each field with one recv(n) never sees a short read there. This relay
passes the client's bytes on in pieces of at most `segment` bytes, `gap` seconds apart,
with TCP_NODELAY so that each piece is sent on its own; replies go back unchanged.
"""

from __future__ import annotations

import socket
import threading
import time


class SegmentingProxy:
    def __init__(self, target: tuple[str, int], segment: int = 1400, gap: float = 0.001) -> None:
        self.target = target
        self.segment = segment
        self.gap = gap
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self) -> "SegmentingProxy":
        self._spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._listener.close()
        with self._lock:
            for s in self._sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
        for t in list(self._threads):
            t.join(timeout=5)

    def _spawn(self, target, *args) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(t)
        t.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, server]
            self._spawn(self._relay, client, server, True)
            self._spawn(self._relay, server, client, False)

    def _relay(self, src: socket.socket, dst: socket.socket, segmented: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if not segmented:
                    dst.sendall(data)
                    continue
                for i in range(0, len(data), self.segment):
                    dst.sendall(data[i:i + self.segment])
                    time.sleep(self.gap)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
