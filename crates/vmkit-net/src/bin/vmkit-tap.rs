//! `vmkit-tap`: the operator's side of running a VMM without privileges.
//!
//! ```text
//! vmkit-tap create NAME (--user UID | --group GID | both) [--net MODE]
//! vmkit-tap remove NAME [--net MODE]
//! ```
//!
//! `create` (with `CAP_NET_ADMIN`, e.g. as root) makes the persistent TAP
//! NAME, which the user UID (and/or the members of group GID) may open
//! without capabilities, and puts it into MODE's network: `tap` (the
//! default: the TAP alone, for the host to configure), `isolated:BRIDGE`,
//! `bridged:BRIDGE` or `nat:BRIDGE:GATEWAY/PREFIX:UPLINK`. The VMM then
//! opens NAME (`boot_linux --net tap --tap NAME`, or `vmkit_net::Tap::open`).
//! `remove` deletes the TAP and leaves MODE's network, tearing it down if
//! no other VM is on it. See `vmkit_net::persistent`.
//!
//! Exit status: 0 done, 1 failed (the reason on stderr), 2 bad usage.

use std::error::Error;
use std::process::ExitCode;

use vmkit_net::persistent::{self, TapAccess};
use vmkit_net::{Departure, TapMode};

const USAGE: &str = "usage: vmkit-tap create NAME (--user UID | --group GID | both) [--net MODE]
       vmkit-tap remove NAME [--net MODE]
MODE: tap (default) | isolated:BRIDGE | bridged:BRIDGE | nat:BRIDGE:GATEWAY/PREFIX:UPLINK";

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Create {
        name: String,
        access: TapAccess,
        mode: TapMode,
    },
    Remove {
        name: String,
        mode: TapMode,
    },
}

/// Parses the arguments after the program's name; the error is the message for stderr.
fn parse(args: &[String]) -> Result<Command, String> {
    let (verb, rest) = args.split_first().ok_or("no command given")?;
    if verb != "create" && verb != "remove" {
        return Err(format!("unknown command {verb:?} (create or remove)"));
    }
    let (name, mut flags) = rest
        .split_first()
        .ok_or_else(|| format!("{verb}: no TAP name given"))?;
    let mut access = TapAccess::default();
    let mut mode = TapMode::Alone;
    while let Some((flag, tail)) = flags.split_first() {
        let (value, tail) = tail
            .split_first()
            .ok_or_else(|| format!("{flag} needs a value"))?;
        let id = |what: &str| {
            value.parse::<u32>().map_err(|_| {
                format!("{flag} {value:?}: not a numeric {what} id (try `id -u NAME`)")
            })
        };
        match flag.as_str() {
            "--user" if verb == "create" => access.user = Some(id("user")?),
            "--group" if verb == "create" => access.group = Some(id("group")?),
            "--net" => mode = value.parse().map_err(|e| format!("--net {value:?}: {e}"))?,
            _ => return Err(format!("{verb}: unknown flag {flag:?}")),
        }
        flags = tail;
    }
    match verb.as_str() {
        "create" => Ok(Command::Create {
            name: name.clone(),
            access,
            mode,
        }),
        _ => Ok(Command::Remove {
            name: name.clone(),
            mode,
        }),
    }
}

/// The error and its sources, one line.
fn chain(e: &dyn Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn run(command: Command) -> Result<String, Box<dyn Error>> {
    match command {
        Command::Create { name, access, mode } => {
            persistent::create(&name, access, &mode)?;
            let who: Vec<String> = access
                .user
                .map(|u| format!("uid {u}"))
                .into_iter()
                .chain(access.group.map(|g| format!("gid {g}")))
                .collect();
            Ok(format!(
                "created persistent TAP {name} for {} ({mode})",
                who.join(" and ")
            ))
        }
        Command::Remove { name, mode } => {
            let removal = persistent::remove(&name, &mode)?;
            let tap = if removal.tap_deleted {
                format!("deleted TAP {name}")
            } else {
                format!("TAP {name} was gone already")
            };
            let network = match removal.network {
                None => format!("network {mode} was gone already"),
                Some(Departure::Alone) => "no network to leave".to_string(),
                Some(Departure::Left { bridge }) => format!("left bridge {bridge}"),
                Some(Departure::TornDown { bridge }) => format!("tore down {bridge}"),
                Some(Departure::LeftToOthers { bridge, ports }) => {
                    format!("left {bridge} to {}", ports.join(", "))
                }
                Some(other) => format!("{other:?}"),
            };
            Ok(format!("{tap}; {network}"))
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if matches!(args.first().map(String::as_str), Some("--help" | "-h")) {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let command = match parse(&args) {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("vmkit-tap: {msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(command) {
        Ok(done) => {
            println!("vmkit-tap: {done}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vmkit-tap: {}", chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn create_and_remove_parse() {
        assert_eq!(
            parse(&args(
                "create vmkvm0 --user 1000 --group 100 --net isolated:vmkiso0"
            )),
            Ok(Command::Create {
                name: "vmkvm0".into(),
                access: TapAccess {
                    user: Some(1000),
                    group: Some(100)
                },
                mode: "isolated:vmkiso0".parse().unwrap(),
            })
        );
        assert_eq!(
            parse(&args("remove vmkvm0")),
            Ok(Command::Remove {
                name: "vmkvm0".into(),
                mode: TapMode::Alone,
            })
        );
    }

    #[test]
    fn bad_usage_is_named() {
        for (line, says) in [
            ("", "no command"),
            ("create", "no TAP name"),
            ("create t0 --user bob", "not a numeric user id"),
            ("create t0 --user", "--user needs a value"),
            ("remove t0 --user 1", "unknown flag \"--user\""),
            ("create t0 --net wat:x", "--net \"wat:x\""),
            ("delete t0", "unknown command \"delete\""),
        ] {
            let e = parse(&args(line)).unwrap_err();
            assert!(e.contains(says), "{line:?}: {e}");
        }
    }
}
