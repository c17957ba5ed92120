//! `virtgate pki`: certificate authorities in two roles (the users' CA that signs people's
//! certificates, the backend CA that signs only the gateway's backend identity and is the one
//! CA hosts trust), libvirt server and client certificates, and checks of existing certificate
//! files. The work is done by `virtgate-pki`; this module parses flags and tells the operator
//! what was written where and how to use it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use virtgate_pki as pki;

use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: PkiCommand,
}

#[derive(clap::Subcommand)]
enum PkiCommand {
    /// Create a certificate authority: cacert.pem and cakey.pem (0600). Its role (users or
    /// backend) is written into its subject.
    Init(InitArgs),
    /// Issue a certificate signed by the CA, in libvirt's file layout.
    #[command(subcommand)]
    Issue(IssueCommand),
    /// Check a libvirt certificate directory or a PEM file; exits non-zero on problems.
    Check(CheckArgs),
}

#[derive(clap::Args)]
struct InitArgs {
    /// What the CA is for: `users` signs people's certificates (and the gateway's server
    /// certificate); `backend` signs only the gateway's backend identity and is the one CA
    /// libvirt hosts trust. Default without --out: users; with --out: none (a plain CA, e.g. for
    /// hosts' certificates).
    #[arg(long, value_enum, value_name = "ROLE")]
    role: Option<RoleArg>,
    /// Directory for the CA (default: <broker.data_dir>/pki/ca for users,
    /// <broker.data_dir>/pki/backend-ca for backend).
    #[arg(long = "out", alias = "dir", value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Subject CN of the CA (default: "virtgate CA" and a short key id).
    #[arg(long, value_name = "NAME")]
    cn: Option<String>,
    /// Validity, in whole days: 3650d, 520w (a plain number is days).
    #[arg(long = "valid-for", alias = "days", value_name = "DURATION", default_value = "3650d", value_parser = parse_days)]
    days: u32,
}

/// A validity in whole days: a duration (`90d`, `12w`, `8760h`) or a plain number of days.
fn parse_days(text: &str) -> std::result::Result<u32, String> {
    if let Ok(days) = text.parse::<u32>() {
        return Ok(days);
    }
    let d = humantime::parse_duration(text)
        .map_err(|e| format!("{text:?}: {e}; write a duration in days such as 365d"))?;
    let secs = d.as_secs();
    if secs % 86_400 != 0 {
        return Err(format!(
            "{text:?} is not a whole number of days; write e.g. 365d"
        ));
    }
    u32::try_from(secs / 86_400).map_err(|_| format!("{text:?} is too long"))
}

