//! `virtgate users` (who may log in at the gateway with a password) and the password half of
//! `virtgate hosts credentials`. Passwords are read here, from a prompt without echo or from
//! stdin; for users only their SCRAM verifiers leave this process (derived here, so the broker
//! never sees the password).

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Context};
use virtgate_api::users::{HostCredentialsRequest, NewUser, UserSummary, UserVerifiers};
use virtgate_proxy::auth::{is_valid_name, verifiers_for};

use super::api_client::{self, ClientArgs};
use super::table::Table;
use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Add a user; the password is asked for without echo (or read from stdin).
    Add {
        name: String,
        /// Read the password from the first line of stdin instead of a prompt.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Set a new password for a user.
    Passwd {
        name: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// List the users (names, mechanisms, last change; never a verifier).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a user: its next login fails; open connections stay.
    Remove { name: String },
}

/// Shortest password `virtgate` accepts.
const MIN_PASSWORD: usize = 8;

pub async fn run(config: &Config, args: Args) -> anyhow::Result<()> {
    let client = api_client::admin(config, &args.client)?;
    match args.action {
        Action::Add {
            name,
            password_stdin,
        } => {
            check_name(&name)?;
            let password = read_password(&format!("password for {name}"), password_stdin, true)?;
            let user = NewUser {
                name: name.clone(),
                verifiers: verifiers(&password)?,
            };
            let added = client.add_user(&user).await?;
            println!(
                "added: {} ({}); give it rules with identity = \"user:{}\" in [[proxy.rules]]",
                added.name,
                added.mechanisms.join(", "),
                added.name
            );
        }
        Action::Passwd {
            name,
            password_stdin,
        } => {
            check_name(&name)?;
            let password =
                read_password(&format!("new password for {name}"), password_stdin, true)?;
            let set = UserVerifiers {
                verifiers: verifiers(&password)?,
            };
            client.set_user(&name, &set).await?;
            println!("password changed: {name} (open connections stay; new logins need the new password)");
        }
        Action::List { json } => {
            let users = client.users().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&users)?);
            } else {
                print!("{}", users_table(&users));
            }
        }
        Action::Remove { name } => {
            client.remove_user(&name).await?;
            println!("removed: {name}");
        }
    }
    Ok(())
}

/// `virtgate hosts credentials HOST --user NAME`: the password the host's SASL database holds
/// for `user`, handed to the broker (admin token), which keeps it in a 0600 file for the gateway.
pub async fn set_host_credentials(
    client: &virtgate_api::Client,
    host: &str,
    user: &str,
    password_stdin: bool,
) -> anyhow::Result<()> {
    if user.is_empty() {
        bail!("--user: give the user name the host's SASL database knows (saslpasswd2 -a libvirt NAME on the host)");
    }
    let password = read_password(
        &format!("password of {user} on host {host}"),
        password_stdin,
        false,
    )?;
    let request = HostCredentialsRequest {
        user: user.to_string(),
        password,
    };
    let set = client.set_host_credentials(host, &request).await?;
    println!(
        "credentials set: the gateway logs in to {} as {} when it demands SASL (`virtgate hosts` shows it)",
        set.host, set.user
    );
    Ok(())
}

fn check_name(name: &str) -> anyhow::Result<()> {
    if !is_valid_name(name) {
        bail!("{name:?} cannot name a user: use 1 to 64 letters, digits, '.', '_', '-' or '@', not starting with '-'");
    }
    Ok(())
}

fn verifiers(password: &str) -> anyhow::Result<Vec<String>> {
    Ok(verifiers_for(password)
        .context("cannot derive the verifiers; use a password of printable characters")?
        .iter()
        .map(|v| v.to_text())
        .collect())
}

/// A password: from the first line of stdin with `from_stdin` or when stdin is not a terminal,
/// else from two prompts without echo (on the terminal) that must agree. `check_length` applies
/// `MIN_PASSWORD` (new gateway passwords; a host's existing one is taken as it is).
fn read_password(what: &str, from_stdin: bool, check_length: bool) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let password = if from_stdin || !stdin.is_terminal() {
        let mut line = String::new();
        stdin.lock().read_line(&mut line)?;
        line.trim_end_matches(['\n', '\r']).to_string()
    } else {
        let first = prompt(&format!("{what}: "))?;
        let again = prompt(&format!("{what} (again): "))?;
        if first != again {
            bail!("the two passwords differ; run the command again");
        }
        first
    };
    if password.is_empty() {
        bail!(
            "no password given: type one at the prompt, or pipe it on stdin with --password-stdin"
        );
    }
    if check_length && password.chars().count() < MIN_PASSWORD {
        bail!("the password is shorter than {MIN_PASSWORD} characters; choose a longer one");
    }
    Ok(password)
}

/// One line from the terminal with echo off (`stty -echo`), echo restored afterwards.
fn prompt(text: &str) -> anyhow::Result<String> {
    let stty = |arg: &str| {
        std::process::Command::new("stty")
            .arg(arg)
            .stdin(std::process::Stdio::inherit())
            .status()
            .is_ok_and(|s| s.success())
    };
    // Echo goes off before the prompt shows: whatever is typed after it is never echoed.
    if !stty("-echo") {
        bail!("cannot turn off echo on this terminal (stty); pipe the password on stdin with --password-stdin instead");
    }
    eprint!("{text}");
    std::io::stderr().flush()?;
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    stty("echo");
    eprintln!();
    read?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

fn users_table(users: &[UserSummary]) -> String {
    if users.is_empty() {
        return "no users yet; `virtgate users add NAME` adds one\n".into();
    }
    let mut table = Table::new(&["NAME", "MECHANISMS", "CHANGED"]);
    for u in users {
        table.row(vec![
            u.name.clone(),
            u.mechanisms.join(","),
            super::hosts::date(u.updated),
        ]);
    }
    table.render()
}
