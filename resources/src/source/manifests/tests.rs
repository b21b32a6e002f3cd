use super::*;
use crate::source::Kind;
use std::time::Duration;

const ALL: &[Kind] = &Kind::ALL;

fn svc_yaml(name: &str, port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  clusterIP: 198.51.100.10\n  ports:\n  - name: http\n    port: {port}\n"
    )
}

#[test]
fn parses_documents_lists_and_defaults_namespace() {
    let text = format!(
        "{}---\n# comment only\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Secret\n  metadata: {{name: tls, namespace: apps}}\n  type: kubernetes.io/tls\n- apiVersion: v1\n  kind: Secret\n  metadata: {{name: opaque}}\n  type: Opaque\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: ignored}}\n---\napiVersion: drawbridge.dev/v1alpha1\nkind: IPAddressPool\nmetadata: {{name: lab, namespace: wrong}}\nspec: {{addresses: [203.0.113.0/24]}}\n",
        svc_yaml("web", 80)
    );
    let (objects, problems) = parse_manifests(&text, ALL).expect("valid YAML");
    assert!(problems.is_empty(), "{problems:?}");
    let keys: Vec<String> = objects.iter().map(|(k, _)| k.to_string()).collect();
    assert_eq!(
        keys,
        [
            "Service default/web",
            "Secret apps/tls",
            "IPAddressPool lab"
        ]
    );
    assert_eq!(objects[0].1["metadata"]["namespace"], "default");
    assert!(
        objects[2].1["metadata"].get("namespace").is_none(),
        "cluster-scoped objects lose a namespace"
    );
}

#[test]
fn reports_objects_without_name_and_rejects_bad_yaml() {
    let (objects, problems) =
        parse_manifests("apiVersion: v1\nkind: Service\nmetadata: {}\n", ALL).expect("valid YAML");
    assert!(objects.is_empty());
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].contains("without metadata.name"),
        "{problems:?}"
    );
    let err = parse_manifests("apiVersion: v1\nkind: [unclosed\n", ALL).expect_err("invalid YAML");
    assert!(err.starts_with("document 1:"), "{err}");
}

#[test]
fn kinds_not_asked_for_are_not_read() {
    let (objects, _) = parse_manifests(&svc_yaml("web", 80), &[Kind::Ingress]).expect("valid YAML");
    assert!(objects.is_empty());
}

/// Polls `f` until it is true or 3 s pass.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..300 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

fn port_of(resources: &crate::Resources, name: &str) -> Option<i32> {
    resources
        .services
        .state()
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(name))
        .and_then(|s| s.spec.as_ref()?.ports.as_ref()?.first().map(|p| p.port))
}

#[tokio::test]
async fn follows_adds_edits_deletes_and_keeps_last_good_on_parse_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("web.yaml"), svc_yaml("web", 80)).expect("write");
    let source = start(dir.path().to_path_buf(), None, &[Kind::Service])
        .await
        .expect("start");
    let mut resources = source.resources.clone();
    resources.wait_synced().await;
    assert_eq!(port_of(&resources, "web"), Some(80));

    // Add a file in a new sub-directory.
    std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
    std::fs::write(dir.path().join("sub/api.yml"), svc_yaml("api", 81)).expect("write");
    eventually("api appears", || port_of(&resources, "api") == Some(81)).await;
    assert!(resources.changed().await);

    // Edit.
    std::fs::write(dir.path().join("web.yaml"), svc_yaml("web", 8080)).expect("write");
    eventually("web edited", || port_of(&resources, "web") == Some(8080)).await;

    // A broken edit keeps the last good version; the other file still works.
    std::fs::write(dir.path().join("web.yaml"), "kind: [broken").expect("write");
    std::fs::write(dir.path().join("sub/api.yml"), svc_yaml("api", 82)).expect("write");
    eventually("api edited", || port_of(&resources, "api") == Some(82)).await;
    assert_eq!(port_of(&resources, "web"), Some(8080));

    // An object that does not decode as its kind keeps its last good version.
    std::fs::write(
        dir.path().join("web.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: not-a-number}]}\n",
    )
    .expect("write");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(port_of(&resources, "web"), Some(8080));

    // Deleting a file and then a directory removes their objects.
    std::fs::remove_file(dir.path().join("web.yaml")).expect("rm");
    eventually("web deleted", || port_of(&resources, "web").is_none()).await;
    std::fs::remove_dir_all(dir.path().join("sub")).expect("rm -r");
    eventually("api deleted", || resources.services.state().is_empty()).await;
}

