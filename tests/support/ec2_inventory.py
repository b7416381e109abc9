#!/usr/bin/env python3
"""Lists, independently of spot, everything in an EC2 emulator that is not a default
resource: the leak detector for the EC2 tests. Prints JSON on stdout.

  ec2_inventory.py ENDPOINT REGION [REGION...]            {region: {kind: [ids]}}
  ec2_inventory.py --details ENDPOINT REGION              tags, template data, rules
  ec2_inventory.py --foreign ENDPOINT REGION              creates untagged resources
"""
import json
import sys

import boto3


def client(endpoint, region):
    return boto3.client("ec2", region_name=region, endpoint_url=endpoint,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def tags(item):
    return {t["Key"]: t["Value"] for t in item.get("Tags", [])}


def leftovers(ec2, details=False):
    default_vpcs = {v["VpcId"] for v in ec2.describe_vpcs()["Vpcs"] if v.get("IsDefault")}
    out = {}
    insts = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
             if i["State"]["Name"] != "terminated"]
    out["instances"] = [i["InstanceId"] for i in insts]
    sgs = [g for g in ec2.describe_security_groups()["SecurityGroups"] if g["GroupName"] != "default"]
    out["security_groups"] = [g["GroupId"] for g in sgs]
    kps = ec2.describe_key_pairs()["KeyPairs"]
    out["key_pairs"] = [k["KeyName"] for k in kps]
    lts = ec2.describe_launch_templates()["LaunchTemplates"]
    out["launch_templates"] = [t["LaunchTemplateId"] for t in lts]
    fleets = [f for f in ec2.describe_fleets()["Fleets"] if not f["FleetState"].startswith("deleted")]
    out["fleets"] = [f["FleetId"] for f in fleets]
    vpcs = [v for v in ec2.describe_vpcs()["Vpcs"] if v["VpcId"] not in default_vpcs]
    out["vpcs"] = [v["VpcId"] for v in vpcs]
    out["subnets"] = [s["SubnetId"] for s in ec2.describe_subnets()["Subnets"] if s["VpcId"] not in default_vpcs]
    out["internet_gateways"] = [g["InternetGatewayId"] for g in ec2.describe_internet_gateways()["InternetGateways"]
                                if not any(a.get("VpcId") in default_vpcs for a in g.get("Attachments", []))]
    out["route_tables"] = [t["RouteTableId"] for t in ec2.describe_route_tables()["RouteTables"] if t["VpcId"] not in default_vpcs]
    out["volumes"] = [v["VolumeId"] for v in ec2.describe_volumes()["Volumes"] if v["State"] != "deleted"]
    if not details:
        return {k: v for k, v in out.items() if v}
    ids = [i["InstanceId"] for i in insts]
    return {
        "instances": [{"id": i["InstanceId"], "tags": tags(i), "image": i["ImageId"], "type": i["InstanceType"],
                       "az": i["Placement"]["AvailabilityZone"], "lifecycle": i.get("InstanceLifecycle", "on-demand")} for i in insts],
        "security_groups": [{"id": g["GroupId"], "name": g["GroupName"], "tags": tags(g),
                             "ingress": [{"from": p.get("FromPort"), "to": p.get("ToPort"), "protocol": p.get("IpProtocol"),
                                          "cidrs": [r["CidrIp"] for r in p.get("IpRanges", [])] + [r["CidrIpv6"] for r in p.get("Ipv6Ranges", [])],
                                          "descriptions": [r.get("Description", "") for r in p.get("IpRanges", [])] + [r.get("Description", "") for r in p.get("Ipv6Ranges", [])]}
                                         for p in g.get("IpPermissions", [])]} for g in sgs],
        "key_pairs": [{"name": k["KeyName"], "tags": tags(k)} for k in kps],
        "launch_templates": [{"id": t["LaunchTemplateId"], "name": t["LaunchTemplateName"], "tags": tags(t),
                              "data": ec2.describe_launch_template_versions(LaunchTemplateId=t["LaunchTemplateId"])["LaunchTemplateVersions"][-1]["LaunchTemplateData"]}
                             for t in lts],
        "fleets": [{"id": f["FleetId"], "tags": tags(f)} for f in fleets],
        "vpcs": [{"id": v["VpcId"], "tags": tags(v)} for v in vpcs],
        "user_data": {i: ec2.describe_instance_attribute(InstanceId=i, Attribute="userData").get("UserData", {}).get("Value") for i in ids},
    }


def main():
    args = sys.argv[1:]
    mode = "leftovers"
    if args[0] in ("--details", "--foreign"):
        mode = args.pop(0)
    endpoint, regions = args[0], args[1:]
    if mode == "--foreign":
        ec2 = client(endpoint, regions[0])
        sg = ec2.create_security_group(GroupName="not-spot", Description="someone else's")["GroupId"]
        image = ec2.describe_images(Owners=["099720109477"])["Images"][0]["ImageId"]
        inst = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="t3.micro")["Instances"][0]["InstanceId"]
        ec2.create_key_pair(KeyName="not-spot")
        print(json.dumps({"security_group": sg, "instance": inst, "key_pair": "not-spot"}))
        return
    result = {}
    for region in regions:
        found = leftovers(client(endpoint, region), details=(mode == "--details"))
        if found:
            result[region] = found
    print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
