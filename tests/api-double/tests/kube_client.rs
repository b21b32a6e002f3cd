//! The double driven by real kube-rs clients over HTTP: one scenario per test, every wait bounded.

use std::time::Duration;

use drawbridge_api_double::ApiDouble;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Secret, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::{Client, Config, ResourceExt};
use serde_json::{Value, json};

/// Upper bound for any single wait; the double answers in milliseconds.
const WAIT: Duration = Duration::from_secs(10);

/// The workspace links both rustls providers (ring via kube, aws-lc-rs via rustls' defaults), so
/// rustls cannot pick one by itself; kube builds a TLS connector even for `http://` URLs.
fn install_crypto_provider() {
    // Err means another test installed it already.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

async fn start() -> (ApiDouble, Client) {
    install_crypto_provider();
    let double = ApiDouble::start().await.expect("bind 127.0.0.1:0");
    let config = Config::new(double.url().parse().expect("url() is a valid URI"));
    let client = Client::try_from(config).expect("client for a plain-HTTP URL");
    (double, client)
}

fn mk_service(ns: &str, name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]},
    })
}

fn mk_secret(ns: &str, name: &str, type_: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns}, "type": type_})
}

/// A watcher driven by its own task, so it keeps (re)connecting while the test acts.
type Events<K> = tokio::sync::mpsc::UnboundedReceiver<Result<Event<K>, watcher::Error>>;

fn spawn_watcher<K>(api: Api<K>, config: watcher::Config) -> Events<K>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut stream = watcher::watcher(api, config).boxed();
    tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            if tx.send(item).is_err() {
                return;
            }
        }
    });
    rx
}

/// The next watcher item (event or error), or a test failure after [`WAIT`].
async fn next_item<K>(events: &mut Events<K>) -> Result<Event<K>, watcher::Error> {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("watcher produced nothing within the timeout")
        .expect("watcher streams never end")
}

