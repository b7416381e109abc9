//! `create`, `list` and `destroy` against moto's server through the real SDK, with
//! faults injected by the proxy. After every case an independent inventory of moto
//! asserts that nothing is left unless the case expects it.

use serde_json::{Value, json};

use crate::emulator::{Emulator, ec2_like, lagging, project, state_dir, writes};

const CONFIG_TWO_REGIONS: &str = "\
aws:
  total_instances: 5
  ttl: 1h
  instance_storage_gb: 12
  ssh_cidr: 198.51.100.7/32
  tags: {Team: qa}
regions:
  - us-east-1:
      machine_type: [t3.micro, t3a.micro]
  - eu-west-1:
      machine_type: [m7g.medium, t3.micro]
      tags: {Team: qa-eu}
";

fn create_json(emu: &Emulator, dir: &std::path::Path, id: &str) -> Value {
    let out = emu
        .spot()
        .args(["create", "--no-deliver", "--json", "--deployment-id", id])
        .arg(dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "create failed: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `spot create --no-deliver` of `dir` as `id`, however it ends.
fn create(emu: &Emulator, dir: &std::path::Path, id: &str) -> std::process::Output {
    emu.spot().args(["create", "--no-deliver", "--deployment-id", id]).arg(dir).output().unwrap()
}

fn destroy(emu: &Emulator, dir: &std::path::Path, id: &str) -> std::process::Output {
    emu.spot().args(["destroy", id, "--dir"]).arg(dir).output().unwrap()
}

fn assert_clean(emu: &Emulator, regions: &[&str]) {
    let left = emu.leftovers(regions);
    assert_eq!(left, json!({}), "resources left behind: {left:#}");
}

#[test]
fn create_list_destroy_round_trip_tags_everything_and_leaves_nothing() {
    let emu = Emulator::start();
    let dir = project(CONFIG_TWO_REGIONS);
    let created = create_json(&emu, dir.path(), "rt-1");
    let instances = created["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 5);
    assert_eq!(
        instances.iter().filter(|i| i["region"] == "us-east-1").count(),
        3,
        "5 split 3/2, remainder first"
    );
    assert!(instances.iter().all(|i| i["state"] == "running" && i["market"] == "spot"));

    // What EC2 was asked for, read back independently.
    let details = emu.details("eu-west-1");
    let wanted_tags = [
        "spot:managed-by",
        "spot:deployment",
        "spot:repository",
        "spot:run-id",
        "spot:expires-at",
        "Team",
        "Name",
    ];
    for kind in ["instances", "security_groups", "key_pairs", "launch_templates", "fleets"] {
        let items = details[kind].as_array().unwrap();
        assert!(!items.is_empty(), "no {kind}");
        for item in items {
            for t in wanted_tags {
                assert!(item["tags"].get(t).is_some(), "{kind} lacks tag {t}: {item}");
            }
            assert_eq!(item["tags"]["spot:deployment"], "rt-1");
            assert_eq!(item["tags"]["Team"], "qa-eu", "the region's tag overrides aws.tags on {kind}");
        }
    }
    let template = &details["launch_templates"][0]["data"];
    assert_eq!(template["MetadataOptions"]["HttpTokens"], "required", "IMDSv2 required");
    assert_eq!(template["InstanceInitiatedShutdownBehavior"], "terminate");
    let ebs = &template["BlockDeviceMappings"][0]["Ebs"];
    assert_eq!(
        (ebs["VolumeType"].as_str(), ebs["Encrypted"].as_bool(), ebs["VolumeSize"].as_i64()),
        (Some("gp3"), Some(true), Some(12))
    );
    let rules = &details["security_groups"][0]["ingress"];
    assert_eq!(
        rules,
        &json!([{"from": 22, "to": 22, "protocol": "tcp", "cidrs": ["198.51.100.7/32"], "descriptions": ["spot ssh"]}]),
        "SSH only from the configured CIDR"
    );
    // arm64 types get the newest Canonical arm64 image, x86_64 the newest amd64 one.
    for i in details["instances"].as_array().unwrap() {
        let want = if i["type"].as_str().unwrap().starts_with("m7g") {
            "ami-0000000000000b001"
        } else {
            "ami-0000000000000a002"
        };
        assert_eq!(i["image"], want, "{i}");
    }
    let user_data = details["user_data"].as_object().unwrap().values().next().unwrap().as_str().unwrap();
    let text = String::from_utf8(base64_decode(user_data)).unwrap();
    assert!(text.starts_with("#cloud-config\n") && text.contains("SPOT_DEPLOYMENT_ID=\"rt-1\""), "{text}");

    // The state file records every resource and no key material but the host public key
    // (tagged for a later run to pin).
    let state = std::fs::read_to_string(state_dir(dir.path()).join("rt-1.json")).unwrap();
    let untagged: String =
        state.lines().filter(|l| !l.contains("\"spot:host-key\": \"ssh-ed25519 ")).collect();
    assert!(!state.contains("PRIVATE KEY") && !untagged.contains("ssh-ed25519"), "{state}");
    let state: Value = serde_json::from_str(&state).unwrap();
    assert_eq!(state["status"], "ready");
    let recorded: Vec<&str> =
        state["resources"].as_array().unwrap().iter().map(|r| r["kind"].as_str().unwrap()).collect();
    for kind in ["instance", "fleet", "security-group", "key-pair", "launch-template"] {
        assert!(recorded.contains(&kind), "state lacks {kind}: {recorded:?}");
    }

    // list and destroy from another folder with no local state, regions from flags.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = emu
        .spot()
        .args(["list", "--json", "--region", "us-east-1", "--region", "eu-west-1"])
        .arg(elsewhere.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["deployment_id"], "rt-1");
    assert_eq!(listed[0]["instances"].as_array().unwrap().len(), 5);
    assert_eq!(listed[0]["expires_at"], created["expires_at"]);

    let out = emu
        .spot()
        .args(["destroy", "rt-1", "--region", "us-east-1", "--region", "eu-west-1", "--dir"])
        .arg(elsewhere.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed 5 instances"));
    assert_clean(&emu, &["us-east-1", "eu-west-1"]);
    // From the folder whose state file still says `ready`, minutes old at most: what it
    // records is asked for by id (tags may lag), and the file is marked destroyed.
    let again = destroy(&emu, dir.path(), "rt-1");
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("asking EC2 by id"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let third = destroy(&emu, dir.path(), "rt-1");
    assert!(third.status.success());
    assert!(
        String::from_utf8_lossy(&third.stdout).contains("nothing to do"),
        "a further destroy is harmless"
    );
    assert_clean(&emu, &["us-east-1", "eu-west-1"]);
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(text.trim()).unwrap()
}

fn capacity_errors_in_one_az_use_the_other_azs(behaviours: &Value) {
    let emu = Emulator::start();
    emu.behaviours(behaviours);
    emu.faults(
        &json!([{"action": "CreateFleet", "fault": "capacity-az", "azs": ["us-east-1a", "us-east-1b"]}]),
    );
    let dir = project(
        "aws: {total_instances: 3, ssh_cidr: 127.0.0.1/32}\nregions:\n  - us-east-1: {machine_type: [t3.micro, t3a.micro]}\n",
    );
    let created = create_json(&emu, dir.path(), "az-1");
    let instances = created["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 3);
    assert!(instances.iter().all(|i| i["az"] != "us-east-1a" && i["az"] != "us-east-1b"), "{instances:?}");
    assert!(destroy(&emu, dir.path(), "az-1").status.success());
    assert_clean(&emu, &["us-east-1"]);
}

fn no_spot_capacity_anywhere_falls_back_to_on_demand_when_allowed(behaviours: &Value) {
    let emu = Emulator::start();
    emu.behaviours(behaviours);
    emu.faults(&json!([{"action": "CreateFleet", "fault": "capacity-spot"}]));
    let dir = project(
        "aws: {total_instances: 2, ssh_cidr: 127.0.0.1/32}\nspot: {fallback: on-demand}\nregions:\n  - us-east-1: {machine_type: t3.micro}\n  - us-west-2: {machine_type: t3.micro}\n",
    );
    let created = create_json(&emu, dir.path(), "od-1");
    let instances = created["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 2);
    assert!(instances.iter().all(|i| i["market"] == "on-demand"), "{instances:?}");
    assert!(destroy(&emu, dir.path(), "od-1").status.success());
    assert_clean(&emu, &["us-east-1", "us-west-2"]);
}

fn no_spot_capacity_without_fallback_fails_naming_what_was_tried_and_rolls_back(behaviours: &Value) {
    let emu = Emulator::start();
    emu.behaviours(behaviours);
    emu.faults(&json!([{"action": "CreateFleet", "fault": "capacity-spot"}]));
    let dir = project(
        "aws: {total_instances: 2, ssh_cidr: 127.0.0.1/32}\nregions:\n  - us-east-1: {machine_type: [t3.micro, t3a.micro]}\n  - us-west-2: {machine_type: t3.micro}\n",
    );
    let out = create(&emu, dir.path(), "nocap-1");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "only 0 of 2",
        "us-east-1 spot",
        "us-west-2 spot",
        "us-east-1a t3a.micro: InsufficientInstanceCapacity",
        "spot.fallback: on-demand",
        "rolled back",
    ] {
        assert!(err.contains(needle), "missing `{needle}` in:\n{err}");
    }
    assert_clean(&emu, &["us-east-1", "us-west-2"]);
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(state_dir(dir.path()).join("nocap-1.json")).unwrap())
            .unwrap();
    assert_eq!(state["status"], "rolled-back");
    assert_eq!(state["resources"], json!([]));
}

fn throttling_on_a_third_of_calls_still_succeeds(behaviours: &Value) {
    let emu = Emulator::start();
    emu.behaviours(behaviours);
    emu.faults(&json!([{"action": "*", "fault": "throttle", "every": 3}]));
    let dir = project(CONFIG_TWO_REGIONS);
    let created = create_json(&emu, dir.path(), "thr-1");
    assert_eq!(created["instances"].as_array().unwrap().len(), 5);
    let out = destroy(&emu, dir.path(), "thr-1");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    emu.faults(&json!([]));
    assert_clean(&emu, &["us-east-1", "eu-west-1"]);
}

fn server_errors_and_lost_answers_mid_create_still_give_exactly_the_count(behaviours: &Value) {
    let emu = Emulator::start();
    emu.behaviours(behaviours);
    // A 500 on the template (retried), and a CreateFleet that happened but whose answer
    // was lost: the retry carries the same client token, and EC2 answers it with the
    // first call's fleet, so there is no second set to clean up.
    emu.faults(&json!([
        {"action": "CreateLaunchTemplate", "fault": "error", "status": 500, "code": "InternalError", "times": 1},
        {"action": "CreateFleet", "fault": "reset-after", "times": 1},
        {"action": "DescribeInstances", "fault": "reset-before", "times": 1},
    ]));
    let dir = project(
        "aws: {total_instances: 2, ssh_cidr: 127.0.0.1/32}\nregions:\n  - us-east-1: {machine_type: t3.micro}\n",
    );
    let created = create_json(&emu, dir.path(), "flaky-1");
    assert_eq!(created["instances"].as_array().unwrap().len(), 2);
    let live = emu.leftovers(&["us-east-1"]);
    assert_eq!(
        live["us-east-1"]["instances"].as_array().unwrap().len(),
        2,
        "the retried launch made no second set: {live}"
    );
    assert_eq!(emu.calls()["CreateFleet"], 2, "the lost answer was asked again");
    let out = destroy(&emu, dir.path(), "flaky-1");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_clean(&emu, &["us-east-1"]);
}

fn a_refused_launch_rolls_back_everything_the_run_made(behaviours: &Value) {
    let emu = Emulator::start();
    emu.behaviours(behaviours);
    emu.faults(&json!([{"action": "CreateFleet", "fault": "error", "status": 400, "code": "InvalidParameterValue", "message": "bad override"}]));
    let dir = project(
        "aws: {total_instances: 2, ssh_cidr: 127.0.0.1/32, use_dedicated_vpc: true}\nregions:\n  - us-east-1: {machine_type: t3.micro}\n",
    );
    let out = create(&emu, dir.path(), "bad-1");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("InvalidParameterValue") && err.contains("rolled back: removed"), "{err}");
    assert!(err.contains("vpc") && err.contains("security group"), "rollback names what it removed: {err}");
    assert_clean(&emu, &["us-east-1"]);
}

#[test]
fn dedicated_vpc_parts_are_created_tagged_and_destroyed() {
    let emu = Emulator::start();
    let dir = project(
        "aws: {total_instances: 1, ssh_cidr: 127.0.0.1/32, use_dedicated_vpc: true}\nregions:\n  - us-west-2: {machine_type: t3.micro}\n",
    );
    // Each create EC2 takes no client token for loses its first answer after doing it:
    // looked up by this run's tags (a subnet by its block in this VPC) before it is sent
    // again, never made twice. The route table's client token does the same.
    // The links between them (gateway to VPC, route, table to subnet) lose theirs too, and
    // the tags of new resources show only on the third tag-filtered read.
    let lost = |action: &str| json!({"action": action, "fault": "reset-after", "times": 1});
    emu.behaviours(&lagging(0, 2));
    emu.faults(&json!([
        lost("CreateVpc"),
        lost("CreateInternetGateway"),
        lost("CreateRouteTable"),
        lost("CreateSubnet"),
        lost("AttachInternetGateway"),
        lost("CreateRoute"),
        lost("AssociateRouteTable")
    ]));
    create_json(&emu, dir.path(), "vpc-1");
    emu.faults(&json!([]));
    emu.behaviours(&ec2_like());
    let left = emu.leftovers(&["us-west-2"]);
    // Route tables: the VPC's main one (EC2 makes it) and spot's.
    for (kind, n) in [("vpcs", 1), ("internet_gateways", 1), ("route_tables", 2)] {
        assert_eq!(left["us-west-2"][kind].as_array().map(Vec::len), Some(n), "{n} of {kind}: {left:#}");
    }
    let subnets = left["us-west-2"]["subnets"].as_array().cloned().unwrap_or_default();
    assert!(!subnets.is_empty(), "{left:#}");
    let calls = emu.calls();
    assert_eq!(
        calls.get("CreateSubnet").copied().unwrap_or(0),
        subnets.len() as u64,
        "one subnet per zone, the lost one found instead of sent again: {calls:?} {left:#}"
    );
    for (action, lookup) in
        [("CreateVpc", "DescribeVpcs"), ("CreateInternetGateway", "DescribeInternetGateways")]
    {
        assert_eq!(calls.get(action).copied(), Some(1), "{action} sent again: {calls:?}");
        assert!(calls.get(lookup).copied().unwrap_or(0) >= 1, "{lookup} never asked: {calls:?}");
    }
    assert_eq!(calls.get("CreateRouteTable").copied(), Some(2), "its token makes the retry safe: {calls:?}");
    let details = emu.details("us-west-2");
    assert_eq!(details["vpcs"][0]["tags"]["spot:deployment"], "vpc-1");
    let out = destroy(&emu, dir.path(), "vpc-1");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_clean(&emu, &["us-west-2"]);
}

fn sigterm_mid_create_exits_promptly_and_destroy_cleans_up(behaviours: &Value) {
    let emu = Emulator::start();
    emu.behaviours(behaviours);
    emu.faults(&json!([{"action": "CreateFleet", "fault": "delay", "delay_ms": 2500}]));
    let dir = project(
        "aws: {total_instances: 2, ssh_cidr: 127.0.0.1/32}\nregions:\n  - us-east-1: {machine_type: t3.micro}\n  - us-west-2: {machine_type: t3.micro}\n",
    );
    let mut child = emu
        .spot_process()
        .args(["create", "--no-deliver", "--deployment-id", "sig-1"])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while emu.calls().get("CreateFleet").copied().unwrap_or(0) == 0 {
        assert!(std::time::Instant::now() < deadline, "create never reached CreateFleet");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let signalled = std::time::Instant::now();
    let status =
        std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        assert!(
            signalled.elapsed() < std::time::Duration::from_secs(10),
            "create did not exit within 10s of SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("cancelled"), "{err}");
    // A fresh process, no local state: destroy by tags.
    std::fs::remove_dir_all(state_dir(dir.path())).unwrap();
    emu.faults(&json!([]));
    let out = destroy(&emu, dir.path(), "sig-1");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_clean(&emu, &["us-east-1", "us-west-2"]);
}

#[test]
fn destroy_without_an_id_needs_yes_for_several_and_never_touches_untagged_resources() {
    let emu = Emulator::start();
    let foreign = emu.foreign("us-east-1");
    let dir = project(
        "aws: {total_instances: 1, ssh_cidr: 127.0.0.1/32}\nregions:\n  - us-east-1: {machine_type: t3.micro}\n",
    );
    create_json(&emu, dir.path(), "many-1");
    create_json(&emu, dir.path(), "many-2");
    let out = emu.spot().args(["destroy", "--dir"]).arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("many-1") && err.contains("many-2") && err.contains("--yes"), "{err}");
    let out = emu.spot().args(["destroy", "--yes", "--dir"]).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let left = emu.leftovers(&["us-east-1"]);
    assert_eq!(left["us-east-1"]["instances"], json!([foreign["instance"]]), "{left}");
    assert_eq!(left["us-east-1"]["security_groups"], json!([foreign["security_group"]]));
    assert_eq!(left["us-east-1"]["key_pairs"], json!(["not-spot"]));
    assert!(left["us-east-1"].get("launch_templates").is_none());
}

#[test]
fn endpoint_flag_wins_invalid_input_makes_no_call_and_missing_credentials_fail_clearly() {
    let emu = Emulator::start();
    let dir = project(
        "aws: {total_instances: 1, ssh_cidr: 127.0.0.1/32}\nregions:\n  - us-east-1: {machine_type: t3.micro}\n",
    );
    // --endpoint-url wins over AWS_ENDPOINT_URL (which points nowhere here).
    let out = emu
        .spot()
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .args([
            "create",
            "--no-deliver",
            "--json",
            "--deployment-id",
            "flag-1",
            "--endpoint-url",
            &emu.proxy_url(),
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(destroy(&emu, dir.path(), "flag-1").status.success());
    // A malformed description creates nothing and makes no call.
    std::fs::write(dir.path().join(".spot/deployment.yaml"), "version: 1\npackges: [jq]\n").unwrap();
    let before = emu.calls().values().sum::<u64>();
    let out = create(&emu, dir.path(), "bad-input");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(emu.calls().values().sum::<u64>(), before, "invalid input makes no cloud call");
    std::fs::write(dir.path().join(".spot/deployment.yaml"), "version: 1\n").unwrap();
    let out = emu
        .spot()
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .args(["create", "--no-deliver", "--deployment-id", "nocreds"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("credentials"), "{err}");
    assert_clean(&emu, &["us-east-1"]);
}

#[test]
fn an_explicit_image_is_checked_to_exist() {
    let emu = Emulator::start();
    let dir = project(
        "aws: {total_instances: 1, ssh_cidr: 127.0.0.1/32}\nregions:\n  - us-east-1: {machine_type: t3.micro, image: ami-0123456789abcdef0}\n",
    );
    let out = create(&emu, dir.path(), "ami-1");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("image ami-0123456789abcdef0 does not exist"), "{err}");
    assert_clean(&emu, &["us-east-1"]);
    let dir = project(
        "aws: {total_instances: 1, ssh_cidr: 127.0.0.1/32}\nregions:\n  - us-east-1: {machine_type: t3.micro, image: ami-0000000000000a001}\n",
    );
    create_json(&emu, dir.path(), "ami-2");
    assert_eq!(emu.details("us-east-1")["instances"][0]["image"], "ami-0000000000000a001");
    assert!(destroy(&emu, dir.path(), "ami-2").status.success());
    assert_clean(&emu, &["us-east-1"]);
}

fn a_region_without_spot_capacity_is_topped_up_from_the_next_region(behaviours: &Value) {
    let emu = Emulator::start();
    emu.behaviours(behaviours);
    let all_east = ["us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d", "us-east-1e", "us-east-1f"];
    emu.faults(&json!([{"action": "CreateFleet", "fault": "capacity-az", "azs": all_east}]));
    let dir = project(
        "aws: {total_instances: 4, ssh_cidr: 127.0.0.1/32}\nregions:\n  - us-east-1: {machine_type: t3.micro}\n  - us-west-2: {machine_type: t3.micro}\n",
    );
    let out = emu
        .spot()
        .args(["create", "--no-deliver", "--json", "--deployment-id", "topup-1"])
        .arg(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let instances = created["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 4);
    assert!(instances.iter().all(|i| i["region"] == "us-west-2" && i["market"] == "spot"), "{instances:?}");
    assert!(
        err.contains("us-west-2: launching 2 spot")
            && err.contains("unavailable (InsufficientInstanceCapacity)"),
        "{err}"
    );
    assert!(destroy(&emu, dir.path(), "topup-1").status.success());
    assert_clean(&emu, &["us-east-1", "us-west-2"]);
}

#[test]
fn the_emulator_ssh_folder_follows_the_endpoint_the_sdk_resolves_from_a_profile() {
    let emu = Emulator::start();
    let dir = project(
        "aws: {total_instances: 1, ssh_cidr: 127.0.0.1/32}\nregions:\n  - us-east-1: {machine_type: t3.micro}\n",
    );
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), format!("[default]\nendpoint_url = {}\n", emu.proxy_url())).unwrap();
    // The endpoint comes from the profile alone: the override is in effect, no warning.
    let out = emu
        .spot()
        .env_remove("AWS_ENDPOINT_URL")
        .env("AWS_CONFIG_FILE", config.path())
        .env("SPOT_EMULATOR_SSH_DIR", dir.path())
        .args(["list", "--region", "us-east-1"])
        .arg(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("no deployments"), "{err}");
    assert!(!err.contains("ignored"), "the profile's endpoint was not seen as an override: {err}");
    assert!(emu.calls().values().sum::<u64>() > 0, "the profile's endpoint was not used");
}

/// The fault matrix, each case twice: with EC2's reads caught up, and lagging (a new
/// instance unseen by the next three describes, new tags by the next two).
macro_rules! matrix {
    ($($case:ident),* $(,)?) => {
        mod matrix {
            $(
                mod $case {
                    #[test]
                    fn consistent() {
                        super::super::$case(&crate::emulator::ec2_like());
                    }
                    #[test]
                    fn lagging() {
                        super::super::$case(&crate::emulator::lagging(3, 2));
                    }
                }
            )*
        }
    };
}

matrix!(
    capacity_errors_in_one_az_use_the_other_azs,
    no_spot_capacity_anywhere_falls_back_to_on_demand_when_allowed,
    no_spot_capacity_without_fallback_fails_naming_what_was_tried_and_rolls_back,
    throttling_on_a_third_of_calls_still_succeeds,
    server_errors_and_lost_answers_mid_create_still_give_exactly_the_count,
    a_refused_launch_rolls_back_everything_the_run_made,
    sigterm_mid_create_exits_promptly_and_destroy_cleans_up,
    a_region_without_spot_capacity_is_topped_up_from_the_next_region,
);

const ONE_INSTANCE: &str =
    "aws: {total_instances: 1, ssh_cidr: 127.0.0.1/32}\nregions:\n  - us-east-1: {machine_type: t3.micro}\n";

#[test]
fn a_launch_ec2_does_not_show_yet_is_pending_and_a_rollback_still_terminates_it() {
    let emu = Emulator::start();
    // As measured: new instances missing from the first three describes. spot waits.
    emu.behaviours(&lagging(3, 0));
    let dir = project(ONE_INSTANCE);
    let created = create_json(&emu, dir.path(), "lag-1");
    assert_eq!(created["instances"].as_array().unwrap().len(), 1);
    assert!(destroy(&emu, dir.path(), "lag-1").status.success());
    assert_clean(&emu, &["us-east-1"]);
    // A run that fails right after CreateFleet rolls back an instance EC2 still answers
    // "InvalidInstanceID.NotFound" for: asked again until EC2 knows it, not taken as gone.
    emu.behaviours(&lagging(4, 0));
    // The first DescribeInstances is the look for an id in use; the second, the first
    // after CreateFleet, fails.
    emu.faults(&json!([{"action": "DescribeInstances", "fault": "error", "status": 403, "code": "UnauthorizedOperation", "message": "not allowed", "every": 2, "times": 1}]));
    let out = create(&emu, dir.path(), "lag-2");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("UnauthorizedOperation") && err.contains("rolled back: removed 1 instance"),
        "{err}"
    );
    assert!(emu.calls()["TerminateInstances"] > 1, "the unknown id was asked again");
    assert_clean(&emu, &["us-east-1"]);
}

#[test]
fn a_fleet_ec2_did_not_delete_is_an_error_and_the_next_destroy_finishes() {
    let emu = Emulator::start();
    let dir = project(ONE_INSTANCE);
    create_json(&emu, dir.path(), "keep-fleet");
    emu.faults(&json!([{"action": "DeleteFleets", "fault": "unsuccessful-delete", "code": "fleetNotInDeletableState"}]));
    let out = destroy(&emu, dir.path(), "keep-fleet");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        out.status.code(),
        Some(0),
        "a 200 with the fleet in UnsuccessfulFleetDeletions is not success: {err}"
    );
    assert!(err.contains("fleetNotInDeletableState") && err.contains("fleet"), "{err}");
    assert!(emu.leftovers(&["us-east-1"])["us-east-1"]["fleets"].as_array().is_some_and(|f| f.len() == 1));
    emu.faults(&json!([]));
    let out = destroy(&emu, dir.path(), "keep-fleet");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_clean(&emu, &["us-east-1"]);
}

#[test]
fn the_proxy_refuses_a_describe_it_cannot_page_instead_of_answering_in_one_page() {
    let emu = Emulator::start();
    let answer = emu.post("Action=DescribeVolumes&Version=2016-11-15");
    assert!(answer.contains("FaultProxyCannotPlay"), "{answer}");
}

#[test]
fn api_calls_per_create_and_destroy_do_not_grow_with_the_instance_count() {
    let emu = Emulator::start();
    emu.behaviours(&json!({"instant_fleets": true, "client_tokens": true}));
    let regions = ["us-east-1", "us-west-2", "eu-west-1"];
    let mut counts = Vec::new();
    for n in [3, 12] {
        let dir = project(&format!(
            "aws: {{total_instances: {n}, ssh_cidr: 127.0.0.1/32}}\nregions:\n  - us-east-1: {{machine_type: t3.micro}}\n  - us-west-2: {{machine_type: t3.micro}}\n  - eu-west-1: {{machine_type: t3.micro}}\n"
        ));
        let before = emu.calls();
        let id = format!("calls-{n}");
        create_json(&emu, dir.path(), &id);
        assert!(destroy(&emu, dir.path(), &id).status.success());
        let after = emu.calls();
        let used: std::collections::BTreeMap<String, u64> =
            after.iter().map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0))).collect();
        counts.push(used);
    }
    assert_eq!(counts[0], counts[1], "calls for 3 instances vs 12 in 3 regions");
    assert_clean(&emu, &regions);
}

#[test]
fn a_deployment_id_in_use_is_refused_and_the_first_set_is_left_as_it_was() {
    let emu = Emulator::start();
    let dir = project(ONE_INSTANCE);
    create_json(&emu, dir.path(), "same");
    let before = emu.details("us-east-1");
    let calls = emu.calls();
    let state_files = std::fs::read_dir(state_dir(dir.path())).unwrap().count();
    // As a new user would: the same command again.
    let out = create(&emu, dir.path(), "same");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("deployment `same` already exists in us-east-1: 1 instance(s)"), "{err}");
    assert!(err.contains("spot destroy same") && err.contains("nothing was created or changed"), "{err}");
    assert_eq!(writes(&emu.calls()), writes(&calls), "the refused create changed something");
    assert_eq!(emu.details("us-east-1"), before, "the first set changed");
    assert_eq!(
        std::fs::read_dir(state_dir(dir.path())).unwrap().count(),
        state_files,
        "a state file was written"
    );
    // Destroyed, the id is free again.
    let file = state_dir(dir.path()).join("same.json");
    let ready = std::fs::read_to_string(&file).unwrap();
    assert!(destroy(&emu, dir.path(), "same").status.success());
    create_json(&emu, dir.path(), "same");
    assert!(destroy(&emu, dir.path(), "same").status.success());
    assert_clean(&emu, &["us-east-1"]);

    // A state file still `ready` for a deployment removed from elsewhere (another
    // checkout's destroy, a reap) holds the id until a destroy finds nothing of it.
    std::fs::write(&file, &ready).unwrap();
    let out = create(&emu, dir.path(), "same");
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("spot destroy same"));
    // (What it records is asked for by id: gone, so removed.)
    let out = destroy(&emu, dir.path(), "same");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read_to_string(&file).unwrap().contains("\"destroyed\""));
    create_json(&emu, dir.path(), "same");
    assert!(destroy(&emu, dir.path(), "same").status.success());
    assert_clean(&emu, &["us-east-1"]);
}

