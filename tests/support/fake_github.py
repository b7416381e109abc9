#!/usr/bin/env python3
"""A local stand-in for the few GitHub REST calls spot makes (octocrab's shapes).

GET  /repos/{o}/{r}/pulls/{n}                  -> the pull request, state from --pull N=open|closed
GET  /repos/{o}/{r}/issues/{n}/comments        -> comments on it (paginated by per_page/page)
POST /repos/{o}/{r}/issues/{n}/comments        -> creates one
PATCH|POST /repos/{o}/{r}/issues/comments/{id} -> updates one
POST /repos/{o}/{r}/deployments, GET ...?environment=E, POST .../deployments/{id}/statuses
GET  /oidc/token?audience=A                     -> {"value": <a fake JWT>} (the runner's OIDC endpoint)
GET  /__requests                               -> every request seen: [{method, path, auth}]
POST /__pull?n=N&state=S                       -> changes a pull request's state

Usage: fake_github.py --port P [--pull 7=open]...
"""
import argparse
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

LOCK = threading.Lock()
REQUESTS = []
PULLS = {}
COMMENTS = {}  # id -> {issue, body}
NEXT_ID = [1000]
DEPLOYMENTS = {}  # id -> {environment, ref, statuses: [state]}


def user(base):
    u = f"{base}/users/spot-bot"
    fields = ["followers_url", "following_url", "gists_url", "starred_url", "subscriptions_url",
              "organizations_url", "repos_url", "events_url", "received_events_url"]
    out = {"login": "spot-bot", "id": 41898282, "node_id": "MDQ6VXNlcjQxODk4Mjgy", "avatar_url": u,
           "gravatar_id": "", "url": u, "html_url": u, "type": "Bot", "site_admin": False}
    out.update({f: u for f in fields})
    return out


def comment(base, owner, repo, cid):
    c = COMMENTS[cid]
    url = f"{base}/repos/{owner}/{repo}/issues/comments/{cid}"
    return {"id": cid, "node_id": f"IC_{cid}", "url": url, "html_url": url,
            "issue_url": f"{base}/repos/{owner}/{repo}/issues/{c['issue']}",
            "body": c["body"], "user": user(base), "created_at": "2026-11-26T00:00:00Z",
            "updated_at": "2026-11-26T00:00:00Z", "author_association": "NONE"}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def send(self, code, body, headers=None):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def handle_any(self, method):
        url = urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}") if length else {}
        base = f"http://{self.headers.get('Host')}"
        if url.path == "/__requests":
            with LOCK:
                return self.send(200, REQUESTS)
        if url.path == "/__pull":
            q = parse_qs(url.query)
            PULLS[int(q["n"][0])] = q["state"][0]
            return self.send(200, {})
        with LOCK:
            REQUESTS.append({"method": method, "path": url.path, "query": url.query,
                             "auth": self.headers.get("Authorization", ""), "body": body})
        if url.path == "/oidc/token" and method == "GET":
            # The runner's OIDC endpoint: a (fake) JWT for the asked audience.
            aud = parse_qs(url.query).get("audience", [""])[0]
            return self.send(200, {"value": f"eyJhbGciOiJSUzI1NiJ9.fake-oidc-for-{aud}.c2lnbmF0dXJl"})
        m = re.fullmatch(r"/repos/([^/]+)/([^/]+)/pulls/(\d+)", url.path)
        if m and method == "GET":
            n = int(m[3])
            if n not in PULLS:
                return self.send(404, {"message": "Not Found", "documentation_url": "https://docs.github.com"})
            return self.send(200, {"url": f"{base}{url.path}", "id": 500 + n, "number": n, "state": PULLS[n],
                                   "locked": False, "title": f"PR {n}"})
        m = re.fullmatch(r"/repos/([^/]+)/([^/]+)/deployments", url.path)
        if m and method == "POST":
            with LOCK:
                did = 3000 + len(DEPLOYMENTS)
                DEPLOYMENTS[did] = {"environment": body.get("environment"), "ref": body.get("ref"), "statuses": []}
                return self.send(201, {"id": did, "url": f"{base}{url.path}/{did}", **DEPLOYMENTS[did]})
        if m and method == "GET":
            env = parse_qs(url.query).get("environment", [None])[0]
            with LOCK:
                found = [{"id": d, **v} for d, v in DEPLOYMENTS.items() if env is None or v["environment"] == env]
            return self.send(200, found)
        m = re.fullmatch(r"/repos/([^/]+)/([^/]+)/deployments/(\d+)/statuses", url.path)
        if m and method == "POST":
            with LOCK:
                DEPLOYMENTS[int(m[3])]["statuses"].append(body.get("state"))
            return self.send(201, {"id": 1, "state": body.get("state")})
        m = re.fullmatch(r"/repos/([^/]+)/([^/]+)/issues/(\d+)/comments", url.path)
        if m and method == "GET":
            q = parse_qs(url.query)
            per_page = int(q.get("per_page", ["30"])[0])
            page = int(q.get("page", ["1"])[0])
            with LOCK:
                ids = sorted(c for c, v in COMMENTS.items() if v["issue"] == int(m[3]))
                items = [comment(base, m[1], m[2], c) for c in ids]
            chunk = items[(page - 1) * per_page: page * per_page]
            headers = {}
            if page * per_page < len(items):
                nxt = f"{base}{url.path}?per_page={per_page}&page={page + 1}"
                headers["Link"] = f'<{nxt}>; rel="next"'
            return self.send(200, chunk, headers)
        if m and method == "POST":
            with LOCK:
                cid = NEXT_ID[0]
                NEXT_ID[0] += 1
                COMMENTS[cid] = {"issue": int(m[3]), "body": body.get("body", "")}
                return self.send(201, comment(base, m[1], m[2], cid))
        m = re.fullmatch(r"/repos/([^/]+)/([^/]+)/issues/comments/(\d+)", url.path)
        # GitHub takes POST as well as PATCH to update (octocrab sends POST).
        if m and method in ("PATCH", "POST"):
            with LOCK:
                cid = int(m[3])
                if cid not in COMMENTS:
                    return self.send(404, {"message": "Not Found", "documentation_url": "https://docs.github.com"})
                COMMENTS[cid]["body"] = body.get("body", "")
                return self.send(200, comment(base, m[1], m[2], cid))
        return self.send(404, {"message": f"fake GitHub does not serve {method} {url.path}",
                               "documentation_url": "https://docs.github.com"})

    def do_GET(self):
        self.handle_any("GET")

    def do_POST(self):
        self.handle_any("POST")

    def do_PATCH(self):
        self.handle_any("PATCH")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pull", action="append", default=[])
    args = ap.parse_args()
    for p in args.pull:
        n, state = p.split("=")
        PULLS[int(n)] = state
    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