/// Waits until the double has `n` open watch streams.
async fn until_open_watches(double: &ApiDouble, n: usize) {
    tokio::time::timeout(WAIT, async {
        while double.open_watches() != n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} open watches, expected {n}", double.open_watches()));
}

/// The next event, skipping errors (a watcher retries by itself).
async fn next_event<K>(events: &mut Events<K>) -> Event<K> {
    loop {
        if let Ok(event) = next_item(events).await {
            return event;
        }
    }
}

/// Consumes events up to and including `InitDone`, returning the names seen in between.
async fn until_init_done<K: ResourceExt>(events: &mut Events<K>) -> Vec<String> {
    let mut names = Vec::new();
    loop {
        match next_event(events).await {
            Event::InitApply(obj) => names.push(obj.name_any()),
            Event::InitDone => return names,
            Event::Init => names.clear(),
            Event::Apply(_) | Event::Delete(_) => {}
        }
    }
}

#[tokio::test]
async fn list_services_across_and_within_namespaces() {
    let (double, client) = start().await;
    double.create(mk_service("shop", "web", json!({"app": "web"})));
    double.create(mk_service("shop", "db", json!({"app": "db"})));
    double.create(mk_service("blog", "web", json!({"app": "web"})));

    let all = Api::<Service>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("list");
    let names: Vec<_> = all
        .items
        .iter()
        .map(|s| format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any()))
        .collect();
    assert_eq!(names, ["blog/web", "shop/db", "shop/web"]);
    assert_eq!(
        all.metadata.resource_version,
        Some(double.resource_version().to_string())
    );

    let shop = Api::<Service>::namespaced(client.clone(), "shop");
    assert_eq!(
        shop.list(&ListParams::default())
            .await
            .expect("list")
            .items
            .len(),
        2
    );
    let web = Api::<Service>::all(client.clone())
        .list(&ListParams::default().labels("app=web"))
        .await
        .expect("list");
    assert_eq!(web.items.len(), 2);
    let not_web = shop
        .list(&ListParams::default().labels("app!=web"))
        .await
        .expect("list");
    assert_eq!(
        not_web
            .items
            .iter()
            .map(|s| s.name_any())
            .collect::<Vec<_>>(),
        ["db"]
    );

    let svc = shop.get("db").await.expect("get");
    assert_eq!(
        svc.spec.and_then(|s| s.type_).as_deref(),
        Some("LoadBalancer")
    );
    assert!(svc.metadata.uid.is_some() && svc.metadata.creation_timestamp.is_some());
    match shop.get("missing").await {
        Err(kube::Error::Api(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"))
        }
        other => panic!("expected 404 NotFound, got {other:?}"),
    }

    let verbs: Vec<_> = double.requests().into_iter().map(|r| r.verb).collect();
    assert_eq!(verbs, ["list", "list", "list", "list", "get", "get"]);
}

#[tokio::test]
async fn secrets_field_selector_on_type() {
    let (double, client) = start().await;
    double.create(mk_secret("shop", "tls-cert", "kubernetes.io/tls"));
    double.create(mk_secret("shop", "password", "Opaque"));
    double.create(mk_secret("blog", "blog-cert", "kubernetes.io/tls"));

    let secrets = Api::<Secret>::all(client.clone());
    let tls = secrets
        .list(&ListParams::default().fields("type=kubernetes.io/tls"))
        .await
        .expect("list");
    assert_eq!(
        tls.items.iter().map(|s| s.name_any()).collect::<Vec<_>>(),
        ["blog-cert", "tls-cert"]
    );
    let other = secrets
        .list(&ListParams::default().fields("type!=kubernetes.io/tls"))
        .await
        .expect("list");
    assert_eq!(
        other.items.iter().map(|s| s.name_any()).collect::<Vec<_>>(),
        ["password"]
    );
    let one = secrets
        .list(&ListParams::default().fields("metadata.namespace=shop,type=kubernetes.io/tls"))
        .await
        .expect("list");
    assert_eq!(
        one.items.iter().map(|s| s.name_any()).collect::<Vec<_>>(),
        ["tls-cert"]
    );
    assert_eq!(
        double.requests()[0].query_param("fieldSelector").as_deref(),
        Some("type=kubernetes.io/tls")
    );
}

#[tokio::test]
async fn watcher_sees_added_modified_deleted() {
    let (double, client) = start().await;
    double.create(mk_service("shop", "existing", json!({})));
    let api = Api::<Service>::namespaced(client, "shop");
    let mut events: Events<Service> = spawn_watcher(api, watcher::Config::default());
    assert_eq!(until_init_done(&mut events).await, ["existing"]);

    double.create(mk_service("shop", "web", json!({})));
    double.create(mk_service("other", "ignored", json!({})));
    match next_event(&mut events).await {
        Event::Apply(svc) => assert_eq!(svc.name_any(), "web"),
        other => panic!("expected Apply(web), got {other:?}"),
    }

    let mut changed = mk_service("shop", "web", json!({"changed": "yes"}));
    changed["spec"]["type"] = json!("ClusterIP");
    double.update(changed);
    match next_event(&mut events).await {
        Event::Apply(svc) => {
            assert_eq!(svc.labels().get("changed").map(String::as_str), Some("yes"));
            assert_eq!(svc.metadata.generation, Some(2));
        }
        other => panic!("expected Apply(web modified), got {other:?}"),
    }

    double
        .delete("v1", "Service", Some("shop"), "web")
        .expect("web exists");
    match next_event(&mut events).await {
        Event::Delete(svc) => assert_eq!(svc.name_any(), "web"),
        other => panic!("expected Delete(web), got {other:?}"),
    }
    let watches = double
        .requests()
        .into_iter()
        .filter(|r| r.verb == "watch")
        .count();
    assert_eq!(watches, 1);
}

#[tokio::test]
async fn streaming_list_watcher_gets_initial_events() {
    let (double, client) = start().await;
    double.create(mk_service("shop", "a", json!({})));
    double.create(mk_service("shop", "b", json!({})));
    let api = Api::<Service>::all(client);
    let mut events: Events<Service> =
        spawn_watcher(api, watcher::Config::default().streaming_lists());
    assert_eq!(until_init_done(&mut events).await, ["a", "b"]);

    double.create(mk_service("shop", "c", json!({})));
    match next_event(&mut events).await {
        Event::Apply(svc) => assert_eq!(svc.name_any(), "c"),
        other => panic!("expected Apply(c), got {other:?}"),
    }
    let requests = double.requests();
    assert!(
        requests.iter().all(|r| r.verb == "watch"),
        "no list with streaming lists: {requests:?}"
    );
    assert_eq!(
        requests[0].query_param("sendInitialEvents").as_deref(),
        Some("true")
    );
}

#[tokio::test]
async fn selector_watch_sees_objects_enter_and_leave() {
    let (double, client) = start().await;
    let api = Api::<Service>::all(client);
    let mut events: Events<Service> =
        spawn_watcher(api, watcher::Config::default().labels("app=web"));
    assert!(until_init_done(&mut events).await.is_empty());

    double.create(mk_service("shop", "svc", json!({"app": "db"})));
    double.update(mk_service("shop", "svc", json!({"app": "web"})));
    match next_event(&mut events).await {
        Event::Apply(svc) => assert_eq!(svc.labels().get("app").map(String::as_str), Some("web")),
        other => panic!("expected Apply when the object enters the selector, got {other:?}"),
    }
    double.update(mk_service("shop", "svc", json!({"app": "db"})));
    match next_event(&mut events).await {
        Event::Delete(svc) => assert_eq!(svc.name_any(), "svc"),
        other => panic!("expected Delete when the object leaves the selector, got {other:?}"),
    }
}

#[tokio::test]
async fn patch_status_merge_changes_only_status_and_emits_modified() {
    let (double, client) = start().await;
    double.create(mk_service("shop", "web", json!({})));
    let api = Api::<Service>::namespaced(client, "shop");
    let mut events: Events<Service> = spawn_watcher(api.clone(), watcher::Config::default());
    until_init_done(&mut events).await;

    let patch = json!({
        "metadata": {"labels": {"ignored": "by-status"}},
        "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}},
    });
    let patched = api
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch_status");
    let ip = |svc: &Service| {
        svc.status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .and_then(|i| i[0].ip.clone())
    };
    assert_eq!(ip(&patched).as_deref(), Some("203.0.113.7"));
    assert!(
        patched.labels().get("ignored").is_none(),
        "a /status patch changes only status"
    );
    assert_eq!(
        patched.metadata.generation,
        Some(1),
        "status changes do not bump generation"
    );
    match next_event(&mut events).await {
        Event::Apply(svc) => assert_eq!(ip(&svc).as_deref(), Some("203.0.113.7")),
        other => panic!("expected Apply with status, got {other:?}"),
    }
    let stored = double
        .get("v1", "Service", Some("shop"), "web")
        .expect("stored");
    assert_eq!(
        stored["status"]["loadBalancer"]["ingress"][0]["ip"],
        "203.0.113.7"
    );

    // The main resource cannot change status (status strategy); the no-op write emits nothing.
    let rv = double.resource_version();
    let main = json!({"status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]}}});
    let unchanged = api
        .patch("web", &PatchParams::default(), &Patch::Merge(&main))
        .await
        .expect("patch");
    assert_eq!(ip(&unchanged).as_deref(), Some("203.0.113.7"));
    assert_eq!(double.resource_version(), rv);

    let status_patch = double
        .requests()
        .into_iter()
        .find(|r| r.verb == "patch" && r.subresource.as_deref() == Some("status"))
        .expect("status patch recorded");
    assert_eq!(
        status_patch.path,
        "/api/v1/namespaces/shop/services/web/status"
    );
    assert_eq!(
        status_patch.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
}

#[tokio::test]
async fn expired_history_and_closed_watches_force_a_relist() {
    let (double, client) = start().await;
    double.create(mk_service("shop", "before", json!({})));
    let api = Api::<Service>::all(client);
    let mut events: Events<Service> = spawn_watcher(api, watcher::Config::default());
    assert_eq!(until_init_done(&mut events).await, ["before"]);
    until_open_watches(&double, 1).await;

    double.expire_history();
    double.close_watches();
    double.create(mk_service("shop", "after", json!({})));

    // The resumed watch gets 410 Expired, the watcher relists and sees both objects.
    let mut saw_gone = false;
    loop {
        match next_item(&mut events).await {
            Err(watcher::Error::WatchError(status)) if status.code == 410 => saw_gone = true,
            Err(other) => panic!("unexpected watcher error {other:?}"),
            Ok(Event::Init) => break,
            Ok(other) => panic!("expected a relist, got {other:?}"),
        }
    }
    assert!(saw_gone, "the watcher saw 410 Expired before relisting");
    let mut names = until_init_done(&mut events).await;
    names.sort();
    assert_eq!(names, ["after", "before"]);

    let lists = double
        .requests()
        .into_iter()
        .filter(|r| r.verb == "list")
        .count();
    assert_eq!(lists, 2);

    // And it watches on from the relist.
    double.delete("v1", "Service", Some("shop"), "before");
    match next_event(&mut events).await {
        Event::Delete(svc) => assert_eq!(svc.name_any(), "before"),
        other => panic!("expected Delete(before), got {other:?}"),
    }
}

#[tokio::test]
async fn closed_watches_resume_without_relist() {
    let (double, client) = start().await;
    let api = Api::<Service>::all(client);
    let mut events: Events<Service> = spawn_watcher(api, watcher::Config::default());
    until_init_done(&mut events).await;
    until_open_watches(&double, 1).await;

    double.close_watches();
    double.create(mk_service("shop", "web", json!({})));
    match next_event(&mut events).await {
        Event::Apply(svc) => assert_eq!(svc.name_any(), "web"),
        other => panic!("expected Apply(web) after resuming, got {other:?}"),
    }
    let verbs: Vec<_> = double.requests().into_iter().map(|r| r.verb).collect();
    assert_eq!(
        verbs.iter().filter(|v| *v == "list").count(),
        1,
        "{verbs:?}"
    );
    assert!(
        verbs.iter().filter(|v| *v == "watch").count() >= 2,
        "{verbs:?}"
    );
}

#[tokio::test]
async fn writes_over_http_create_replace_apply_json_patch_delete() {
    let (double, client) = start().await;
    let api = Api::<Lease>::namespaced(client.clone(), "drawbridge");
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "lb-controller"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15},
    }))
    .expect("lease");
    let created = api
        .create(&PostParams::default(), &lease)
        .await
        .expect("create");
    assert_eq!(created.metadata.namespace.as_deref(), Some("drawbridge"));
    match api.create(&PostParams::default(), &lease).await {
        Err(kube::Error::Api(status)) => assert_eq!(
            (status.code, status.reason.as_str()),
            (409, "AlreadyExists")
        ),
        other => panic!("expected 409 AlreadyExists, got {other:?}"),
    }

    // Replace with the current resourceVersion wins; replaying the stale one conflicts.
    let mut next = created.clone();
    next.spec.as_mut().expect("spec").holder_identity = Some("b".into());
    let replaced = api
        .replace("lb-controller", &PostParams::default(), &next)
        .await
        .expect("replace");
    assert_eq!(
        replaced
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref()),
        Some("b")
    );
    match api
        .replace("lb-controller", &PostParams::default(), &next)
        .await
    {
        Err(kube::Error::Api(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"))
        }
        other => panic!("expected 409 Conflict, got {other:?}"),
    }

    // kube's `Patch::Json` needs its `jsonpatch` feature; send the RFC 6902 body by hand.
    let json_patch = json!([
        {"op": "test", "path": "/spec/holderIdentity", "value": "b"},
        {"op": "replace", "path": "/spec/holderIdentity", "value": "c"},
    ]);
    let request = http::Request::patch(
        "/apis/coordination.k8s.io/v1/namespaces/drawbridge/leases/lb-controller",
    )
    .header(http::header::CONTENT_TYPE, "application/json-patch+json")
    .body(serde_json::to_vec(&json_patch).expect("serialize"))
    .expect("request");
    let patched: Lease = client.request(request).await.expect("json patch");
    assert_eq!(
        patched
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref()),
        Some("c")
    );

    // Server-side apply creates a missing object.
    let applied = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "node-programmer"},
        "spec": {"holderIdentity": "n1"},
    });
    let ssa = api
        .patch(
            "node-programmer",
            &PatchParams::apply("drawbridge-test"),
            &Patch::Apply(&applied),
        )
        .await
        .expect("apply");
    assert_eq!(
        ssa.spec.as_ref().and_then(|s| s.holder_identity.as_deref()),
        Some("n1")
    );

    api.delete("lb-controller", &DeleteParams::default())
        .await
        .expect("delete");
    assert!(
        double
            .get(
                "coordination.k8s.io/v1",
                "Lease",
                Some("drawbridge"),
                "lb-controller"
            )
            .is_none()
    );
    let remaining = api.list(&ListParams::default()).await.expect("list");
    assert_eq!(
        remaining
            .items
            .iter()
            .map(|l| l.name_any())
            .collect::<Vec<_>>(),
        ["node-programmer"]
    );

    let verbs: Vec<_> = double.requests().into_iter().map(|r| r.verb).collect();
    assert_eq!(
        verbs,
        [
            "create", "create", "update", "update", "patch", "patch", "delete", "list"
        ]
    );
}

