"""Melanoma alerts POSTed to a webhook: a bounded queue drained by one background thread, with retries.

Predictions never wait for the webhook: `send` only puts the alert on the queue (dropping it, with a warning,
when the queue is full). The payload carries ids, probability, model and a link, never image content or patient
references.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

import httpx

log = logging.getLogger("melanoma.serve")


class AlertSender:
    def __init__(self, url: str, max_queue: int = 1000, retries: int = 5, backoff_s: float = 0.5,
                 timeout_s: float = 5.0):
        self.url, self.retries, self.backoff_s = url, retries, backoff_s
        self.queue: queue.Queue[dict | None] = queue.Queue(maxsize=max_queue)
        self.sent = self.failed = self.dropped = 0
        self._client = httpx.Client(timeout=timeout_s, follow_redirects=False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="alert-webhook", daemon=True)
        self._thread.start()

    def send(self, payload: dict) -> bool:
        """Queue one alert; False (and a warning) when the queue is full."""
        try:
            self.queue.put_nowait(payload)
            return True
        except queue.Full:
            self.dropped += 1
            log.warning("alert webhook queue full: alert for record %s dropped", payload.get("record_id"))
            return False

    def stats(self) -> dict:
        return {"queued": self.queue.qsize(), "sent": self.sent, "failed": self.failed, "dropped": self.dropped}

    def close(self, wait_s: float = 5.0) -> None:
        """Stop after the queued alerts are tried (at most `wait_s` seconds)."""
        try:
            self.queue.put(None, timeout=wait_s)
        except queue.Full:
            pass
        self._thread.join(timeout=wait_s)
        self._stop.set()
        self._client.close()

    def _loop(self) -> None:
        while True:
            payload = self.queue.get()
            if payload is None:
                return
            self._deliver(payload)

    def _deliver(self, payload: dict) -> None:
        for attempt in range(self.retries + 1):
            try:
                response = self._client.post(self.url, json=payload)
                if response.status_code < 300:
                    self.sent += 1
                    return
                problem = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
            if attempt < self.retries and not self._stop.is_set():
                time.sleep(self.backoff_s * 2 ** attempt)  # 0.5, 1, 2, 4, 8 s
        self.failed += 1
        log.warning("alert webhook: record %s not delivered after %d tries (%s)", payload.get("record_id"),
                    self.retries + 1, problem)
