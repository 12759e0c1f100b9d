//! What the load benchmark (`benches/load/run.sh`) needs besides the ingress:
//!
//! ```sh
//! load_kit upstream 127.0.0.1:9100          # a fast upstream: a fixed 1 KiB JSON body
//! load_kit fixtures DIR UPSTREAM_PORT CRS   # manifests of every configuration, a JWT, bodies
//! load_kit report OUT CONFIG...             # the table: medians over the rounds, and ratios
//! ```
//!
//! `fixtures` writes into DIR:
//! - `plain/`: the Ingress to the upstream, no policy;
//! - `full/`: the same with a policy: JWT (ES256, verified-token cache on), a client rate limit
//!   that never rejects, the WAF with ai-guard and CRS at paranoia level 1 (blocking), the leak
//!   guard;
//! - `nocache/`: as `full/` with the verified-token cache off;
//! - `token` (a JWT valid for a day), `chat.json` (a 1 KiB chat-completion request),
//!   `response.json` (what the upstream answers, to check every configuration against).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use portcullis_test_util::jwt::JwtKeys;

type Error = Box<dyn std::error::Error + Send + Sync>;

const ISSUER: &str = "https://issuer.load.test";
const AUDIENCE: &str = "models";

/// The upstream's answer: an OpenAI-style completion of exactly 1024 bytes.
fn response_body() -> Bytes {
    let head = r#"{"id":"chatcmpl-load","object":"chat.completion","created":1700000000,"model":"load-model","choices":[{"index":0,"message":{"role":"assistant","content":""#;
    let tail = r#""},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":200,"total_tokens":212}}"#;
    let filler = "The quick brown fox jumps over the lazy dog. ";
    let mut content = String::new();
    while head.len() + content.len() + tail.len() < 1024 {
        content.push_str(filler);
    }
    content.truncate(1024 - head.len() - tail.len());
    Bytes::from(format!("{head}{content}{tail}"))
}

/// A chat-completion request of about 1 KiB of ordinary prose.
fn chat_body() -> String {
    let prose = "Could you summarise the main differences between renewable and fossil energy \
                 sources for a school project, with a few examples of each and the reasons \
                 people give for and against them? Please keep it short and friendly. ";
    let mut content = String::new();
    while content.len() + prose.len() < 900 {
        content.push_str(prose);
    }
    serde_json::json!({
        "model": "load-model",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": content.trim_end()}
        ],
        "max_tokens": 200
    })
    .to_string()
}

async fn upstream(addr: SocketAddr) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let body = response_body();
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let body = body.clone();
                async move {
                    // Read the request body whole, as a model server does.
                    let _ = req.into_body().collect().await;
                    let mut r = Response::new(Full::new(body));
                    r.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(r)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn routes(upstream_port: u16) -> String {
    let backend = portcullis_test_util::loopback_backend_yaml("load", "model", upstream_port);
    format!(
        r#"{backend}apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: model, namespace: load}}
spec:
  ingressClassName: portcullis
  defaultBackend: {{service: {{name: model, port: {{number: 80}}}}}}
"#
    )
}

fn policy(jwks: &str, crs: &Path, token_cache: usize) -> String {
    let policy = serde_json::json!({
        "apiVersion": "portcullis.dev/v1alpha1",
        "kind": "PortcullisPolicy",
        "metadata": {"name": "model", "namespace": "load"},
        "spec": {
            "targetRefs": [{"name": "model"}],
            "rateLimit": {"policies": [
                {"name": "per-client", "key": "clientIp", "requests": 1_000_000u64, "per": "1s", "burst": 1_000_000u64}
            ]},
            "authn": {"jwt": {
                "issuers": [{
                    "issuer": ISSUER,
                    "audiences": [AUDIENCE],
                    "algorithms": ["ES256"],
                    "jwks": {"inline": serde_json::from_str::<serde_json::Value>(jwks).unwrap_or_default()}
                }],
                "cache": {"capacity": token_cache, "maxTtl": "5m"}
            }},
            "waf": {
                "packs": ["ai-guard"],
                "paranoiaLevel": 1,
                "crs": {"dir": crs},
                "leakGuard": {}
            }
        }
    });
    policy.to_string()
}

fn fixtures(dir: &Path, upstream_port: u16, crs: &Path) -> Result<(), Error> {
    let keys = JwtKeys::generate()?;
    let jwks = keys.jwks_json()?;
    let token = keys
        .es256()
        .token()
        .issuer(ISSUER)
        .audience(AUDIENCE)
        .subject("load-client")
        .expires_in(86_400)
        .sign()?;
    for (name, cache) in [
        ("plain", None),
        ("full", Some(10_000)),
        ("nocache", Some(0)),
    ] {
        let sub = dir.join(name);
        std::fs::create_dir_all(&sub)?;
        std::fs::write(sub.join("routes.yaml"), routes(upstream_port))?;
        if let Some(capacity) = cache {
            std::fs::write(sub.join("policy.yaml"), policy(&jwks, crs, capacity))?;
        }
    }
    std::fs::write(dir.join("token"), token)?;
    std::fs::write(dir.join("chat.json"), chat_body())?;
    std::fs::write(dir.join("response.json"), response_body())?;
    Ok(())
}

/// One wrk run: requests per second, p50 and p99 latency (µs).
#[derive(Debug, Clone, Copy)]
struct Run {
    rps: f64,
    p50: f64,
    p99: f64,
}

/// A wrk latency like `1.23ms`, in microseconds.
fn micros(text: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e6)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|v| v * scale)
}