/// Server-side apply conflicts, as kube-lease-manager's lock relies on them: of two managers
/// applying `spec.holderIdentity` to a free Lease, the second gets `409 Conflict`; a patch that
/// removes the field frees it; `force=true` takes a held field over.
#[tokio::test]
async fn apply_conflicts_on_fields_another_manager_owns() {
    let (double, client) = start().await;
    let api: Api<Lease> = Api::namespaced(client, "drawbridge-system");
    let free: Lease =
        serde_json::from_value(json!({"metadata": {"name": "l"}, "spec": {}})).expect("lease");
    api.create(&PostParams::default(), &free)
        .await
        .expect("create");
    let lock = |holder: &str| {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "spec": {"holderIdentity": holder, "leaseDurationSeconds": 4}})
    };
    let holder = |lease: &Lease| lease.spec.as_ref().and_then(|s| s.holder_identity.clone());

    let held = api
        .patch(
            "l",
            &PatchParams::apply("replica-a"),
            &Patch::Apply(lock("a")),
        )
        .await
        .expect("the first applier wins");
    assert_eq!(holder(&held).as_deref(), Some("a"));
    match api
        .patch(
            "l",
            &PatchParams::apply("replica-b"),
            &Patch::Apply(lock("b")),
        )
        .await
    {
        Err(kube::Error::Api(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
            assert_eq!(
                status.message,
                r#"Apply failed with 1 conflict: conflict with "replica-a": .spec.holderIdentity"#
            );
        }
        other => panic!("expected 409 Conflict, got {other:?}"),
    }
    let stored = api.get("l").await.expect("get");
    assert_eq!(
        holder(&stored).as_deref(),
        Some("a"),
        "the loser changed nothing"
    );
    assert_eq!(
        double.field_owners(
            "coordination.k8s.io/v1",
            "Lease",
            Some("drawbridge-system"),
            "l"
        )["replica-a"],
        [".spec.holderIdentity", ".spec.leaseDurationSeconds"]
    );
    // Applying the value the field already has is no conflict (shared ownership).
    api.patch(
        "l",
        &PatchParams::apply("replica-b"),
        &Patch::Apply(lock("a")),
    )
    .await
    .expect("an equal value shares the field");

    // A strategic-merge patch removing the holder (kube-lease-manager's release) frees it.
    let release = json!({"spec": {"holderIdentity": null}});
    api.patch("l", &PatchParams::default(), &Patch::Strategic(release))
        .await
        .expect("release");
    let taken = api
        .patch(
            "l",
            &PatchParams::apply("replica-b"),
            &Patch::Apply(lock("b")),
        )
        .await
        .expect("a released field is free");
    assert_eq!(holder(&taken).as_deref(), Some("b"));

    // force=true takes a held field over.
    let forced = api
        .patch(
            "l",
            &PatchParams::apply("replica-a").force(),
            &Patch::Apply(lock("a")),
        )
        .await
        .expect("a forced apply wins");
    assert_eq!(holder(&forced).as_deref(), Some("a"));
    assert!(
        !double.field_owners(
            "coordination.k8s.io/v1",
            "Lease",
            Some("drawbridge-system"),
            "l"
        )["replica-b"]
            .contains(&".spec.holderIdentity".to_string()),
        "the forced field left its previous owner"
    );
}

