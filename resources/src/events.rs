//! Kubernetes Events for what an operator must see: one trait, three implementations, and the
//! de-duplication that lets level-triggered loops call it every pass.
//!
//! ```text
//!  component ── Event { regarding, type, reason, note } ──┬─ EventSet (level: publish what is new
//!                                                         │   since the last pass)
//!                                                         └─ LastEvents (edge: per object, publish
//!                                                             when its latest event changes)
//!        ▼ EventRecorder::publish
//!  KubeEventRecorder: events.k8s.io/v1 via kube-runtime's Recorder (reporter drawbridge.dev/<binary>,
//!                     instance $POD_NAME)
//!  LogEventRecorder:  `target: "event"` log line (+ `<state-dir>/events.log`, one JSON line each)
//!  RecordingEventRecorder: test fake
//! ```
//!
//! Publishing never fails the caller: an Event is a side channel, so an API error is logged (`warn`)
//! and dropped (the next change publishes again). In Kubernetes mode it does not wait either: Events
//! are queued and POSTed by a background task (see [`KubeEventRecorder`]).

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

use crate::source::ObjectKey;

/// An Event's note is cut to this many bytes (the API's limit is 1 kB).
pub const NOTE_MAX_BYTES: usize = 1024;

/// Severity (`type` of an events.k8s.io/v1 Event).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    /// Something an operator may like to know (an address was allocated).
    Normal,
    /// Something an operator has to act on (a pool is exhausted, an Ingress was rejected).
    Warning,
}

impl EventType {
    /// `Normal` / `Warning`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// One Event about one object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Event {
    /// The object the Event is about (`regarding`).
    pub regarding: ObjectKey,
    /// Its `metadata.uid` when known: `kubectl describe` only lists Events whose reference carries
    /// the object's uid.
    pub uid: Option<String>,
    /// Severity.
    pub type_: EventType,
    /// PascalCase reason (`AllocationFailed`, `Rejected`, ...).
    pub reason: &'static str,
    /// PascalCase action that was attempted (`Allocate`, `Translate`, ...); required by the API.
    pub action: &'static str,
    /// Human-readable detail, at most [`NOTE_MAX_BYTES`] (cut when published).
    pub note: String,
}

impl Event {
    /// A `Warning` Event.
    pub fn warning(
        regarding: ObjectKey,
        reason: &'static str,
        action: &'static str,
        note: impl Into<String>,
    ) -> Self {
        Event {
            regarding,
            uid: None,
            type_: EventType::Warning,
            reason,
            action,
            note: note.into(),
        }
    }

    /// A `Normal` Event.
    pub fn normal(
        regarding: ObjectKey,
        reason: &'static str,
        action: &'static str,
        note: impl Into<String>,
    ) -> Self {
        Event {
            regarding,
            uid: None,
            type_: EventType::Normal,
            reason,
            action,
            note: note.into(),
        }
    }

    /// The same Event with the object's uid.
    pub fn with_uid(mut self, uid: Option<String>) -> Self {
        self.uid = uid;
        self
    }

    fn truncated_note(&self) -> String {
        if self.note.len() <= NOTE_MAX_BYTES {
            return self.note.clone();
        }
        let mut end = NOTE_MAX_BYTES - 3;
        while !self.note.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &self.note[..end])
    }
}

/// Publishes Events. Implementations log their own failures; callers never wait on retries.
pub trait EventRecorder: Send + Sync {
    /// Publishes `event` (best effort).
    fn publish(&self, event: Event) -> BoxFuture<'_, ()>;
}

/// `drawbridge.dev/<name of this executable>`: the reporting controller of Events.
pub fn reporting_controller() -> String {
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "drawbridge".to_string());
    format!("drawbridge.dev/{exe}")
}

/// The reporting instance: `$POD_NAME` (downward API), else the host name, else the controller.
pub fn reporting_instance() -> Option<String> {
    std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|s| !s.is_empty())
}

// === impl KubeEventRecorder ===

/// Events waiting for their POST at most; more are dropped (counted and logged). client-go's
/// broadcaster queues 1,000 and drops the same way; a burst of allocations at start-up (10,000
/// Services) is larger than that, so the queue is 4,096 (~2 MiB when full).
pub const EVENT_QUEUE: usize = 4096;