fn parse_wrk(text: &str) -> Option<Run> {
    let mut run = Run {
        rps: f64::NAN,
        p50: f64::NAN,
        p99: f64::NAN,
    };
    let mut errors = 0u64;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => run.rps = v.parse().ok()?,
            ["50%", v] => run.p50 = micros(v)?,
            ["99%", v] => run.p99 = micros(v)?,
            ["Non-2xx", "or", "3xx", "responses:", n] => errors += n.parse::<u64>().ok()?,
            ["Socket", "errors:", ..] => errors += 1,
            _ => {}
        }
    }
    // A run with failed requests is not a result.
    (errors == 0 && run.rps.is_finite()).then_some(run)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values.get(n / 2).copied().unwrap_or(f64::NAN),
        n => {
            (values.get(n / 2 - 1).copied().unwrap_or(f64::NAN)
                + values.get(n / 2).copied().unwrap_or(f64::NAN))
                / 2.0
        }
    }
}

/// A configuration's runs of one request, with their rounds, and its RSS samples (KiB).
type Runs = (Vec<(u32, Run)>, Vec<f64>);

fn report(out: &Path, configs: &[&str]) -> Result<(), Error> {
    // (config, kind) -> (runs by round, rss KiB)
    let mut table: std::collections::BTreeMap<(String, String), Runs> = Default::default();
    let mut failed = Vec::new();
    for entry in std::fs::read_dir(out)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let Some(stem) = name.strip_suffix(".wrk") else {
            continue;
        };
        let parts: Vec<&str> = stem.rsplitn(3, '.').collect();
        let [round, kind, config] = parts.as_slice() else {
            continue;
        };
        let Ok(round) = round.parse::<u32>() else {
            continue;
        };
        let slot = table
            .entry(((*config).to_owned(), (*kind).to_owned()))
            .or_default();
        match parse_wrk(&std::fs::read_to_string(&path)?) {
            Some(run) => slot.0.push((round, run)),
            None => failed.push(name.to_owned()),
        }
        if let Ok(rss) = std::fs::read_to_string(path.with_extension("rss")) {
            slot.1.extend(rss.trim().parse::<f64>().ok());
        }
    }
    let summary = |config: &str, kind: &str| -> Option<(f64, f64, f64, f64)> {
        let (runs, rss) = table.get(&(config.to_owned(), kind.to_owned()))?;
        if runs.is_empty() {
            return None;
        }
        Some((
            median(runs.iter().map(|(_, r)| r.rps).collect()),
            median(runs.iter().map(|(_, r)| r.p50).collect()),
            median(runs.iter().map(|(_, r)| r.p99).collect()),
            median(rss.clone()) / 1024.0,
        ))
    };
    println!("| configuration | request | req/s | p50 | p99 | RSS |");
    println!("|---|---|---:|---:|---:|---:|");
    for config in configs {
        for kind in ["get", "post"] {
            if let Some((rps, p50, p99, rss)) = summary(config, kind) {
                println!(
                    "| {config} | {} | {rps:.0} | {:.2} ms | {:.2} ms | {rss:.0} MiB |",
                    kind.to_uppercase(),
                    p50 / 1e3,
                    p99 / 1e3
                );
            }
        }
    }
    // The ratio of two configurations within each round: they ran minutes apart, so a
    // change in the machine's speed between rounds does not move it.
    let per_round = |a: &str, b: &str, kind: &str| -> Vec<f64> {
        let runs = |config: &str| table.get(&(config.to_owned(), kind.to_owned()));
        let (Some((x, _)), Some((y, _))) = (runs(a), runs(b)) else {
            return Vec::new();
        };
        x.iter()
            .filter_map(|(round, rx)| {
                let (_, ry) = y.iter().find(|(r, _)| r == round)?;
                Some(rx.rps / ry.rps)
            })
            .collect()
    };
    println!();
    println!(
        "| ratio (req/s) | GET | POST | target | GET per round: median (range) | POST per round |"
    );
    println!("|---|---:|---:|---|---|---|");
    for (label, a, b, target) in [
        (
            "3 / 1: Portcullis plain / NGINX",
            "portcullis-plain",
            "nginx",
            "≥ 1.0, lower p99",
        ),
        (
            "4 / 3: full stack / Portcullis plain",
            "portcullis-full",
            "portcullis-plain",
            "≥ 0.80",
        ),
        (
            "4 / 2: full stack / NGINX + ModSecurity + CRS",
            "portcullis-full",
            "nginx-modsec-crs",
            "≥ 25",
        ),
        (
            "5 / 3: full stack, no token cache / Portcullis plain",
            "portcullis-full-nocache",
            "portcullis-plain",
            "",
        ),
    ] {
        let ratio = |kind| match (summary(a, kind), summary(b, kind)) {
            (Some(x), Some(y)) => format!("{:.2}", x.0 / y.0),
            _ => "–".into(),
        };
        let rounds = |kind| {
            let ratios = per_round(a, b, kind);
            let (Some(low), Some(high)) = (
                ratios.iter().copied().reduce(f64::min),
                ratios.iter().copied().reduce(f64::max),
            ) else {
                return "–".to_owned();
            };
            format!("{:.2} ({low:.2}–{high:.2})", median(ratios))
        };
        println!(
            "| {label} | {} | {} | {target} | {} | {} |",
            ratio("get"),
            ratio("post"),
            rounds("get"),
            rounds("post")
        );
    }
    for kind in ["get", "post"] {
        if let (Some(p), Some(n)) = (summary("portcullis-plain", kind), summary("nginx", kind)) {
            println!(
                "\np99 {}: Portcullis plain {:.2} ms, NGINX {:.2} ms",
                kind.to_uppercase(),
                p.2 / 1e3,
                n.2 / 1e3
            );
        }
    }
    if !failed.is_empty() {
        println!(
            "\nruns with failed requests (left out): {}",
            failed.join(", ")
        );
    }
    Ok(())
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["upstream", addr] => {
            let addr: SocketAddr = addr.parse()?;
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(upstream(addr))
        }
        ["fixtures", dir, port, crs] => fixtures(
            Path::new(dir),
            port.parse()?,
            &std::fs::canonicalize(PathBuf::from(crs))?,
        ),
        ["report", out, configs @ ..] => report(Path::new(out), configs),
        _ => Err(
            "usage: load_kit upstream ADDR | fixtures DIR UPSTREAM_PORT CRS_DIR | report OUT CONFIG..."
                .into(),
        ),
    }
}