#[tokio::test]
async fn kubeconfig_points_at_the_double() {
    install_crypto_provider();
    let double = ApiDouble::start().await.expect("bind");
    double.create(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}));
    let kubeconfig =
        kube::config::Kubeconfig::from_yaml(&double.kubeconfig_yaml()).expect("kubeconfig parses");
    let config =
        Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
            .await
            .expect("config");
    assert_eq!(config.default_namespace, "default");
    let client = Client::try_from(config).expect("client");
    let version = client.apiserver_version().await.expect("version");
    assert_eq!(version.major, "1");
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("list nodes");
    assert_eq!(
        nodes.items.iter().map(|n| n.name_any()).collect::<Vec<_>>(),
        ["n1"]
    );
    let metadata = Api::<Node>::all(client)
        .list_metadata(&ListParams::default())
        .await
        .expect("list metadata");
    assert_eq!(metadata.items[0].metadata.name.as_deref(), Some("n1"));
}

#[tokio::test]
async fn custom_resources_and_the_binary() {
    install_crypto_provider();
    let dir = std::env::temp_dir().join(format!("api-double-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let objects = dir.join("objects.yaml");
    std::fs::write(
        &objects,
        "apiVersion: drawbridge.dev/v1alpha1\nkind: IPAddressPool\nmetadata: {name: lab}\nspec: {addresses: [203.0.113.0/24]}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n",
    )
    .expect("write objects");
    let kubeconfig = dir.join("kubeconfig");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_api-double"))
        .args(["--listen", "127.0.0.1:0", "--kubeconfig-out"])
        .arg(&kubeconfig)
        .arg("--load")
        .arg(&objects)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn api-double");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("api-double starts in time")
        .expect("read stdout")
        .expect("a line");
    let url = line
        .strip_prefix("listening on ")
        .expect("listening line")
        .to_string();

    let kubeconfig = kube::config::Kubeconfig::read_from(&kubeconfig).expect("kubeconfig written");
    let config =
        Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
            .await
            .expect("config");
    assert_eq!(config.cluster_url.to_string().trim_end_matches('/'), url);
    let client = Client::try_from(config).expect("client");
    let pools = Api::<kube::api::DynamicObject>::all_with(
        client.clone(),
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("drawbridge.dev", "v1alpha1", "IPAddressPool"),
            "ipaddresspools",
        ),
    );
    let status = json!({"status": {"assignedIpv4": 1}});
    let pool = pools
        .patch_status("lab", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("patch pool status");
    assert_eq!(pool.data["status"]["assignedIpv4"], 1);
    assert_eq!(pool.data["spec"]["addresses"][0], "203.0.113.0/24");
    let namespaces = Api::<k8s_openapi::api::core::v1::Namespace>::all(client)
        .list(&ListParams::default())
        .await
        .expect("list namespaces");
    assert_eq!(namespaces.items.len(), 1);

    child.kill().await.expect("stop api-double");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn crd_registration_serves_new_kinds() {
    let (double, client) = start().await;
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "names": {"kind": "Widget", "plural": "widgets"},
            "scope": "Namespaced",
            "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}}],
        },
    });
    let crds = Api::<kube::api::DynamicObject>::all_with(
        client.clone(),
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk(
                "apiextensions.k8s.io",
                "v1",
                "CustomResourceDefinition",
            ),
            "customresourcedefinitions",
        ),
    );
    let crd: kube::api::DynamicObject = serde_json::from_value(crd).expect("crd");
    crds.create(&PostParams::default(), &crd)
        .await
        .expect("create CRD");

    let resource = kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("example.com", "v1", "Widget"),
        "widgets",
    );
    let widgets = Api::<kube::api::DynamicObject>::namespaced_with(client, "shop", &resource);
    let widget: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 1},
        "status": {"dropped": true},
    }))
    .expect("widget");
    let created = widgets
        .create(&PostParams::default(), &widget)
        .await
        .expect("create widget");
    assert!(
        created.data.get("status").is_none(),
        "create through the main resource drops status"
    );
    let listed: Vec<_> = widgets
        .list(&ListParams::default())
        .await
        .expect("list")
        .items;
    assert_eq!(listed.len(), 1);
    assert_eq!(double.list("example.com/v1", "Widget").len(), 1);
}