/// Creates events.k8s.io/v1 Events through kube-runtime's [`Recorder`] (which also turns repeats
/// within minutes into an Event series). Needs RBAC `create`, `patch` on `events.k8s.io/events`.
///
/// `publish` only logs the Event and queues it: one background task POSTs the queue in order, so
/// a status write never waits for an Event's round trip (a bulk allocation was one claim POST +
/// one status PATCH + one Event POST per Service, one after another). A full queue
/// ([`EVENT_QUEUE`]) drops the Event, and the task logs how many were dropped. Must be created
/// inside a tokio runtime.
pub struct KubeEventRecorder {
    queue: tokio::sync::mpsc::Sender<(kube::runtime::events::Event, ObjectReference, ObjectKey)>,
    dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl KubeEventRecorder {
    /// A recorder on `client` reporting as [`reporting_controller`] / [`reporting_instance`];
    /// spawns the task that publishes (it ends when the recorder is dropped).
    pub fn new(client: Client) -> Self {
        let reporter = Reporter {
            controller: reporting_controller(),
            instance: reporting_instance(),
        };
        let recorder = Recorder::new(client, reporter);
        let (queue, mut rx) = tokio::sync::mpsc::channel::<(
            kube::runtime::events::Event,
            ObjectReference,
            ObjectKey,
        )>(EVENT_QUEUE);
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let lost = dropped.clone();
        tokio::spawn(async move {
            while let Some((ev, reference, key)) = rx.recv().await {
                if let Err(error) = recorder.publish(&ev, &reference).await {
                    tracing::warn!(%error, object = %key, reason = ev.reason, "publishing Event failed");
                }
                let n = lost.swap(0, std::sync::atomic::Ordering::Relaxed);
                if n > 0 {
                    tracing::warn!(
                        dropped = n,
                        queue = EVENT_QUEUE,
                        "Event queue full; Events dropped (their log lines were written)"
                    );
                }
            }
        });
        KubeEventRecorder { queue, dropped }
    }
}

impl EventRecorder for KubeEventRecorder {
    fn publish(&self, event: Event) -> BoxFuture<'_, ()> {
        let key = &event.regarding;
        let reference = ObjectReference {
            api_version: Some(key.kind.api_version().to_string()),
            kind: Some(key.kind.name().to_string()),
            namespace: key.namespace.clone(),
            name: Some(key.name.clone()),
            uid: event.uid.clone(),
            ..ObjectReference::default()
        };
        let ev = kube::runtime::events::Event {
            type_: match event.type_ {
                EventType::Normal => kube::runtime::events::EventType::Normal,
                EventType::Warning => kube::runtime::events::EventType::Warning,
            },
            reason: event.reason.to_string(),
            note: Some(event.truncated_note()),
            action: event.action.to_string(),
            secondary: None,
        };
        log_event(&event);
        if self.queue.try_send((ev, reference, key.clone())).is_err() {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Box::pin(std::future::ready(()))
    }
}

fn log_event(event: &Event) {
    let (object, reason, note) = (&event.regarding, event.reason, event.note.as_str());
    match event.type_ {
        EventType::Normal => tracing::info!(target: "event", %object, reason, note, "event"),
        EventType::Warning => tracing::warn!(target: "event", %object, reason, note, "event"),
    }
}

// === impl LogEventRecorder ===

/// Standalone mode: an Event is a log line (`target: "event"`), and with a state directory also one
/// JSON line in `<state-dir>/events.log` (shared by every process on that directory; each line is
/// one `write` in append mode).
pub struct LogEventRecorder {
    file: Option<PathBuf>,
}

impl LogEventRecorder {
    /// Logs only, or also appends to `state_dir/events.log`.
    pub fn new(state_dir: Option<PathBuf>) -> Self {
        LogEventRecorder {
            file: state_dir.map(|d| d.join("events.log")),
        }
    }
}

impl EventRecorder for LogEventRecorder {
    fn publish(&self, event: Event) -> BoxFuture<'_, ()> {
        log_event(&event);
        if let Some(path) = &self.file {
            let line = serde_json::json!({
                "time": crate::observe::unix_now(),
                "reportingController": reporting_controller(),
                "type": event.type_.as_str(),
                "reason": event.reason,
                "action": event.action,
                "regarding": {
                    "kind": event.regarding.kind.name(),
                    "namespace": event.regarding.namespace,
                    "name": event.regarding.name,
                },
                "note": event.truncated_note(),
            });
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
            if let Err(error) = written {
                tracing::warn!(%error, path = %path.display(), "appending Event failed");
            }
        }
        Box::pin(async {})
    }
}

// === impl RecordingEventRecorder ===

/// Test fake: records every Event in order.
#[derive(Default)]
pub struct RecordingEventRecorder {
    events: Mutex<Vec<Event>>,
}

impl RecordingEventRecorder {
    /// Every Event so far, oldest first.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().expect("lock poisoned").clone()
    }
}

impl EventRecorder for RecordingEventRecorder {
    fn publish(&self, event: Event) -> BoxFuture<'_, ()> {
        self.events.lock().expect("lock poisoned").push(event);
        Box::pin(async {})
    }
}

// === impl EventSet ===

/// De-duplication for level-triggered loops that recompute their problems every pass: give it the
/// complete list each pass; it publishes only Events not in the previous pass's list. A problem
/// that persists is published once; one that goes away and comes back is published again.
#[derive(Debug, Default)]
pub struct EventSet {
    last: HashSet<Event>,
}

