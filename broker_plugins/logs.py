"""JSON log lines for broker processes (one object per line, on stderr).

Structured fields travel in ``extra={"fields": {...}}`` so that tests and log
shippers see the same keys (``event``, ``reason``, ``device_id``, ``serial``...).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, sort_keys=False)


def configure_json_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # amqtt logs every packet at INFO; keep its chatter to warnings.
    logging.getLogger("amqtt").setLevel(max(level, logging.WARNING))
    logging.getLogger("transitions").setLevel(max(level, logging.WARNING))
