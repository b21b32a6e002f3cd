//! The HTTP side: accept loop, request recording, REST handlers and watch streams.
//!
//! Handlers are synchronous under the store lock; only a watch outlives its request, as a task
//! that writes newline-delimited events into a channel the response body streams from.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use crate::catalog::ResourceType;
use crate::failure::Failure;
use crate::fields::Write;
use crate::patch::{self, PatchType};
use crate::route::{Query, ResourcePath, Route};
use crate::selector::{Filter, Selector};
use crate::store::{Change, EventType, ObjectKey};
use crate::{BOOKMARK_INTERVAL, Inner, RecordedRequest};

type Body = BoxBody<Bytes, Infallible>;

/// Watch lines buffered between the watch task and the connection.
const WATCH_BUFFER: usize = 64;

/// A decoded request, minus the route.
struct ApiRequest {
    method: Method,
    query: Query,
    content_type: String,
    /// `Accept: application/json;as=PartialObjectMetadata[List];g=meta.k8s.io;v=v1`
    metadata_only: bool,
    /// The field manager of a write: `?fieldManager=`, else the `User-Agent` up to its first `/`
    /// (the API server's default), else `unknown`.
    field_manager: String,
    body: Bytes,
}

/// What a handler answers.
enum Reply {
    Json(StatusCode, Value),
    Stream(Response<Body>),
}

