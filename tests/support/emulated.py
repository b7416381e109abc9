"""What the instance player and the VM player share: the emulator's EC2 clients, a stop
flag set by SIGTERM/SIGINT, the loop over the instances spot launched that run now, the
common command line, whole-file writes, and a free 127.0.0.1 port."""
import argparse
import os
import signal
import socket
import sys
import time

import boto3


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def arguments(doc):
    """The command line both players take; each adds its own options."""
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--regions", required=True)
    ap.add_argument("--ssh-dir", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--deployment")
    return ap


def write_atomic(path, text):
    """Readers (spot, the tests) see the whole file or none of it."""
    with open(path + ".part", "w") as f:
        f.write(text)
    os.rename(path + ".part", path)


def clients(endpoint, regions):
    return {
        r: boto3.client("ec2", region_name=r, endpoint_url=endpoint,
                        aws_access_key_id="testing", aws_secret_access_key="testing")
        for r in regions.split(",")
    }


def stop_flag():
    """A list that becomes non-empty on SIGTERM or SIGINT; the loop below then ends."""
    stopping = []

    def on_signal(_sig, _frame):
        stopping.append(True)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stopping


def running(ec2, stopping, deployment, pause, log):
    """Yields (region, client, instances, ids) for each region, over and over until asked
    to stop: the running instances tagged by spot (of one deployment, if given)."""
    filters = [{"Name": "tag:spot:managed-by", "Values": ["spot"]},
               {"Name": "instance-state-name", "Values": ["running"]}]
    if deployment:
        filters.append({"Name": "tag:spot:deployment", "Values": [deployment]})
    while not stopping:
        for region, client in ec2.items():
            try:
                found = client.describe_instances(Filters=filters)
            except Exception as e:  # the emulator may be busy or gone; try again
                log(f"{region}: describe failed: {e}")
                continue
            instances = [i for r in found["Reservations"] for i in r["Instances"]]
            yield region, client, instances, {i["InstanceId"] for i in instances}
        time.sleep(pause)


if __name__ == "__main__":
    sys.exit("a module of instance_player.py and vm_player.py")
