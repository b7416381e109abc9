#!/usr/bin/env python3
"""A fault-injecting HTTP proxy between spot and an EC2 emulator (moto), for tests and
benchmarks. Listens on 127.0.0.1 only; forwards every request upstream unless a rule
says otherwise; counts calls by EC2 action.

  faultproxy.py --port P --upstream http://127.0.0.1:M [--delay-ms 100]

Control (JSON over HTTP on the same port):
  POST /__rules   [{"action": "CreateFleet", "fault": "...", ...}, ...]   replace rules
  GET  /__stats   {"CreateFleet": 1, ...}                                  calls seen

Faults, each optionally limited by "every": N (every Nth matching call) and "times": K:
  throttle                 503 RequestLimitExceeded, not forwarded
  error                    "status"/"code"/"message" answer, not forwarded
  reset-before             connection closed before forwarding (nothing happened)
  reset-after              forwarded, then closed without the answer (it happened)
  delay                    "delay_ms" before forwarding
  capacity-az              CreateFleet: pools in "azs" have no capacity (their overrides
                           are removed before forwarding, reported in errorSet)
  capacity-spot            CreateFleet for spot: every pool has no capacity; on-demand
                           requests pass through

With --instance-connect-dir DIR it also plays the instance side of EC2 Instance Connect:
each SendSSHPublicKey (forwarded to moto, which only answers "Success") is written to
DIR/<instance-id> as three lines, the OS user, the epoch second it expires (60 s, as on
AWS) and the key, where the instance player's sshd reads it (AuthorizedKeysCommand).
"""

import argparse
import http.client
import os
import http.server
import json
import re
import sys
import threading
import time
import urllib.parse

LOCK = threading.Lock()
STATS = {}
UPSTREAM_MS = {}
RULES = []
MATCHES = {}
UPSTREAM = None
DELAY = 0.0
INSTANCE_CONNECT_DIR = None
NS = "http://ec2.amazonaws.com/doc/2016-11-15/"


def error_xml(code, message):
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors>"
        "<RequestID>fault-proxy</RequestID></Response>"
    ).encode()