impl EventSet {
    /// Publishes what is new in `current` (in a stable order) and remembers `current`.
    pub async fn publish(
        &mut self,
        recorder: &dyn EventRecorder,
        current: impl IntoIterator<Item = Event>,
    ) {
        let current: HashSet<Event> = current.into_iter().collect();
        let mut new: Vec<&Event> = current.difference(&self.last).collect();
        new.sort();
        for event in new {
            recorder.publish(event.clone()).await;
        }
        self.last = current;
    }
}

// === impl LastEvents ===

/// De-duplication for edge-style Events (published when an action succeeded): per object, the
/// latest Event's `(type, reason, note)`; an Event equal to it is not published again.
#[derive(Debug, Default)]
pub struct LastEvents {
    last: HashMap<ObjectKey, (EventType, &'static str, String)>,
}

impl LastEvents {
    /// Publishes `event` unless it repeats the object's latest one.
    pub async fn publish(&mut self, recorder: &dyn EventRecorder, event: Event) {
        let summary = (event.type_, event.reason, event.note.clone());
        if self.last.get(&event.regarding) == Some(&summary) {
            return;
        }
        self.last.insert(event.regarding.clone(), summary);
        recorder.publish(event).await;
    }

    /// Forgets objects for which `keep` is false (deleted objects).
    pub fn retain(&mut self, mut keep: impl FnMut(&ObjectKey) -> bool) {
        self.last.retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Kind;

    fn ingress(name: &str) -> ObjectKey {
        ObjectKey::namespaced(Kind::Ingress, "ns", name)
    }

    fn rejected(name: &str, note: &str) -> Event {
        Event::warning(ingress(name), "Rejected", "Translate", note)
    }

    fn reasons(recorder: &RecordingEventRecorder) -> Vec<(String, &'static str, String)> {
        recorder
            .events()
            .into_iter()
            .map(|e| (e.regarding.name, e.reason, e.note))
            .collect()
    }

    #[tokio::test]
    async fn event_set_publishes_each_problem_once_until_it_changes() {
        let recorder = RecordingEventRecorder::default();
        let mut set = EventSet::default();
        for _ in 0..3 {
            set.publish(
                &recorder,
                [rejected("a", "bad path"), rejected("b", "bad host")],
            )
            .await;
        }
        assert_eq!(
            recorder.events().len(),
            2,
            "three passes, two problems, two Events"
        );
        // `a` changes its note; `b` is fixed.
        set.publish(&recorder, [rejected("a", "bad pathType")])
            .await;
        // `b` breaks again the same way: published again.
        set.publish(
            &recorder,
            [rejected("a", "bad pathType"), rejected("b", "bad host")],
        )
        .await;
        assert_eq!(
            reasons(&recorder),
            [
                ("a".into(), "Rejected", "bad path".into()),
                ("b".into(), "Rejected", "bad host".into()),
                ("a".into(), "Rejected", "bad pathType".into()),
                ("b".into(), "Rejected", "bad host".into()),
            ]
        );
    }

    #[tokio::test]
    async fn last_events_publishes_only_changes_per_object() {
        let recorder = RecordingEventRecorder::default();
        let mut last = LastEvents::default();
        let svc = ObjectKey::namespaced(Kind::Service, "ns", "web");
        let failed = || {
            Event::warning(
                svc.clone(),
                "AllocationFailed",
                "Allocate",
                "PoolExhausted: full",
            )
        };
        let allocated = || Event::normal(svc.clone(), "IPAllocated", "Allocate", "203.0.113.1");
        last.publish(&recorder, failed()).await;
        last.publish(&recorder, failed()).await;
        last.publish(&recorder, allocated()).await;
        last.publish(&recorder, allocated()).await;
        last.publish(&recorder, failed()).await;
        let got: Vec<&str> = recorder.events().iter().map(|e| e.reason).collect();
        assert_eq!(got, ["AllocationFailed", "IPAllocated", "AllocationFailed"]);
        last.retain(|_| false);
        last.publish(&recorder, failed()).await;
        assert_eq!(
            recorder.events().len(),
            4,
            "a forgotten object starts afresh"
        );
    }

    #[tokio::test]
    async fn log_recorder_appends_json_lines_to_the_state_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let recorder = LogEventRecorder::new(Some(dir.path().to_path_buf()));
        recorder.publish(rejected("a", &"x".repeat(2000))).await;
        recorder
            .publish(Event::normal(
                ObjectKey::cluster(Kind::IPAddressPool, "lab"),
                "Ok",
                "Check",
                "fine",
            ))
            .await;
        let text = std::fs::read_to_string(dir.path().join("events.log")).expect("events.log");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["reason"], "Rejected");
        assert_eq!(lines[0]["type"], "Warning");
        assert_eq!(lines[0]["regarding"]["namespace"], "ns");
        assert!(lines[0]["note"].as_str().expect("note").len() <= NOTE_MAX_BYTES);
        assert_eq!(lines[1]["regarding"]["kind"], "IPAddressPool");
    }
}
