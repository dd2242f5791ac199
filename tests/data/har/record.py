#!/usr/bin/env python3
"""Records a OneSchema-style import session against a running reference
importer (`taphook importer --listen ADDR`) as a HAR 1.2 file, the way a
browser's "Save all as HAR" writes one (request and response headers, the
multipart upload's body as text, response bodies in content.text).

Usage: record.py http://127.0.0.1:9000 out.har [all|dromo|flatfile]
`all` (the default) regenerates rules/tests/reference-importer.har (the
OneSchema session, then a Dromo import); `dromo` and `flatfile` record
rules/tests/dromo.har and rules/tests/flatfile.har.
"""
import json
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone

base, out = sys.argv[1], sys.argv[2]
profile = sys.argv[3] if len(sys.argv) > 3 else "all"
entries = []


def call(method, path, body=None, content_type=None, headers=None):
    url = base + path
    req_headers = {"Accept": "application/json", "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0"}
    req_headers.update(headers or {})
    data = None
    if body is not None:
        data = body.encode() if isinstance(body, str) else body
        req_headers["Content-Type"] = content_type
    req = urllib.request.Request(url, data=data, method=method, headers=req_headers)
    started = datetime.now(timezone.utc)
    t0 = time.monotonic()
    try:
        resp = urllib.request.urlopen(req)
    except urllib.error.HTTPError as e:
        resp = e
    text = resp.read().decode()
    took = round((time.monotonic() - t0) * 1000, 3)
    entry = {
        "startedDateTime": started.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "time": took,
        "request": {
            "method": method,
            "url": url,
            "httpVersion": "HTTP/1.1",
            "cookies": [],
            "headers": [{"name": k, "value": v} for k, v in req_headers.items()],
            "queryString": [],
            "headersSize": -1,
            "bodySize": len(data) if data else 0,
        },
        "response": {
            "status": resp.status,
            "statusText": resp.reason,
            "httpVersion": "HTTP/1.1",
            "cookies": [],
            "headers": [{"name": k, "value": v} for k, v in resp.headers.items()],
            "content": {"size": len(text), "mimeType": resp.headers.get("Content-Type", ""), "text": text},
            "redirectURL": "",
            "headersSize": -1,
            "bodySize": len(text),
        },
        "cache": {},
        "timings": {"send": 0, "wait": took, "receive": 0},
    }
    if data is not None:
        entry["request"]["postData"] = {"mimeType": content_type, "text": data.decode()}
    entries.append(entry)
    return json.loads(text) if text else None


def oneschema():
  created = call(
      "POST", "/v1/embeds",
      json.dumps({"template_key": "contacts", "event_webhook_keys": ["event_webhook"], "dev_mode": False}),
      "application/json",
  )
  eid = created["id"]
  boundary = "----WebKitFormBoundary7MA4YWxkTrZu0gW"
  upload = (
      f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"contacts.csv\"\r\n"
      "Content-Type: text/csv\r\n\r\nname,email\nAda,ada@example.com\nBob,bob-at-example\r\n"
      f"--{boundary}--\r\n"
  )
  call("POST", f"/v1/embeds/{eid}/upload", upload, f"multipart/form-data; boundary={boundary}")
  call("POST", f"/v1/embeds/{eid}/set-header", json.dumps({"index": 0}), "application/json")
  call("POST", f"/v1/embeds/{eid}/map", json.dumps({"mapping": {"name": "name", "email": "email"}}), "application/json")
  # A header row the importer refuses: no event.
  call("POST", f"/v1/embeds/{eid}/set-header", json.dumps({"index": 99}), "application/json")
  call("POST", f"/v1/embeds/{eid}/import", json.dumps({}), "application/json")
  # The same submit again: the same step, deduplicated.
  call("POST", f"/v1/embeds/{eid}/import", json.dumps({}), "application/json")
  call("DELETE", f"/v1/embeds/{eid}")

def dromo():
  # A Dromo headless import: created, uploaded, polled until it is done.
  dromo = call(
      "POST", "/api/v1/headless/imports/",
      json.dumps({"schema_id": "contacts-schema", "original_filename": "contacts.csv",
                  "import_identifier": "contacts-v2", "development_mode": False,
                  "user": {"id": "user-123", "name": "Caitlin Clark", "email": "cclark@example.com"}}),
      "application/json",
  )
  iid = dromo["id"]
  call("PUT", f"/api/v1/headless/imports/{iid}/upload", "name,email\nAda,ada@example.com\n", "text/csv")
  for _ in range(10):
      status = call("GET", f"/api/v1/headless/imports/{iid}/")
      if status["status"] not in ("PENDING", "RUNNING", "PROCESSING"):
          break
      time.sleep(0.2)



def flatfile():
  # A batch of rows submitted.
  rows = [{"name": "Ada", "email": "ada@example.com"}, {"name": "Alan", "email": "alan@example.com"}]
  call("POST", "/v1/batches/batch-7/submit",
       json.dumps({"schema_id": 42, "valid_rows": rows, "invalid_rows": [{"name": "Bob", "email": "bob-at-example"}]}),
       "application/json")


if profile in ("all", "oneschema"):
  oneschema()
if profile in ("all", "dromo"):
  dromo()
if profile == "flatfile":
  flatfile()

har = {"log": {"version": "1.2", "creator": {"name": "taphook tests/data/har/record.py", "version": "1"},
               "pages": [], "entries": entries}}
with open(out, "w") as f:
    json.dump(har, f, indent=1)
    f.write("\n")
print(f"wrote {len(entries)} entries to {out}")
