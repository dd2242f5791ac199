#!/usr/bin/env python3
"""Play one user's CSV import through pgAdmin 4's Import/Export Data dialog (see README.md).

    drive.py BASE_URL [--fail] [--no-assets] [--quiet]

Log in (form POST, Flask-WTF csrf_token) -> /browser/ (the React app; its CSRF
token comes from /browser/js/utils.js and rides on every XHR as
X-pgA-CSRFToken) -> expand the object tree down to public.people (connect to
the server with a password prompt answered) -> open Import/Export Data ->
file manager: upload people.csv into the user's storage -> POST the import job
-> poll /misc/bgprocess/ every second until the job has an exit_code, then
open the process details (stdout/stderr of psql's \\copy).

--fail imports a CSV whose `score` column holds a word: psql's \\copy stops
with "invalid input syntax for type integer", the job ends with exit_code 1
and nothing is imported.
"""

import json
import os
import re
import sys
import time
import uuid

sys.dont_write_bytecode = True  # no __pycache__ beside driverlib.py
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from driverlib import DriveError, encode_multipart, expect, main_wrapper  # noqa: E402

EMAIL, PASSWORD = "admin@example.org", "import-me"
DB_PASSWORD = "postgres"  # trust auth: any password is accepted
TABLE = "people"


def make_csv(fail):
    base = 1000 + (uuid.uuid4().int % 8_000_000) * 10  # fresh keys for each session
    rows = [("Ada Lovelace", "ada", 91), ("Grace Hopper", "grace", 88),
            ("Edsger Dijkstra", "edsger", 79), ("Barbara Liskov", "barbara", 95)]
    out = ["id,name,email,score"]
    for i, (name, user, score) in enumerate(rows):
        if fail and i == 2:
            score = "seventy-nine"
        out.append(f"{base + i},{name},{user}@example.org,{score}")
    return ("\n".join(out) + "\n").encode(), base