#[tokio::test]
async fn raw_watch_bookmarks_timeout_and_gone() {
    use kube::api::{WatchEvent, WatchParams};
    let (double, client) = start().await;
    let created = double.create(mk_service("shop", "web", json!({})));
    let rv = created["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    let api = Api::<Service>::namespaced(client, "shop");

    // From rv "0": the current state as ADDED, then a bookmark, then the stream ends at timeoutSeconds.
    let params = WatchParams::default().timeout(3); // bookmarks are on by default
    let started = tokio::time::Instant::now();
    let events: Vec<_> = tokio::time::timeout(
        WAIT,
        api.watch(&params, "0")
            .await
            .expect("watch")
            .try_collect::<Vec<_>>(),
    )
    .await
    .expect("the stream ends at timeoutSeconds")
    .expect("events decode");
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert!(
        matches!(&events[0], WatchEvent::Added(svc) if svc.name_any() == "web"),
        "{events:?}"
    );
    match &events[1] {
        WatchEvent::Bookmark(bookmark) => assert_eq!(bookmark.metadata.resource_version, rv),
        other => panic!("expected a bookmark, got {other:?}"),
    }

    // From an expired version: one ERROR event with a 410 Status, then the end.
    double.expire_history();
    let events: Vec<_> = tokio::time::timeout(
        WAIT,
        api.watch(&WatchParams::default(), &rv)
            .await
            .expect("watch")
            .try_collect::<Vec<_>>(),
    )
    .await
    .expect("the stream ends")
    .expect("events decode");
    match events.as_slice() {
        [WatchEvent::Error(status)] => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"))
        }
        other => panic!("expected one 410 ERROR event, got {other:?}"),
    }
}

