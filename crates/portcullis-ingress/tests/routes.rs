//! The route table, case by case against the Ingress specification.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;

use portcullis_ingress::manifests::Snapshot;
use portcullis_ingress::routes::RouteTable;

const BASE: &str = r#"
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: portcullis}
spec: {controller: portcullis.dev/ingress-controller}
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: other}
spec: {controller: example.com/other}
---
apiVersion: v1
kind: Service
metadata: {name: models, namespace: ml}
spec:
  ports: [{name: http, port: 80, targetPort: 8000}, {name: metrics, port: 9090}]
"#;

/// An EndpointSlice for service `svc` in `ml`, port name `http` at `port`, one endpoint per
/// address (those starting with `!` not ready).
fn slice(svc: &str, port: u16, addrs: &[&str]) -> String {
    let endpoints: Vec<String> = addrs
        .iter()
        .map(|a| match a.strip_prefix('!') {
            Some(a) => format!("{{addresses: [\"{a}\"], conditions: {{ready: false}}}}"),
            None => format!("{{addresses: [\"{a}\"], conditions: {{ready: true}}}}"),
        })
        .collect();
    format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {svc}-1, namespace: ml, labels: {{kubernetes.io/service-name: {svc}}}}}\naddressType: IPv4\nports: [{{name: http, port: {port}}}]\nendpoints: [{}]\n",
        endpoints.join(", ")
    )
}

/// An Ingress named `name` in `ml` with class `class` and `rules` (YAML list text).
fn ingress(name: &str, class: Option<&str>, rules: &str, extra: &str) -> String {
    let class = class.map_or(String::new(), |c| format!("  ingressClassName: {c}\n"));
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}, namespace: ml}}\nspec:\n{class}{extra}  rules:\n{rules}\n"
    )
}

fn backend(svc: &str) -> String {
    format!("{{service: {{name: {svc}, port: {{number: 80}}}}}}")
}

fn rule(host: Option<&str>, paths: &[(&str, &str, &str)]) -> String {
    let host = host.map_or(String::new(), |h| format!("host: \"{h}\", "));
    let paths: Vec<String> = paths
        .iter()
        .map(|(path, ty, svc)| {
            format!(
                "{{path: \"{path}\", pathType: {ty}, backend: {}}}",
                backend(svc)
            )
        })
        .collect();
    format!("  - {{{host}http: {{paths: [{}]}}}}", paths.join(", "))
}

