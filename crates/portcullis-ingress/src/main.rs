//! `portcullis`: the reference ingress.
//!
//! ```text
//! portcullis serve [--manifests DIR] [--listen ADDR] [--admin ADDR] [--trusted-proxy CIDR]...
//!                  [--audit-dir DIR --audit-key FILE] [--upstream-timeout SECS]
//! (without --manifests: the cluster, through KUBECONFIG or the in-cluster service account)
//! portcullis crd            # the PortcullisPolicy CustomResourceDefinition, as YAML
//! portcullis waf eval|crs-test ...     # the WAF's tools
//! portcullis audit verify|keygen ...   # the audit log's tools
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use portcullis_audit::{AuditConfig, FileSinkConfig, SinkConfig};
use portcullis_core::{IpCidr, TrustedProxies};
use portcullis_ingress::server::{Options, Source, start};

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "The Portcullis ingress for AI/ML APIs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the routes of the Ingresses and PortcullisPolicies in a manifests directory.
    Serve(Serve),
    /// Print the PortcullisPolicy CustomResourceDefinition.
    Crd,
    /// The WAF's tools: `eval` (rules against labelled corpora), `crs-test` (CRS's
    /// regression suite).
    #[command(disable_help_flag = true)]
    Waf {
        /// Passed to the tool.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The audit log's tools: `verify`, `keygen`.
    #[command(disable_help_flag = true)]
    Audit {
        /// Passed to the tool.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Parser)]
struct Serve {
    /// Serve a manifests directory (multi-document YAML: IngressClass, Ingress,
    /// PortcullisPolicy, Service, EndpointSlice, Secret), watched for changes, instead of the
    /// cluster.
    #[arg(long)]
    manifests: Option<PathBuf>,
    /// The traffic listener.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// The admin listener: /healthz, /readyz, /metrics.
    #[arg(long, default_value = "127.0.0.1:9090")]
    admin: SocketAddr,
    /// A proxy in front whose X-Forwarded-For entries are believed (repeatable).
    #[arg(long = "trusted-proxy")]
    trusted_proxies: Vec<IpCidr>,
    /// Write the audit log to this directory.
    #[arg(long)]
    audit_dir: Option<PathBuf>,
    /// The Ed25519 key (PKCS#8 PEM) that signs the audit log's checkpoints.
    #[arg(long, requires = "audit_dir")]
    audit_key: Option<PathBuf>,
    /// Seconds an upstream has to send its response head.
    #[arg(long, default_value_t = 60)]
    upstream_timeout: u64,
    /// Seconds in-flight requests may take to finish at shutdown.
    #[arg(long, default_value_t = 30)]
    drain: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Waf { args } => portcullis_waf::cli::main(args),
        Command::Audit { args } => portcullis_audit::cli::main(args),
        Command::Crd => match portcullis_ingress::policy::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("portcullis: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve(serve) => {
            let audit = serve.audit_dir.clone().map(|dir| {
                let mut config = AuditConfig {
                    sink: SinkConfig::File(FileSinkConfig::new(dir)),
                    ..AuditConfig::default()
                };
                config.checkpoint.signing_key = serve.audit_key.clone();
                config
            });
            let manifests = serve.manifests.clone();
            let options = |source| Options {
                source,
                listen: serve.listen,
                admin: Some(serve.admin),
                upstream_timeout: Duration::from_secs(serve.upstream_timeout),
                header_timeout: Duration::from_secs(10),
                drain: Duration::from_secs(serve.drain),
                poll: Duration::from_secs(1),
                trusted_proxies: TrustedProxies::new(serve.trusted_proxies),
                audit,
            };
            let Ok(runtime) = tokio::runtime::Runtime::new() else {
                eprintln!("portcullis: cannot start the runtime");
                return ExitCode::FAILURE;
            };
            runtime.block_on(async move {
                let source = match manifests {
                    Some(dir) => Source::Manifests(dir),
                    // The ordinary client loading: KUBECONFIG or ~/.kube/config, or the
                    // in-cluster service account.
                    None => match kube::Client::try_default().await {
                        Ok(client) => Source::Kubernetes(client),
                        Err(e) => {
                            eprintln!(
                                "portcullis: no Kubernetes client ({e}); run in a cluster, set KUBECONFIG, or pass --manifests DIR"
                            );
                            return ExitCode::from(2);
                        }
                    },
                };
                let running = match start(options(source)).await {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("portcullis: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                println!(
                    "portcullis serving on http://{} (admin http://{})",
                    running.addr,
                    running.admin.map(|a| a.to_string()).unwrap_or_default()
                );
                shutdown_signal().await;
                running.shutdown().await;
                ExitCode::SUCCESS
            })
        }
    }
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
