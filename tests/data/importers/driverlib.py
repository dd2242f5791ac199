"""A tiny browser stand-in for the importer drivers (standard library only).

Each ``drive.py`` beside this file plays one user's import session through HTTP
with a :class:`Browser`: a fresh cookie jar per run, redirects followed by hand
(so every 30x is a request of its own in the transcript), page loads that fetch
the page's stylesheets and scripts once (as a browser with an empty cache
does), and XHR/fetch calls with the headers the importer's own JavaScript
sends.  Every exchange is printed as one line:

    METHOD PATH -> STATUS content-type [Location: ...] [Set-Cookie: names]   [note]

on standard error (or standard output with ``--transcript -``), so a recording
made through the proxy can be compared with what the driver meant to do.
"""

import http.cookiejar
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from html.parser import HTMLParser

USER_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0 "
    "taphook-importer-driver/1"
)
ACCEPT_HTML = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


class DriveError(Exception):
    """The session did not go as expected."""


class Response:
    def __init__(self, method, url, status, headers, body):
        self.method = method
        self.url = url
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def content_type(self):
        return self.headers.get("Content-Type", "")

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError as e:
            raise DriveError(
                f"{self.method} {self.url}: expected JSON, got {self.content_type!r}: "
                f"{self.text[:200]!r}"
            ) from e


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class _Forms(HTMLParser):
    """Collects <form>s (inputs, selects, textareas) and sub-resources."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.forms = []
        self.assets = []
        self._form = None
        self._select = None
        self._textarea = None

    def handle_starttag(self, tag, attrs):
        a = {k: (v if v is not None else "") for k, v in attrs}
        if tag == "form":
            # fields/files: successful controls; seq: the same in document order
            self._form = {"attrs": a, "fields": [], "files": [], "submits": [], "options": {},
                          "seq": []}
            self.forms.append(self._form)
        elif tag == "link" and "stylesheet" in a.get("rel", "").split() and a.get("href"):
            self.assets.append(("text/css,*/*;q=0.1", a["href"]))
        elif tag == "script" and a.get("src"):
            self.assets.append(("*/*", a["src"]))
        elif self._form is None:
            return
        elif tag == "button" and a.get("type", "submit").lower() == "submit":
            self._form["submits"].append(a)
        elif tag == "input":
            name, typ = a.get("name"), a.get("type", "text").lower()
            if typ == "file":
                if name:
                    self._form["files"].append(name)
                    self._form["seq"].append(("file", name, None))
            elif typ in ("submit", "image", "button"):
                self._form["submits"].append(a)
            elif typ in ("checkbox", "radio"):
                if name and "checked" in a:
                    self._field(name, a.get("value", "on"))
            elif name and "disabled" not in a:
                self._field(name, a.get("value", ""))
        elif tag == "select" and a.get("name"):
            self._select = {"name": a["name"], "first": None, "selected": None}
            if self._form is not None:
                self._form["options"][a["name"]] = []
        elif tag == "option" and self._select is not None:
            val = a.get("value")
            self._select["_pending"] = (val, "selected" in a)
        elif tag == "textarea" and a.get("name"):
            self._textarea = [a["name"], ""]

    def _field(self, name, value):
        self._form["fields"].append((name, value))
        self._form["seq"].append(("field", name, value))

    def handle_data(self, data):
        if self._select is not None and "_pending" in self._select:
            val, sel = self._select.pop("_pending")
            val = data.strip() if val is None else val
            if self._select["first"] is None:
                self._select["first"] = val
            if self._form is not None:
                self._form["options"][self._select["name"]].append((val, data.strip()))
            if sel:
                self._select["selected"] = val
        if self._textarea is not None:
            self._textarea[1] += data

    def handle_endtag(self, tag):
        if tag == "option" and self._select is not None and "_pending" in self._select:
            self.handle_data("")
        elif tag == "select" and self._select is not None:
            s = self._select
            val = s["selected"] if s["selected"] is not None else s["first"]
            if self._form is not None and val is not None:
                self._field(s["name"], val)
            self._select = None
        elif tag == "textarea" and self._textarea is not None:
            if self._form is not None:
                self._field(*self._textarea)
            self._textarea = None
        elif tag == "form":
            self._form = None


def parse_html(text):
    p = _Forms()
    p.feed(text)
    p.close()
    return p


def find_form(page, pred, what="form"):
    for f in parse_html(page.text).forms:
        if pred(f):
            return f
    raise DriveError(f"{page.url}: no {what} on the page")


def encode_multipart(fields, files=()):
    """Encode form-data the way a browser does.

    fields: [(name, value)] or, for a file part in its place among the
    fields, [(name, filename, content_type, bytes)]; files: more file parts,
    sent after the fields.
    """
    boundary = "----WebKitFormBoundary" + uuid.uuid4().hex[:16]
    out = []
    for part in list(fields) + list(files):
        out.append(f"--{boundary}\r\n".encode())
        if len(part) == 2:
            name, value = part
            out.append(f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
            out.append(str(value).encode("utf-8") + b"\r\n")
        else:
            name, filename, ctype, data = part
            out.append(
                f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                f"Content-Type: {ctype}\r\n\r\n".encode()
            )
            out.append(data + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


class Browser:
    def __init__(self, base_url, transcript=None, load_assets=True, timeout=30):
        self.base = base_url.rstrip("/")
        self.origin = "{0.scheme}://{0.netloc}".format(urllib.parse.urlsplit(self.base))
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect()
        )
        self.transcript = transcript or sys.stderr
        self.load_assets = load_assets
        self.timeout = timeout
        self.page = None  # URL of the page currently shown
        self.cached = set()
        self.exchanges = []
        self.started = time.monotonic()

    # -- plumbing ---------------------------------------------------------
    def url(self, path):
        return urllib.parse.urljoin(self.base + "/", path)

    def cookie(self, name):
        for c in self.jar:
            if c.name == name:
                return c.value
        return None

    def _send(self, method, url, data=None, headers=None, note=""):
        h = {"User-Agent": USER_AGENT, "Accept-Language": "en-GB,en;q=0.5"}
        h.update(headers or {})
        req = urllib.request.Request(url, data=data, headers=h, method=method)
        try:
            with self.opener.open(req, timeout=self.timeout) as r:
                resp = Response(method, url, r.status, r.headers, r.read())
        except urllib.error.HTTPError as e:
            resp = Response(method, url, e.code, e.headers, e.read())
        except (urllib.error.URLError, OSError) as e:
            raise DriveError(f"{method} {url}: {e}") from e
        parts = urllib.parse.urlsplit(url)
        path = parts.path + ("?" + parts.query if parts.query else "")
        line = f"{method} {path} -> {resp.status} {resp.content_type.split(';')[0] or '-'}"
        loc = resp.headers.get("Location")
        if loc:
            line += f" Location: {loc}"
        cookies = [c.split("=", 1)[0].strip() for c in resp.headers.get_all("Set-Cookie") or []]
        if cookies:
            line += " Set-Cookie: " + ",".join(cookies)
        if note:
            line += f"   [{note}]"
        print(line, file=self.transcript, flush=True)
        self.exchanges.append((method, path, resp.status, resp.content_type))
        return resp

    def _follow(self, resp, note):
        hops = 0
        while resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
            hops += 1
            if hops > 10:
                raise DriveError("too many redirects")
            nxt = urllib.parse.urljoin(resp.url, resp.headers["Location"])
            h = {"Accept": ACCEPT_HTML}
            if self.page:
                h["Referer"] = self.page
            resp = self._send("GET", nxt, headers=h, note=note + " (redirect)")
            self._after_page(resp)
        return resp

    def _after_page(self, resp):
        if resp.status != 200 or "html" not in resp.content_type:
            return
        self.page = resp.url
        if not self.load_assets:
            return
        for accept, src in parse_html(resp.text).assets:
            u = urllib.parse.urljoin(resp.url, src)
            if not u.startswith(self.origin) or u in self.cached:
                continue
            self.cached.add(u)
            self._send("GET", u, headers={"Accept": accept, "Referer": resp.url}, note="asset")

    # -- what a user / the page's JavaScript does -------------------------
    def navigate(self, path, note="page"):
        """Type a URL / click a link: GET, follow redirects, load sub-resources."""
        h = {"Accept": ACCEPT_HTML}
        if self.page:
            h["Referer"] = self.page
        resp = self._send("GET", self.url(path), headers=h, note=note)
        self._after_page(resp)
        return self._follow(resp, note)

    def submit(self, form, extra=None, files=None, note="form", base_page=None, drop=(),
               click=True):
        """Submit an HTML form (as a browser does on a click on its first submit button).

        extra: field values typed or chosen by the user (replace the page's);
        files: [(name, filename, content_type, bytes)] for <input type=file>.
        """
        page = base_page or self.page
        action = urllib.parse.urljoin(page, form["attrs"].get("action") or page)
        method = form["attrs"].get("method", "get").upper()
        extra = dict(extra or {})
        files = list(files or [])
        parts = []  # in document order, as a browser sends them
        for kind, name, value in form.get("seq") or [("field", k, v) for k, v in form["fields"]]:
            if name in drop:
                continue
            if kind == "field":
                parts.append((name, extra.pop(name) if name in extra else value))
            else:
                mine = [f for f in files if f[0] == name]
                for f in mine:
                    files.remove(f)
                parts.extend(mine or [(name, "", "application/octet-stream", b"")])
        parts.extend(extra.items())
        parts.extend(files)
        if click and form["submits"] and form["submits"][0].get("name"):
            first = form["submits"][0]
            parts.append((first["name"], first.get("value", "")))
        fields = [p for p in parts if len(p) == 2]
        enctype = form["attrs"].get("enctype", "application/x-www-form-urlencoded")
        h = {"Accept": ACCEPT_HTML, "Referer": page, "Origin": self.origin}
        if method == "GET":
            q = urllib.parse.urlencode(fields)
            resp = self._send("GET", action.split("?")[0] + "?" + q, headers=h, note=note)
        elif enctype == "multipart/form-data":
            body, ctype = encode_multipart(parts)
            h["Content-Type"] = ctype
            resp = self._send("POST", action, data=body, headers=h, note=note)
        else:
            h["Content-Type"] = "application/x-www-form-urlencoded"
            body = urllib.parse.urlencode(fields).encode()
            resp = self._send("POST", action, data=body, headers=h, note=note)
        self._after_page(resp)
        return self._follow(resp, note)

    def xhr(self, method, path, data=None, headers=None, note="xhr"):
        """An XMLHttpRequest / fetch() from the current page (no redirects followed)."""
        h = {"Accept": "*/*"}
        if self.page:
            h["Referer"] = self.page
        if method != "GET":
            h["Origin"] = self.origin
        h.update(headers or {})
        return self._send(method, self.url(path), data=data, headers=h, note=note)

    def elapsed(self):
        return time.monotonic() - self.started


def expect(cond, msg):
    if not cond:
        raise DriveError(msg)


def main_wrapper(run, description):
    """Common command line: drive.py BASE_URL [--fail] [--no-assets] [--quiet]."""
    import argparse

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("base_url")
    ap.add_argument("--fail", action="store_true", help="play the failing variant")
    ap.add_argument("--no-assets", action="store_true", help="do not fetch CSS/JS of pages")
    ap.add_argument("--quiet", action="store_true", help="no transcript")
    args = ap.parse_args()
    out = open(os.devnull, "w") if args.quiet else sys.stderr
    b = Browser(args.base_url, transcript=out, load_assets=not args.no_assets)
    try:
        summary = run(b, args.fail)
    except DriveError as e:
        print(f"drive: FAILED after {b.elapsed():.2f}s: {e}", file=sys.stderr)
        return 1
    summary = dict(summary or {})
    summary["variant"] = "fail" if args.fail else "success"
    summary["requests"] = len(b.exchanges)
    summary["seconds"] = round(b.elapsed(), 2)
    print(json.dumps(summary, sort_keys=True))
    return 0
