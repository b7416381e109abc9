#!/usr/bin/env python3
"""A fault-injecting HTTP proxy between spot and an EC2 emulator (moto), for tests and
benchmarks. Listens on 127.0.0.1 only; forwards every request upstream unless a rule
says otherwise; counts calls by EC2 action.

  faultproxy.py --port P --upstream http://127.0.0.1:M [--delay-ms 100]

Control (JSON over HTTP on the same port):
  POST /__rules   [{"action": "CreateFleet", "fault": "...", ...}, ...]   replace rules
  GET  /__stats   {"CreateFleet": 1, ...}                                  calls seen

Faults, each optionally limited by "every": N (every Nth matching call), "times": K and
"region": R (only calls signed for region R, read from the Authorization header's
credential scope, as EC2's regional endpoints tell them apart):
  throttle                 503 RequestLimitExceeded, not forwarded
  error                    "status"/"code"/"message" answer, not forwarded
  reset-before             connection closed before forwarding (nothing happened)
  reset-after              forwarded, then closed without the answer (it happened)
  delay                    "delay_ms" before forwarding
  capacity-az              CreateFleet: pools in "azs" have no capacity (their overrides
                           are removed before forwarding, reported in errorSet)
  capacity-spot            CreateFleet for spot: every pool has no capacity; on-demand
                           requests pass through

Behaviours (EC2 as it really is, where moto is lenient), each switchable per test:
  POST /__behaviours {"pages": 2, ...}   replace them; also --behaviours JSON at start

  pages: N                 every Describe* that pages on EC2 answers at most N items
                           and a nextToken bound to the request's other parameters
                           (EC2 API reference, "Pagination"); a Describe* the proxy
                           cannot page is refused with 400 FaultProxyCannotPlay
  consistency: {"instances": N, "tags": M}
                           a CreateFleet's instances are absent from the next N
                           DescribeInstances answers that would hold them, and
                           asked by id (DescribeInstances, TerminateInstances) answer
                           InvalidInstanceID.NotFound; other new resources are absent
                           from the next M tag-filtered describes ("Eventual
                           consistency in the Amazon EC2 API")
  instant_fleets: true     DescribeFleets without FleetId.N leaves out instant fleets
                           (DescribeFleets: "If a fleet is of type instant, you must
                           specify the fleet ID"); instances a fleet launched carry
                           the aws:ec2:fleet-id tag, as EC2 sets it (moto does not)
  client_tokens: true      a call repeating a ClientToken gets the first call's
                           answer, and IdempotentParameterMismatch if its parameters
                           differ ("Ensuring idempotency in Amazon EC2 API requests")

  canonical_cidrs: true    AuthorizeSecurityGroupIngress/RevokeSecurityGroupIngress keep a
                           source in the one form EC2 stores and answers with (host bits
                           cleared: 203.0.113.5/24 is 203.0.113.0/24; IPv6 in lower case,
                           zeros compressed) before moto stores or compares it, so a
                           source written another way is the same rule, as on EC2
                           (moto compares the text as given)

  all_or_nothing_rules: true
                           AuthorizeSecurityGroupIngress naming any source the group
                           already allows (same protocol and ports) is refused whole
                           with InvalidPermission.Duplicate, nothing added, as EC2
                           refuses it (moto adds the sources before the duplicate)

  reclaim: {"count": K, "after": N, "stale": S, "capacity": "pool" | "none" | "any"}
                           spot reclaims the first K spot instances a CreateFleet
                           launched, once each has been shown running in N
                           DescribeInstances answers: the proxy terminates it in
                           the emulator (whose instance player then stops its
                           sshd, as a reclaimed machine drops its connections);
                           the next S answers still show it running (reads lag),
                           the one after shutting-down, then terminated, both
                           with state reason Server.SpotInstanceTermination (EC2
                           API reference, StateReason). Afterwards a spot
                           CreateFleet finds no capacity in the reclaimed pool
                           (type and AZ; "pool", the default), in any pool
                           ("none"), or capacity everywhere ("any") ("Spot
                           Instance interruptions": EC2 reclaims when it needs the
                           capacity). With "interruption": "stop" it stops the
                           instance instead (stopping, then stopped, reason
                           Server.SpotInstanceShutdown), as EC2 does for a spot
                           request whose interruption behaviour is stop

More faults:
  unsuccessful-delete      DeleteFleets: 200 with every fleet in
                           unsuccessfulFleetDeletionSet ("code", default
                           unexpectedError), not forwarded

With --instance-connect-dir DIR it also plays the instance side of EC2 Instance Connect:
each SendSSHPublicKey (forwarded to moto, which only answers "Success") is written to
DIR/<instance-id> as three lines, the OS user, the epoch second it expires (60 s, as on
AWS) and the key, where the instance player's sshd reads it (AuthorizedKeysCommand).
"""

