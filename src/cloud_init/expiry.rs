//! The in-guest time to live: the net that stops the bill when every other teardown failed.
//!
//! It must be armed while the instance boots without holding the boot up, come back after a
//! reboot, power off an instance that boots when its time is already over, and not depend
//! on any later cloud-init stage (packages, users, `runcmd`) succeeding. So it is one
//! `bootcmd` entry (cloud-init's first config module, run on every boot), and it only asks
//! systemd to do things later (`--no-block`):
//!
//! - time over: `systemctl --no-block poweroff`;
//! - else it writes `spot-expiry.timer` (at the expiry, wall clock, `Persistent=`) and its
//!   `spot-expiry.service` (power off), enables the timer, marks it as last triggered now
//!   (its stamp under `/var/lib/systemd/timers`), and `systemctl --no-block start`s it.
//!   The stamp makes systemd fire the timer at once whenever it is started after the
//!   expiry: when this boot reached `timers.target` late, and on a later boot (started by
//!   systemd alone, cloud-init or not) after the expiry.
//! - anything in that failing: power off. An instance without its time to live must not
//!   run on; spot then sees it gone instead of a deployment that never ends.
//!
//! Why not `systemd-run --on-calendar`: cloud-init's stage that runs `bootcmd` is ordered
//! before `sysinit.target`, and timers after it; `systemd-run` waits for its timer to
//! start, and even with `--no-block` it did not return in that stage (Debian 12 and 13,
//! seen on a real boot), so the boot never went on. A transient timer is also gone after a
//! reboot. Why not `write_files`: it runs after `bootcmd`, so on the first boot nothing
//! could start the units it wrote. The unit files are typed here ([`Unit`]) and handed to a
//! fixed script as arguments; no value is ever spliced into shell code.

pub const TIMER: &str = "/etc/systemd/system/spot-expiry.timer";
pub const SERVICE: &str = "/etc/systemd/system/spot-expiry.service";
/// Where systemd keeps a persistent timer's last trigger (the file's modification time).
pub const STAMP: &str = "/var/lib/systemd/timers/stamp-spot-expiry.timer";

/// `$0` names the script in its messages; `$1` the expiry (seconds since the epoch), `$2`
/// the timer unit, `$3` the service unit. Units are written whole (write, then rename), so
/// a reboot in the middle leaves the old or the new file, never half of one.
const ARM: &str = r#"set -u
now=$(date +%s)
left=$(( $1 - now ))
off() { echo "$0: $1; powering off"; exec systemctl --no-block poweroff; }
[ "$left" -gt 0 ] || off "the time to live ended $(( -left )) s ago"
umask 022
{ printf '%s' "$2" > TIMER.new && mv -f TIMER.new TIMER &&
  printf '%s' "$3" > SERVICE.new && mv -f SERVICE.new SERVICE &&
  mkdir -p /etc/systemd/system/timers.target.wants /var/lib/systemd/timers &&
  ln -sf ../spot-expiry.timer /etc/systemd/system/timers.target.wants/spot-expiry.timer &&
  touch -d "@$now" STAMP &&
  systemctl --no-block start spot-expiry.timer
} || off "the time to live could not be armed"
echo "$0: armed; this instance powers off in $left s"
"#;

/// A systemd unit file: sections of `Key=value` lines, in order.
#[derive(Debug)]
pub struct Unit {
    sections: Vec<(&'static str, Vec<(&'static str, String)>)>,
}

impl Unit {
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (i, (name, entries)) in self.sections.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(&format!("[{name}]\n"));
            for (key, value) in entries {
                out.push_str(&format!("{key}={value}\n"));
            }
        }
        out
    }
}

/// `OnCalendar=` wants `YYYY-MM-DD HH:MM:SS UTC`.
fn calendar(expires: jiff::Timestamp) -> String {
    expires.strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn expires(expires_at: &str) -> jiff::Timestamp {
    // The plan writes this field; an unreadable one powers off at once rather than never.
    expires_at.parse().unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

pub fn timer(deployment_id: &str, expires_at: &str) -> Unit {
    Unit {
        sections: vec![
            ("Unit", vec![("Description", format!("spot: power off {deployment_id} at its time to live"))]),
            (
                "Timer",
                vec![
                    ("OnCalendar", calendar(expires(expires_at))),
                    ("AccuracySec", "1s".into()),
                    ("Persistent", "true".into()),
                    ("Unit", "spot-expiry.service".into()),
                ],
            ),
            ("Install", vec![("WantedBy", "timers.target".into())]),
        ],
    }
}

pub fn service() -> Unit {
    Unit {
        sections: vec![
            ("Unit", vec![("Description", "spot: the time to live is over".into())]),
            (
                "Service",
                vec![("Type", "oneshot".into()), ("ExecStart", "/bin/systemctl --no-block poweroff".into())],
            ),
        ],
    }
}

/// The `bootcmd` entry that arms the time to live on this boot: an argument vector, which
/// cloud-init quotes word by word into the shell script it runs, so the arguments arrive
/// as they are.
pub fn arm(deployment_id: &str, expires_at: &str) -> Vec<String> {
    let script = ARM.replace("TIMER", TIMER).replace("SERVICE", SERVICE).replace("STAMP", STAMP);
    vec![
        "sh".into(),
        "-c".into(),
        script,
        "spot-expiry".into(),
        expires(expires_at).as_second().to_string(),
        timer(deployment_id, expires_at).render(),
        service().render(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timer_fires_at_the_expiry_in_utc() {
        let text = timer("pr-7", "2026-11-26T06:48:13Z").render();
        assert!(text.contains("\nOnCalendar=2026-11-26 06:48:13 UTC\n"), "{text}");
        assert!(text.contains("[Install]\nWantedBy=timers.target\n"), "{text}");
        assert!(text.contains("\nPersistent=true\n"), "{text}");
        assert!(service().render().contains("ExecStart=/bin/systemctl --no-block poweroff\n"));
    }

    #[test]
    fn the_script_takes_its_values_as_arguments() {
        let argv = arm("pr-7", "2026-11-26T06:48:13Z");
        assert_eq!(argv[..2], ["sh", "-c"]);
        assert_eq!(argv[4], "1795675693");
        // The script is the same for every deployment: nothing of this one is in it.
        assert_eq!(argv[2], arm("pr-7", "2030-01-01T00:00:00Z")[2]);
        assert!(!argv[2].contains("2026") && !argv[2].contains("pr-7"));
        // Nothing in it waits on systemd: every call to it is `--no-block`.
        for line in argv[2].lines().filter(|l| l.contains("systemctl ")) {
            assert!(line.contains("--no-block"), "{line}");
        }
        assert!(!argv[2].contains("systemd-run"));
        let check = std::process::Command::new("sh").args(["-n", "-c", &argv[2]]).status();
        assert!(check.is_ok_and(|s| s.success()), "the script does not parse");
    }

    #[test]
    fn an_unreadable_expiry_powers_off_rather_than_never() {
        assert_eq!(arm("pr-7", "not a time")[4], "0");
    }
}
