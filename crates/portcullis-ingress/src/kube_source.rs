//! The Kubernetes source: watchers for the kinds the route table is made of, feeding the
//! same compiler as the manifests directory.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::manifests::Snapshot;
use crate::policy::PortcullisPolicy;
use crate::routes::ObjectError;
use crate::server::Gateway;

/// The objects of one kind, by `namespace/name`.
struct Kind<K> {
    objects: BTreeMap<String, K>,
    /// Objects of a (re)list in progress.
    listing: BTreeMap<String, K>,
    synced: bool,
}

impl<K> Default for Kind<K> {
    fn default() -> Self {
        Self {
            objects: BTreeMap::new(),
            listing: BTreeMap::new(),
            synced: false,
        }
    }
}

#[derive(Default)]
struct State {
    ingresses: Kind<Ingress>,
    classes: Kind<IngressClass>,
    policies: Kind<PortcullisPolicy>,
    services: Kind<Service>,
    slices: Kind<EndpointSlice>,
    secrets: Kind<Secret>,
}

impl State {
    fn synced(&self) -> bool {
        self.ingresses.synced
            && self.classes.synced
            && self.policies.synced
            && self.services.synced
            && self.slices.synced
            && self.secrets.synced
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            ingresses: self.ingresses.objects.values().cloned().collect(),
            classes: self.classes.objects.values().cloned().collect(),
            policies: self.policies.objects.values().cloned().collect(),
            services: self.services.objects.values().cloned().collect(),
            endpoint_slices: self.slices.objects.values().cloned().collect(),
            secrets: self.secrets.objects.values().cloned().collect(),
        }
    }
}

fn key<K: Resource>(o: &K) -> String {
    format!(
        "{}/{}",
        o.meta().namespace.as_deref().unwrap_or_default(),
        o.meta().name.as_deref().unwrap_or_default()
    )
}

/// Watches one kind into its slot of the state, waking the compiler on every change.
async fn watch<K>(
    api: Api<K>,
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    slot: fn(&mut State) -> &mut Kind<K>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default,
{
    let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        let Ok(mut s) = state.lock() else { return };
        let kind = slot(&mut s);
        match event {
            Ok(Event::Init) => kind.listing.clear(),
            Ok(Event::InitApply(o)) => {
                kind.listing.insert(key(&o), o);
            }
            Ok(Event::InitDone) => {
                kind.objects = std::mem::take(&mut kind.listing);
                kind.synced = true;
                changed.notify_one();
            }
            Ok(Event::Apply(o)) => {
                kind.objects.insert(key(&o), o);
                changed.notify_one();
            }
            Ok(Event::Delete(o)) => {
                kind.objects.remove(&key(&o));
                changed.notify_one();
            }
            Err(e) => {
                drop(s);
                eprintln!("portcullis: watching {}: {e}", K::kind(&Default::default()));
            }
        }
    }
}

