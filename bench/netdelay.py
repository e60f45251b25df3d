"""A TCP proxy on loopback that delays each direction by a fixed time: a
same-zone network for the benchmarks (the kernel's netem is not available on
these machines). Not part of the extension.

Each accepted connection is forwarded to the cluster's Unix socket. Per
direction one thread reads a chunk, sleeps until `delay` has passed since it
arrived, and sends it on. That is exact for a request/response protocol such
as pgbench's (one message in flight per direction); a chunk that arrives
while the previous one waits is delayed a little more. A thread's sleep and
wake-up overshoot, so `calibrate` searches the sleep for which a measured
round trip through the proxy costs twice `delay` more than a direct one;
bench/bench.py reports what it measured.

    with DelayProxy(socket_path, delay=0.00025) as proxy:
        ... connect to 127.0.0.1:proxy.port ...
"""
import ctypes
import socket
import statistics
import sys
import threading
import time


def _overshoot(delay):
    """Median time a sleep of `delay` takes beyond `delay`."""
    extra = []
    for _ in range(200):
        t0 = time.perf_counter()
        time.sleep(delay)
        extra.append(time.perf_counter() - t0 - delay)
    return statistics.median(extra)


def _precise_sleeps():
    """Timer slack of 1 ns for the calling thread (Linux prctl
    PR_SET_TIMERSLACK): a sleep ends when asked, not up to 50 us later."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(29, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _pump(src, dst, proxy):
    _precise_sleeps()
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            due = time.perf_counter() + proxy.sleep
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            dst.sendall(data)
    except OSError:
        pass
    for s in (dst, src):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class DelayProxy:
    def __init__(self, unix_socket, delay):
        # Hand the interpreter lock over quickly between the pump threads.
        sys.setswitchinterval(0.0002)
        self.target, self.delay = unix_socket, delay
        # What each pump sleeps; calibrate() adjusts it.
        _precise_sleeps()
        self.sleep = max(0.0, delay - _overshoot(delay))
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]

    def _serve(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.connect(self.target)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=_pump, args=(src, dst, self), daemon=True).start()

    def calibrate(self, added_round_trip, rounds=7):
        """Finds the pumps' sleep for which `added_round_trip()` (seconds a
        round trip through the proxy takes beyond a direct one) is twice the
        delay, by bisection between no sleep and the full delay (the added
        time grows with the sleep; each probe is the median of three, for a
        shared machine's noise). Returns the measurement at the sleep kept."""
        target = 2 * self.delay

        def probe():
            return statistics.median(added_round_trip() for _ in range(3))

        low, high = 0.0, self.delay
        best = None
        for _ in range(rounds):
            self.sleep = (low + high) / 2
            added = probe()
            if best is None or abs(added - target) < abs(best[1] - target):
                best = (self.sleep, added)
            if added > target:
                high = self.sleep
            else:
                low = self.sleep
        self.sleep = best[0]
        return best[1]

    def __enter__(self):
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.listener.close()
