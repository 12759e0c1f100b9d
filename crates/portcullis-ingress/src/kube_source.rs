//! The Kubernetes source: watchers for the kinds the route table is made of, feeding the
//! same compiler as the manifests directory.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::manifests::Snapshot;
use crate::policy::PortcullisPolicy;
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
}

impl State {
    fn synced(&self) -> bool {
        self.ingresses.synced
            && self.classes.synced
            && self.policies.synced
            && self.services.synced
            && self.slices.synced
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            ingresses: self.ingresses.objects.values().cloned().collect(),
            classes: self.classes.objects.values().cloned().collect(),
            policies: self.policies.objects.values().cloned().collect(),
            services: self.services.objects.values().cloned().collect(),
            endpoint_slices: self.slices.objects.values().cloned().collect(),
            secrets: Vec::new(),
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
            Api::<EndpointSlice>::all(client),
            state.clone(),
            changed.clone(),
            |s| &mut s.slices,
        )),
    ];
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
        for problem in gateway.apply(&snapshot) {
            eprintln!("portcullis: {problem}");
        }
    }
    for t in tasks {
        t.abort();
    }
}
