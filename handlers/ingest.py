#!/usr/bin/env python3
"""Ferry exec handler for pacifica metadata ingest events.

Contract (how Ferry's ``exec`` handler runs this script):

* stdin  -- the whole event as JSON: CloudEvents 1.0 (``id``, ``type``, ...)
  or CloudEvents 0.1 as pacifica sends it (``eventID``, ``eventType``, ...).
  Either way the payload is under ``"data"``: a list of entries, each with a
  ``destinationTable`` ("Transactions.<field>", "TransactionKeyValue", "Files").
* env    -- ``FERRY_TASK_ID`` (the task's UUID) and ``FERRY_ATTEMPT``
  (1 on the first run, 2 on the first retry, ...).
* stdout -- one JSON object, which Ferry stores as the task's result.
* exit   -- 0 is success. Any non-zero exit is a failure; Ferry keeps the tail
  of stderr as the error. Exit code 75 (EX_TEMPFAIL) is a temporary failure
  that Ferry retries (up to the route's max_attempts); any other non-zero
  code is a permanent failure. This script exits 2 on a malformed event.

Standard library only, so it runs on any python3.
"""
import json
import os
import sys

EX_PERMANENT = 2
EX_TEMPFAIL = 75  # not used here: nothing in this handler is worth retrying


def fail(message, code=EX_PERMANENT):
    print(f"ingest: {message}", file=sys.stderr)
    sys.exit(code)


def summarize(event):
    data = event.get("data")
    if not isinstance(data, list):
        fail(f"event data must be a list, got {type(data).__name__}")
    transaction, proxymod, files = {}, {}, []
    for entry in data:
        if not isinstance(entry, dict):
            fail(f"data entries must be objects, got {entry!r}")
        table = entry.get("destinationTable", "")
        if table.startswith("Transactions."):
            transaction[table[len("Transactions."):]] = entry.get("value")
        elif table == "TransactionKeyValue" and str(entry.get("key", "")).startswith("proxymod."):
            proxymod[entry["key"][len("proxymod."):]] = entry.get("value")
        elif table == "Files":
            size = entry.get("size", 0)
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                fail(f"file {entry.get('name')!r} has an invalid size {size!r}")
            files.append({"name": entry.get("name"), "subdir": entry.get("subdir"), "size": size})
    return transaction, proxymod, files


def main():
    try:
        event = json.load(sys.stdin)
    except ValueError as err:
        fail(f"stdin is not valid JSON: {err}")
    if not isinstance(event, dict):
        fail(f"event must be a JSON object, got {type(event).__name__}")
    transaction, proxymod, files = summarize(event)
    try:
        attempt = int(os.environ.get("FERRY_ATTEMPT", "1"))
    except ValueError:
        fail(f"FERRY_ATTEMPT is not an integer: {os.environ['FERRY_ATTEMPT']!r}")
    result = {
        "task_id": os.environ.get("FERRY_TASK_ID"),
        "attempt": attempt,
        "event_id": event.get("id", event.get("eventID")),
        "transaction": transaction,
        "proxymod": proxymod,
        "files": files,
        "file_count": len(files),
        "total_bytes": sum(f["size"] for f in files),
    }
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
