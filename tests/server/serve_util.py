"""Starts `cascade serve` on a free port for a test, and stops it (used by the server's Python tests)."""
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request


class Served:
    """A running `cascade serve` process; use as a context manager."""

    def __init__(self, binary, *args, api_key=None, timeout=60.0):
        self.api_key = api_key
        cmd = [binary, "serve", "--port", "0", *args]
        if api_key:
            cmd += ["--api-key", api_key]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout
        line = self.proc.stdout.readline()  # the server prints its address once bound
        m = re.search(r"listening on (http://\S+)", line)
        if not m:
            self.stop()
            raise RuntimeError(f"cascade serve did not start: {line!r} {self.proc.stderr.read()}")
        self.url = m.group(1)
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("cascade serve never became healthy")

    def request(self, method, path, body=None, timeout=60):
        """(status, parsed JSON or text) of one plain HTTP call."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
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
                raise AssertionError(f"server still busy after {timeout} s: {m}")
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
