"""A TCP proxy on 127.0.0.1 that can lose responses: the request reaches the API, the answer never reaches the
client (the connection is closed once the API has started answering). It reproduces a lost response exactly."""

from __future__ import annotations

import socket
import threading


class LossyProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.to_lose = 0  # responses still to lose
        self.lost = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def lose_next(self, n: int = 1) -> None:
        with self._lock:
            self.to_lose = n

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._answer, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _hang_up(sink)

    def _answer(self, upstream: socket.socket, client: socket.socket) -> None:
        """Relay the API's answers, except those to lose: the API did the work, the client hears nothing."""
        try:
            while data := upstream.recv(65536):
                with self._lock:
                    lose = self.to_lose > 0
                    if lose:
                        self.to_lose -= 1
                        self.lost += 1
                if lose:
                    break
                client.sendall(data)
        except OSError:
            pass
        finally:
            _hang_up(client)
            _hang_up(upstream)


def _hang_up(sock: socket.socket) -> None:
    """Close at once, for both sides: ``close`` alone sends nothing while another thread still blocks in ``recv``
    on the socket, and the client would wait out its whole timeout instead of seeing the connection drop."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already disconnected
    sock.close()