def run(b, fail):
    def api(method, path, body=None, note="xhr", ok=(200,), raw=None, ctype=None):
        """pgAdmin's axios instance: JSON, X-pgA-CSRFToken on every call."""
        h = {"Accept": "application/json, text/plain, */*", "X-pgA-CSRFToken": b.csrf}
        data = None
        if raw is not None:
            data, h["Content-Type"] = raw, ctype
        elif body is not None:
            data, h["Content-Type"] = json.dumps(body).encode(), "application/json"
        r = b.xhr(method, path, data=data, headers=h, note=note)
        expect(r.status in ok, f"{method} {path}: HTTP {r.status}: {r.text[:300]}")
        return r

    def items(r):
        j = r.json()
        return j.get("data") if j.get("data") is not None else (j.get("result") or [])

    # 1. login page (React; the form posts email/password/csrf_token)
    page = b.navigate("/")
    expect(page.status == 200 and "/login" in page.url, f"login page: {page.url} {page.status}")
    m = re.search(r'"csrfToken":\s*"([^"]+)"', page.text)
    expect(m, "login page: no csrfToken")
    form = {"attrs": {"action": "/authenticate/login", "method": "post"},
            "fields": [("csrf_token", m.group(1)), ("email", ""), ("password", ""),
                       ("language", "en")],
            "files": [], "submits": [{"name": "internal_button", "value": "Login"}], "options": {}}
    page = b.submit(form, {"email": EMAIL, "password": PASSWORD}, note="login")
    expect(page.status == 200 and "/browser/" in page.url, f"login: ended on {page.url} {page.status}")
    expect(b.cookie("pga4_session"), "login: no pga4_session cookie")

    # 2. the app's CSRF token (a script the page loads)
    r = b.xhr("GET", "/browser/js/utils.js", note="script (csrf token)")
    m = re.search(r"pgAdmin\['csrf_token'\]\s*=\s*'([^']+)'", r.text)
    expect(m, "utils.js: no csrf_token")
    b.csrf = m.group(1)

    # 3. app start: background-process worker, object explorer roots
    api("GET", "/misc/bgprocess/", note="bgprocess list")
    groups = items(api("GET", "/browser/server_group/nodes/", note="tree"))
    gid = groups[0]["_id"]
    servers = items(api("GET", f"/browser/server/nodes/{gid}/", note="tree"))
    srv = [s for s in servers if s["label"] == "local"]
    expect(srv, f"no server 'local' in {servers}")
    sid = srv[0]["_id"]

    # 4. expand the server: properties, connect (428 asks for the password), connect again
    api("GET", f"/browser/server/obj/{gid}/{sid}", note="tree")
    r = api("POST", f"/browser/server/connect/{gid}/{sid}", note="connect", ok=(200, 428))
    if r.status == 428:
        api("POST", f"/browser/server/connect/{gid}/{sid}",
            {"password": DB_PASSWORD, "save_password": False}, note="connect with password")
    api("GET", f"/browser/server/nodes/{gid}/{sid}", note="tree")
    dbs = items(api("GET", f"/browser/database/nodes/{gid}/{sid}/", note="tree"))
    db = [d for d in dbs if d["label"] == "importdb"]
    expect(db, "no database importdb")
    did = db[0]["_id"]
    if not db[0].get("connected"):
        api("POST", f"/browser/database/connect/{gid}/{sid}/{did}", note="connect database")
    schemas = items(api("GET", f"/browser/schema/nodes/{gid}/{sid}/{did}/", note="tree"))
    scid = [s for s in schemas if s["label"] == "public"][0]["_id"]
    tables = items(api("GET", f"/browser/table/nodes/{gid}/{sid}/{did}/{scid}/", note="tree"))
    tb = [t for t in tables if t["label"] == TABLE]
    expect(tb, f"no table {TABLE}")
    tid = tb[0]["_id"]

    # 5. Tools > Import/Export Data...: utility check, then the dialog's lookups
    r = api("GET", f"/import_export/utility_exists/{sid}", note="dialog").json()
    expect(r.get("success"), f"psql not found: {r}")
    api("GET", f"/browser/database/get_encodings/{gid}/{sid}/{did}", note="dialog")
    cols = items(api("GET", f"/browser/column/nodes/{gid}/{sid}/{did}/{scid}/{tid}/", note="dialog"))
    columns = [c["label"] for c in cols]

    # 6. the filename field's file manager: init, list, upload, list, OK
    fm = api("POST", "/file_manager/init", {
        "supported_types": ["csv", "text", "bin", "*"], "dialog_type": "select_file",
        "dialog_title": "", "btn_primary": ""}, note="file manager").json()["data"]
    trans = fm["transId"]
    opts = fm["options"]
    root = opts["fileRoot"]
    ssf = opts["storage_folder"]  # "" on a user's first use, then the saved last_storage ("my_storage")
    selected = "my_storage" if ssf == "" else ssf
    conn = f"/file_manager/filemanager/{trans}/"

    def listing(storage):
        api("POST", conn, {"path": root, "mode": "getfolder",
                           "file_type": opts["last_selected_format"] or "*",
                           "show_hidden": opts["show_hidden_files"], "storage_folder": storage},
            note="file manager list")
        api("POST", f"/file_manager/save_last_dir/{trans}", {"path": root, "storage_folder": storage},
            note="file manager")

    listing(ssf)
    data, base = make_csv(fail)
    fname = f"people-{uuid.uuid4().hex[:8]}.csv"
    body, ctype = encode_multipart([
        ("newfile", fname, "text/csv", data),
        ("mode", "add"),
        ("currentpath", root if root.endswith("/") else root + "/"),
        ("storage_folder", ssf),                 # FormData: the dialog's storage_folder
    ])
    up = api("POST", conn, raw=body, ctype=ctype, note="upload").json()
    expect(up.get("success") == 1, f"upload refused: {up}")
    listing(selected)                            # the uploader closes: the folder is read again
    # the user picks the file and clicks Select
    api("POST", f"/file_manager/save_last_dir/{trans}", {"path": root, "storage_folder": selected},
        note="file manager OK")
    api("DELETE", f"/file_manager/delete_trans_id/{trans}", note="file manager close")
    filename = (root.rstrip("/") + "/" + fname) if root != "/" else "/" + fname

    # 7. OK: the import job
    job = api("POST", f"/import_export/job/{sid}", {
        "null_string": None, "is_import": True, "is_query_export": False, "header": True,
        "delimiter": ",", "quote": "\"", "escape": "'", "filename": filename, "format": "csv",
        "total_columns": len(columns), "on_error": "stop", "log_verbosity": "default",
        "columns": columns, "database": "importdb", "schema": "public", "table": TABLE,
        "save_btn_icon": "done"}, note="job").json()
    expect(job.get("success") == 1 and job["data"].get("job_id"), f"job refused: {job}")
    job_id = job["data"]["job_id"]

    # 8. the background-process worker polls the list every second until the job ends
    deadline = time.monotonic() + 30
    while True:
        time.sleep(1)
        procs = api("GET", "/misc/bgprocess/", note="poll").json()
        p = [x for x in procs if x["id"] == job_id]
        expect(p, f"job {job_id} not in the process list")
        p = p[0]
        if p.get("etime") or p.get("exit_code") is not None:
            break
        expect(time.monotonic() < deadline, "job did not end within 30 s")
    api("PUT", f"/misc/bgprocess/update_cloud_details/{job_id}", note="job done", ok=(200, 410))
    # the user opens the process details ("View Processes")
    det = api("GET", f"/misc/bgprocess/{job_id}/0/0/", note="details").json()
    out = " | ".join(line[1] for line in det.get("out", {}).get("lines", []))
    err = " | ".join(line[1] for line in det.get("err", {}).get("lines", []))
    summary = {"job_id": job_id, "exit_code": p["exit_code"], "pga4_session": b.cookie("pga4_session"),
               "file": fname, "stdout": out[:200], "stderr": err[:300]}
    if fail:
        expect(p["exit_code"] not in (0, None), f"the broken file was imported: {p}")
        expect("invalid input syntax" in err, f"unexpected error text: {err!r}")
    else:
        expect(p["exit_code"] == 0, f"import failed: exit {p['exit_code']}: {err}")
        expect("COPY 4" in out, f"unexpected output: {out!r}")
    return summary


if __name__ == "__main__":
    sys.exit(main_wrapper(run, __doc__))
