#!/usr/bin/env python3
"""Play one user's CSV import through datasette-upload-csvs (see README.md).

    drive.py BASE_URL [--fail] [--no-assets] [--quiet]

Log in at /-/login (datasette-auth-passwords, root / import-me), open
/-/upload-csvs, send the file by XHR the way the page's JavaScript does, poll
/<db>/_csv_progress_.json?id=<task_id>&_shape=array every second until
bytes_done == bytes_todo (success: go to the new table's page) or the row has
an `error` (failure: the page alerts and reloads /-/upload-csvs).

--fail uploads a gzip-compressed CSV under a .csv name: the plugin's encoding
detection gives up and the progress row's `error` field says so.
"""

import gzip
import os
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ beside driverlib.py
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from driverlib import DriveError, encode_multipart, expect, find_form, main_wrapper  # noqa: E402

USERNAME, PASSWORD = "root", "import-me"
CSV = (
    "id,name,email,score\r\n"
    "1,Ada Lovelace,ada@example.org,91\r\n"
    "2,Grace Hopper,grace@example.org,88\r\n"
    "3,Edsger Dijkstra,edsger@example.org,79\r\n"
    "4,Barbara Liskov,barbara@example.org,95\r\n"
).encode()
ROWS = 4


def run(b, fail):
    # 1. the login page, then the login form (asgi-csrf: ds_csrftoken cookie + csrftoken field)
    page = b.navigate("/-/login")
    expect(page.status == 200, f"login page: HTTP {page.status}")
    form = find_form(page, lambda f: "username" in [n for n, _ in f["fields"]], "login form")
    home = b.submit(form, {"username": USERNAME, "password": PASSWORD}, note="login")
    expect(b.cookie("ds_actor"), "login: no ds_actor cookie (wrong password?)")
    expect(home.status == 200, f"after login: HTTP {home.status}")

    # 2. the upload page (menu link "Upload CSVs")
    page = b.navigate("/-/upload-csvs")
    expect(page.status == 200, f"upload page: HTTP {page.status}")
    form = find_form(page, lambda f: "csv" in f["files"], "upload form")
    csrftoken = dict(form["fields"]).get("csrftoken")
    expect(csrftoken, "upload page: no csrftoken")

    # 3. the XHR upload: FormData(xhr, csrftoken, csv, table[, database])
    data = gzip.compress(CSV, mtime=0) if fail else CSV
    body, ctype = encode_multipart([
        ("xhr", "1"),
        ("csrftoken", csrftoken),
        ("csv", "people.csv", "text/csv", data),
        ("table", "people"),  # the page fills it from the file name
    ])
    up = b.xhr("POST", "/-/upload-csvs", data=body,
               headers={"Content-Type": ctype}, note="upload")
    expect(up.status == 200, f"upload: HTTP {up.status}: {up.text[:200]}")
    info = up.json()
    task_id = info["task_id"]

    # 4. poll the progress row, first at once, then every second
    poll = f"/{info['database_path']}/_csv_progress_.json?id={task_id}&_shape=array"
    deadline = time.monotonic() + 30
    while True:
        rows = b.xhr("GET", poll, note="poll").json()
        expect(rows, f"poll: no progress row for task {task_id}")
        row = rows[0]
        if row.get("error"):
            # alert(...) then location.href = location.href
            b.navigate("/-/upload-csvs", note="reload after error")
            expect(fail, f"import failed: {row['error']}")
            return {"task_id": task_id, "table": row["table_name"], "error": row["error"],
                    "ds_csrftoken": b.cookie("ds_csrftoken")}
        if row["bytes_done"] == row["bytes_todo"]:
            break
        expect(time.monotonic() < deadline, "poll: no end after 30 s")
        time.sleep(1)

    expect(not fail, f"the broken file was imported: {row}")
    expect(row["rows_done"] == ROWS, f"rows_done {row['rows_done']} != {ROWS}")
    # 5. document.location = url (the new table's page)
    table = b.navigate(info["url"], note="table page")
    expect(table.status == 200, f"table page: HTTP {table.status}")
    expect("Grace Hopper" in table.text, "table page does not show the imported rows")
    return {"task_id": task_id, "table": row["table_name"], "rows_done": row["rows_done"],
            "ds_csrftoken": b.cookie("ds_csrftoken")}


if __name__ == "__main__":
    sys.exit(main_wrapper(run, __doc__))