#[test]
fn two_creates_racing_for_one_id_make_one_set_and_the_loser_touches_nothing_of_it() {
    let emu = Emulator::start();
    // The first key pair (the first thing a run makes) is held back, so both runs look
    // before either has made anything: the look cannot tell them apart, the names they
    // both want must.
    emu.faults(&json!([{"action": "ImportKeyPair", "fault": "delay", "delay_ms": 2500, "times": 1}]));
    // Two checkouts, as two CI runners have.
    let dirs = [project(ONE_INSTANCE), project(ONE_INSTANCE)];
    let run = |dir: &std::path::Path| {
        emu.spot()
            .args(["create", "--no-deliver", "--json", "--deployment-id", "raced"])
            .arg(dir)
            .timeout(std::time::Duration::from_secs(120))
            .output()
            .unwrap()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| run(dirs[0].path()));
        let b = s.spawn(|| run(dirs[1].path()));
        (a.join().unwrap(), b.join().unwrap())
    });
    let (won, lost, dir) = if a.status.success() { (a, b, &dirs[0]) } else { (b, a, &dirs[1]) };
    let err = String::from_utf8_lossy(&lost.stderr);
    assert!(won.status.success(), "neither won: {}", String::from_utf8_lossy(&won.stderr));
    assert_eq!(lost.status.code(), Some(2), "{err}");
    assert!(err.contains("DeploymentInUse") && err.contains("of deployment raced"), "{err}");
    let winner: Value = serde_json::from_slice(&won.stdout).unwrap();
    let left = emu.leftovers(&["us-east-1"]);
    let instances = left["us-east-1"]["instances"].as_array().cloned().unwrap_or_default();
    assert_eq!(instances.len(), 1, "one set under one id: {left:#}");
    assert_eq!(instances[0], winner["instances"][0]["id"], "{left:#}");
    for kind in ["key_pairs", "launch_templates", "security_groups"] {
        assert_eq!(left["us-east-1"][kind].as_array().map(Vec::len), Some(1), "{kind}: {left:#}");
    }
    assert!(destroy(&emu, dir.path(), "raced").status.success());
    assert_clean(&emu, &["us-east-1"]);
}

