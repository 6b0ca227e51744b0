"""Process titles, so ``ps`` and ``top`` say what each tether process is.

    tether supervisor: orders app:app
    tether worker: orders app:app #2

(the service name when registered, the application, and the worker's number: the
number the supervisor's log and ``/status`` use, so a worker restarted after a crash
or a reload gets the next one). Pure functions; the processes set the titles with
``setproctitle`` (the supervisor in ``tether serve``, a worker as it starts).
"""

from __future__ import annotations

#: applications tether runs itself, shown by what they are rather than their import path
APP_LABELS = {"tether.proxy:from_environment": "tether proxy"}


def app_label(app: str, service: str | None) -> str:
    """``orders app:app``: the service name (if any) and what is being served."""
    shown = APP_LABELS.get(app, app)
    return shown if service is None else f"{service} {shown}"


def supervisor_title(app: str, service: str | None) -> str:
    return f"tether supervisor: {app_label(app, service)}"


def worker_title(app: str, service: str | None, worker_id: int) -> str:
    return f"tether worker: {app_label(app, service)} #{worker_id}"