def pick_rule(action):
    """The first rule that fires for this call (counting matches per rule)."""
    with LOCK:
        for i, rule in enumerate(RULES):
            if rule.get("action", "*") not in ("*", action):
                continue
            n = MATCHES.get(i, 0) + 1
            MATCHES[i] = n
            every = rule.get("every", 1)
            if n % every != 0:
                continue
            fired = rule.setdefault("_fired", 0)
            if "times" in rule and fired >= rule["times"]:
                continue
            rule["_fired"] = fired + 1
            return rule
    return None


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body, content_type="text/xml"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def do_GET(self):
        if self.path.startswith("/__stats/upstream-ms"):
            with LOCK:
                body = json.dumps({k: round(v) for k, v in UPSTREAM_MS.items()}).encode()
            return self.reply(200, body, "application/json")
        if self.path.startswith("/__stats"):
            with LOCK:
                body = json.dumps(STATS).encode()
            return self.reply(200, body, "application/json")
        return self.forward(b"")

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        if self.path.startswith("/__rules"):
            global RULES
            with LOCK:
                RULES = json.loads(body or b"[]")
                MATCHES.clear()
            return self.reply(200, b"{}", "application/json")
        params = urllib.parse.parse_qsl(body.decode(), keep_blank_values=True)
        action = dict(params).get("Action", "?")
        target = self.headers.get("X-Amz-Target")
        if target:  # JSON protocol services (EC2 Instance Connect)
            action = target.rsplit(".", 1)[-1]
            if action == "SendSSHPublicKey" and INSTANCE_CONNECT_DIR:
                self.push_key(json.loads(body or b"{}"))
        with LOCK:
            STATS[action] = STATS.get(action, 0) + 1
        if DELAY:
            time.sleep(DELAY)
        rule = pick_rule(action)
        fault = rule["fault"] if rule else None
        if fault == "throttle":
            return self.reply(503, error_xml("RequestLimitExceeded", "Request limit exceeded."))
        if fault == "error":
            return self.reply(rule.get("status", 500), error_xml(rule.get("code", "InternalError"), rule.get("message", "injected")))
        if fault == "reset-before":
            return self.reset()
        if fault == "delay":
            time.sleep(rule.get("delay_ms", 1000) / 1000)
        if fault == "capacity-az" and action == "CreateFleet":
            return self.capacity(params, set(rule.get("azs", [])), spot_only=False)
        if fault == "capacity-spot" and action == "CreateFleet":
            return self.capacity(params, None, spot_only=True)
        started = time.monotonic()
        status, headers, answer = self.upstream("POST", body)
        with LOCK:
            UPSTREAM_MS[action] = UPSTREAM_MS.get(action, 0) + (time.monotonic() - started) * 1000
        if fault == "reset-after":
            return self.reset()
        self.relay(status, headers, answer)

    def push_key(self, request):
        path = os.path.join(INSTANCE_CONNECT_DIR, os.path.basename(request["InstanceId"]))
        with open(path + ".part", "w") as f:
            f.write(f"{request['InstanceOSUser']}\n{int(time.time()) + 60}\n{request['SSHPublicKey']}\n")
        os.rename(path + ".part", path)

    def reset(self):
        self.close_connection = True
        try:
            self.connection.shutdown(2)
        except OSError:
            pass

    def upstream(self, method, body, headers=None):
        conn = http.client.HTTPConnection(UPSTREAM.hostname, UPSTREAM.port, timeout=60)
        hdrs = {k: v for k, v in (headers or self.headers).items() if k.lower() not in ("host", "content-length", "connection")}
        hdrs["Content-Length"] = str(len(body))
        hdrs["Connection"] = "close"
        conn.request(method, self.path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        out = [(k, v) for k, v in resp.getheaders() if k.lower() not in ("content-length", "connection", "transfer-encoding")]
        conn.close()
        return resp.status, out, data

    def relay(self, status, headers, data):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = True

    def subnet_azs(self):
        body = urllib.parse.urlencode({"Action": "DescribeSubnets", "Version": "2016-11-15"}).encode()
        _, _, data = self.upstream("POST", body)
        text = data.decode()
        ids = re.findall(r"<subnetId>([^<]+)</subnetId>", text)
        azs = re.findall(r"<availabilityZone>([^<]+)</availabilityZone>", text)
        return dict(zip(ids, azs))

    def capacity(self, params, bad_azs, spot_only):
        p = dict(params)
        market = p.get("TargetCapacitySpecification.DefaultTargetCapacityType", "on-demand")
        if spot_only and market != "spot":
            status, headers, answer = self.upstream("POST", urllib.parse.urlencode(params).encode())
            return self.relay(status, headers, answer)
        azs = self.subnet_azs()
        prefix = "LaunchTemplateConfigs.1.Overrides."
        overrides = {}
        for k, v in params:
            if k.startswith(prefix):
                n, field = k[len(prefix):].split(".", 1)
                overrides.setdefault(int(n), {})[field] = v
        keep, drop = [], []
        for n in sorted(overrides):
            o = overrides[n]
            az = azs.get(o.get("SubnetId"), "?")
            (drop if spot_only or az in bad_azs else keep).append(o)
        template = p.get("LaunchTemplateConfigs.1.LaunchTemplateSpecification.LaunchTemplateId", "")
        errors = "".join(
            "<item><launchTemplateAndOverrides><launchTemplateSpecification>"
            f"<launchTemplateId>{template}</launchTemplateId><version>1</version></launchTemplateSpecification>"
            f"<overrides><instanceType>{o.get('InstanceType')}</instanceType><subnetId>{o.get('SubnetId')}</subnetId></overrides>"
            f"</launchTemplateAndOverrides><lifecycle>{market}</lifecycle>"
            "<errorCode>InsufficientInstanceCapacity</errorCode>"
            f"<errorMessage>There is no {market} capacity for {o.get('InstanceType')} in {azs.get(o.get('SubnetId'), '?')}.</errorMessage></item>"
            for o in drop
        )
        if not keep:
            body = (
                f'<?xml version="1.0" encoding="UTF-8"?>\n<CreateFleetResponse xmlns="{NS}">'
                f"<requestId>fault-proxy</requestId><errorSet>{errors}</errorSet><fleetInstanceSet/></CreateFleetResponse>"
            ).encode()
            return self.reply(200, body)
        rest = [(k, v) for k, v in params if not k.startswith(prefix)]
        for i, o in enumerate(keep, start=1):
            rest.extend((f"{prefix}{i}.{field}", value) for field, value in o.items())
        status, headers, answer = self.upstream("POST", urllib.parse.urlencode(rest).encode())
        text = answer.decode()
        if errors and "</CreateFleetResponse>" in text:
            text = text.replace("</CreateFleetResponse>", f"<errorSet>{errors}</errorSet></CreateFleetResponse>")
        self.relay(status, headers, text.encode())


def main():
    global UPSTREAM, DELAY, RULES, INSTANCE_CONNECT_DIR
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--delay-ms", type=int, default=0)
    ap.add_argument("--rules", default="[]")
    ap.add_argument("--instance-connect-dir")
    args = ap.parse_args()
    INSTANCE_CONNECT_DIR = args.instance_connect_dir
    UPSTREAM = urllib.parse.urlparse(args.upstream)
    DELAY = args.delay_ms / 1000
    RULES = json.loads(args.rules)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print("ready", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
