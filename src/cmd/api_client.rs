//! Reaching the broker's API from the CLI: which broker, and which admin token.

use std::path::PathBuf;

use anyhow::Context;
use virtgate_api::{BrokerUrl, Client};

use crate::config::Config;

#[derive(clap::Args, Clone)]
pub struct ClientArgs {
    /// Broker API base URL (default: http://<broker.listen>).
    #[arg(long, value_name = "URL", global = true)]
    pub broker: Option<String>,
    /// File holding the admin token (default: <broker.data_dir>/admin.token).
    #[arg(long, value_name = "FILE", global = true)]
    pub token_file: Option<PathBuf>,
}

/// A client for reading the inventory (no token needed).
pub fn reader(config: &Config, args: &ClientArgs) -> anyhow::Result<Client> {
    let url = super::proxy::broker_url(config, args.broker.clone());
    Ok(Client::new(BrokerUrl::parse(&url)?))
}

/// A client for changing the inventory: it carries the admin token.
pub fn admin(config: &Config, args: &ClientArgs) -> anyhow::Result<Client> {
    let token_file = args.token_file.clone().unwrap_or_else(|| {
        config
            .broker
            .data_dir
            .join(virtgate_broker::ADMIN_TOKEN_FILE)
    });
    let token = std::fs::read_to_string(&token_file).with_context(|| {
        format!("cannot read the admin token from {} (use --token-file, or run as the user that runs the broker)", token_file.display())
    })?;
    Ok(reader(config, args)?.with_token(token.trim()))
}