import argparse
import hashlib
import ipaddress
import http.client
import os
import http.server
import json
import re
import sys
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET

LOCK = threading.Lock()
STATS = {}
UPSTREAM_MS = {}
RULES = []
MATCHES = {}
UPSTREAM = None
DELAY = 0.0
INSTANCE_CONNECT_DIR = None
NS = "http://ec2.amazonaws.com/doc/2016-11-15/"
BEHAVIOURS = {}
RUNNING_SEEN = {}  # spot instance id -> DescribeInstances answers it was shown running in
RECLAIMED = {}  # instance id -> (type, AZ) it was reclaimed from
SINCE_RECLAIM = {}  # reclaimed instance id -> DescribeInstances answers since
SPOT_REASON = ("Server.SpotInstanceTermination", "Server.SpotInstanceTermination: Spot instance termination")
SPOT_STOP_REASON = ("Server.SpotInstanceShutdown", "Server.SpotInstanceShutdown: Spot instance shutdown")
HIDDEN = {}  # new resource id -> answers it is still left out of
FLEET_OF = {}  # instance id -> the fleet that launched it
TOKENS = {}  # (action, client token) -> (request key, first answer)
# Describe* calls that page on EC2, with the list each answer holds.
PAGED = {
    "DescribeInstances": "reservationSet",
    "DescribeSecurityGroups": "securityGroupInfo",
    "DescribeLaunchTemplates": "launchTemplates",
    "DescribeLaunchTemplateVersions": "launchTemplateVersionSet",
    "DescribeFleets": "fleetSet",
    "DescribeVpcs": "vpcSet",
    "DescribeSubnets": "subnetSet",
    "DescribeInternetGateways": "internetGatewaySet",
    "DescribeRouteTables": "routeTableSet",
    "DescribeImages": "imagesSet",
    "DescribeSpotPriceHistory": "spotPriceHistorySet",
}
# Describe* calls EC2 answers in one page (no NextToken in the API).
UNPAGED = {
    "DescribeKeyPairs": "keySet",
    "DescribeRegions": "regionInfo",
    "DescribeAvailabilityZones": "availabilityZoneInfo",
}


def request_key(params):
    """What ties a token to its request: every parameter but the paging ones."""
    rest = sorted((k, v) for k, v in params if k not in ("NextToken", "MaxResults", "ClientToken"))
    return hashlib.sha256(json.dumps(rest).encode()).hexdigest()[:16]


def add_tag(item, q, key, value):
    tags = item.find(q("tagSet"))
    if tags is None:
        tags = ET.SubElement(item, q("tagSet"))
    tag = ET.SubElement(tags, q("item"))
    ET.SubElement(tag, q("key")).text = key
    ET.SubElement(tag, q("value")).text = value


def unsuccessful_deletions(params, code):
    items = "".join(
        f"<item><error><code>{code}</code><message>injected</message></error><fleetId>{v}</fleetId></item>"
        for k, v in params if k.startswith("FleetId.")
    )
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<DeleteFleetsResponse xmlns="{NS}"><requestId>fault-proxy</requestId>'
        f"<successfulFleetDeletionSet/><unsuccessfulFleetDeletionSet>{items}</unsuccessfulFleetDeletionSet></DeleteFleetsResponse>"
    ).encode()