/// The wire format, without kube in between: chunked newline-delimited events and `Status` bodies.
#[tokio::test]
async fn raw_http_wire_format() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let double = ApiDouble::start().await.expect("bind");
    double.create(mk_service("shop", "web", json!({})));

    let exchange = |request: String| {
        let addr = double.addr();
        async move {
            let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
            conn.write_all(request.as_bytes()).await.expect("write");
            let mut response = String::new();
            tokio::time::timeout(WAIT, conn.read_to_string(&mut response))
                .await
                .expect("response in time")
                .expect("read");
            response
        }
    };
    let not_found = exchange("GET /api/v1/namespaces/shop/services/nope HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".into()).await;
    assert!(not_found.starts_with("HTTP/1.1 404"), "{not_found}");
    let body: Value =
        serde_json::from_str(not_found.split("\r\n\r\n").nth(1).expect("body")).expect("json body");
    assert_eq!(body["kind"], "Status");
    assert_eq!(
        (
            body["status"].as_str(),
            body["reason"].as_str(),
            body["code"].as_u64()
        ),
        (Some("Failure"), Some("NotFound"), Some(404))
    );
    assert_eq!(body["details"]["name"], "nope");

    let watch = exchange(
        "GET /api/v1/namespaces/shop/services?watch=1&resourceVersion=0&timeoutSeconds=1 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".into(),
    )
    .await;
    assert!(watch.contains("transfer-encoding: chunked"), "{watch}");
    assert!(
        watch.contains("{\"object\":{") && watch.contains("\"type\":\"ADDED\"}\n"),
        "{watch}"
    );
    assert!(
        watch.ends_with("0\r\n\r\n"),
        "the stream ends cleanly: {watch}"
    );
}

