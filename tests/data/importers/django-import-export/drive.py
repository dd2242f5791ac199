#!/usr/bin/env python3
"""Play one user's CSV import through django-import-export's admin (see README.md).

    drive.py BASE_URL [--fail] [--no-assets] [--quiet]

/admin/ -> login form (csrftoken cookie + csrfmiddlewaretoken field) -> the
Person list -> Import -> POST the file (dry run, answered with a preview page
that holds the confirm form: hidden import_file_name, original_file_name,
format, resource) -> POST the confirm form to process_import/ -> 302 to the
list, which shows "Import finished: ...".

--fail uploads a CSV whose second row's `email` is not an address: the dry
run (clean_model_instances) answers 200 with "Some rows failed to validate"
and no confirm form; nothing is imported.
"""

import os
import re
import sys
import urllib.parse

sys.dont_write_bytecode = True  # no __pycache__ beside driverlib.py
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from driverlib import expect, find_form, main_wrapper, parse_html  # noqa: E402

USERNAME, PASSWORD = "admin", "import-me"
LIST = "/admin/people/person/"


def csv_rows(tag, fail):
    # emails are made unique per run so that two successful sessions both add rows
    rows = [
        ("Ada Lovelace", "ada", "91"),
        ("Grace Hopper", "grace", "88"),
        ("Edsger Dijkstra", "edsger", "79"),
        ("Barbara Liskov", "barbara", "95"),
    ]
    out = ["id,name,email,score"]
    for i, (name, user, score) in enumerate(rows):
        email = f"{user}.{tag}@example.org"
        if fail and i == 1:
            email = f"{user} at example.org"  # not an e-mail address
        out.append(f",{name},{email},{score}")
    return ("\r\n".join(out) + "\r\n").encode()


def run(b, fail):
    # 1. /admin/ redirects to the login page; log in
    page = b.navigate("/admin/")
    expect(page.status == 200 and "/admin/login/" in page.url, f"login page: HTTP {page.status}")
    form = find_form(page, lambda f: "csrfmiddlewaretoken" in dict(f["fields"]), "login form")
    page = b.submit(form, {"username": USERNAME, "password": PASSWORD}, note="login")
    expect(b.cookie("sessionid"), "login: no sessionid cookie (wrong password?)")
    expect(page.status == 200, f"after login: HTTP {page.status}")

    # 2. the Person list, then its Import button
    page = b.navigate(LIST)
    expect(page.status == 200, f"list: HTTP {page.status}")
    page = b.navigate(LIST + "import/")
    expect(page.status == 200, f"import page: HTTP {page.status}")
    form = find_form(page, lambda f: "import_file" in f["files"], "import form")
    fmt = [v for v, label in form["options"].get("format", []) if label.lower() == "csv"]
    expect(fmt, f"import page: no csv format among {form['options'].get('format')}")

    # 3. upload: the dry run answers with a preview (+ confirm form) or with errors
    tag = b.cookie("csrftoken")[:8].lower()
    tag = re.sub(r"[^a-z0-9]", "x", tag)
    data = csv_rows(tag, fail)
    page = b.submit(form, {"format": fmt[0]},
                    files=[("import_file", "people.csv", "text/csv", data)], note="upload")
    expect(page.status == 200, f"upload: HTTP {page.status}")
    confirm = [f for f in parse_html(page.text).forms
               if "import_file_name" in dict(f["fields"])]
    if fail:
        expect(not confirm, "the broken file got a confirm form")
        expect("Some rows failed to validate" in page.text,
               "upload: neither a confirm form nor 'Some rows failed to validate'")
        errors = re.findall(
            r'validation-error-field-label">([^<]*)</span>\s*<ul>\s*<li>([^<]*)</li>', page.text)
        expect(errors, "no validation error on the page")
        return {"sessionid": b.cookie("sessionid"), "state": "Some rows failed to validate",
                "errors": [f"{f}: {m}" for f, m in errors]}
    expect(confirm, "upload: no confirm form; page says: " + " / ".join(
        re.findall(r'(?:errorlist[^>]*><li>|error-display-message">)([^<]*)<', page.text))[:300])
    hidden = dict(confirm[0]["fields"])

    # 4. confirm: POST to process_import/, answered 302 to the list
    page = b.submit(confirm[0], note="confirm")
    expect(page.status == 200 and urllib.parse.urlsplit(page.url).path == LIST,
           f"confirm: ended on {page.url} HTTP {page.status}")
    m = re.search(r"Import finished:[^<]*", page.text)
    expect(m, "list page after confirm shows no 'Import finished' message")
    expect("4 new" in m.group(0), f"unexpected result: {m.group(0)}")
    return {"sessionid": b.cookie("sessionid"), "import_file_name": hidden["import_file_name"],
            "message": m.group(0).strip()}


if __name__ == "__main__":
    sys.exit(main_wrapper(run, __doc__))
