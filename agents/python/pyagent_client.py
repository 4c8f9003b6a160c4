"""A small client of a PyAgent node's local API (ZeroMQ, JSON), for scripts and agents.

    from pyagent_client import Client
    with Client("tcp://127.0.0.1:7761") as node:
        print(node.status()["peer_id"])
        task = node.submit("python.tokens", [{"path": "a.py", "text": "x = 1\n"}])
        report = node.wait_for(task["task_id"])
        print(report["state"], report.get("result"))

Requires pyzmq. One DEALER socket; requests carry increasing ids and replies are
matched to them. Errors the node reports raise `ApiError` with its code and message.
"""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

import zmq

__all__ = ["Client", "ApiError"]


BUSY = -32001  # the node is busy: retry later


class ApiError(Exception):
    """The node refused a request (see `code` and `message`), or did not answer."""

    def __init__(self, code: int, message: str):
        super().__init__(f"{message} (code {code})")
        self.code = code
        self.message = message


class Client:
    def __init__(self, endpoint: str = "tcp://127.0.0.1:7761", timeout_ms: int = 10_000):
        self.endpoint = endpoint
        self.timeout_ms = timeout_ms
        self._context = zmq.Context.instance()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.connect(endpoint)
        self._ids = itertools.count(1)

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: str, params: dict[str, Any] | None = None, timeout_ms: int | None = None) -> Any:
        """Sends one request and returns its result (raises ApiError on an error reply).
        A busy reply (code -32001) is retried with backoff until the timeout."""
        deadline = time.monotonic() + (timeout_ms or self.timeout_ms) / 1000
        delay = 0.025
        while True:
            left_ms = int((deadline - time.monotonic()) * 1000)
            try:
                return self._call_once(method, params, max(left_ms, 1))
            except ApiError as e:
                if e.code != BUSY or deadline - time.monotonic() <= delay:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _call_once(self, method: str, params: dict[str, Any] | None, timeout_ms: int) -> Any:
        request_id = next(self._ids)
        self._socket.send(json.dumps({"id": request_id, "method": method, "params": params or {}}).encode())
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._socket.poll(int(left * 1000) + 1):
                raise ApiError(-1, f"no answer from {self.endpoint} to {method}")
            reply = json.loads(self._socket.recv_multipart()[-1])
            if reply.get("id") not in (request_id, None):
                continue  # a late reply to an earlier call
            if "error" in reply and reply["error"] is not None:
                raise ApiError(reply["error"]["code"], reply["error"]["message"])
            return reply["result"]

    def status(self) -> dict[str, Any]:
        return self.call("status")

    def peers(self) -> list[dict[str, Any]]:
        return self.call("peers")["peers"]

    def submit(self, capability: str, files: list[dict[str, str]], lease_ms: int | None = None) -> dict[str, Any]:
        """Submits a task; files are {"path", "text"} or {"path", "blob"} (an id from an earlier submit)."""
        params: dict[str, Any] = {"capability": capability, "files": files}
        if lease_ms is not None:
            params["lease_ms"] = lease_ms
        return self.call("task.submit", params)

    def wait(self, task_ids: list[str], timeout_ms: int = 1000) -> list[dict[str, Any]]:
        """Returns when one of the tasks is final or after timeout_ms; reports them all."""
        return self.call("task.wait", {"task_ids": task_ids, "timeout_ms": timeout_ms}, timeout_ms + self.timeout_ms)["tasks"]

    def wait_for(self, task_id: str, timeout_s: float = 60.0) -> dict[str, Any]:
        """Waits until one task is completed or failed; returns its report."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            (report,) = self.wait([task_id], timeout_ms=1000)
            if report["state"] in ("completed", "failed", "unknown"):
                return report
        raise ApiError(-1, f"task {task_id} not finished within {timeout_s} s")


class ExternalAgent:
    """Serves task capabilities for a node: register, then take jobs and answer them.

        def handle(job):            # job: {"task_id", "capability", "files": [{"path", "text"}]}
            return {"files": len(job["files"])}     # any JSON value; raise to report an error

        ExternalAgent(Client(), "counter", ["python.count"]).serve(handle)

    The node advertises the capabilities while the agent polls (every few seconds at
    most); if the agent stops polling for 10 s, the node drops it and its unfinished
    tasks go to another peer.
    """

    def __init__(self, client: Client, name: str, capabilities: list[str]):
        self.client = client
        self.name = name
        self.capabilities = capabilities
        self.agent_id = client.call("agent.register", {"name": name, "capabilities": capabilities})["agent_id"]

    def next_job(self, timeout_ms: int = 2000) -> dict[str, Any] | None:
        return self.client.call("agent.next", {"agent_id": self.agent_id, "timeout_ms": timeout_ms}, timeout_ms + 5000)["job"]

    def answer(self, job: dict[str, Any], result: Any = None, error: str | None = None) -> bool:
        params: dict[str, Any] = {"agent_id": self.agent_id, "task_id": job["task_id"]}
        if error is not None:
            params["error"] = error
        else:
            params["result"] = result
        return self.client.call("agent.result", params)["accepted"]

    def serve(self, handle, jobs: int | None = None) -> None:
        """Runs `handle` on every job (forever, or for `jobs` jobs)."""
        done = 0
        while jobs is None or done < jobs:
            job = self.next_job()
            if job is None:
                continue
            try:
                result = handle(job)
            except Exception as e:  # noqa: BLE001 - the node gets the reason
                self.answer(job, error=f"{type(e).__name__}: {e}")
            else:
                self.answer(job, result=result)
            done += 1
