#!/usr/bin/env python3
"""Play one user's CSV import through sqlite-web's table import page (see README.md).

    drive.py BASE_URL [--fail] [--no-assets] [--quiet]

/ redirects to /login/ (password only) -> POST /login/ -> 302 to / -> the
"+ Table" form (POST /create-table/, answered 302 to /<table>/import/) -> POST
the file to /<table>/import/: success is a 302 to /<table>/content/, whose page
shows the flash "Successfully imported N objects from people.csv."; failure is
a 200 of the import page again with "Error importing file: ...".

--fail uploads a CSV whose `id` column repeats a key: the insert hits
"UNIQUE constraint failed: people.id" and the whole file is rolled back.
"""

import html
import os
import re
import sys

sys.dont_write_bytecode = True  # no __pycache__ beside driverlib.py
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from driverlib import expect, find_form, main_wrapper  # noqa: E402

PASSWORD = "import-me"
TABLE = "people"
GOOD = (
    "name,email,score\r\n"
    "Ada Lovelace,ada@example.org,91\r\n"
    "Grace Hopper,grace@example.org,88\r\n"
    "Edsger Dijkstra,edsger@example.org,79\r\n"
    "Barbara Liskov,barbara@example.org,95\r\n"
).encode()
BAD = (  # key 1002 twice
    "id,name,email,score\r\n"
    "1001,Ada Lovelace,ada@example.org,91\r\n"
    "1002,Grace Hopper,grace@example.org,88\r\n"
    "1002,Edsger Dijkstra,edsger@example.org,79\r\n"
    "1004,Barbara Liskov,barbara@example.org,95\r\n"
).encode()


def flashes(page):
    return [html.unescape(re.sub(r"<button.*?</button>|<[^>]+>|\s+", " ", m, flags=re.S)).strip()
            for m in re.findall(r'<div class="alert[^"]*"[^>]*>(.*?)</div>', page.text, re.S)]


def run(b, fail):
    # 1. the home page redirects to the login form
    page = b.navigate("/")
    expect(page.status == 200 and page.url.endswith("/login/"), f"login page: {page.url}")
    form = find_form(page, lambda f: "password" in dict(f["fields"]), "login form")
    page = b.submit(form, {"password": PASSWORD}, note="login")
    expect(page.status == 200 and not page.url.endswith("/login/"), "login refused")

    # 2. "+ Table": create (or reopen) the table; answered 302 to its import page
    form = find_form(page, lambda f: "table_name" in dict(f["fields"]), "create-table form")
    page = b.submit(form, {"table_name": TABLE}, note="create table")
    expect(page.status == 200 and page.url.endswith(f"/{TABLE}/import/"),
           f"create table: ended on {page.url} HTTP {page.status}")

    # 3. the import form: file + "Create columns for unrecognized keys?" (Yes)
    form = find_form(page, lambda f: "file" in f["files"], "import form")
    page = b.submit(form, files=[("file", "people.csv", "text/csv", BAD if fail else GOOD)],
                    note="upload")
    msgs = flashes(page)
    if fail:
        expect(page.status == 200 and page.url.endswith(f"/{TABLE}/import/"),
               f"broken file: ended on {page.url}")
        err = [m for m in msgs if m.startswith("Error importing file")]
        expect(err, f"no 'Error importing file' message; messages: {msgs}")
        return {"state": "error", "message": err[0], "session": b.cookie("sqlite_web_session")}
    expect(page.url.endswith(f"/{TABLE}/content/"), f"upload: ended on {page.url}; {msgs}")
    ok = [m for m in msgs if m.startswith("Successfully imported")]
    expect(ok and "4 objects" in ok[0], f"no success message; messages: {msgs}")
    return {"state": "imported", "message": ok[0], "session": b.cookie("sqlite_web_session")}


if __name__ == "__main__":
    sys.exit(main_wrapper(run, __doc__))