/// One raw HTTP/1.1 request (`Connection: close`); returns the response body.
async fn raw(addr: std::net::SocketAddr, method: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn labelled_listeners_and_control_endpoints() {
    install_crypto_provider();
    let double = ApiDouble::start().await.expect("bind");
    double.create(mk_service("shop", "web", json!({})));
    let addr = double
        .listen_as(
            "lb-controller",
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        )
        .await
        .expect("second listener");
    let client = Client::try_from(Config::new(format!("http://{addr}").parse().expect("url")))
        .expect("client");
    let services: Api<Service> = Api::all(client);
    assert_eq!(
        services
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .len(),
        1
    );

    let recorded = double.requests();
    let last = recorded.last().expect("recorded");
    assert_eq!(last.client.as_deref(), Some("lb-controller"));
    assert_eq!(
        (last.verb.as_str(), last.group.as_deref()),
        ("list", Some(""))
    );
    // kube-rs sends no User-Agent by default: listeners, not headers, tell clients apart.
    assert_eq!(last.user_agent, None);

    let lines = raw(double.addr(), "GET", "/_double/requests").await;
    let line: Value = serde_json::from_str(lines.lines().last().expect("a line")).expect("json");
    assert_eq!(line["client"], "lb-controller");
    assert_eq!(line["resource"], "services");
    assert_eq!(
        double.requests().len(),
        recorded.len(),
        "control requests are not recorded"
    );

    let before = double.resource_version();
    raw(double.addr(), "POST", "/_double/expire-history").await;
    assert!(double.resource_version() > before);
    let open: Value =
        serde_json::from_str(&raw(double.addr(), "GET", "/_double/open-watches").await)
            .expect("json");
    assert_eq!(open["openWatches"], 0);
    assert!(
        raw(addr, "POST", "/_double/close-watches")
            .await
            .contains("closed")
    );
    assert!(
        raw(addr, "GET", "/_double/close-watches")
            .await
            .contains("MethodNotAllowed")
    );
}