impl From<Failure> for Reply {
    fn from(failure: Failure) -> Self {
        let status =
            StatusCode::from_u16(failure.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Reply::Json(status, failure.to_status())
    }
}

/// Accepts connections until the runtime shuts down. `label` tags every request recorded from
/// this listener ([`RecordedRequest::client`]).
pub(crate) async fn serve(listener: TcpListener, inner: Arc<Inner>, label: Option<Arc<str>>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(_) => {
                // e.g. EMFILE: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let inner = inner.clone();
        let label = label.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let inner = inner.clone();
                let label = label.clone();
                async move { Ok::<_, Infallible>(handle(&inner, request, label.as_deref()).await) }
            });
            // A client hanging up mid-request is the client's business.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(inner: &Inner, request: Request<Incoming>, label: Option<&str>) -> Response<Body> {
    if let Some(control) = parts_control(&request) {
        return respond(control_request(inner, &control, request.method()));
    }
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            return respond(Failure::bad_request(format!("reading the body: {error}")).into());
        }
    };
    let raw_query = parts.uri.query().unwrap_or("").to_string();
    let query = Query::parse(&raw_query);
    let header = |name: header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let content_type = header(header::CONTENT_TYPE);
    let user_agent = header(header::USER_AGENT);
    let accept = header(header::ACCEPT).unwrap_or_default();
    let route = Route::parse(parts.uri.path(), &inner.store().catalog);

    let resource_path = match &route {
        Route::Resource(path) => Some(path),
        _ => None,
    };
    let record = RecordedRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: raw_query,
        verb: route.verb(&parts.method, &query),
        resource: resource_path.map(|p| p.resource.plural.clone()),
        group: resource_path.map(|p| p.resource.group().to_string()),
        subresource: resource_path.and_then(|p| p.subresource.clone()),
        namespace: resource_path.and_then(|p| p.namespace.clone()),
        name: resource_path.and_then(|p| p.name.clone()),
        content_type: content_type.clone(),
        body: String::from_utf8_lossy(&body).into_owned(),
        user_agent: user_agent.clone(),
        client: label.map(str::to_string),
    };
    let field_manager = query
        .get("fieldManager")
        .filter(|m| !m.is_empty())
        .map(str::to_string)
        .or_else(|| {
            user_agent
                .as_deref()
                .and_then(|ua| ua.split('/').next())
                .filter(|m| !m.is_empty())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".to_string());

    let request = ApiRequest {
        method: parts.method,
        query,
        content_type: content_type.unwrap_or_default(),
        metadata_only: accept.contains("as=PartialObjectMetadata"),
        field_manager,
        body,
    };
    let reply = match route {
        Route::Resource(path) => {
            resource_request(inner, &path, &request).unwrap_or_else(Reply::from)
        }
        Route::Unknown => Failure::no_route().into(),
        _ if request.method != Method::GET => {
            Failure::method_not_allowed(request.method.as_str()).into()
        }
        Route::Version => Reply::Json(StatusCode::OK, version_info()),
        Route::CoreVersions => Reply::Json(StatusCode::OK, core_versions(inner)),
        Route::Groups => Reply::Json(StatusCode::OK, group_list(inner)),
        Route::GroupVersion(api_version) => {
            Reply::Json(StatusCode::OK, resource_list(inner, &api_version))
        }
    };
    // Recorded once handled, so a recorded watch is already subscribed to changes.
    inner.requests().push(record);
    respond(reply)
}

// === control endpoints (`/_double/...`) ===

/// The control endpoint a request addresses, if its path is under `/_double/`.
fn parts_control(request: &Request<Incoming>) -> Option<String> {
    request
        .uri()
        .path()
        .strip_prefix("/_double/")
        .map(|rest| rest.trim_end_matches('/').to_string())
}

fn control_request(inner: &Inner, control: &str, method: &Method) -> Reply {
    match (method, control) {
        (&Method::POST, "expire-history") => {
            inner.store().expire_history();
            Reply::Json(StatusCode::OK, json!({"expired": true}))
        }
        (&Method::POST, "close-watches") => {
            inner
                .close_watches
                .send_modify(|generation| *generation += 1);
            Reply::Json(StatusCode::OK, json!({"closed": true}))
        }
        (&Method::GET, "open-watches") => Reply::Json(
            StatusCode::OK,
            json!({"openWatches": inner.open_watches.load(Ordering::SeqCst)}),
        ),
        (&Method::GET, "requests") => {
            let mut lines = Vec::new();
            for r in inner.requests().iter() {
                lines.extend(json_bytes(&json!({
                    "client": r.client, "verb": r.verb, "group": r.group, "resource": r.resource,
                    "subresource": r.subresource, "namespace": r.namespace, "name": r.name,
                    "method": r.method, "path": r.path, "query": r.query, "user_agent": r.user_agent,
                })));
                lines.push(b'\n');
            }
            let mut response = Response::new(Full::new(Bytes::from(lines)).boxed());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            );
            Reply::Stream(response)
        }
        (_, "expire-history" | "close-watches" | "open-watches" | "requests") => {
            Failure::method_not_allowed(method.as_str()).into()
        }
        _ => Failure::no_route().into(),
    }
}

