//! The bundle: deterministic bytes, the right entries, and build archives that cannot
//! escape their destination.

use std::io::Read as _;
use std::process::Command;

use spot_deployer::{bundle, manifest};

use crate::common::{fixtures, spot};

fn pack(dir: &std::path::Path) -> (Vec<u8>, bundle::Packed, bundle::Listing) {
    let deployment = manifest::load(dir).unwrap();
    let listing = bundle::list(&deployment, true).unwrap();
    let mut bytes = Vec::new();
    let packed = bundle::pack(&listing, 6, &mut bytes).unwrap();
    (bytes, packed, listing)
}

fn copy(from: &std::path::Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let status =
        Command::new("cp").arg("-a").arg(format!("{}/.", from.display())).arg(dir.path()).status().unwrap();
    assert!(status.success());
    dir
}

#[test]
fn same_inputs_same_bytes_whatever_the_times() {
    let a = copy(&fixtures().join("valid/everything"));
    let b = copy(&fixtures().join("valid/everything"));
    let status = Command::new("sh")
        .arg("-c")
        .arg("find . -exec touch -h -d '2001-02-03 04:05:06' {} +")
        .current_dir(b.path())
        .status()
        .unwrap();
    assert!(status.success());
    let (bytes_a, packed_a, _) = pack(a.path());
    let (bytes_b, packed_b, _) = pack(b.path());
    assert_eq!(packed_a, packed_b);
    assert_eq!(bytes_a, bytes_b);
    assert_eq!(packed_a.bytes, bytes_a.len() as u64);
    let digest = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&bytes_a));
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(packed_a.sha256, hex);
    // A changed byte changes the digest.
    std::fs::write(b.path().join("build/VERSION"), "v2\n").unwrap();
    assert_ne!(pack(b.path()).1.sha256, packed_a.sha256);
}

#[test]
fn entries_are_the_listing_with_modes_links_and_zeroed_owners() {
    let dir = copy(&fixtures().join("valid/everything"));
    let (bytes, _, listing) = pack(dir.path());
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
    let mut seen = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let header = entry.header().clone();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        assert_eq!(
            (header.uid().unwrap(), header.gid().unwrap(), header.mtime().unwrap()),
            (0, 0, 0),
            "{name}"
        );
        let listed = listing.entries.iter().find(|e| e.dest.trim_start_matches('/') == name).unwrap();
        assert_eq!(header.mode().unwrap(), listed.mode, "{name}");
        if let Some(target) = &listed.link {
            assert_eq!(entry.link_name().unwrap().unwrap().to_string_lossy(), target.as_str());
        } else {
            let mut content = Vec::new();
            entry.read_to_end(&mut content).unwrap();
            assert_eq!(content, std::fs::read(&listed.local).unwrap(), "{name}");
        }
        seen.push(name);
    }
    let listed: Vec<String> =
        listing.entries.iter().map(|e| e.dest.trim_start_matches('/').to_string()).collect();
    assert_eq!(seen, listed, "same entries, same order");
    assert!(seen.contains(&"var/lib/spot/scripts/prepare".to_string()));
    assert!(seen.contains(&"srv/site/.github/ci.yml".to_string()));
}

fn archive_fixture(members: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join(".spot")).unwrap();
    std::fs::write(
        dir.path().join(".spot/config.yaml"),
        "regions:\n  - us-east-1: {machine_type: t3.micro}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join(".spot/deployment.yaml"), "version: 1\ntarball: build.tar.gz\n").unwrap();
    let script = format!(
        "import io, tarfile\nt = tarfile.open('build.tar.gz', 'w:gz')\nfor name, kind, target in {members}:\n    info = tarfile.TarInfo(name)\n    if kind == 'link':\n        info.type = tarfile.SYMTYPE; info.linkname = target; t.addfile(info)\n    else:\n        data = b'x'; info.size = 1; t.addfile(info, io.BytesIO(data))\nt.close()\n"
    );
    let status = Command::new("python3").arg("-c").arg(script).current_dir(dir.path()).status().unwrap();
    assert!(status.success());
    dir
}

#[test]
fn build_archives_whose_entries_escape_are_refused_before_anything_is_created() {
    for (members, needle) in [
        ("[('ok.txt', 'file', ''), ('../../etc/cron.d/evil', 'file', '')]", "`../../etc/cron.d/evil`"),
        ("[('/etc/passwd', 'file', '')]", "`/etc/passwd`"),
        ("[('bin/sh', 'link', '/bin/sh')]", "`bin/sh` -> `/bin/sh`"),
        ("[('a/up', 'link', '../../x')]", "`a/up` -> `../../x`"),
        ("[('a', 'link', '/etc'), ('a/passwd', 'file', '')]", "`a` -> `/etc`"),
        // Each link lexically inside, together outside: `l2` is `./..`.
        (
            "[('l1', 'link', '.'), ('l2', 'link', 'l1/..'), ('l2/passwd', 'file', '')]",
            "`l2/passwd` passes through the symlink `l2`",
        ),
    ] {
        let dir = archive_fixture(members);
        let out = spot().args(["validate", "--format", "json"]).arg(dir.path()).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{members}");
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let error = &doc["errors"][0];
        assert_eq!(
            (
                error["kind"].as_str(),
                error["file"].as_str(),
                error["line"].as_u64(),
                error["column"].as_u64()
            ),
            (Some("path-escapes"), Some(".spot/deployment.yaml"), Some(2), Some(10)),
            "{doc}"
        );
        assert!(error["message"].as_str().unwrap().contains(needle), "{doc}");
    }
    let fine = archive_fixture(
        "[('app/run.sh', 'file', ''), ('app/link', 'link', 'run.sh'), ('app/sub/up', 'link', '../run.sh')]",
    );
    spot().arg("validate").arg(fine.path()).assert().success();
}

#[test]
fn bundle_command_writes_the_same_bytes_as_the_library() {
    let dir = copy(&fixtures().join("valid/everything"));
    let out_file = dir.path().join("out.tar.gz");
    let out = spot().args(["bundle", "-o"]).arg(&out_file).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_file(&out_file).ok();
    let (bytes, packed, _) = pack(dir.path());
    let out = spot().args(["bundle", "-o", "-"]).arg(dir.path()).output().unwrap();
    assert_eq!(out.stdout, bytes);
    assert!(String::from_utf8_lossy(&out.stderr).contains(&packed.sha256));
}
