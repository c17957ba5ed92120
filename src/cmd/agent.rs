//! `virtgate agent`: the host side. With `--enroll TOKEN --gateway-pin PIN…` it waits for the
//! broker to enroll it, then exits; without, it serves the gateways it was enrolled with.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use virtgate_agent::Options;
use virtgate_discovery::InterfaceSelector;
use virtgate_pake::Token;
use virtgate_pki::Pin;

use crate::config::{Config, Override};

const HOST_SETUP: &str = "\
Host setup (docs/agent.md):
  1. libvirtd (or virtqemud) runs as usual on its UNIX socket; it needs no TLS, no CA, no
     certificates. The agent is its only door from the network.
  2. On the broker's side, `virtgate enroll HOST` prints a one-time command.
  3. Run it here, as root: `virtgate agent --enroll ID.SECRET --gateway-pin sha256:…`. The agent
     makes its key in /var/lib/virtgate-agent (0700), announces itself over mDNS, waits for the
     broker, refuses any gateway key not pinned, and exits once enrolled.
  4. Start it for good: `systemctl enable --now virtgate-agent` (the unit is in the repository,
     packaging/virtgate-agent.service), or run `virtgate agent`.
  Each gateway connection then passes TLS 1.3 with the gateway's pinned key and a PAKE on the
  per-host secret bound to that TLS session before a byte reaches libvirt. Rotate the secret with
  `virtgate enroll --rotate HOST` on the broker's side. /metrics: http://127.0.0.1:16515/metrics.";

#[derive(clap::Args)]
#[command(after_long_help = HOST_SETUP)]
pub struct Args {
    /// Enroll with this one-time token (`virtgate enroll HOST` prints the whole command), then exit.
    #[arg(long, value_name = "ID.SECRET")]
    enroll: Option<Token>,
    /// A gateway key to accept during enrollment, sha256:HEX (repeatable; printed with the token).
    #[arg(long = "gateway-pin", value_name = "PIN", requires = "enroll")]
    gateway_pins: Vec<Pin>,
    /// State directory: key, certificate, enrollment (agent.state_dir).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// libvirt's read-write UNIX socket (agent.libvirt_socket).
    #[arg(long, value_name = "PATH")]
    libvirt_socket: Option<PathBuf>,
    /// Listen on this address (repeatable; replaces agent.listen).
    #[arg(long = "listen", value_name = "ADDR:PORT")]
    listen: Vec<SocketAddr>,
    /// Host name to announce (agent.hostname; default: the short host name).
    #[arg(long)]
    hostname: Option<String>,
    /// Do not announce over mDNS (agent.announce = false): the broker then needs `--address`.
    #[arg(long)]
    no_announce: bool,
    /// Loopback address of /metrics (agent.metrics_listen).
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_listen: Option<SocketAddr>,
}

impl Args {
    pub fn overrides(&self) -> Vec<Override> {
        let mut o = Vec::new();
        let path = |p: &PathBuf| p.display().to_string();
        if let Some(d) = &self.state_dir {
            o.push(Override::new("agent.state_dir", path(d)));
        }
        if let Some(s) = &self.libvirt_socket {
            o.push(Override::new("agent.libvirt_socket", path(s)));
        }
        if !self.listen.is_empty() {
            let listen: Vec<String> = self.listen.iter().map(ToString::to_string).collect();
            o.push(Override::new("agent.listen", listen));
        }
        if let Some(h) = &self.hostname {
            o.push(Override::new("agent.hostname", h.as_str()));
        }
        if self.no_announce {
            o.push(Override::new("agent.announce", false));
        }
        if let Some(m) = self.metrics_listen {
            o.push(Override::new("agent.metrics_listen", m.to_string()));
        }
        o
    }
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<()> {
    let agent = &config.agent;
    let interfaces = if agent.announce {
        Some(InterfaceSelector::new(&config.discovery.interfaces)?)
    } else {
        None
    };
    let options = Options {
        default_hostname: super::system_hostname(),
        interfaces,
    };
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = super::shutdown_signal().await;
        stop.cancel();
    });
    match args.enroll {
        Some(token) => {
            let enrolled =
                virtgate_agent::enroll(agent, options, token, args.gateway_pins, shutdown)
                    .await
                    .context("not enrolled")?;
            println!(
                "enrolled as {} (this host's key sha256:{}; {} gateway key(s) accepted).\n\
                 Start the agent: `systemctl enable --now virtgate-agent`, or `virtgate agent`.",
                enrolled.host,
                enrolled.pin,
                enrolled.gateway_pins.len()
            );
            Ok(())
        }
        None => Ok(virtgate_agent::serve(agent, options, shutdown).await?),
    }
}
