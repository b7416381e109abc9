//! Benchmark helper: uploads one file to several SSH servers at once through spot's own
//! SSH layer (`spot_deployer::remote`: pinned host key, streaming upload, sha256 checked
//! on the far side), the way `spot create` ships a bundle to its instances.
//!
//! ship --user USER --host-key HOST_KEY.pub --key CLIENT_KEY --file FILE --dest DIR [--raw] PORT...
//!
//! `--raw` sends the bytes to `cat > /dev/null` instead: the SSH transport alone.
//!
//! Prints one line: `<seconds> <bytes> <hosts>`. Used by bench/ship.sh.

use std::time::{Duration, Instant};

use sha2::Digest as _;
use spot_deployer::keys::Secret;
use spot_deployer::remote::{Target, connect};

fn arg(args: &[String], flag: &str) -> String {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| panic!("missing {flag}"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let user = arg(&args, "--user");
    let host_key = std::fs::read_to_string(arg(&args, "--host-key"))?;
    let key = Secret::new(std::fs::read_to_string(arg(&args, "--key"))?);
    let file = arg(&args, "--file");
    let dest = arg(&args, "--dest");
    let raw = args.iter().any(|a| a == "--raw");
    let ports: Vec<u16> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| {
            !a.starts_with("--") && (*i == 0 || !args[i - 1].starts_with("--") || args[i - 1] == "--raw")
        })
        .map(|(_, a)| a.parse())
        .collect::<Result<_, _>>()?;
    // spot knows the digest from packing; computing it is not part of the upload.
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut std::fs::File::open(&file)?, &mut hasher)?;
    let sha: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let bytes = std::fs::metadata(&file)?.len();

    let started = Instant::now();
    let uploads = ports.iter().map(|port| {
        let (user, host_key, key, file, sha, dest, raw) = (&user, &host_key, &key, &file, &sha, &dest, raw);
        async move {
            let target = Target { host: "127.0.0.1".into(), port: *port, user: user.clone() };
            let session = connect(&target, host_key.trim(), key, Duration::from_secs(10)).await?;
            let data = tokio::io::BufReader::with_capacity(256 * 1024, tokio::fs::File::open(file).await?);
            if raw {
                // The transport alone: no file written, no digest.
                session.run_with_input("cat > /dev/null", Some(data), Duration::from_secs(3600)).await?;
            } else {
                session
                    .upload(data, &format!("{dest}/ship-{port}.bin"), 0o600, sha, Duration::from_secs(3600))
                    .await?;
            }
            session.close().await;
            Ok::<(), Box<dyn std::error::Error>>(())
        }
    });
    for result in futures::future::join_all(uploads).await {
        result?;
    }
    println!("{:.3} {bytes} {}", started.elapsed().as_secs_f64(), ports.len());
    Ok(())
}