#[derive(clap::Subcommand)]
enum IssueCommand {
    /// A server certificate: servercert.pem, serverkey.pem, cacert.pem (libvirtd's files).
    Server(ServerArgs),
    /// A client certificate: cacert.pem, clientcert.pem, clientkey.pem (a ?pkipath= directory).
    Client(ClientArgs),
    /// The gateway's backend identity (O=virtgate,CN=virtgate-gateway) from the backend CA:
    /// the client certificate the gateway presents to hosts (proxy.backend_cert_file).
    Backend(BackendArgs),
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RoleArg {
    Users,
    Backend,
}

impl From<RoleArg> for pki::CaRole {
    fn from(role: RoleArg) -> Self {
        match role {
            RoleArg::Users => pki::CaRole::Users,
            RoleArg::Backend => pki::CaRole::Backend,
        }
    }
}

#[derive(clap::Args)]
struct IssueArgs {
    /// Validity, in whole days (never beyond the CA's own expiry): 365d, 52w (a plain number is
    /// days).
    #[arg(long = "valid-for", alias = "days", value_name = "DURATION", default_value = "365d", value_parser = parse_days)]
    days: u32,
    /// CA directory (default: the users' CA <broker.data_dir>/pki/ca that `virtgate up`
    /// creates; for `issue backend`, the backend CA <broker.data_dir>/pki/backend-ca).
    #[arg(long, value_name = "DIR")]
    ca: Option<PathBuf>,
    /// Output directory; created with mode 0700 if missing.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Replace a certificate and key already in --out (renewal).
    #[arg(long)]
    force: bool,
    /// Renew keeping the key already in --out: only the certificate is replaced, so the pin
    /// stays the same and a host the gateway trusts by pin needs no new approval (implies
    /// --force).
    #[arg(long)]
    reuse_key: bool,
    /// Also trust the CA certificates in FILE (repeatable): they are added to cacert.pem, for
    /// peers whose certificates come from another CA.
    #[arg(long, value_name = "FILE")]
    also_trust: Vec<PathBuf>,
}

#[derive(clap::Args)]
struct ServerArgs {
    /// The host name (subject CN); always also put into the SANs.
    #[arg(long, value_name = "NAME")]
    name: String,
    /// Another DNS name clients use, e.g. the short name (repeatable).
    #[arg(long = "dns", value_name = "NAME")]
    dns: Vec<String>,
    /// An IP address clients use (repeatable).
    #[arg(long = "ip", value_name = "IP")]
    ips: Vec<IpAddr>,
    #[command(flatten)]
    issue: IssueArgs,
}

#[derive(clap::Args)]
struct ClientArgs {
    /// Subject DN, e.g. 'C=GB,O=Example,CN=alice' (C, ST, L, O, OU, CN; CN required).
    #[arg(long, value_name = "DN")]
    dn: String,
    #[command(flatten)]
    issue: IssueArgs,
}

#[derive(clap::Args)]
struct BackendArgs {
    #[command(flatten)]
    issue: IssueArgs,
}

#[derive(clap::Args)]
struct CheckArgs {
    /// A directory (libvirt server files, client pkipath, CA) or a single PEM file.
    #[arg(value_name = "DIR|FILE")]
    path: PathBuf,
    /// A name or address clients put in their URIs; the server certificate's SANs must cover
    /// it (repeatable).
    #[arg(long = "name", alias = "hostname", value_name = "NAME")]
    hostnames: Vec<String>,
    /// Print the findings as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(config: &Config, args: Args) -> Result<std::process::ExitCode> {
    let pki_dir = config.broker.data_dir.join(pki::DEV_PKI_DIR);
    let default_ca = pki_dir.join(pki::USERS_CA_DIR);
    let backend_ca = pki_dir.join(pki::BACKEND_CA_DIR);
    let hint = super::api_client::relative_hint(config);
    if matches!(
        &args.command,
        PkiCommand::Issue(IssueCommand::Server(ServerArgs {
            issue: IssueArgs { ca: None, .. },
            ..
        })) | PkiCommand::Issue(IssueCommand::Client(ClientArgs {
            issue: IssueArgs { ca: None, .. },
            ..
        }))
    ) && !default_ca.join(pki::CA_CERT).exists()
    {
        bail!(
            "no users' CA in {}{hint}; `virtgate up` creates it on its first start: where one runs, use --config FILE or --ca DIR to point at its CA; `virtgate pki init` creates a new CA, which the running gateway does not trust",
            shown(&default_ca)
        );
    }
    let done = match args.command {
        PkiCommand::Init(a) => init(a, &default_ca, &backend_ca),
        PkiCommand::Issue(IssueCommand::Server(a)) => issue_server(a, &default_ca),
        PkiCommand::Issue(IssueCommand::Client(a)) => issue_client(a, &default_ca),
        PkiCommand::Issue(IssueCommand::Backend(a)) => issue_backend(a, &backend_ca),
        PkiCommand::Check(a) => return check(a),
    };
    done.map(|()| std::process::ExitCode::SUCCESS)
}

/// Absolute, so the paths printed can be pasted into libvirtd.conf and URIs from anywhere.
fn shown(path: &Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

fn init(args: InitArgs, users_dir: &Path, backend_dir: &Path) -> Result<()> {
    let role: Option<pki::CaRole> = match (args.role, &args.dir) {
        (Some(role), _) => Some(role.into()),
        (None, None) => Some(pki::CaRole::Users),
        (None, Some(_)) => None,
    };
    let dir = match (&args.dir, role) {
        (Some(dir), _) => dir.clone(),
        (None, Some(pki::CaRole::Backend)) => backend_dir.to_path_buf(),
        (None, _) => users_dir.to_path_buf(),
    };
    let options = pki::CaOptions {
        common_name: args.cn,
        days: args.days,
        role,
        ..pki::CaOptions::default()
    };
    let ca = pki::Ca::init_with(&dir, &options)?;
    let files = ca.files();
    println!("created a CA: {}", ca.subject());
    println!(
        "  {}  CA certificate, valid until {}; copy it to every machine that must trust this CA",
        shown(&files.cert),
        pki::format_time(ca.not_after())
    );
    println!(
        "  {}  private key (mode 0600); keep it on this machine",
        shown(&files.key)
    );
    let default_dir = if role == Some(pki::CaRole::Backend) {
        backend_dir
    } else {
        users_dir
    };
    let ca_flag = if dir != default_dir {
        format!(" --ca {}", shown(&dir))
    } else {
        String::new()
    };
    println!("next:");
    match role {
        Some(pki::CaRole::Users) => {
            println!("  role: users' CA: it signs people's certificates and the gateway's server certificate; put it into proxy.client_ca_files, never into a libvirt host's ca_file");
            println!("  virtgate pki issue client{ca_flag} --dn 'O=ORG,CN=NAME' --out DIR");
            println!("  virtgate pki issue server{ca_flag} --name GATEWAY --dns SHORT --ip ADDR --out DIR");
        }
        Some(pki::CaRole::Backend) => {
            println!(
                "  role: backend CA: it signs only the gateway's backend identity; every libvirt host trusts it (ca_file) and sets tls_allowed_dn_list = [\"{}\"]",
                pki::BACKEND_DN
            );
            println!("  virtgate pki issue backend{ca_flag} --out DIR");
        }
        None => {
            println!(
                "  virtgate pki issue server{ca_flag} --name HOST --dns SHORT --ip ADDR --out DIR"
            );
            println!("  virtgate pki issue client{ca_flag} --dn 'O=ORG,CN=NAME' --out DIR");
        }
    }
    Ok(())
}

fn load_ca(dir: Option<&Path>, default_dir: &Path) -> Result<pki::Ca> {
    Ok(pki::Ca::load(dir.unwrap_or(default_dir))?)
}

fn output(args: &IssueArgs) -> Result<pki::Output> {
    Ok(pki::Output {
        dir: args.out.clone(),
        replace: args.force,
        also_trust_pem: pki::read_trust_files(&args.also_trust)?,
        reuse_key: args.reuse_key,
    })
}

fn issue_server(args: ServerArgs, default_ca: &Path) -> Result<()> {
    let ca = load_ca(args.issue.ca.as_deref(), default_ca)?;
    print_note(&ca, pki::Issuing::Server);
    let request = pki::ServerRequest {
        name: args.name,
        dns: args.dns,
        ips: args.ips,
        days: args.issue.days,
    };
    let bundle = pki::issue_server(&ca, &request, &output(&args.issue)?)
        .with_context(|| format!("cannot issue a server certificate for {}", request.name))?;
    let issued = &bundle.issued;
    let files = &bundle.files;
    let sans = issued
        .dns_names
        .iter()
        .map(|d| format!("DNS:{d}"))
        .chain(issued.ip_addresses.iter().map(|i| format!("IP:{i}")))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "issued a server certificate for {} from {}",
        issued.subject,
        ca.subject()
    );
    println!("  SANs         {sans}");
    println!("  valid until  {}", pki::format_time(issued.not_after));
    let pin = issued.pin()?;
    if args.issue.reuse_key {
        println!("  key          kept, pin sha256:{pin} unchanged: a gateway that pinned it goes on trusting it");
    } else {
        println!("  key          new, pin sha256:{pin} (what `virtgate hosts approve` shows for this host; --reuse-key keeps a key)");
    }
    println!("wrote libvirt's server files:");
    println!("  {}  certificate", shown(&files.cert));
    if args.issue.reuse_key {
        println!("  {}  private key (kept as it was)", shown(&files.key));
    } else {
        println!("  {}  private key (mode 0600)", shown(&files.key));
    }
    println!("  {}  CA certificate", shown(&files.ca_cert));
    println!("in libvirtd.conf:");
    println!("  cert_file = \"{}\"", shown(&files.cert));
    println!("  key_file = \"{}\"", shown(&files.key));
    println!("  ca_file = \"{}\"", shown(&files.ca_cert));
    println!("clients must use one of the SANs as the host in their URIs");
    Ok(())
}

/// A note [`pki::issuer_fits`] has about what `ca` is about to sign (a refusal is left to
/// the library, which refuses before writing anything).
fn print_note(ca: &pki::Ca, what: pki::Issuing<'_>) {
    if let Ok(Some(note)) = pki::issuer_fits(ca.role(), what) {
        println!("note: {note}");
    }
}

/// Issues and writes a client bundle for `dn` and says what was written.
fn write_client(ca: &pki::Ca, dn: String, args: &IssueArgs) -> Result<pki::ClientBundle> {
    let request = pki::ClientRequest {
        dn,
        days: args.days,
    };
    let bundle = pki::issue_client(ca, &request, &output(args)?)
        .with_context(|| format!("cannot issue a client certificate for {}", request.dn))?;
    let files = &bundle.files;
    println!(
        "issued a client certificate for {} from {}",
        bundle.issued.subject,
        ca.subject()
    );
    println!(
        "  valid until  {}",
        pki::format_time(bundle.issued.not_after)
    );
    println!("wrote a libvirt client bundle (pkipath layout):");
    println!("  {}  CA certificate", shown(&files.ca_cert));
    println!("  {}  certificate", shown(&files.cert));
    println!("  {}  private key (mode 0600)", shown(&files.key));
    Ok(bundle)
}

fn issue_client(args: ClientArgs, default_ca: &Path) -> Result<()> {
    let ca = load_ca(args.issue.ca.as_deref(), default_ca)?;
    if pki::is_backend_dn(&args.dn) && ca.role() != Some(pki::CaRole::Backend) {
        print_note(&ca, pki::Issuing::Client { dn: &args.dn });
    }
    let bundle = write_client(&ca, args.dn, &args.issue)?;
    let dir = shown(&bundle.files.dir);
    let subject = &bundle.issued.subject;
    match ca.role() {
        Some(pki::CaRole::Users) => {
            println!("connect through the gateway with:");
            println!("  virsh -c 'qemu+tls://GATEWAY/system?name=qemu://HOST/system&pkipath={dir}' list --all");
            println!(
                "the gateway needs {} in proxy.client_ca_files and a [[proxy.rules]] entry for identity \"{subject}\"; hosts never trust this CA",
                shown(&ca.files().cert)
            );
        }
        _ => {
            println!("connect with:");
            println!("  virsh -c 'qemu+tls://HOST/system?pkipath={dir}' list --all");
            println!(
                "libvirtd on HOST must trust {} (its ca_file) and, with tls_allowed_dn_list, allow \"{subject}\"",
                ca.subject()
            );
        }
    }
    Ok(())
}

fn issue_backend(args: BackendArgs, default_ca: &Path) -> Result<()> {
    if args.issue.ca.is_none() && !default_ca.join(pki::CA_CERT).exists() {
        bail!(
            "no backend CA in {} yet; create it with `virtgate pki init --role backend` (it signs \
             nothing but this identity, and is the one CA hosts trust), or point --ca at one",
            shown(default_ca)
        );
    }
    let ca = load_ca(args.issue.ca.as_deref(), default_ca)?;
    print_note(
        &ca,
        pki::Issuing::Client {
            dn: pki::BACKEND_DN,
        },
    );
    let bundle = write_client(&ca, pki::BACKEND_DN.to_string(), &args.issue)?;
    let files = &bundle.files;
    println!("on the gateway:");
    println!("  proxy.backend_cert_file = \"{}\"", shown(&files.cert));
    println!("  proxy.backend_key_file = \"{}\"", shown(&files.key));
    println!("on every libvirt host (docs/pki.md, Deploying):");
    println!(
        "  add {} to libvirtd's ca_file (and no CA that signs users' certificates)",
        shown(&ca.files().cert)
    );
    println!(
        "  tls_allowed_dn_list = [\"{}\"] in libvirtd.conf, then restart libvirtd",
        bundle.issued.subject
    );
    Ok(())
}

/// Prints the report; problems found are a result, not a failure of the check: exit 1.
fn check(args: CheckArgs) -> Result<std::process::ExitCode> {
    let options = pki::CheckOptions {
        hostnames: args.hostnames,
        ..pki::CheckOptions::default()
    };
    let report = pki::check(&args.path, &options)?;
    if args.json {
        let findings: Vec<serde_json::Value> = report
            .findings
            .iter()
            .map(|f| {
                let level = match f.level {
                    pki::Level::Ok => "ok",
                    pki::Level::Warning => "warning",
                    pki::Level::Problem => "problem",
                };
                serde_json::json!({"level": level, "about": f.about, "message": f.message})
            })
            .collect();
        let layouts: Vec<String> = report.layouts.iter().map(|l| l.to_string()).collect();
        let json = serde_json::json!({
            "target": report.target,
            "layouts": layouts,
            "problems": report.problems().count(),
            "warnings": report.warnings().count(),
            "findings": findings,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        println!("{report}");
    }
    let problems = report.problems().count();
    if problems > 0 {
        eprintln!(
            "virtgate: {problems} problem{} in {}; fix {} as described above and run the check again",
            if problems == 1 { "" } else { "s" },
            args.path.display(),
            if problems == 1 { "it" } else { "them" }
        );
        return Ok(std::process::ExitCode::from(1));
    }
    Ok(std::process::ExitCode::SUCCESS)
}