def error_xml(code, message):
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors>"
        "<RequestID>fault-proxy</RequestID></Response>"
    ).encode()


def canonical_cidr(text):
    """A CIDR as EC2 stores and writes it back: host bits cleared, IPv6 in lower case with
    zeros compressed."""
    if "/" not in text:
        return text
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError:
        return text


def signed_region(headers):
    """The region a SigV4 request is signed for (Credential=KEY/DATE/REGION/SERVICE/...)."""
    match = re.search(r"Credential=[^/]+/[^/]+/([^/]+)/", headers.get("Authorization", ""))
    return match.group(1) if match else None


def pick_rule(action, region=None):
    """The first rule that fires for this call (counting matches per rule)."""
    with LOCK:
        for i, rule in enumerate(RULES):
            if rule.get("action", "*") not in ("*", action):
                continue
            if rule.get("region") not in (None, region):
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
        if self.path.startswith("/__behaviours"):
            global BEHAVIOURS
            with LOCK:
                BEHAVIOURS = json.loads(body or b"{}")
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
        rule = pick_rule(action, signed_region(self.headers))
        fault = rule["fault"] if rule else None
        if fault == "throttle":
            return self.reply(503, error_xml("RequestLimitExceeded", "Request limit exceeded."))
        if fault == "error":
            return self.reply(rule.get("status", 500), error_xml(rule.get("code", "InternalError"), rule.get("message", "injected")))
        if fault == "reset-before":
            return self.reset()
        if fault == "delay":
            time.sleep(rule.get("delay_ms", 1000) / 1000)
        if fault == "unsuccessful-delete" and action == "DeleteFleets":
            return self.reply(200, unsuccessful_deletions(params, rule.get("code", "unexpectedError")))
        refused = self.refuse(action, params)
        if refused:
            return self.reply(400, refused)
        replay = self.replay(action, params)
        if replay:
            status, headers, answer = replay
        else:
            forwarded, page = self.strip_paging(action, params)
            started = time.monotonic()
            reclaimed_pools = self.reclaimed_pools(action, forwarded)
            if fault == "capacity-az" and action == "CreateFleet":
                status, headers, answer = self.capacity(forwarded, lambda t, az: az in set(rule.get("azs", [])))
            elif fault == "capacity-spot" and action == "CreateFleet":
                status, headers, answer = self.capacity(forwarded, lambda t, az: True, spot_only=True)
            elif reclaimed_pools is not None:
                status, headers, answer = self.capacity(forwarded, reclaimed_pools, spot_only=True)
            else:
                status, headers, answer = self.upstream("POST", urllib.parse.urlencode(forwarded).encode())
            with LOCK:
                UPSTREAM_MS[action] = UPSTREAM_MS.get(action, 0) + (time.monotonic() - started) * 1000
            if status == 200:
                answer = self.as_ec2(action, params, answer, page)
                self.remember(action, params, (status, headers, answer))
        if fault == "reset-after":
            return self.reset()
        self.relay(status, headers, answer)

    def existing_rule(self, params):
        """A source of this AuthorizeSecurityGroupIngress that its group already allows."""
        p = dict(params)
        asked = set()
        for k, v in params:
            m = re.match(r"IpPermissions\.(\d+)\.(IpRanges\.\d+\.CidrIp|Ipv6Ranges\.\d+\.CidrIpv6)$", k)
            if m:
                n = m.group(1)
                rule = (p.get(f"IpPermissions.{n}.IpProtocol"), p.get(f"IpPermissions.{n}.FromPort"), p.get(f"IpPermissions.{n}.ToPort"))
                asked.add(rule + (canonical_cidr(v),))
        body = urllib.parse.urlencode({"Action": "DescribeSecurityGroups", "Version": "2016-11-15", "GroupId.1": p.get("GroupId", "")}).encode()
        status, _, answer = self.upstream("POST", body)
        if status != 200:
            return None
        root = ET.fromstring(answer)
        ns = root.tag.split("}")[0] + "}" if root.tag.startswith("{") else ""
        have = set()
        for perm in root.iter(f"{ns}ipPermissions"):
            for item in perm.findall(f"{ns}item"):
                rule = (item.findtext(f"{ns}ipProtocol"), item.findtext(f"{ns}fromPort"), item.findtext(f"{ns}toPort"))
                for cidr in item.iter(f"{ns}cidrIp"):
                    have.add(rule + (canonical_cidr(cidr.text or ""),))
                for cidr in item.iter(f"{ns}cidrIpv6"):
                    have.add(rule + (canonical_cidr(cidr.text or ""),))
        both = sorted(asked & have)
        return both[0][3] if both else None

    def refuse(self, action, params):
        """The error EC2 would answer before doing anything, or None."""
        b = BEHAVIOURS
        if b.get("all_or_nothing_rules") and action == "AuthorizeSecurityGroupIngress":
            dup = self.existing_rule(params)
            if dup:
                return error_xml("InvalidPermission.Duplicate", f"the specified rule \"peer: {dup}, ALLOW\" already exists")
        if b.get("pages") and action.startswith("Describe") and action not in PAGED and action not in UNPAGED:
            return error_xml("FaultProxyCannotPlay", f"the fault proxy cannot page {action}; add it to PAGED or UNPAGED")
        hidden = b.get("consistency", {}).get("instances")
        if hidden and action in ("DescribeInstances", "TerminateInstances"):
            ids = [v for k, v in params if k.startswith("InstanceId.")]
            with LOCK:
                unseen = [i for i in ids if HIDDEN.get(i, 0) > 0]
                for i in unseen:
                    HIDDEN[i] -= 1
            if unseen:
                return error_xml("InvalidInstanceID.NotFound", f"The instance IDs '{', '.join(unseen)}' do not exist")
        token = dict(params).get("NextToken")
        if b.get("pages") and token and not token.endswith(":" + request_key(params)):
            return error_xml("InvalidParameterValue", "The token is not valid for this request (parameters changed)")
        return None

    def replay(self, action, params):
        """With client_tokens: the first answer to a call with this ClientToken."""
        token = dict(params).get("ClientToken")
        if not (BEHAVIOURS.get("client_tokens") and token):
            return None
        with LOCK:
            seen = TOKENS.get((action, token))
        if seen is None:
            return None
        key, answer = seen
        if key != request_key(params):
            return 400, [("Content-Type", "text/xml")], error_xml(
                "IdempotentParameterMismatch", "The client token was used with different parameters")
        return answer

    def remember(self, action, params, answer):
        token = dict(params).get("ClientToken")
        if token:
            with LOCK:
                TOKENS.setdefault((action, token), (request_key(params), answer))

    def strip_paging(self, action, params):
        """The parameters to forward (moto answers in one page) and the page asked for."""
        if BEHAVIOURS.get("canonical_cidrs") and action in ("AuthorizeSecurityGroupIngress", "RevokeSecurityGroupIngress"):
            params = [(k, canonical_cidr(v) if k.endswith((".CidrIpv6", ".CidrIp")) else v) for k, v in params]
        size = BEHAVIOURS.get("pages")
        if not size or action not in PAGED:
            return params, None
        p = dict(params)
        token = p.get("NextToken")
        offset = int(token.split(":")[1]) if token else 0
        size = min(size, int(p.get("MaxResults", size)))
        forwarded = [(k, v) for k, v in params if k not in ("NextToken", "MaxResults")]
        return forwarded, (offset, size)

    def as_ec2(self, action, params, answer, page):
        """Moto's answer as EC2 would give it under the behaviours switched on."""
        b = BEHAVIOURS
        consistency = b.get("consistency", {})
        if action.startswith("Create") or action == "ImportKeyPair":
            self.note_created(action, answer, consistency)
        if not action.startswith("Describe"):
            return answer
        first_page = dict(params).get("NextToken") is None
        tag_filtered = any(k.startswith("Filter.") and k.endswith(".Name") and v.startswith("tag:") for k, v in params)
        edits = action == "DescribeInstances" or (action == "DescribeFleets" and b.get("instant_fleets")) or page
        edits = edits or (tag_filtered and consistency.get("tags"))
        if not edits:
            return answer
        root = ET.fromstring(answer)
        ns = root.tag[1:].split("}")[0]
        q = lambda name: f"{{{ns}}}{name}"
        if action == "DescribeInstances":
            for reservation in list(root.iter(q("reservationSet")))[:1]:
                for r in list(reservation):
                    instances = r.find(q("instancesSet"))
                    for i in list(instances if instances is not None else []):
                        iid = i.findtext(q("instanceId"))
                        if self.hide(iid, first_page):
                            instances.remove(i)
                        elif b.get("instant_fleets") and iid in FLEET_OF:
                            add_tag(i, q, "aws:ec2:fleet-id", FLEET_OF[iid])
                    if instances is not None and len(instances) == 0:
                        reservation.remove(r)
            self.reclaim(root, q, first_page)
        listed = root.find(q(PAGED.get(action, UNPAGED.get(action, ""))))
        if action == "DescribeFleets" and b.get("instant_fleets") and not any(k.startswith("FleetId.") for k, _ in params):
            for f in list(listed):
                if f.findtext(q("type")) == "instant":
                    listed.remove(f)
        if tag_filtered and consistency.get("tags") and listed is not None and action != "DescribeInstances":
            for item in list(listed):
                ids = [e.text for e in item if e.tag.endswith("Id") and e.text in HIDDEN]
                if ids and self.hide(ids[0], first_page):
                    listed.remove(item)
        if page and listed is not None:
            offset, size = page
            items = list(listed)
            for item in items:
                listed.remove(item)
            listed.extend(items[offset:offset + size])
            if offset + size < len(items):
                ET.SubElement(root, q("nextToken")).text = f"proxy:{offset + size}:{request_key(params)}"
        with LOCK:
            ET.register_namespace("", ns)
            return ET.tostring(root, encoding="utf-8", xml_declaration=True)

    def hide(self, rid, count):
        """Whether a new resource is still unseen; counts one more answer it was left out of."""
        with LOCK:
            if HIDDEN.get(rid, 0) <= 0:
                return False
            if count:
                HIDDEN[rid] -= 1
            return True

    def note_created(self, action, answer, consistency):
        text = answer.decode(errors="replace")
        if action == "CreateFleet":
            fleet = re.search(r"<fleetId>([^<]+)</fleetId>", text)
            ids = re.findall(r"<item>(i-[0-9a-f]+)</item>", text)
            with LOCK:
                for i in ids:
                    if fleet:
                        FLEET_OF[i] = fleet.group(1)
                    if consistency.get("instances"):
                        HIDDEN[i] = consistency["instances"]
            return
        if consistency.get("tags"):
            made = re.search(r"<(groupId|keyPairId|launchTemplateId|vpcId|subnetId|internetGatewayId|routeTableId)>([^<]+)<", text)
            if made:
                with LOCK:
                    HIDDEN[made.group(2)] = consistency["tags"]

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

    def reclaimed_pools(self, action, params):
        """With reclaim: for a spot CreateFleet after a reclaim, which pools have no capacity."""
        reclaim = BEHAVIOURS.get("reclaim")
        if not reclaim or action != "CreateFleet" or not RECLAIMED or reclaim.get("capacity") == "any":
            return None
        if reclaim.get("capacity") == "none":
            return lambda t, az: True
        with LOCK:
            pools = set(RECLAIMED.values())
        return lambda t, az: (t, az) in pools

    def reclaim(self, root, q, first_page):
        """With reclaim: counts running spot instances, reclaims (terminates) the ones due,
        and answers every reclaimed one with EC2's spot state reason."""
        reclaim = BEHAVIOURS.get("reclaim")
        if not reclaim:
            return
        due = []
        for i in root.iter(q("item")):
            iid = i.findtext(q("instanceId"))
            if not iid or iid not in FLEET_OF:
                continue
            if iid in RECLAIMED:
                with LOCK:
                    answered = SINCE_RECLAIM.get(iid, 0)
                    if first_page:
                        SINCE_RECLAIM[iid] = answered + 1
                stale = reclaim.get("stale", 0)
                state = i.find(q("instanceState"))
                reason = i.find(q("stateReason"))
                if reason is not None:
                    i.remove(reason)
                if answered < stale:
                    state.find(q("code")).text, state.find(q("name")).text = "16", "running"
                    continue
                stop = reclaim.get("interruption") == "stop"
                if answered == stale:
                    state.find(q("code")).text, state.find(q("name")).text = ("64", "stopping") if stop else ("32", "shutting-down")
                code, message = SPOT_STOP_REASON if stop else SPOT_REASON
                reason = ET.SubElement(i, q("stateReason"))
                ET.SubElement(reason, q("code")).text = code
                ET.SubElement(reason, q("message")).text = message
                continue
            if i.findtext(f"{q('instanceState')}/{q('name')}") != "running" or i.findtext(q("instanceLifecycle")) != "spot":
                continue
            with LOCK:
                if first_page:
                    RUNNING_SEEN[iid] = RUNNING_SEEN.get(iid, 0) + 1
                if RUNNING_SEEN.get(iid, 0) >= reclaim.get("after", 1) and len(RECLAIMED) < reclaim.get("count", 1):
                    RECLAIMED[iid] = (i.findtext(q("instanceType")), i.findtext(f"{q('placement')}/{q('availabilityZone')}"))
                    due.append(iid)
        action = "StopInstances" if reclaim.get("interruption") == "stop" else "TerminateInstances"
        for iid in due:
            body = urllib.parse.urlencode({"Action": action, "Version": "2016-11-15", "InstanceId.1": iid}).encode()
            self.upstream("POST", body)

    def capacity(self, params, no_capacity, spot_only=False):
        p = dict(params)
        market = p.get("TargetCapacitySpecification.DefaultTargetCapacityType", "on-demand")
        if spot_only and market != "spot":
            return self.upstream("POST", urllib.parse.urlencode(params).encode())
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
            (drop if no_capacity(o.get("InstanceType"), az) else keep).append(o)
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
            return 200, [("Content-Type", "text/xml")], body
        rest = [(k, v) for k, v in params if not k.startswith(prefix)]
        for i, o in enumerate(keep, start=1):
            rest.extend((f"{prefix}{i}.{field}", value) for field, value in o.items())
        status, headers, answer = self.upstream("POST", urllib.parse.urlencode(rest).encode())
        text = answer.decode()
        if errors and "</CreateFleetResponse>" in text:
            text = text.replace("</CreateFleetResponse>", f"<errorSet>{errors}</errorSet></CreateFleetResponse>")
        return status, headers, text.encode()


def main():
    global UPSTREAM, DELAY, RULES, INSTANCE_CONNECT_DIR, BEHAVIOURS
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--delay-ms", type=int, default=0)
    ap.add_argument("--rules", default="[]")
    ap.add_argument("--behaviours", default="{}")
    ap.add_argument("--instance-connect-dir")
    args = ap.parse_args()
    INSTANCE_CONNECT_DIR = args.instance_connect_dir
    UPSTREAM = urllib.parse.urlparse(args.upstream)
    DELAY = args.delay_ms / 1000
    RULES = json.loads(args.rules)
    BEHAVIOURS = json.loads(args.behaviours)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print("ready", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
