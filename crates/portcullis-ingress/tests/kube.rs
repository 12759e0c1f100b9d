//! The binary against a fake Kubernetes API server: it loads its client from `KUBECONFIG`,
//! lists and watches, becomes ready after the first full sync, follows changes, and lists
//! again after `410 Gone`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use portcullis_test_util::{FakeKube, FakeUpstream};
use serde_json::json;

mod common;

fn ingress(paths: &[&str]) -> serde_json::Value {
    let paths: Vec<serde_json::Value> = paths
        .iter()
        .map(|p| json!({"path": p, "pathType": "Prefix", "backend": {"service": {"name": "mock", "port": {"number": 80}}}}))
        .collect();
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "chat", "namespace": "ml"},
        "spec": {"ingressClassName": "portcullis", "rules": [{"host": "api.test", "http": {"paths": paths}}]}
    })
}

async fn status(client: &Client<HttpConnector, Full<Bytes>>, url: String) -> StatusCode {
    let req = Request::get(url)
        .header("host", "api.test")
        .body(Full::default())
        .unwrap();
    match client.request(req).await {
        Ok(r) => {
            let s = r.status();
            let _ = r.into_body().collect().await;
            s
        }
        Err(_) => StatusCode::BAD_GATEWAY,
    }
}

async fn eventually(client: &Client<HttpConnector, Full<Bytes>>, url: String, want: StatusCode) {
    for _ in 0..200 {
        if status(client, url.clone()).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} never answered {want}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_the_cluster() {
    let upstream = FakeUpstream::start().await.unwrap();
    let kube = FakeKube::start().await.unwrap();
    kube.apply(json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": "portcullis"}, "spec": {"controller": "portcullis.dev/ingress-controller"}}));
    kube.apply(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "mock", "namespace": "ml"},
        "spec": {"ports": [{"name": "http", "port": 80}]}}));
    kube.apply(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "mock-1", "namespace": "ml", "labels": {"kubernetes.io/service-name": "mock"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": upstream.addr().port()}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}]}));
    kube.apply(ingress(&["/v1"]));
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // If the binary never says where it listens, fail instead of waiting forever.
    let pid = child.id();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(120));
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    });
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let (addr, admin) = common::serving_addresses(&line);
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();

    eventually(&client, format!("http://{admin}/readyz"), StatusCode::OK).await;
    assert_eq!(
        status(&client, format!("http://{addr}/v1/models")).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&client, format!("http://{addr}/v2/models")).await,
        StatusCode::NOT_FOUND
    );
    // A change is followed.
    kube.apply(ingress(&["/v1", "/v2"]));
    eventually(&client, format!("http://{addr}/v2/models"), StatusCode::OK).await;
    // The history expires: the watchers get 410 Gone, list again, and keep following.
    let (lists_before, _) = kube.requests("/apis/networking.k8s.io/v1/ingresses");
    kube.expire();
    kube.apply(ingress(&["/v1"]));
    eventually(
        &client,
        format!("http://{addr}/v2/models"),
        StatusCode::NOT_FOUND,
    )
    .await;
    let (lists_after, watches) = kube.requests("/apis/networking.k8s.io/v1/ingresses");
    assert!(
        lists_after > lists_before,
        "no relist: {lists_before} -> {lists_after}"
    );
    assert!(watches >= 2);
    // An invalid policy is reported on the object as a Warning Event, once; the route keeps
    // serving with what it had.
    kube.apply(
        json!({"apiVersion": "portcullis.dev/v1alpha1", "kind": "PortcullisPolicy",
        "metadata": {"name": "broken", "namespace": "ml"},
        "spec": {"targetRefs": [{"name": "chat"}], "waf": {"packs": ["no-such-pack"]}}}),
    );
    let mut events = Vec::new();
    for _ in 0..200 {
        events = kube.events();
        if !events.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let event = events
        .iter()
        .find(|e| e["regarding"]["name"] == "broken")
        .unwrap_or_else(|| panic!("no event: {events:?}"));
    assert_eq!(event["regarding"]["kind"], "PortcullisPolicy");
    assert_eq!(event["type"], "Warning");
    assert!(event["note"].as_str().unwrap().contains("waf"), "{event}");
    assert_eq!(
        status(&client, format!("http://{addr}/v1/models")).await,
        StatusCode::OK
    );
    kube.delete(
        "portcullis.dev/v1alpha1",
        "PortcullisPolicy",
        Some("ml"),
        "broken",
    );
    // A TLS Secret that does not exist is reported on the Ingress (Secrets are watched).
    let mut with_tls = ingress(&["/v1"]);
    with_tls["spec"]["tls"] = json!([{"hosts": ["api.test"], "secretName": "missing"}]);
    kube.apply(with_tls);
    let mut found = None;
    for _ in 0..200 {
        found = kube
            .events()
            .into_iter()
            .find(|e| e["regarding"]["kind"] == "Ingress");
        if found.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let event = found.expect("no event on the Ingress");
    assert!(
        event["note"]
            .as_str()
            .unwrap()
            .contains("ml/missing does not exist"),
        "{event}"
    );
    // A deleted Ingress takes its routes with it.
    kube.delete("networking.k8s.io/v1", "Ingress", Some("ml"), "chat");
    eventually(
        &client,
        format!("http://{addr}/v1/models"),
        StatusCode::NOT_FOUND,
    )
    .await;

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
}
