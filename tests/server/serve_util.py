"""Starts `cascade serve` on a free port for a test, and stops it (used by the server's Python tests)."""
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request


# Loopback calls never go through a proxy, whatever http_proxy says in the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Served:
    """A running `cascade serve` process; use as a context manager."""

    def __init__(self, binary, *args, api_key=None, timeout=60.0):
        self.api_key = api_key
        cmd = [binary, "serve", "--port", "0", *args]
        if api_key:
            cmd += ["--api-key", api_key]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Both pipes are drained for the server's whole life: a full pipe would block the server's
        # logging and with it the engine. What it said is kept for failure messages (log_tail()).
        self._log = []
        self._log_lock = threading.Lock()
        first_line = threading.Event()
        self._stdout_first = None

        def drain(stream, name):
            for text in stream:
                with self._log_lock:
                    if name == "stdout" and self._stdout_first is None:
                        self._stdout_first = text
                        first_line.set()
                    self._log.append(f"[{name}] {text}")
                    del self._log[:-200]
            if name == "stdout":
                first_line.set()

        self._drainers = [threading.Thread(target=drain, args=(self.proc.stdout, "stdout"), daemon=True),
                          threading.Thread(target=drain, args=(self.proc.stderr, "stderr"), daemon=True)]
        for t in self._drainers:
            t.start()
        deadline = time.monotonic() + timeout
        first_line.wait(timeout)  # the server prints its address once bound
        m = re.search(r"listening on (http://\S+)", self._stdout_first or "")
        if not m:
            self.stop()
            raise RuntimeError(f"cascade serve did not start: {self._stdout_first!r}\n{self.log_tail()}")
        self.url = m.group(1)
        while time.monotonic() < deadline:
            try:
                with _OPENER.open(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"cascade serve never became healthy\n{self.log_tail()}")

    def log_tail(self):
        """The last lines the server wrote to stdout and stderr."""
        with self._log_lock:
            return "".join(self._log[-50:])

    def request(self, method, path, body=None, timeout=60):
        """(status, parsed JSON or text) of one plain HTTP call."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with _OPENER.open(req, timeout=timeout) as r:
                status, text = r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def metrics(self):
        """Unlabelled metric lines of /metrics as {name: value}."""
        _, text = self.request("GET", "/metrics")
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def wait_idle(self, timeout=60.0):
        """Waits until nothing runs or waits; returns the metrics then."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.metrics()
            if m["cascade_running_sequences"] == 0 and m["cascade_queue_depth"] == 0:
                return m
            if time.monotonic() > deadline:
                raise AssertionError(f"server still busy after {timeout} s: {m}\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def binary_from_args(argv):
    """--binary PATH, else $CASCADE_BINARY, else ./build/cascade."""
    if "--binary" in argv:
        return argv[argv.index("--binary") + 1]
    return os.environ.get("CASCADE_BINARY", "build/cascade")