/// Watches the cluster and applies every change to `gateway` (after the first full sync of
/// every kind; changes within 100 ms are applied together). Runs until `stop` fires.
pub async fn run(
    client: Client,
    gateway: Arc<Gateway>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let state = Arc::new(Mutex::new(State::default()));
    let changed = Arc::new(Notify::new());
    let tasks = vec![
        tokio::spawn(watch(
            Api::<Ingress>::all(client.clone()),
            state.clone(),
            changed.clone(),
            |s| &mut s.ingresses,
        )),
        tokio::spawn(watch(
            Api::<IngressClass>::all(client.clone()),
            state.clone(),
            changed.clone(),
            |s| &mut s.classes,
        )),
        tokio::spawn(watch(
            Api::<PortcullisPolicy>::all(client.clone()),
            state.clone(),
            changed.clone(),
            |s| &mut s.policies,
        )),
        tokio::spawn(watch(
            Api::<Service>::all(client.clone()),
            state.clone(),
            changed.clone(),
            |s| &mut s.services,
        )),
        tokio::spawn(watch(
            Api::<EndpointSlice>::all(client.clone()),
            state.clone(),
            changed.clone(),
            |s| &mut s.slices,
        )),
        tokio::spawn(watch(
            Api::<Secret>::all(client.clone()),
            state.clone(),
            changed.clone(),
            |s| &mut s.secrets,
        )),
    ];
    let recorder = Recorder::new(client.clone(), Reporter::from("portcullis"));
    // Problems already published: each is published once, when it appears.
    let mut published: std::collections::BTreeSet<ObjectError> = Default::default();
    loop {
        tokio::select! {
            () = changed.notified() => {}
            _ = stop.changed() => break,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let snapshot = match state.lock() {
            Ok(s) if s.synced() => s.snapshot(),
            _ => continue,
        };
        let problems = gateway.apply(&snapshot);
        for problem in &problems {
            eprintln!("portcullis: {problem}");
        }
        let current: std::collections::BTreeSet<ObjectError> = problems.into_iter().collect();
        for problem in current.difference(&published) {
            publish(&recorder, problem).await;
        }
        write_status(&client, &snapshot, &current).await;
        published = current;
    }
    for t in tasks {
        t.abort();
    }
}

/// Publishes `problem` as a Warning Event on its object (problems not about one object, such
/// as the combined TLS configuration, are only logged).
async fn publish(recorder: &Recorder, problem: &ObjectError) {
    let Some((kind, path)) = problem.object.split_once(' ') else {
        return;
    };
    let Some((namespace, name)) = path.split_once('/') else {
        return;
    };
    let api_version = match kind {
        "Ingress" => "networking.k8s.io/v1",
        "PortcullisPolicy" => "portcullis.dev/v1alpha1",
        "Secret" | "Service" => "v1",
        _ => return,
    };
    let reference = ObjectReference {
        api_version: Some(api_version.into()),
        kind: Some(kind.into()),
        namespace: Some(namespace.into()),
        name: Some(name.into()),
        ..ObjectReference::default()
    };
    // An Event's note is at most 1 kB.
    let mut note = problem.message.clone();
    if note.len() > 1000 {
        let mut cut = 1000;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
    }
    let event = KubeEvent {
        type_: EventType::Warning,
        reason: "InvalidConfiguration".into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &reference).await {
        eprintln!("portcullis: cannot publish an Event on {kind} {path}: {e}");
    }
}

/// Sets each policy's `Accepted` condition from the problems reported about it: `True`, or
/// `False` with the problems. Written only when the policy does not carry it already (the
/// write comes back as a change of the policy, which then carries it).
async fn write_status(
    client: &Client,
    snapshot: &Snapshot,
    problems: &std::collections::BTreeSet<ObjectError>,
) {
    use kube::api::{Patch, PatchParams};
    for policy in &snapshot.policies {
        let (Some(namespace), Some(name)) = (
            policy.metadata.namespace.as_deref(),
            policy.metadata.name.as_deref(),
        ) else {
            continue;
        };
        let object = format!("PortcullisPolicy {namespace}/{name}");
        let messages: Vec<&str> = problems
            .iter()
            .filter(|p| p.object == object)
            .map(|p| p.message.as_str())
            .collect();
        let (status, reason, message) = if messages.is_empty() {
            ("True", "Accepted", "the policy is in force".to_owned())
        } else {
            ("False", "Invalid", messages.join("; "))
        };
        let wanted = (status.to_owned(), message.clone());
        let current = policy
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Accepted"))
            .map(|c| (c.status.clone(), c.message.clone()));
        if current.as_ref() == Some(&wanted) {
            continue;
        }
        let patch = serde_json::json!({"status": {"conditions": [{
            "type": "Accepted", "status": status, "reason": reason, "message": message,
        }]}});
        let api: Api<PortcullisPolicy> = Api::namespaced(client.clone(), namespace);
        if let Err(e) = api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            eprintln!("portcullis: cannot write the status of {object}: {e}");
        }
    }
}
