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

/// mimalloc rather than the system allocator: a request through the full stack makes and
/// frees many small, short-lived allocations (parsed values, transformed copies, the CRS
/// transaction's variables), where glibc's malloc spends a tenth of the server's time
/// (`BENCHMARKS.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    Serve(Box<Serve>),
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
    /// The plain-HTTP traffic listener.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Do not open the plain-HTTP listener (serve TLS only).
    #[arg(long, requires = "tls_listen")]
    no_plain_listener: bool,
    /// The TLS traffic listener: certificates from the Ingresses' spec.tls Secrets, by SNI;
    /// client certificates per the policies' ztls sections.
    #[arg(long)]
    tls_listen: Option<SocketAddr>,
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
    /// Seconds a client has to send a request head or finish a TLS handshake.
    #[arg(long, default_value_t = 10)]
    header_timeout: u64,
    /// Seconds a request may take until its response head (then 408).
    #[arg(long, default_value_t = 120)]
    request_timeout: u64,
    /// Seconds a connection may stay open with no bytes moving and no request waiting.
    #[arg(long, default_value_t = 300)]
    idle_timeout: u64,
    /// Worker threads (0: one per core the process may run on).
    #[arg(long, default_value_t = 0)]
    workers: usize,
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
            let requested_workers = serve.workers;
            let options = |source| Options {
                source,
                listen: (!serve.no_plain_listener).then_some(serve.listen),
                tls_listen: serve.tls_listen,
                admin: Some(serve.admin),
                upstream_timeout: Duration::from_secs(serve.upstream_timeout),
                header_timeout: Duration::from_secs(serve.header_timeout),
                request_timeout: Duration::from_secs(serve.request_timeout),
                idle_timeout: Duration::from_secs(serve.idle_timeout),
                drain: Duration::from_secs(serve.drain),
                poll: Duration::from_secs(1),
                trusted_proxies: TrustedProxies::new(serve.trusted_proxies),
                audit,
            };
            let workers = match requested_workers {
                0 => std::thread::available_parallelism().map_or(1, usize::from),
                n => n,
            };
            // One core: a single-threaded scheduler, without work-stealing's bookkeeping.
            let runtime = if workers == 1 {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
            } else {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(workers)
                    .enable_all()
                    .build()
            };
            let Ok(runtime) = runtime else {
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
                let mut on = Vec::new();
                if let Some(a) = running.addr {
                    on.push(format!("http://{a}"));
                }
                if let Some(a) = running.tls_addr {
                    on.push(format!("https://{a}"));
                }
                println!(
                    "portcullis serving on {} (admin http://{})",
                    on.join(" "),
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