#[tokio::test]
async fn status_goes_through_the_state_directory_to_other_processes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("web.yaml"), svc_yaml("web", 80)).expect("write");
    let writer = start(
        dir.path().into(),
        Some(state.path().into()),
        &[Kind::Service],
    )
    .await
    .expect("start");
    let reader = start(
        dir.path().into(),
        Some(state.path().into()),
        &[Kind::Service],
    )
    .await
    .expect("start");
    writer.resources.wait_synced().await;
    reader.resources.wait_synced().await;

    let key = ObjectKey::namespaced(Kind::Service, "default", "web");
    let lb =
        serde_json::json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.1", "ipMode": "VIP"}]}});
    writer
        .status
        .patch_status(key.clone(), lb)
        .await
        .expect("patch");
    // A merge patch adds to, not replaces, the status.
    let cond = serde_json::json!({"conditions": [{"type": "drawbridge.dev/AddressAllocated", "status": "True",
        "reason": "Allocated", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
    writer
        .status
        .patch_status(key.clone(), cond)
        .await
        .expect("patch");

    let file = state.path().join("services/default/web.yaml");
    let text = std::fs::read_to_string(&file).expect("state file written");
    assert!(
        text.contains("203.0.113.1") && text.contains("AddressAllocated"),
        "{text}"
    );

    let ip_of = |r: &crate::Resources| -> Option<String> {
        let svc = r.services.state().into_iter().next()?;
        svc.status
            .as_ref()?
            .load_balancer
            .as_ref()?
            .ingress
            .as_ref()?
            .first()?
            .ip
            .clone()
    };
    assert_eq!(
        ip_of(&writer.resources).as_deref(),
        Some("203.0.113.1"),
        "own write visible at once"
    );
    eventually("other process sees the status", || {
        ip_of(&reader.resources).as_deref() == Some("203.0.113.1")
    })
    .await;

    // Restart: a fresh source recovers status from the state directory.
    let restarted = start(
        dir.path().into(),
        Some(state.path().into()),
        &[Kind::Service],
    )
    .await
    .expect("start");
    restarted.resources.wait_synced().await;
    assert_eq!(ip_of(&restarted.resources).as_deref(), Some("203.0.113.1"));

    // Editing the manifest keeps the status overlay.
    std::fs::write(dir.path().join("web.yaml"), svc_yaml("web", 8080)).expect("write");
    eventually("edit seen", || {
        port_of(&reader.resources, "web") == Some(8080)
    })
    .await;
    assert_eq!(ip_of(&reader.resources).as_deref(), Some("203.0.113.1"));
}

fn annotation_of(resources: &crate::Resources, name: &str, key: &str) -> Option<String> {
    resources
        .services
        .state()
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(name))
        .and_then(|s| s.metadata.annotations.as_ref()?.get(key).cloned())
}

#[tokio::test]
async fn annotations_go_through_the_state_directory_beside_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    // The manifest carries its own annotations: one drawbridge will replace, one it never touches.
    std::fs::write(
        dir.path().join("web.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  annotations:\n    \
         drawbridge.dev/announcing-node: hand-written\n    example.com/owner: team-a\n\
         spec:\n  ports:\n  - port: 80\n",
    )
    .expect("write");
    let start_one = || {
        start(
            dir.path().into(),
            Some(state.path().into()),
            &[Kind::Service],
        )
    };
    let writer = start_one().await.expect("start");
    let reader = start_one().await.expect("start");
    writer.resources.wait_synced().await;
    reader.resources.wait_synced().await;
    let key = ObjectKey::namespaced(Kind::Service, "default", "web");
    const NODE: &str = "drawbridge.dev/announcing-node";
    const CANDIDATES: &str = "drawbridge.dev/announcing-candidates";

    let lb = serde_json::json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.1"}]}});
    writer
        .status
        .patch_status(key.clone(), lb)
        .await
        .expect("status");
    let set: Annotations = [
        (NODE.to_string(), Some("node-b".to_string())),
        (CANDIDATES.to_string(), Some("node-b,node-a".to_string())),
    ]
    .into();
    writer
        .metadata
        .patch_annotations(key.clone(), set)
        .await
        .expect("annotate");

    // One state file holds both status and annotations.
    let text = std::fs::read_to_string(state.path().join("services/default/web.yaml"))
        .expect("state file");
    let doc: Value = serde_yaml::from_str(&text).expect("yaml");
    assert_eq!(doc["metadata"]["annotations"][NODE], "node-b", "{text}");
    assert_eq!(
        doc["status"]["loadBalancer"]["ingress"][0]["ip"],
        "203.0.113.1"
    );
    assert!(
        doc["metadata"]["annotations"]
            .get("example.com/owner")
            .is_none(),
        "only the keys drawbridge wrote are in the state file: {text}"
    );

    // The writer sees its write at once, another process through the watcher; the manifest's
    // other annotations stay; status survives the annotation write.
    assert_eq!(
        annotation_of(&writer.resources, "web", NODE).as_deref(),
        Some("node-b")
    );
    eventually("the reader sees the annotation", || {
        annotation_of(&reader.resources, "web", NODE).as_deref() == Some("node-b")
    })
    .await;
    assert_eq!(
        annotation_of(&reader.resources, "web", CANDIDATES).as_deref(),
        Some("node-b,node-a")
    );
    assert_eq!(
        annotation_of(&reader.resources, "web", "example.com/owner").as_deref(),
        Some("team-a")
    );
    let has_ip = |r: &crate::Resources| {
        r.services.state().iter().any(|s| {
            s.status
                .as_ref()
                .and_then(|st| st.load_balancer.as_ref()?.ingress.as_ref())
                .is_some_and(|i| i.first().and_then(|i| i.ip.as_deref()) == Some("203.0.113.1"))
        })
    };
    assert!(has_ip(&reader.resources));

    // A status write keeps the annotations (one file, both parts).
    let cond = serde_json::json!({"conditions": []});
    writer
        .status
        .patch_status(key.clone(), cond)
        .await
        .expect("status");
    assert_eq!(
        annotation_of(&writer.resources, "web", NODE).as_deref(),
        Some("node-b")
    );

    // Removing wins over the manifest's hand-written value (a merge patch with null).
    let remove: Annotations = [(NODE.to_string(), None)].into();
    writer
        .metadata
        .patch_annotations(key.clone(), remove)
        .await
        .expect("remove");
    assert_eq!(annotation_of(&writer.resources, "web", NODE), None);
    eventually("the reader sees the removal", || {
        annotation_of(&reader.resources, "web", NODE).is_none()
    })
    .await;
    assert_eq!(
        annotation_of(&reader.resources, "web", CANDIDATES).as_deref(),
        Some("node-b,node-a"),
        "keys not named stay"
    );

    // A fresh process (restart) recovers the overlay, status included.
    let restarted = start_one().await.expect("start");
    restarted.resources.wait_synced().await;
    assert_eq!(annotation_of(&restarted.resources, "web", NODE), None);
    assert_eq!(
        annotation_of(&restarted.resources, "web", CANDIDATES).as_deref(),
        Some("node-b,node-a")
    );
    assert!(has_ip(&restarted.resources));

    // An annotation-only state file (no status) leaves the manifest's status alone.
    std::fs::write(
        dir.path().join("api.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: api}\nspec: {ports: [{port: 80}]}\n\
         status: {loadBalancer: {ingress: [{ip: 203.0.113.9}]}}\n",
    )
    .expect("write");
    let api = ObjectKey::namespaced(Kind::Service, "default", "api");
    eventually("api loaded", || port_of(&writer.resources, "api").is_some()).await;
    let set: Annotations = [(NODE.to_string(), Some("node-a".to_string()))].into();
    writer
        .metadata
        .patch_annotations(api, set)
        .await
        .expect("annotate");
    eventually("the reader sees api's annotation", || {
        annotation_of(&reader.resources, "api", NODE).as_deref() == Some("node-a")
    })
    .await;
    let api_ip = reader
        .resources
        .services
        .state()
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("api"))
        .and_then(|s| {
            s.status
                .as_ref()?
                .load_balancer
                .as_ref()?
                .ingress
                .as_ref()?
                .first()?
                .ip
                .clone()
        });
    assert_eq!(api_ip.as_deref(), Some("203.0.113.9"));
}

#[test]
fn paths_under_finds_exactly_the_files_below_a_path() {
    let map: BTreeMap<PathBuf, ()> = [
        "/s/a",
        "/s/a/b.yaml",
        "/s/a/c/d.yaml",
        "/s/a.yaml",
        "/s/a b.yaml",
        "/s/ab/x.yaml",
        "/s/a-/y.yaml",
        "/s/0.yaml",
        "/t/a/z.yaml",
    ]
    .into_iter()
    .map(|p| (PathBuf::from(p), ()))
    .collect();
    let under = |p: &str| -> Vec<String> {
        paths_under(&map, Path::new(p))
            .into_iter()
            .map(|p| p.display().to_string())
            .collect()
    };
    assert_eq!(under("/s/a"), ["/s/a", "/s/a/b.yaml", "/s/a/c/d.yaml"]);
    assert_eq!(under("/s/a/b.yaml"), ["/s/a/b.yaml"]);
    assert_eq!(under("/s/a/b"), Vec::<String>::new());
    assert_eq!(under("/s/.a.yaml.tmp.1"), Vec::<String>::new());
    assert_eq!(under("/s").len(), 8);
    assert_eq!(under("/t"), ["/t/a/z.yaml"]);
}