fn respond(reply: Reply) -> Response<Body> {
    match reply {
        Reply::Stream(response) => response,
        Reply::Json(status, value) => {
            let mut response = Response::new(Full::new(Bytes::from(json_bytes(&value))).boxed());
            *response.status_mut() = status;
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
    }
}

fn json_bytes(value: &Value) -> Vec<u8> {
    // Serializing a `Value` cannot fail (keys are strings).
    serde_json::to_vec(value).unwrap_or_default()
}

// === resources ===

fn resource_request(
    inner: &Inner,
    path: &ResourcePath,
    request: &ApiRequest,
) -> Result<Reply, Failure> {
    if let Some(subresource) = &path.subresource
        && (subresource != "status" || !path.resource.status_subresource)
    {
        return Err(Failure::no_route());
    }
    let name = path.name.as_deref();
    match (&request.method, name) {
        (&Method::GET, _) if request.query.flag("watch") => {
            watch(inner, path, request).map(Reply::Stream)
        }
        (&Method::GET, None) => list(inner, path, request),
        (&Method::GET, Some(name)) => get(inner, path, name, request),
        (&Method::POST, None) if path.namespace.is_some() || !path.resource.namespaced => {
            create(inner, path, request)
        }
        (&Method::PUT, Some(name)) => update(inner, path, name, request),
        (&Method::PATCH, Some(name)) => patch(inner, path, name, request),
        (&Method::DELETE, Some(name)) => delete(inner, path, name, request),
        (&Method::DELETE, None) => delete_collection(inner, path, request),
        (method, _) => Err(Failure::method_not_allowed(method.as_str())),
    }
}

fn filter(path: &ResourcePath, query: &Query) -> Result<Filter, Failure> {
    let mut fields = query.get("fieldSelector").unwrap_or("").to_string();
    if let Some(name) = &path.name {
        // A watch on a named path is a watch with `metadata.name=` (the deprecated form).
        fields = format!("{fields},metadata.name={name}");
    }
    Ok(Filter {
        namespace: path.namespace.clone(),
        labels: Selector::labels(query.get("labelSelector").unwrap_or(""))
            .map_err(Failure::bad_request)?,
        fields: Selector::fields(&fields).map_err(Failure::bad_request)?,
    })
}

/// The object as the client asked to see it: whole, or as `PartialObjectMetadata`.
fn present(object: &Value, metadata_only: bool) -> Value {
    if metadata_only {
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": object["metadata"]})
    } else {
        object.clone()
    }
}

fn key(path: &ResourcePath, name: &str) -> ObjectKey {
    ObjectKey::new(&path.resource, path.namespace.as_deref(), name)
}

fn parse_body(request: &ApiRequest) -> Result<Value, Failure> {
    let value: Value = serde_json::from_slice(&request.body)
        .or_else(|json_error| serde_yaml::from_slice(&request.body).map_err(|_| json_error))
        .map_err(|e| {
            Failure::bad_request(format!("the request body is not valid JSON or YAML: {e}"))
        })?;
    Ok(value)
}

fn parse_object(request: &ApiRequest, resource: &ResourceType) -> Result<Value, Failure> {
    let object = parse_body(request)?;
    if !object.is_object() {
        return Err(Failure::bad_request("the request body must be an object"));
    }
    for (field, want) in [
        ("apiVersion", &resource.api_version),
        ("kind", &resource.kind),
    ] {
        if let Some(got) = object[field].as_str()
            && got != want
        {
            return Err(Failure::bad_request(format!(
                "{field} {got:?} does not match the request path ({want:?})"
            )));
        }
    }
    Ok(object)
}

fn list(inner: &Inner, path: &ResourcePath, request: &ApiRequest) -> Result<Reply, Failure> {
    let filter = filter(path, &request.query)?;
    let store = inner.store();
    let items: Vec<Value> = store
        .list(&path.resource, &filter)
        .iter()
        .map(|object| present(object, request.metadata_only))
        .collect();
    let (api_version, kind) = if request.metadata_only {
        (
            "meta.k8s.io/v1".to_string(),
            "PartialObjectMetadataList".to_string(),
        )
    } else {
        (
            path.resource.api_version.clone(),
            format!("{}List", path.resource.kind),
        )
    };
    Ok(Reply::Json(
        StatusCode::OK,
        json!({
            "apiVersion": api_version,
            "kind": kind,
            "metadata": {"resourceVersion": store.resource_version().to_string()},
            "items": items,
        }),
    ))
}

fn get(
    inner: &Inner,
    path: &ResourcePath,
    name: &str,
    request: &ApiRequest,
) -> Result<Reply, Failure> {
    let store = inner.store();
    let object = store
        .get(&key(path, name))
        .ok_or_else(|| Failure::not_found(&path.resource.plural, name))?;
    Ok(Reply::Json(
        StatusCode::OK,
        present(object, request.metadata_only),
    ))
}

fn create(inner: &Inner, path: &ResourcePath, request: &ApiRequest) -> Result<Reply, Failure> {
    let resource = &path.resource;
    let mut object = parse_object(request, resource)?;
    if let (Some(in_path), Some(in_body)) =
        (&path.namespace, object["metadata"]["namespace"].as_str())
        && in_path != in_body
    {
        return Err(Failure::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let mut store = inner.store();
    let name = match (
        object["metadata"]["name"].as_str(),
        object["metadata"]["generateName"].as_str(),
    ) {
        (Some(name), _) if !name.is_empty() => name.to_string(),
        (_, Some(prefix)) if !prefix.is_empty() => {
            let mut seed = store.resource_version();
            loop {
                let candidate = format!("{prefix}{}", name_suffix(seed));
                if store.get(&key(path, &candidate)).is_none() {
                    break candidate;
                }
                seed += 7919;
            }
        }
        _ => {
            return Err(Failure::invalid(
                &resource.plural,
                "",
                "metadata.name: Required value: name or generateName is required",
            ));
        }
    };
    let key = key(path, &name);
    if store.get(&key).is_some() {
        return Err(Failure::already_exists(&resource.plural, &name));
    }
    object["metadata"]["name"] = json!(name);
    if resource.status_subresource
        && let Some(map) = object.as_object_mut()
    {
        // The status strategy resets status on create; controllers write it through `/status`.
        map.remove("status");
    }
    let write = Write::Update(&request.field_manager);
    Ok(Reply::Json(
        StatusCode::CREATED,
        store.insert(key, object, write),
    ))
}

/// Five characters from the alphabet `generateName` uses (no vowels, no confusable digits).
fn name_suffix(seed: u64) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut x = seed
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    (0..5)
        .map(|_| {
            x ^= x >> 33;
            x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
            ALPHABET[(x % ALPHABET.len() as u64) as usize] as char
        })
        .collect()
}

/// The status strategy: what a client write may change, given the stored object.
fn status_strategy(
    resource: &ResourceType,
    current: Option<&Value>,
    mut written: Value,
    to_status: bool,
) -> Value {
    let stored_status = current.and_then(|c| c.get("status")).cloned();
    let (mut result, status) = match (to_status, current) {
        // `/status` changes only `status`.
        (true, Some(current)) => (current.clone(), written.get("status").cloned()),
        // The main resource cannot change `status`.
        _ if resource.status_subresource => {
            let result = std::mem::take(&mut written);
            (result, stored_status)
        }
        _ => return written,
    };
    if let Some(map) = result.as_object_mut() {
        match status {
            Some(status) => drop(map.insert("status".to_string(), status)),
            None => drop(map.remove("status")),
        }
    }
    result
}

fn check_identity(object: &Value, path: &ResourcePath, name: &str) -> Result<(), Failure> {
    if let Some(in_body) = object["metadata"]["name"].as_str()
        && in_body != name
    {
        return Err(Failure::bad_request(format!(
            "the name of the object ({in_body}) does not match the name on the URL ({name})"
        )));
    }
    if let (Some(in_path), Some(in_body)) =
        (&path.namespace, object["metadata"]["namespace"].as_str())
        && in_path != in_body
    {
        return Err(Failure::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    Ok(())
}

/// Optimistic concurrency: a `metadata.resourceVersion` in the written object must be current.
fn check_resource_version(
    written: &Value,
    current: &Value,
    path: &ResourcePath,
    name: &str,
) -> Result<(), Failure> {
    match written["metadata"]["resourceVersion"].as_str() {
        Some(rv)
            if !rv.is_empty() && Some(rv) != current["metadata"]["resourceVersion"].as_str() =>
        {
            Err(Failure::conflict(&path.resource.plural, name))
        }
        _ => Ok(()),
    }
}

fn update(
    inner: &Inner,
    path: &ResourcePath,
    name: &str,
    request: &ApiRequest,
) -> Result<Reply, Failure> {
    let object = parse_object(request, &path.resource)?;
    check_identity(&object, path, name)?;
    let key = key(path, name);
    let mut store = inner.store();
    let current = store
        .get(&key)
        .ok_or_else(|| Failure::not_found(&path.resource.plural, name))?;
    check_resource_version(&object, current, path, name)?;
    let written = status_strategy(
        &path.resource,
        Some(current),
        object,
        path.subresource.is_some(),
    );
    let write = Write::Update(&request.field_manager);
    Ok(Reply::Json(
        StatusCode::OK,
        store.replace(key, written, write),
    ))
}

fn patch(
    inner: &Inner,
    path: &ResourcePath,
    name: &str,
    request: &ApiRequest,
) -> Result<Reply, Failure> {
    let resource = &path.resource;
    let patch_type = PatchType::from_content_type(&request.content_type)
        .ok_or_else(|| Failure::unsupported_media_type(&request.content_type))?;
    if patch_type == PatchType::Apply && request.query.get("fieldManager").is_none_or(str::is_empty)
    {
        return Err(Failure::invalid(
            resource.plural.as_str(),
            name,
            "fieldManager: Required value: is required for apply patch",
        ));
    }
    let body = parse_body(request)?;
    let to_status = path.subresource.is_some();
    let key = key(path, name);
    let mut store = inner.store();
    let current = store.get(&key).cloned();
    let base = match &current {
        Some(current) => current.clone(),
        // Server-side apply creates.
        None if patch_type == PatchType::Apply && !to_status => json!({
            "apiVersion": resource.api_version,
            "kind": resource.kind,
            "metadata": {"name": name, "namespace": path.namespace},
        }),
        None => return Err(Failure::not_found(&resource.plural, name)),
    };
    let write = match patch_type {
        PatchType::Apply => Write::Apply {
            manager: &request.field_manager,
            applied: &body,
        },
        _ => Write::Update(&request.field_manager),
    };
    if patch_type == PatchType::Apply && !request.query.flag("force") {
        let conflicts =
            store
                .owners(&key)
                .conflicts(&request.field_manager, current.as_ref(), &body);
        if !conflicts.is_empty() {
            return Err(Failure::apply_conflict(&resource.plural, name, &conflicts));
        }
    }
    let mut patched = base;
    match patch_type {
        PatchType::Json => patch::json_patch(&mut patched, &body)
            .map_err(|e| Failure::invalid(&resource.plural, name, e))?,
        PatchType::Merge | PatchType::StrategicMerge | PatchType::Apply => {
            patch::merge(&mut patched, &body)
        }
    }
    check_identity(&patched, path, name)?;
    let reply = match current {
        Some(current) => {
            check_resource_version(&patched, &current, path, name)?;
            let written = status_strategy(resource, Some(&current), patched, to_status);
            Reply::Json(StatusCode::OK, store.replace(key, written, write))
        }
        None => {
            let written = status_strategy(resource, None, patched, false);
            Reply::Json(StatusCode::CREATED, store.insert(key, written, write))
        }
    };
    Ok(reply)
}

fn delete(
    inner: &Inner,
    path: &ResourcePath,
    name: &str,
    _request: &ApiRequest,
) -> Result<Reply, Failure> {
    let deleted = inner
        .store()
        .remove(&key(path, name))
        .ok_or_else(|| Failure::not_found(&path.resource.plural, name))?;
    Ok(Reply::Json(StatusCode::OK, deleted))
}

fn delete_collection(
    inner: &Inner,
    path: &ResourcePath,
    request: &ApiRequest,
) -> Result<Reply, Failure> {
    let filter = filter(path, &request.query)?;
    let mut store = inner.store();
    let mut deleted = Vec::new();
    for object in store.list(&path.resource, &filter) {
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let key = ObjectKey::new(
            &path.resource,
            object["metadata"]["namespace"].as_str(),
            name,
        );
        deleted.extend(store.remove(&key));
    }
    Ok(Reply::Json(
        StatusCode::OK,
        json!({
            "apiVersion": path.resource.api_version,
            "kind": format!("{}List", path.resource.kind),
            "metadata": {"resourceVersion": store.resource_version().to_string()},
            "items": deleted,
        }),
    ))
}

// === watch ===

/// What a watch task needs after the request returns.
struct WatchStream {
    tx: mpsc::Sender<Bytes>,
    /// Lines to send first: synthetic `ADDED`s and the initial-events-end bookmark, the replayed
    /// log, or the `410` error.
    initial: Vec<Bytes>,
    /// Live changes; `None` when the watch ends after `initial` (the `410` case).
    changes: Option<broadcast::Receiver<Arc<Change>>>,
    resource: ResourceType,
    filter: Filter,
    metadata_only: bool,
    bookmarks: bool,
    deadline: Option<Instant>,
    close: tokio::sync::watch::Receiver<u64>,
    /// The newest version this stream has accounted for; bookmarks carry it.
    resource_version: u64,
    /// Counts this stream in [`crate::ApiDouble::open_watches`] while it is live.
    _open: Option<OpenWatch>,
}

/// One open watch stream, counted while alive.
struct OpenWatch(Arc<AtomicUsize>);

impl OpenWatch {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(counter.clone())
    }
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn watch(
    inner: &Inner,
    path: &ResourcePath,
    request: &ApiRequest,
) -> Result<Response<Body>, Failure> {
    let query = &request.query;
    let filter = filter(path, query)?;
    let requested = query.get("resourceVersion").unwrap_or("");
    let send_initial_events = query.flag("sendInitialEvents");
    let deadline = query
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map(|secs| Instant::now() + Duration::from_secs(secs));

    let (tx, rx) = mpsc::channel::<Bytes>(WATCH_BUFFER);
    let mut stream = WatchStream {
        tx,
        initial: Vec::new(),
        changes: None,
        resource: path.resource.clone(),
        filter,
        metadata_only: request.metadata_only,
        bookmarks: query.flag("allowWatchBookmarks"),
        deadline,
        close: inner.close_watches.subscribe(),
        resource_version: 0,
        _open: None,
    };
    {
        // Read the state or log and subscribe under one lock: nothing is missed or repeated.
        let store = inner.store();
        stream.resource_version = store.resource_version();
        if send_initial_events || requested.is_empty() || requested == "0" {
            // "Get state and start at most recent / any": synthetic ADDED for what exists now.
            for object in store.list(&stream.resource, &stream.filter) {
                stream
                    .initial
                    .push(event_line("ADDED", &present(&object, stream.metadata_only)));
            }
            if send_initial_events {
                stream.initial.push(stream.bookmark(true));
            }
            stream.changes = Some(store.subscribe());
            stream._open = Some(OpenWatch::new(&inner.open_watches));
        } else {
            let from: u64 = requested.parse().map_err(|_| {
                Failure::bad_request(format!("invalid resource version {requested:?}"))
            })?;
            match store.changes_since(from) {
                Ok(log) => {
                    let replayed: Vec<Bytes> = log
                        .iter()
                        .filter_map(|change| stream.project(change))
                        .collect();
                    stream.initial = replayed;
                    stream.changes = Some(store.subscribe());
                    stream._open = Some(OpenWatch::new(&inner.open_watches));
                }
                // The API server answers 200 and sends the error as an event.
                Err(failure) => stream
                    .initial
                    .push(event_line("ERROR", &failure.to_status())),
            }
        }
    }
    tokio::spawn(stream.run());

    let frames = futures::stream::unfold(rx, |mut rx| async move {
        let line = rx.recv().await?;
        Some((Ok::<_, Infallible>(Frame::data(line)), rx))
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

fn event_line(event_type: &str, object: &Value) -> Bytes {
    let mut line = json_bytes(&json!({"type": event_type, "object": object}));
    line.push(b'\n');
    Bytes::from(line)
}

// === impl WatchStream ===

impl WatchStream {
    async fn run(mut self) {
        let deadline = async {
            match self.deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        for line in std::mem::take(&mut self.initial) {
            tokio::select! {
                biased;
                _ = self.close.changed() => return,
                _ = &mut deadline => return,
                sent = self.tx.send(line) => if sent.is_err() { return },
            }
        }
        let Some(mut changes) = self.changes.take() else {
            return;
        };
        let mut bookmark_timer =
            tokio::time::interval_at(Instant::now() + BOOKMARK_INTERVAL, BOOKMARK_INTERVAL);
        loop {
            let line = tokio::select! {
                // Ending wins over pending changes: after `close_watches()` returns, no open
                // stream delivers another event.
                biased;
                _ = self.close.changed() => return,
                _ = &mut deadline => return,
                _ = self.tx.closed() => return,
                _ = bookmark_timer.tick(), if self.bookmarks => self.bookmark(false),
                change = changes.recv() => match change {
                    Ok(change) => {
                        self.resource_version = change.resource_version;
                        match self.project(&change) {
                            Some(line) => line,
                            None => continue,
                        }
                    }
                    // Lagged: too slow; end so the client resumes from its last version.
                    Err(broadcast::error::RecvError::Lagged(_) | broadcast::error::RecvError::Closed) => return,
                },
            };
            if self.tx.send(line).await.is_err() {
                return;
            }
        }
    }

    /// The watch event a change becomes for this stream, if any. Objects entering the selection
    /// appear as `ADDED`, objects leaving it as `DELETED` (as the API server's watch cache does).
    fn project(&self, change: &Change) -> Option<Bytes> {
        if change.api_version != self.resource.api_version || change.kind != self.resource.kind {
            return None;
        }
        let now = self.filter.matches(&change.object);
        let before = change
            .previous
            .as_ref()
            .is_some_and(|previous| self.filter.matches(previous));
        let event_type = match (change.event_type, before, now) {
            (EventType::Added, _, true) => "ADDED",
            (EventType::Modified, true, true) => "MODIFIED",
            (EventType::Modified, false, true) => "ADDED",
            (EventType::Modified, true, false) => "DELETED",
            (EventType::Deleted, _, true) => "DELETED",
            _ => return None,
        };
        Some(event_line(
            event_type,
            &present(&change.object, self.metadata_only),
        ))
    }

    fn bookmark(&self, initial_events_end: bool) -> Bytes {
        let (api_version, kind) = if self.metadata_only {
            ("meta.k8s.io/v1", "PartialObjectMetadata")
        } else {
            (
                self.resource.api_version.as_str(),
                self.resource.kind.as_str(),
            )
        };
        let mut metadata = json!({"resourceVersion": self.resource_version.to_string()});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        event_line(
            "BOOKMARK",
            &json!({"apiVersion": api_version, "kind": kind, "metadata": metadata}),
        )
    }
}

// === discovery ===

fn version_info() -> Value {
    json!({
        "major": "1",
        "minor": "35",
        "gitVersion": "v1.35.0-drawbridge-api-double",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.25.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn core_versions(inner: &Inner) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": inner.addr.to_string()}],
    })
}

fn group_list(inner: &Inner) -> Value {
    let store = inner.store();
    let mut groups: Vec<Value> = Vec::new();
    for api_version in store.catalog.api_versions() {
        let Some((group, version)) = api_version.split_once('/') else {
            continue;
        };
        let entry = json!({"groupVersion": api_version, "version": version});
        match groups.iter_mut().find(|g| g["name"] == group) {
            Some(existing) => {
                if let Some(versions) = existing["versions"].as_array_mut() {
                    versions.push(entry);
                }
            }
            None => groups.push(
                json!({"name": group, "versions": [entry.clone()], "preferredVersion": entry}),
            ),
        }
    }
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource_list(inner: &Inner, api_version: &str) -> Value {
    let store = inner.store();
    let mut resources = Vec::new();
    for resource in store.catalog.in_api_version(api_version) {
        resources.push(json!({
            "name": resource.plural,
            "singularName": resource.kind.to_ascii_lowercase(),
            "namespaced": resource.namespaced,
            "kind": resource.kind,
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
        }));
        if resource.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", resource.plural),
                "singularName": "",
                "namespaced": resource.namespaced,
                "kind": resource.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": api_version, "resources": resources})
}