fn table(yaml: &str) -> RouteTable {
    let mut snapshot = Snapshot::default();
    let mut errors = Vec::new();
    snapshot.add_yaml(yaml, Path::new("test.yaml"), &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    RouteTable::compile(&snapshot)
}

/// Where `host` + `path` goes: the backend's service, or "404".
fn route(t: &RouteTable, host: &str, path: &str) -> String {
    t.find(host, path).map_or("404".into(), |m| {
        let name = &m.route.backend.name;
        name.split('/')
            .nth(1)
            .unwrap()
            .split(':')
            .next()
            .unwrap()
            .to_owned()
    })
}

#[test]
fn ingress_spec_cases() {
    let mut yaml = BASE.to_owned();
    for svc in [
        "models", "chat", "exact", "wild", "any", "deep", "other", "fallback", "nohost",
    ] {
        yaml.push_str(&slice(svc, 8000, &["10.0.0.1"]));
    }
    yaml.push_str(&ingress(
        "main",
        Some("portcullis"),
        &[
            rule(
                Some("api.example.com"),
                &[
                    ("/v1", "Prefix", "models"),
                    ("/v1/chat/completions", "Exact", "exact"),
                    ("/v1/chat", "Prefix", "chat"),
                    ("/v1/models/deep/", "Prefix", "deep"),
                ],
            ),
            rule(Some("*.example.com"), &[("/", "Prefix", "wild")]),
            rule(None, &[("/public", "ImplementationSpecific", "any")]),
        ]
        .join("\n"),
        &format!("  defaultBackend: {}\n", backend("fallback")),
    ));
    // Another controller's Ingress is not ours, whatever it routes.
    yaml.push_str(&ingress(
        "theirs",
        Some("other"),
        &rule(Some("api.example.com"), &[("/", "Prefix", "other")]),
        "",
    ));
    // No class and no default class: not ours either.
    yaml.push_str(&ingress(
        "classless",
        None,
        &rule(Some("x.test"), &[("/", "Prefix", "nohost")]),
        "",
    ));
    let t = table(&yaml);
    assert!(t.errors.is_empty(), "{:?}", t.errors);
    let cases = [
        // (host, path, backend)
        ("api.example.com", "/v1", "models"),
        ("api.example.com", "/v1/", "models"),
        ("api.example.com", "/v1/embeddings", "models"),
        // Element-wise: /v1 does not match /v1x; the request falls through to the next most
        // specific host that has a matching path (here the wildcard's /).
        ("api.example.com", "/v1x", "wild"),
        ("api.example.com", "/v1/chat/completions", "exact"), // exact beats the prefix
        ("api.example.com", "/v1/chat/completions/", "chat"), // exact is exact
        ("api.example.com", "/v1/chat/completions/x", "chat"),
        ("api.example.com", "/v1/chat", "chat"),
        ("api.example.com", "/v1/chatter", "models"),
        ("api.example.com", "/v1/models/deep", "deep"), // a trailing slash in the prefix is ignored
        ("api.example.com", "/v1/models/deep/er", "deep"),
        ("API.Example.COM:8443", "/v1", "models"), // case and port do not matter
        ("api.example.com.", "/v1", "models"),
        ("foo.example.com", "/anything", "wild"), // one label
        ("a.b.example.com", "/anything", "fallback"), // not two
        ("example.com", "/anything", "fallback"), // not zero
        ("api.example.com", "/public/docs", "wild"),
        ("example.com", "/public/docs", "any"), // rules without a host, for any host
        ("unknown.test", "/public", "any"),
        ("unknown.test", "/private", "fallback"),
        ("x.test", "/", "fallback"),
    ];
    for (host, path, want) in cases {
        assert_eq!(route(&t, host, path), want, "{host}{path}");
    }
}

#[test]
fn no_default_backend_means_404_and_the_default_class_takes_classless_ingresses() {
    let mut yaml = BASE.replace(
        "metadata: {name: portcullis}",
        "metadata: {name: portcullis, annotations: {ingressclass.kubernetes.io/is-default-class: \"true\"}}",
    );
    yaml.push_str(&slice("models", 8000, &["10.0.0.1"]));
    yaml.push_str(&ingress(
        "classless",
        None,
        &rule(Some("api.example.com"), &[("/v1", "Prefix", "models")]),
        "",
    ));
    let t = table(&yaml);
    assert_eq!(route(&t, "api.example.com", "/v1/x"), "models");
    assert_eq!(route(&t, "api.example.com", "/v2"), "404");
    assert_eq!(route(&t, "other.test", "/v1"), "404");
}

#[test]
fn endpoints_are_the_ready_addresses_of_the_mapped_port() {
    let mut yaml = BASE.to_owned();
    yaml.push_str(&slice(
        "models",
        8000,
        &["10.0.0.2", "!10.0.0.3", "10.0.0.1"],
    ));
    yaml.push_str(&ingress(
        "main",
        Some("portcullis"),
        &rule(None, &[("/", "Prefix", "models")]),
        "",
    ));
    let t = table(&yaml);
    let m = t.find("any", "/").unwrap();
    let eps: Vec<String> = m
        .route
        .backend
        .endpoints
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(eps, ["10.0.0.1:8000", "10.0.0.2:8000"]);
    assert_eq!(m.route.backend.name, "ml/models:80");
}

#[test]
fn bad_objects_are_reported_and_the_rest_still_routes() {
    let mut yaml = BASE.to_owned();
    yaml.push_str(&slice("models", 8000, &["10.0.0.1"]));
    yaml.push_str(&ingress(
        "good",
        Some("portcullis"),
        &rule(Some("good.test"), &[("/", "Prefix", "models")]),
        "",
    ));
    yaml.push_str(&ingress(
        "bad",
        Some("portcullis"),
        &[
            rule(Some("bad_host!.test"), &[("/", "Prefix", "models")]),
            rule(
                Some("ok.test"),
                &[("/", "Regex", "models"), ("/x", "Prefix", "missing")],
            ),
        ]
        .join("\n"),
        "",
    ));
    yaml.push_str(
        r#"---
apiVersion: portcullis.dev/v1alpha1
kind: PortcullisPolicy
metadata: {name: p1, namespace: ml, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  targetRefs: [{name: good}]
  waf: {packs: [ai-guard]}
---
apiVersion: portcullis.dev/v1alpha1
kind: PortcullisPolicy
metadata: {name: p2, namespace: ml, creationTimestamp: "2026-02-01T00:00:00Z"}
spec:
  targetRefs: [{name: good}, {kind: Service, group: "", name: models}]
"#,
    );
    let t = table(&yaml);
    assert_eq!(route(&t, "good.test", "/"), "models");
    let policy = &t.find("good.test", "/").unwrap().route.policy;
    assert_eq!(policy.as_ref().unwrap().0, "ml/p1");
    let errors: Vec<String> = t.errors.iter().map(ToString::to_string).collect();
    let has = |needle: &str| errors.iter().any(|e| e.contains(needle));
    assert!(has("bad_host!.test"), "{errors:?}");
    assert!(has("pathType `Regex`"), "{errors:?}");
    assert!(has("service-name=missing"), "{errors:?}");
    assert!(has("already has the older policy ml/p1"), "{errors:?}");
    assert!(has("is not an Ingress"), "{errors:?}");
    // A document of the wrong kind or shape is reported; the others are kept.
    let mut snapshot = Snapshot::default();
    let mut errs = Vec::new();
    snapshot.add_yaml(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: y}\nspec: {rules: 7}\n---\napiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: z}\n",
        Path::new("m.yaml"),
        &mut errs,
    );
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert_eq!(errs[0].document, 1);
    assert_eq!(errs[1].document, 2);
    assert_eq!(snapshot.classes.len(), 1);
}

