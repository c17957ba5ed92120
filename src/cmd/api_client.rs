//! A small client for the broker's HTTP API, used by `virtgate hosts` and `virtgate certs`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value;

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

pub struct ApiClient {
    host_port: String,
    token_file: PathBuf,
}

impl ApiClient {
    pub fn new(config: &Config, args: &ClientArgs) -> anyhow::Result<Self> {
        let url = super::proxy::broker_url(config, args.broker.clone());
        let host_port = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        if host_port.starts_with("https://") {
            bail!("--broker: only http:// URLs are supported (put the broker behind a TLS terminator for remote use)");
        }
        let token_file = args.token_file.clone().unwrap_or_else(|| {
            config
                .broker
                .data_dir
                .join(virtgate_broker::ADMIN_TOKEN_FILE)
        });
        Ok(Self {
            host_port,
            token_file,
        })
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.request(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.request(Method::POST, path, Some(body)).await
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let stream = tokio::net::TcpStream::connect(&self.host_port).await.with_context(|| {
            format!("cannot reach the broker at http://{}; is `virtgate up` (or `virtgate broker`) running? (--broker URL)", self.host_port)
        })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(path)
            .header("host", &self.host_port);
        if method == Method::POST {
            let token = std::fs::read_to_string(&self.token_file).with_context(|| {
                format!("cannot read the admin token from {} (use --token-file, or run as the user that runs the broker)", self.token_file.display())
            })?;
            builder = builder.header("authorization", format!("Bearer {}", token.trim()));
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = builder
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let response = sender.send_request(req).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        let value: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        if !status.is_success() {
            let message = value
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| value.to_string());
            bail!("{message} (HTTP {status})");
        }
        Ok(value)
    }
}