#[test]
fn a_secret_too_short_to_mask_safely_is_refused_before_any_write_call() {
    let emu = Emulator::start();
    let dir = project(ONE_INSTANCE);
    std::fs::write(dir.path().join(".spot/deployment.yaml"), "version: 1\nsecrets:\n  - APP_PIN\n").unwrap();
    let calls = emu.calls();
    let out = emu
        .spot()
        .args(["create", "--deployment-id", "short-1"])
        .arg(dir.path())
        .env("APP_PIN", "x7q")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("secret `APP_PIN`") && err.contains("shorter than 8 characters"), "{err}");
    assert!(!err.contains("x7q"), "the value was shown: {err}");
    assert_eq!(writes(&emu.calls()), writes(&calls), "a refused create changed EC2");
    assert_clean(&emu, &["us-east-1"]);
}

#[test]
fn exposed_ports_are_rules_of_the_group_http_ones_urls_in_create_and_list_and_destroy_removes_them() {
    let emu = Emulator::start();
    let dir = project(
        "aws: {total_instances: 2, ssh_cidr: 198.51.100.7/32}\nregions:\n  - us-east-1: {machine_type: t3.micro}\n\
         expose:\n  - {port: 8080, http: true, from: 203.0.113.0/24}\n  - {port: 3000, from: runner}\n",
    );
    // A `runner` source needs this machine's address: when nobody answers, nothing is made.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let out = emu
        .spot()
        .args(["create", "--no-deliver", "--deployment-id", "ex-0"])
        .arg(dir.path())
        .env("SPOT_EMULATOR_CHECKIP", &closed)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot find this machine's public address"));
    assert!(writes(&emu.calls()).is_empty(), "{:?}", emu.calls());

    let checkip = crate::common::CheckIp::start("192.0.2.44");
    let out = emu
        .spot()
        .args(["create", "--no-deliver", "--json", "--deployment-id", "ex-1"])
        .arg(dir.path())
        .env("SPOT_EMULATOR_CHECKIP", &checkip.addr)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let urls = |doc: &Value| -> Vec<Vec<String>> {
        doc["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| serde_json::from_value(i["urls"].clone()).unwrap_or_default())
            .collect()
    };
    let expected: Vec<Vec<String>> = created["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            vec![format!("http://{}:8080/", i["public_ip"].as_str().or(i["private_ip"].as_str()).unwrap())]
        })
        .collect();
    assert_eq!(urls(&created), expected, "{created:#}");
    assert_eq!(
        crate::action::group_rules(&emu),
        [
            "22-22/tcp 198.51.100.7/32 [spot ssh]",
            "3000-3000/tcp 192.0.2.44/32 [spot 3000/tcp (runner)]",
            "8080-8080/tcp 203.0.113.0/24 [spot 8080/tcp http]",
        ]
    );
    let out = emu.spot().args(["list", "--json", "--region", "us-east-1"]).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut listed_urls = urls(&listed[0]);
    let mut want = expected.clone();
    listed_urls.sort();
    want.sort();
    assert_eq!(listed_urls, want, "{listed:#}");
    let out = emu.spot().args(["list", "--region", "us-east-1"]).arg(dir.path()).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&expected[0][0]));

    assert!(destroy(&emu, dir.path(), "ex-1").status.success());
    assert_clean(&emu, &["us-east-1"]);
}