#[test]
fn the_crd_prints() {
    let yaml = portcullis_ingress::policy::crd_yaml().unwrap();
    assert!(yaml.contains("portcullispolicies.portcullis.dev"), "{yaml}");
    assert!(
        yaml.contains("x-kubernetes-preserve-unknown-fields"),
        "{yaml}"
    );
}

#[test]
fn the_deployed_crd_is_the_generated_one() {
    let deployed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/crd.yaml"
    ))
    .unwrap();
    assert_eq!(
        deployed,
        portcullis_ingress::policy::crd_yaml().unwrap(),
        "regenerate deploy/crd.yaml with `portcullis crd`"
    );
}

#[test]
fn the_example_manifests_parse() {
    for file in ["example.yaml", "ingress-class.yaml"] {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy")
            .join(file);
        let mut snapshot = Snapshot::default();
        let mut errors = Vec::new();
        snapshot.add_yaml(&std::fs::read_to_string(&path).unwrap(), &path, &mut errors);
        assert!(errors.is_empty(), "{file}: {errors:?}");
        // Every policy builds its stack.
        for policy in &snapshot.policies {
            let proxy = portcullis_ingress::proxy::Proxy::new(
                &portcullis_ingress::upstream::Upstreams::default(),
                std::sync::Arc::new(portcullis_ingress::routes::Backend {
                    name: "ml/vllm:8000".into(),
                    endpoints: Vec::new(),
                }),
                std::time::Duration::from_secs(1),
            );
            let mut layers = portcullis_ingress::stack::Layers::default();
            if let Err(e) = portcullis_ingress::stack::build(
                Some(("example", &policy.spec)),
                proxy,
                &mut layers,
            ) {
                panic!("{file}: {e}");
            }
        }
    }
}
